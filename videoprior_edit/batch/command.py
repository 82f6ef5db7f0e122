"""The editors' commands: `videoprior-edit batch EDITOR ...` and the single-item `edit-tail`, `edit-byg-image`,
`edit-byg-video`, `edit-imvideoedit`. Every editor's flags come from its tables (`Slot`s, `Option`s), so a flag
(`--reasoning-steps`) and a manifest key (`reasoning_steps`) are the same setting, with one vocabulary for all."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .editors import EDITORS, Clock, Editor, LoadSettings
from .items import MEDIA_SUFFIXES, Item, read_folder, read_manifest
from .media import IMAGE_SUFFIXES
from .models import pick_model_files
from .runner import edit_item, rank_device, run_batch, save_output

SINGLE = ("tail", "byg-image", "byg-video", "imvideoedit")  # IF-Edit's single-item command is `edit`
MANIFEST_HELP = ("a .jsonl or .csv manifest: per item image / video (a path, relative to the manifest), "
                 "instruction or prompt, optional name (output file name) and any option below (e.g. seed, steps)")


# ----------------------------------------------------------------------------------------------- arguments
def model_arguments(p: argparse.ArgumentParser, editor: Editor, zoo_default: str | None = None) -> None:
    """--models / --zoo and one flag per model file (only LoRA flags take 'none')."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--models", help=f"ComfyUI models folder with the {editor.group} files (see `videoprior-edit "
                       f"models check {editor.group}`)")
    default = f"; default: {zoo_default}" if zoo_default else ""
    where.add_argument("--zoo", default=zoo_default, help=f"tiny zoo folder: random weights, real code paths "
                       f"(written if missing{default})")
    for slot in editor.slots:
        p.add_argument(slot.flag, help=slot.flag_help)


def load_arguments(p: argparse.ArgumentParser, editor: Editor) -> None:
    """Precision, weight storage, memory placement, LoRA strength and (IF-Edit) the rewriter's VLM."""
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="model weights (auto: bf16, fp32 on the tiny zoo)")
    p.add_argument("--weight-storage", default="default", choices=("default", "fp8_e4m3fn"))
    p.add_argument("--placement", default="one_expert", choices=editor.placements, help="memory placement")
    if editor.user_loras:
        p.add_argument("--lora-strength", type=float, default=1.0, help="strength of the LoRAs given (default 1)")
    if editor.name == "if-edit":
        p.add_argument("--vlm", default="", help="prompt rewriter: a local Qwen-VL folder or the URL of an "
                       "OpenAI-compatible server (default: the template rewriter, no VLM)")
        p.add_argument("--vlm-model", default="", help="model name on the --vlm server")
        p.add_argument("--api-key-env", default="", help="environment variable holding the server's API key")


def speed_arguments(p: argparse.ArgumentParser) -> None:
    """The speed options of `videoprior_edit.speed` (all off by default; bench/bench_speed.py measures them)."""
    from ..speed import ATTENTION, CACHES

    g = p.add_argument_group("speed options (all off by default; see the README's speed table)")
    g.add_argument("--attention", default="default", metavar="BACKEND",
                   help=f"attention backend through diffusers' dispatcher: {', '.join(ATTENTION)} (flash / sage / "
                   "xformers need their package and a CUDA GPU; a missing one is refused with what to install)")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (the first run "
                   "compiles; needs g++ on CPU, triton on CUDA; results differ from eager by float rounding)")
    g.add_argument("--cache", default="off", choices=CACHES, help="skip or predict denoising steps (faster, changes "
                   "results; Wan editors only): first_block, magcache (the first run for a schedule calibrates and "
                   "skips nothing), taylorseer, taylorseer_lite (low memory)")
    g.add_argument("--cache-threshold", type=float, default=None,
                   help="first_block / magcache threshold (default 0.05 / 0.06; higher skips more)")
    g.add_argument("--cache-warmup", type=int, default=2,
                   help="first steps of each expert always computed in full (magcache, taylorseer)")
    g.add_argument("--cache-interval", type=int, default=2,
                   help="taylorseer: a full step every N steps after the warm-up")


def with_speed(loaded, args):
    """Apply the command line's speed options to what an editor loaded (its model set, or the set first in a
    tuple) and print what is on; returns `loaded`."""
    from ..speed import Speed, apply_speed

    speed = Speed(attention=args.attention, compile=args.compile, cache=args.cache,
                  cache_threshold=args.cache_threshold, cache_warmup=args.cache_warmup,
                  cache_interval=args.cache_interval)
    models = loaded[0] if isinstance(loaded, tuple) else loaded
    for note in apply_speed(models, speed):
        print(f"speed: {note}")
    return loaded


def option_arguments(p: argparse.ArgumentParser, editor: Editor) -> None:
    """One flag per editor option (its manifest key with '-' for '_')."""
    for o in editor.options:
        if o.type is bool:
            p.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=o.default, help=o.help)
        else:
            p.add_argument(o.flag, dest=o.name, type=o.type, default=o.default, choices=o.choices or None,
                           help=o.help)


def model_files(args, editor: Editor) -> dict[str, Path]:
    """The files the command line names (folder, zoo, single files)."""
    given = {s.name: getattr(args, s.name, None) for s in editor.slots}
    zoo = None if args.models else args.zoo
    return pick_model_files(editor.slots, given, args.models, zoo, group=editor.group)


