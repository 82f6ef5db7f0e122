"""Several processes for the ByG trainer: replicated data parallel, or FSDP (parameters sharded with FSDP2).

- Replicated (`accelerate launch --multi_gpu`, and CPU processes with gloo): every process holds the whole model and
  LoRA; after the backward the LoRA gradients are averaged by hand (only the LoRA trains, so no DDP wrapper is
  needed). A LoRA that no process touched this step (the other Wan2.2 expert) keeps no gradient.
- FSDP (`accelerate launch --config_file configs/accelerate/fsdp_wan14b.yaml`, or `--sharding fsdp`): each transformer
  block and each expert's root are sharded with `torch.distributed.fsdp.fully_shard` (FSDP2: parameters stay the
  model's own, as DTensor shards; the "use_orig_params" behaviour is built in). No casting policy: the frozen base
  keeps its dtype (bf16), the LoRA stays fp32, autocast does the compute dtype. The trainer shards by itself rather
  than through `accelerator.prepare`: accelerate's FSDP2 path takes one model only (Wan2.2 has two experts) and casts
  every parameter to one `param_dtype`, which fails on a frozen-bf16 + fp32-LoRA module ("gradient with dtype
  BFloat16 to a tensor with grad_dtype Float"); FSDP1 flat parameters need one dtype per unit, which would force the
  14B base to fp32. Saving gathers the LoRA and EMA whole (`whole`) on every process; the main process writes.
"""

from __future__ import annotations

import torch

SHARDING = ("auto", "fsdp", "none")


def fsdp_requested(sharding: str, accelerator) -> bool:
    """Whether to shard: "fsdp" always with several processes; "auto" when accelerate's config says FSDP."""
    if accelerator.num_processes < 2 or sharding == "none":
        return False
    return sharding == "fsdp" or "FSDP" in str(accelerator.distributed_type).upper()


def fsdp_settings(accelerator, default_blocks: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """(block class names to wrap, reshard after forward): the family's blocks plus those accelerate's FSDP plugin
    names (`fsdp_transformer_layer_cls_to_wrap`); reshard as the plugin says (default: yes)."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    names = getattr(plugin, "transformer_cls_names_to_wrap", None) or ()
    if isinstance(names, str):
        names = tuple(n.strip() for n in names.split(",") if n.strip())
    reshard = getattr(plugin, "reshard_after_forward", True)
    if not isinstance(reshard, bool):  # FSDP1-style sharding strategy
        reshard = not any(s in str(reshard).upper() for s in ("NO_SHARD", "SHARD_GRAD_OP"))
    return tuple(dict.fromkeys((*default_blocks, *names))), reshard


def shard(modules: list[torch.nn.Module], block_classes: tuple[str, ...], device: torch.device,
          reshard_after_forward: bool = True) -> None:
    """FSDP2-shard each module in place: every block whose class is named in `block_classes`, then the module itself
    (its own root, so each Wan2.2 expert can run alone)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()  # no casts: bf16 base and fp32 LoRA keep their dtypes (autocast computes)
    for module in modules:
        blocks = [m for m in module.modules() if type(m).__name__ in block_classes]
        if not blocks:
            from ..errors import InputError

            raise InputError(f"No {', '.join(block_classes)} block in {type(module).__name__} to shard.",
                             "Set fsdp_transformer_layer_cls_to_wrap to the model's block class.")
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def is_sharded(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every process when sharded: all processes must call it, in the same order)."""
    return t.full_tensor() if is_sharded(t) else t


def assign_whole(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into `target` (this process's shard of it when `target` is sharded)."""
    with torch.no_grad():
        if is_sharded(target):
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
            target.copy_(value)
        else:
            target.copy_(value.to(target.device, target.dtype))


def average_gradients(params: list[torch.nn.Parameter], num_processes: int) -> None:
    """Replicated data parallel: average each gradient over the processes; a parameter no process got a gradient
    for keeps none (so AdamW leaves it alone, as in one process)."""
    import torch.distributed as dist

    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    for p, n in zip(params, has.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(num_processes)
