"""The ByG trainer on the tiny zoo (CPU), for Wan2.1-T2V, Wan2.2-T2V-A14B (two experts) and FLUX.1-dev: loss terms,
gradient routing, learning, expert routing, resume, saved LoRAs through the pack's loader, gradient checkpointing,
and two CPU processes (replicated data parallel and FSDP)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videoprior_edit.byg import losses as L
from videoprior_edit.byg.data import read_jsonl, write_demo_dataset
from videoprior_edit.byg.family import flux_velocity
from videoprior_edit.byg.train import (
    ByGConfig,
    ByGTrainer,
    add_parser,
    diffusers_path,
    edit_velocity,
    expert_path,
    lora_parameters,
    main,
    write_t2v_experts,
)

KINDS = ("wan2.1", "wan2.2", "flux")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("byg_data"), 32, 32, count=2)


@pytest.fixture(scope="module")
def t2v_experts(tmp_path_factory):
    """A Wan2.2-T2V-A14B pair of tiny random experts (the zoo has no T2V pair)."""
    return write_t2v_experts(tmp_path_factory.mktemp("t2v_experts"))


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def _models(zoo, kind="wan2.1", experts=None):
    if kind == "flux":
        from videoprior_edit.byg.flux import load_flux_models

        fz = zoo.flux
        return load_flux_models(fz["transformer"], fz["clip_l"], fz["t5xxl"], fz["vae"], dtype="fp32")
    from videoprior_edit.models.sets import load_wan_models

    high, low = experts if kind == "wan2.2" else (zoo.file("wan21_t2v"), None)
    return load_wan_models(high, low, zoo.file("umt5"), zoo.file("vae"), dtype="fp32")


def _trainer(zoo, data, out, kind="wan2.1", experts=None, **overrides) -> ByGTrainer:
    cfg = {"data": str(data), "output": str(out), "width": 32, "height": 32, "rank": 4, "precision": "fp32",
           "max_steps": 4, "bootstrap_steps": 2, "clean_steps": 2, "identity_warmup_steps": 0,
           "identity_probability": 0.0, "lr": 1e-3, "gradient_checkpointing": False, "log_every": 100,
           "save_every": 0, "save_dtype": "fp32", "max_sequence_length": 16 if kind == "flux" else 0}
    cfg.update(overrides)
    return ByGTrainer(ByGConfig(**cfg), _models(zoo, kind, experts))


@pytest.fixture
def make(zoo, data, t2v_experts, kind):
    """make(out, **overrides) -> a trainer of this test's model kind."""
    return lambda out, **o: _trainer(zoo, data, out, kind, t2v_experts, **o)


def _randomize_lora(trainer, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.params.values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _inputs(trainer, step=0):
    positions = trainer.positions(step, 0)
    batch = trainer.batch(positions)
    return batch, trainer.draws(positions, batch["latents"].shape[1:])


def _grads(trainer) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in trainer.params.values()]


def test_data_reads_jsonl(data):
    examples = read_jsonl(data)
    assert len(examples) == 2 and examples[0].media.is_file()
    assert examples[0].instruction and examples[0].inverse_instruction


