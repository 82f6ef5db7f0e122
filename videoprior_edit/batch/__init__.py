"""Batch editing with any of the pack's editors (`videoprior-edit batch EDITOR ...`): a JSONL / CSV manifest or a
folder of sources, models loaded once, a progress bar, resumable (written outputs are skipped, each output is written
atomically), a summary per item, and the items split across processes under `torchrun` / `accelerate launch`.

```python
from videoprior_edit.batch import EDITORS, LoadSettings, pick_model_files, read_manifest, run_batch

editor = EDITORS["tail"]
files = pick_model_files(editor.slots, {}, models_dir="ComfyUI/models", group=editor.group)
result = run_batch(editor, read_manifest("items.jsonl"), "results/",
                   load=lambda: editor.load(files, LoadSettings()), options={"steps": 8})
```
"""

from .editors import EDITORS, Clock, Edited, Editor, LoadSettings
from .items import Item, read_folder, read_manifest
from .models import Slot, pick_model_files
from .options import Option, resolve
from .runner import (
    SUMMARY,
    SUMMARY_LOG,
    BatchResult,
    edit_item,
    output_path,
    process_item,
    rank_and_world,
    rank_device,
    read_records,
    run_batch,
    save_output,
)

__all__ = ["EDITORS", "SUMMARY", "SUMMARY_LOG", "BatchResult", "Clock", "Edited", "Editor", "Item", "LoadSettings",
           "Option", "Slot", "edit_item", "output_path", "pick_model_files", "process_item", "rank_and_world",
           "rank_device", "read_folder", "read_manifest", "read_records", "resolve", "run_batch", "save_output"]
