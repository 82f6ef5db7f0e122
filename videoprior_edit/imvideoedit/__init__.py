"""ImVideoEdit: Predict-Update Spatial Difference Attention adapters on a frozen Wan2.1-T2V, their editor and trainer.

- `create_adapter` / `load_adapter` / `save_adapter`: the adapter (new modules only) and its safetensors file;
- `edit_video`: source video + edit prompt -> edited video (the shared Wan sampling loop with a hook);
- `train.train` (`videoprior-edit train-imvideoedit`): the accelerate trainer on image pairs;
- `pairs.build_pairs` (`videoprior-edit build-imvideoedit-pairs`): a pair folder from two image folders and prompts.
"""

from .adapter import (
                      AdapterConfig,
                      ImVideoEditAdapter,
                      applied,
                      check_base,
                      create_adapter,
                      insert_adapter,
                      load_adapter,
                      read_config,
                      remove_adapter,
                      save_adapter,
)
from .editor import SourceChunk, VideoEdit, edit_video

__all__ = ["AdapterConfig", "ImVideoEditAdapter", "SourceChunk", "VideoEdit", "applied", "check_base",
           "create_adapter", "edit_video", "insert_adapter", "load_adapter", "read_config", "remove_adapter",
           "save_adapter"]