def test_every_loss_term_is_finite(make, tmp_path):
    trainer = make(tmp_path, identity_weight=1.0)
    _randomize_lora(trainer)
    batch, draws = _inputs(trainer)
    total, terms = trainer.losses(batch, draws, identity=False)
    assert set(terms) == {"prior", "direction", "anchor", "cycle", "prior_rev", "identity"}
    for name, value in {"total": total, **terms}.items():
        assert value.dim() == 0 and math.isfinite(float(value.detach())), name
    assert 0 <= float(terms["direction"].detach()) <= 2
    ident, only = trainer.losses(batch, draws, identity=True)
    assert set(only) == {"identity"} and math.isfinite(float(ident.detach()))
    total.backward()
    grads = [g for g in _grads(trainer) if g is not None]  # Wan2.2: the other expert's LoRA may get none
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gradient_routing(make, tmp_path):
    """The reverse pass sees the EMA's clean estimate exactly, the gradient reaches the LoRA through the forward
    one-step prediction (equal to the gradient w.r.t. the condition, straight through), and nothing flows into the
    clean-estimate branch."""
    trainer = make(tmp_path, ema_decay=0.5)
    _randomize_lora(trainer)
    for k in trainer.ema:  # an EMA that differs from the student
        trainer.ema[k].mul_(0.5)
    batch, draws = _inputs(trainer)
    src, (_, _, t_ins, t_inv) = batch["latents"], batch["texts"]
    sigma = draws["sigma"]
    x_t = trainer.ema_integrate(draws["noise"], src, t_ins, torch.ones_like(sigma), sigma, 2)
    clean = trainer.ema_integrate(x_t, src, t_ins, sigma, torch.zeros_like(sigma), 2).requires_grad_(True)
    assert not x_t.requires_grad
    params = list(trainer.params.values())

    v = trainer.student(x_t, src, sigma, t_ins)
    one_step = L.one_step_estimate(x_t, v, sigma)
    seen = {}
    one_step.register_hook(lambda g: seen.setdefault("one_step", g.clone()))
    cond = L.route_gradients(clean, one_step)
    assert torch.equal(cond, clean)  # what the reverse pass sees: the clean estimate, bit for bit
    x_r = L.noised(src, draws["noise_rev"], sigma)
    cycle = L.velocity_loss(trainer.student(x_r, cond, sigma, t_inv), src, draws["noise_rev"])
    routed = torch.autograd.grad(cycle, params + [clean], allow_unused=True)
    assert routed[-1] is None  # no gradient through the stop-gradient branch
    # the same loss with a leaf condition of the same value: its gradient is what the one-step prediction got
    leaf = clean.detach().clone().requires_grad_(True)
    cycle_leaf = L.velocity_loss(trainer.student(x_r, leaf, sigma, t_inv), src, draws["noise_rev"])
    *direct, g_cond = torch.autograd.grad(cycle_leaf, params + [leaf], allow_unused=True)
    assert torch.equal(cycle_leaf, cycle)
    v2 = trainer.student(x_t, src, sigma, t_ins)
    torch.autograd.grad(L.route_gradients(clean, L.one_step_estimate(x_t, v2, sigma)).sum(), params, allow_unused=True)
    assert torch.allclose(seen["one_step"], g_cond, rtol=1e-5, atol=1e-9)
    assert float(g_cond.abs().sum()) > 0
    # LoRA gradient = reverse-pass (direct) part + forward part through x0_hat = vjp(x0_hat, g_cond)
    forward_part = torch.autograd.grad(L.one_step_estimate(x_t, trainer.student(x_t, src, sigma, t_ins), sigma),
                                       params, grad_outputs=g_cond, allow_unused=True)
    assert sum(float(f.abs().sum()) for f in forward_part if f is not None) > 0
    zero = torch.zeros(())
    for r, d, f in zip(routed[:-1], direct, forward_part):
        if r is None:  # Wan2.2: a LoRA of the expert this sigma does not use
            assert d is None and f is None
            continue
        assert torch.allclose(r, (zero if d is None else d) + (zero if f is None else f), rtol=1e-4, atol=1e-7)


def test_loss_decreases_on_a_fixed_batch(make, tmp_path):
    trainer = make(tmp_path, fixed_draws=True, lr=3e-3, max_steps=20)
    losses = [trainer.step_once()["loss"] for _ in range(20)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_resume_continues_identically(make, tmp_path):
    opts = {"max_steps": 4, "save_every": 2, "keep_checkpoints": 5, "identity_warmup_steps": 1,
            "identity_probability": 0.5}
    full = make(tmp_path / "a", **opts)
    full.train()
    kinds = [h["identity_step"] for h in full.history]
    assert kinds[0] == 1.0 and 0.0 in kinds  # warm-up, then edit steps
    checkpoint = tmp_path / "a" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir() and (checkpoint / "byg_config.json").is_file()
    files = [f for f in checkpoint.rglob("*") if f.is_file()]
    assert files and all(f.suffix in (".safetensors", ".json") for f in files), files  # no pickles
    resumed = make(tmp_path / "b", resume=str(checkpoint), **opts)
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[2:]]
    for k, p in full.params.items():
        assert torch.equal(p, resumed.params[k]), k
        assert torch.equal(full.ema[k], resumed.ema[k]), k
    (tmp_path / "a" / "checkpoints" / "step-000006.partial").mkdir()  # a save that was interrupted
    latest = make(tmp_path / "a", resume="latest", **opts)
    assert latest.step == 4


def _apply_saved(kind, models, file, label):
    """Merge a saved LoRA file into a fresh model set through the pack's loader; the loader's report."""
    if kind == "flux":
        from videoprior_edit.lora import apply_lora

        return apply_lora(models.transformer, file, 1.0)
    from videoprior_edit.lora import add_lora

    report, = add_lora(models, file, 1.0, {"model": "both"}.get(label, label))
    return report