def load_settings(args, editor: Editor) -> LoadSettings:
    return LoadSettings(precision=args.precision, weight_storage=args.weight_storage, placement=args.placement,
                        device=rank_device(), lora_strength=getattr(args, "lora_strength", 1.0),
                        zoo=not args.models and bool(args.zoo), vlm=getattr(args, "vlm", ""),
                        vlm_model=getattr(args, "vlm_model", ""), api_key_env=getattr(args, "api_key_env", ""))


def options_of(args, editor: Editor) -> dict:
    return {o.name: getattr(args, o.name) for o in editor.options}


# ----------------------------------------------------------------------------------------------- commands
def run_single(args) -> int:
    """`edit-*`: one source -> OUT/edited.png (image editors) or OUT/edited.mp4 (video editors)."""
    editor = EDITORS[args.editor]
    files = model_files(args, editor)
    clock = Clock()
    loaded = with_speed(editor.load(files, load_settings(args, editor)), args)
    clock.lap("load")
    item = Item(0, "edited", Path(args.source), args.prompt)
    edited, settings, fps = edit_item(editor, loaded, item, options_of(args, editor), clock)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_output(editor, edited, out / f"edited{editor.suffix}", fps)
    clock.lap("write")
    for note in edited.notes:
        print(f"note: {note}")
    print(f"seed {settings['seed']}; seconds: " + ", ".join(f"{k} {v}" for k, v in clock.seconds.items()))
    print(f"output: {path}")
    return 0


def run_batch_command(args) -> int:
    """`batch EDITOR`: exit 0 when every item of this process is written, 1 when some failed (alone; under several
    processes 0, so one process's failures do not stop the others: see summary.json), 130 when interrupted."""
    editor = EDITORS[args.editor]
    items = batch_items(args, editor)
    files = model_files(args, editor)
    settings = load_settings(args, editor)
    if settings.device:  # this process's GPU also for code that says just "cuda"
        import torch

        torch.cuda.set_device(settings.device)
    try:
        result = run_batch(editor, items, args.out, lambda: with_speed(editor.load(files, settings), args),
                           options_of(args, editor),
                           progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to finish (written items are skipped); see "
              f"{Path(args.out) / 'summary.json'}")
        return 130
    who = f"rank {result.rank}/{result.world}: " if result.world > 1 else ""
    print(f"{who}{result.written} written, {result.skipped} already there, {result.failed} failed; "
          f"summary: {result.summary}")
    for name, error in result.failures:
        print(f"failed: {name}: {error}")
    return 1 if result.failed and result.world == 1 else 0


def batch_items(args, editor: Editor) -> list[Item]:
    """The items of the manifest, or of --folder with --prompt / --instruction."""
    text = args.instruction or args.prompt
    if bool(args.manifest) == bool(args.folder):
        raise InputError("Give a manifest or --folder (one of them).",
                         f"videoprior-edit batch {editor.name} items.jsonl --out results/  or  "
                         f"--folder photos/ --prompt \"...\" --out results/")
    if args.manifest:
        if text:
            raise InputError("--prompt / --instruction go with --folder; a manifest gives each item's text.",
                             "Put the text in the manifest, or use --folder.")
        return read_manifest(args.manifest)
    if Path(args.folder).resolve() == Path(args.out).resolve():
        raise InputError("--out is the --folder of sources.", "Write the results to another folder.")
    suffixes = IMAGE_SUFFIXES if editor.media == "image" else MEDIA_SUFFIXES
    return read_folder(args.folder, text or "", "instruction" if args.instruction else "prompt", suffixes,
                       frame_folders=editor.media == "video")


# ----------------------------------------------------------------------------------------------- parsers
def add_parsers(sub) -> None:
    """Register `batch` and the single-item editor commands on the `videoprior-edit` subparsers."""
    for name in SINGLE:
        _single_parser(sub, EDITORS[name])
    b = sub.add_parser("batch", help="many edits with one editor: a JSONL/CSV manifest or --folder; models load "
                       "once; resumable; split across processes under torchrun / accelerate launch")
    editors = b.add_subparsers(dest="editor", required=True, metavar="EDITOR")
    for editor in EDITORS.values():
        _batch_parser(editors, editor)


def _single_parser(sub, editor: Editor) -> None:
    p = sub.add_parser(editor.command, help=f"{editor.help}: one {editor.media} -> OUT/edited{editor.suffix}",
                       description=editor.help)
    what = "source image" if editor.media == "image" else "source video (a video file or a folder of frames)"
    p.add_argument("source", help=what)
    p.add_argument("--prompt", "--instruction", dest="prompt", required=True, help="the edit, in words")
    p.add_argument("--out", default="edit_output", help="output folder (default: edit_output)")
    _shared(p, editor)
    p.set_defaults(run=run_single, editor=editor.name)


def _batch_parser(sub, editor: Editor) -> None:
    p = sub.add_parser(editor.name, help=editor.help, description=f"{editor.help}. Each item -> OUT/NAME"
                       f"{editor.suffix}; OUT/summary.jsonl gets a record per item, OUT/summary.json the totals.")
    p.add_argument("manifest", nargs="?", help=MANIFEST_HELP)
    p.add_argument("--folder", help=f"every {editor.media} in this folder instead of a manifest")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--prompt", help="with --folder: the text for every source (used as it is)")
    text.add_argument("--instruction", help="with --folder: the instruction for every source (IF-Edit rewrites it)")
    p.add_argument("--out", default="batch_output", help="output folder (default: batch_output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _shared(p, editor)
    p.set_defaults(run=run_batch_command, editor=editor.name)


def _shared(p: argparse.ArgumentParser, editor: Editor) -> None:
    model_arguments(p, editor)
    load_arguments(p, editor)
    option_arguments(p, editor)
    speed_arguments(p)
