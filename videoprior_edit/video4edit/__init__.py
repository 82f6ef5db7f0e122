"""Video4Edit: image editing as a degenerate temporal process (tail-frame editor, FLF2V teacher, distillation)."""

from .editor import PRESETS, TailEdit, edit_tail_frame, teacher_trajectory

__all__ = ["PRESETS", "TailEdit", "edit_tail_frame", "teacher_trajectory"]