def test_saved_loras_load_through_the_loader(make, zoo, t2v_experts, kind, tmp_path):
    """Both saved formats load through `videoprior_edit.lora` (merged weight == base + scale * up @ down, bit for
    bit, and the same from either file), and the merged editor computes what the trained student computes."""
    from safetensors.torch import load_file

    trainer = make(tmp_path)
    _randomize_lora(trainer)
    paths = trainer.save_lora(tmp_path / "byg.safetensors")
    labels = [e.label for e in trainer.family.trained]
    assert [p.name for p in paths] == {"wan2.2": ["byg_high_noise.safetensors", "byg_low_noise.safetensors"]}.get(
        kind, ["byg.safetensors"]) and paths == [expert_path(tmp_path / "byg.safetensors", x) for x in labels]
    kohya, peft = load_file(str(paths[0])), load_file(str(diffusers_path(paths[0])))
    r = trainer.cfg.rank
    if kind == "flux":  # BFL names; fused qkv / linear1 stored block-diagonally (rank parts x r)
        assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * r
        assert kohya["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape[1] == 4 * r
        assert "lora_unet_double_blocks_1_txt_mlp_2.alpha" in kohya
        assert "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight" in peft
    else:
        assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in kohya and "lora_unet_blocks_1_ffn_2.alpha" in kohya
        assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in peft
    base = _models(zoo, kind, t2v_experts)
    merged = []
    for twin in (lambda q: q, diffusers_path):
        models = _models(zoo, kind, t2v_experts)
        for path, label in zip(paths, labels):
            report = _apply_saved(kind, models, twin(path), label)
            assert report.matched == report.total > 0
        merged.append(models)
    scale = (trainer.cfg.alpha or r) / r
    slots = {"model": "transformer", "high": "transformer", "low": "transformer_2"}
    changed = 0
    for e in trainer.family.trained:
        before = getattr(base, slots[e.label]).state_dict()
        after = [getattr(m, slots[e.label]).state_dict() for m in merged]
        for name, module in e.module.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                key = name + ".weight"
                delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()
                assert torch.equal(after[0][key], before[key].float() + delta * scale), key
                changed += 1
        for key in after[0]:
            assert torch.equal(after[0][key], after[1][key]), key
    assert changed == len(peft) // 2 * len(labels)
    # the merged editor computes what the trained student computes
    batch, draws = _inputs(trainer)
    src, text, sigma = batch["latents"], batch["texts"][2], draws["sigma"]
    x = L.noised(src, draws["noise"], sigma)
    index = int(trainer.family.expert_index(sigma)[0])
    module = getattr(merged[0], slots[trainer.family.experts[index].label])
    with torch.no_grad():
        student = trainer.student(x, src, sigma, text)
        loaded = trainer.family.velocity(module, x, sigma, text, src, trainer.cfg)
    assert torch.allclose(student, loaded, atol=1e-4)
    if kind == "wan2.1":
        assert torch.equal(loaded, edit_velocity(module, x, src, sigma, text))
    if kind == "flux":
        assert torch.equal(loaded, flux_velocity(module, x, sigma, text, src))


def test_wan22_routes_each_sigma_to_its_expert(zoo, data, t2v_experts, tmp_path):
    """Wan2.2-T2V-A14B: a sigma at or above the boundary (0.875) runs and trains only the high-noise expert's LoRA,
    one below only the low-noise one; EMA bootstrapping switches expert mid-way; a mixed batch is split."""
    trainer = _trainer(zoo, data, tmp_path, "wan2.2", t2v_experts)
    high, low = trainer.family.experts
    assert (high.label, high.low, low.label, low.high) == ("high", 0.875, "low", 0.875)
    _randomize_lora(trainer)
    batch, draws = _inputs(trainer)
    for value, touched in ((0.95, "high"), (0.875, "high"), (0.5, "low")):
        trainer.optimizer.zero_grad(set_to_none=True)
        sigma = torch.full_like(draws["sigma"], value)
        loss, _ = trainer.losses(batch, {**draws, "sigma": sigma, "sigma_rev": sigma}, identity=False)
        loss.backward()
        for k, p in trainer.params.items():
            has_grad = p.grad is not None and float(p.grad.abs().sum()) > 0
            assert has_grad == k.startswith(touched + "."), (value, k)
    calls = []
    velocity = trainer.family.velocity

    def spy(module, *args, **kwargs):
        calls.append("high" if module is high.module else "low")
        return velocity(module, *args, **kwargs)

    trainer.family.velocity = spy
    src, text = batch["latents"], batch["texts"][2]
    ones = torch.ones_like(draws["sigma"])
    trainer.ema_integrate(draws["noise"], src, text, ones, 0.5 * ones, 4)  # steps start at 1, .875, .75, .625
    assert calls == ["high", "high", "low", "low"]
    pair = trainer.batch([0, 1])
    x = torch.randn((2, *pair["latents"].shape[1:]), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.95, 0.5])
    with torch.no_grad():
        both = trainer.student(x, pair["latents"], sigma, pair["texts"][2])
        alone = [trainer.student(x[i:i + 1], pair["latents"][i:i + 1], sigma[i:i + 1], pair["texts"][2][i:i + 1])
                 for i in range(2)]
    assert torch.allclose(both, torch.cat(alone), atol=1e-6)


def test_wan22_one_expert(zoo, data, t2v_experts, tmp_path):
    """--expert high: only the high-noise expert gets a LoRA, sigmas stay in its range, one file is saved; --expert
    low with --other-expert-lora merges that file into the frozen high expert."""
    trainer = _trainer(zoo, data, tmp_path, "wan2.2", t2v_experts, expert="high", max_steps=1)
    assert trainer.sigma_range == (0.875, 1.0) and {k.split(".")[0] for k in trainer.params} == {"high"}
    assert not any(p.requires_grad for p in trainer.family.experts[1].module.parameters())
    assert all(float(trainer.draws([p], (1,))["sigma"]) >= 0.875 for p in range(20))
    paths = trainer.train()
    assert [p.name for p in paths] == ["byg_lora_high_noise.safetensors"]
    # then the low expert, with the high one's LoRA merged into the frozen high expert for bootstrapping
    low = _trainer(zoo, data, tmp_path / "low", "wan2.2", t2v_experts, expert="low", other_expert_lora=str(paths[0]))
    assert low.sigma_range == (0.0, 0.875) and {k.split(".")[0] for k in low.params} == {"low"}
    assert all(float(low.draws([p], (1,))["sigma"]) < 0.875 for p in range(20))
    fresh = _models(zoo, "wan2.2", t2v_experts).transformer.state_dict()
    merged = low.family.experts[0].module.state_dict()
    assert any(not torch.equal(fresh[k], merged[k]) for k in fresh)


def test_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--identity-probability" in capsys.readouterr().out
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-byg", "--data", "d.jsonl", "--rank", "8", "--no-gradient-checkpointing"])
    assert args.rank == 8 and args.gradient_checkpointing is False and args.run is not None


def test_lora_parameters_only_train(make, kind, tmp_path):
    trainer = make(tmp_path)
    for e in trainer.family.experts:
        trainable = {n for n, p in e.module.named_parameters() if p.requires_grad}
        assert trainable == set(lora_parameters(e.module))
    c = trainer.transformer.config
    per_model = 2 * (12 * c.num_layers + 5 * c.num_single_layers) if kind == "flux" else 2 * 10 * c.num_layers
    assert len(trainer.params) == per_model * len(trainer.family.trained)  # A and B on every target Linear


def test_base_is_the_frozen_model_and_checkpointing_changes_nothing(make, zoo, t2v_experts, kind, tmp_path):
    plain = make(tmp_path / "a")
    ckpt = make(tmp_path / "b", gradient_checkpointing=True)
    for t in (plain, ckpt):
        _randomize_lora(t)
    batch, draws = _inputs(plain)
    x = L.noised(batch["latents"], draws["noise"], draws["sigma"])
    fresh = _models(zoo, kind, t2v_experts)
    module = fresh.transformer if int(plain.family.expert_index(draws["sigma"])[0]) == 0 else fresh.transformer_2
    with torch.no_grad():
        base = plain.base(x, draws["sigma"], batch["texts"][1])
        frozen = plain.family.velocity(module, x, draws["sigma"], batch["texts"][1], None, plain.cfg)
        student = plain.student(x, batch["latents"], draws["sigma"], batch["texts"][1])
    assert torch.equal(base, frozen)  # adapter disabled = the base model, bit for bit
    assert not torch.allclose(student, base)  # (and the adapter is back on)
    losses = []
    for t in (plain, ckpt):
        loss, _ = t.losses(batch, draws, identity=False)
        loss.backward()
        losses.append((loss.detach(), _grads(t)))
    assert ckpt.transformer.is_gradient_checkpointing
    assert torch.allclose(losses[0][0], losses[1][0])
    for a, b in zip(losses[0][1], losses[1][1]):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("zoo_model", ["wan2.2", "flux"])
def test_zoo_demo_command(zoo, zoo_model, tmp_path, capsys):
    (tmp_path / "zoo").symlink_to(zoo.root, target_is_directory=True)  # the session's zoo, not a new one
    assert main(["--zoo", str(tmp_path), "--zoo-model", zoo_model, "--max-steps", "2", "--width", "32", "--height",
                 "32", "--save-every", "0"]) == 0
    names = {"wan2.2": ["byg_lora_high_noise", "byg_lora_low_noise"], "flux": ["byg_lora"]}[zoo_model]
    for name in names:
        assert (tmp_path / "run" / f"{name}.safetensors").is_file()
        assert (tmp_path / "run" / f"{name}_diffusers.safetensors").is_file()
    assert "LoRA:" in capsys.readouterr().out


_RANKS_SCRIPT = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from videoprior_edit.byg.train import ByGConfig, ByGTrainer
for spec in json.loads(Path(sys.argv[1]).read_text()):
    trainer = ByGTrainer(ByGConfig(**spec))
    trainer.train()
    rank = trainer.accelerator.process_index
    save_file(trainer.checkpoint_tensors(), str(Path(spec["output"]) / f"rank{rank}.safetensors"))
    (Path(spec["output"]) / f"rank{rank}.json").write_text(json.dumps(
        {"sharded": trainer.sharded, "step": trainer.step, "processes": trainer.accelerator.num_processes}))
trainer.accelerator.end_training()  # leaves the process group (a gloo group left to exit can abort the process)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_data_parallel_and_fsdp(zoo, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo): replicated data parallel and FSDP2
    (Wan2.1; Wan2.2 two experts with gradient checkpointing, and its resume; FLUX with a bf16 base, fp32 LoRA and
    gradient checkpointing), 2 steps each: both ranks hold the same LoRA, and data parallel equals FSDP and one
    process with the same two samples in its batch."""
    import json
    from dataclasses import asdict

    import torch.distributed as dist
    from safetensors.torch import load_file

    from videoprior_edit.byg.train import zoo_config

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    (tmp_path / "zoo").symlink_to(zoo.root, target_is_directory=True)
    common = {"max_steps": 2, "save_every": 0, "identity_warmup_steps": 1, "width": 32, "height": 32,
              "log_every": 100}
    runs = {"wan2.1-none": ("wan2.1", {"sharding": "none"}), "wan2.1-fsdp": ("wan2.1", {"sharding": "fsdp"}),
            "wan2.2-fsdp": ("wan2.2", {"sharding": "fsdp", "save_every": 1, "gradient_checkpointing": True}),
            "flux-fsdp": ("flux", {"sharding": "fsdp", "gradient_checkpointing": True, "precision": "bf16"})}
    specs = [asdict(zoo_config(tmp_path, ByGConfig(output=str(tmp_path / name), **{**common, **extra}), model))
             for name, (model, extra) in runs.items()]
    resumed = {**specs[2], "output": str(tmp_path / "wan2.2-resumed"),
               "resume": str(tmp_path / "wan2.2-fsdp" / "checkpoints" / "step-000001")}
    (tmp_path / "specs.json").write_text(json.dumps(specs + [resumed]))
    (tmp_path / "ranks.py").write_text(_RANKS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(tmp_path / "ranks.py"), str(tmp_path / "specs.json")]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    for name in [*runs, "wan2.2-resumed"]:
        a, b = (load_file(str(tmp_path / name / f"rank{i}.safetensors")) for i in (0, 1))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        info = json.loads((tmp_path / name / "rank1.json").read_text())
        assert info["processes"] == 2 and info["step"] == 2 and info["sharded"] == name.endswith(("fsdp", "resumed"))
    assert (tmp_path / "wan2.2-resumed" / "byg_lora_low_noise.safetensors").is_file()
    ddp, fsdp = (load_file(str(tmp_path / n / "rank0.safetensors")) for n in ("wan2.1-none", "wan2.1-fsdp"))
    assert all(torch.allclose(ddp[k], fsdp[k], atol=1e-6) for k in ddp)
    one = ByGTrainer(ByGConfig(**{**specs[0], "batch_size": 2, "output": str(tmp_path / "one")}))
    one.train()
    single = one.checkpoint_tensors()
    # a batch of two vs two processes: float sums in another order, which AdamW (lr 1e-3) turns into < 1e-4
    assert all(torch.allclose(ddp[k], single[k], atol=1e-4) for k in ddp)
