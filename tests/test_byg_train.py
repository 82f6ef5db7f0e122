"""The ByG trainer on the tiny zoo (CPU): loss terms, gradient routing, learning, resume, saved LoRAs."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from videoprior_edit.byg import losses as L
from videoprior_edit.byg.data import read_jsonl, write_demo_dataset
from videoprior_edit.byg.train import (
    ByGConfig,
    ByGTrainer,
    add_parser,
    diffusers_path,
    edit_velocity,
    lora_parameters,
    main,
)


def _models(zoo):
    from videoprior_edit.models.sets import load_wan_models

    return load_wan_models(zoo.file("wan21_t2v"), None, zoo.file("umt5"), zoo.file("vae"), dtype="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("byg_data"), 32, 32, count=2)


def _trainer(zoo, data, out, **overrides) -> ByGTrainer:
    cfg = {"data": str(data), "output": str(out), "width": 32, "height": 32, "rank": 4, "precision": "fp32",
           "max_steps": 4, "bootstrap_steps": 2, "clean_steps": 2, "identity_warmup_steps": 0,
           "identity_probability": 0.0, "lr": 1e-3, "gradient_checkpointing": False, "log_every": 100,
           "save_every": 0, "save_dtype": "fp32"}
    cfg.update(overrides)
    return ByGTrainer(ByGConfig(**cfg), _models(zoo))


def _randomize_lora(trainer, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.params.values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _inputs(trainer, step=0):
    positions = trainer.positions(step, 0)
    batch = trainer.batch(positions)
    return batch, trainer.draws(positions, batch["latents"].shape[1:])


def test_data_reads_jsonl(data):
    examples = read_jsonl(data)
    assert len(examples) == 2 and examples[0].media.is_file()
    assert examples[0].instruction and examples[0].inverse_instruction


def test_every_loss_term_is_finite(zoo, data, tmp_path):
    trainer = _trainer(zoo, data, tmp_path, identity_weight=1.0)
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
    grads = [p.grad for p in trainer.params.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_gradient_routing(zoo, data, tmp_path):
    """The reverse pass sees the EMA's clean estimate exactly, the gradient reaches the LoRA through the forward
    one-step prediction (equal to the gradient w.r.t. the condition, straight through), and nothing flows into the
    clean-estimate branch."""
    trainer = _trainer(zoo, data, tmp_path, ema_decay=0.5)
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
    *direct, g_cond = torch.autograd.grad(cycle_leaf, params + [leaf])
    assert torch.equal(cycle_leaf, cycle)
    v2 = trainer.student(x_t, src, sigma, t_ins)
    torch.autograd.grad(L.route_gradients(clean, L.one_step_estimate(x_t, v2, sigma)).sum(), params)
    assert torch.allclose(seen["one_step"], g_cond, rtol=1e-5, atol=1e-9)
    assert float(g_cond.abs().sum()) > 0
    # LoRA gradient = reverse-pass (direct) part + forward part through x0_hat = vjp(x0_hat, g_cond)
    forward_part = torch.autograd.grad(L.one_step_estimate(x_t, trainer.student(x_t, src, sigma, t_ins), sigma),
                                       params, grad_outputs=g_cond)
    assert sum(float(f.abs().sum()) for f in forward_part) > 0
    for r, d, f in zip(routed[:-1], direct, forward_part):
        assert torch.allclose(r, d + f, rtol=1e-4, atol=1e-7)


def test_loss_decreases_on_a_fixed_batch(zoo, data, tmp_path):
    trainer = _trainer(zoo, data, tmp_path, fixed_draws=True, lr=3e-3, max_steps=20)
    losses = [trainer.step_once()["loss"] for _ in range(20)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_resume_continues_identically(zoo, data, tmp_path):
    opts = {"max_steps": 4, "save_every": 2, "keep_checkpoints": 5, "identity_warmup_steps": 1,
            "identity_probability": 0.5}
    full = _trainer(zoo, data, tmp_path / "a", **opts)
    full.train()
    kinds = [h["identity_step"] for h in full.history]
    assert kinds[0] == 1.0 and 0.0 in kinds  # warm-up, then edit steps
    checkpoint = tmp_path / "a" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir() and (checkpoint / "byg_config.json").is_file()
    resumed = _trainer(zoo, data, tmp_path / "b", resume=str(checkpoint), **opts)
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[2:]]
    for k, p in full.params.items():
        assert torch.equal(p, resumed.params[k]), k
        assert torch.equal(full.ema[k], resumed.ema[k]), k


def test_saved_loras_load_through_the_loader(zoo, data, tmp_path):
    from safetensors.torch import load_file

    from videoprior_edit.lora import add_lora

    trainer = _trainer(zoo, data, tmp_path)
    _randomize_lora(trainer)
    path = trainer.save_lora(tmp_path / "byg.safetensors")
    musubi, peft = load_file(str(path)), load_file(str(diffusers_path(path)))
    assert "lora_unet_blocks_0_self_attn_q.lora_down.weight" in musubi
    assert "lora_unet_blocks_1_ffn_2.alpha" in musubi
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in peft
    merged = []
    for file in (path, diffusers_path(path)):
        models = _models(zoo)
        reports = add_lora(models, file, 1.0)
        assert reports[0].matched == reports[0].total == len(musubi) // 3
        merged.append(models)
    base = _models(zoo).transformer.state_dict()
    sa, sb = merged[0].transformer.state_dict(), merged[1].transformer.state_dict()
    scale = trainer.cfg.alpha or trainer.cfg.rank
    scale /= trainer.cfg.rank
    changed = 0
    for name, module in trainer.transformer.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = name + ".weight"
            expected = base[key] + scale * module.lora_B["default"].weight @ module.lora_A["default"].weight
            assert torch.allclose(sa[key], expected, atol=1e-6), key
            changed += 1
    assert changed == len(musubi) // 3
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # the merged editor computes what the trained student computes
    batch, draws = _inputs(trainer)
    src, text = batch["latents"], batch["texts"][2]
    x = L.noised(src, draws["noise"], draws["sigma"])
    with torch.no_grad():
        student = trainer.student(x, src, draws["sigma"], text)
        loaded = edit_velocity(merged[0].transformer, x, src, draws["sigma"], text)
    assert torch.allclose(student, loaded, atol=1e-4)


def test_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--identity-probability" in capsys.readouterr().out
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-byg", "--data", "d.jsonl", "--rank", "8", "--no-gradient-checkpointing"])
    assert args.rank == 8 and args.gradient_checkpointing is False and args.run is not None


def test_lora_parameters_only_train(zoo, data, tmp_path):
    trainer = _trainer(zoo, data, tmp_path)
    trainable = {n for n, p in trainer.transformer.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(trainer.transformer))
    assert len(trainable) == 2 * 10 * trainer.transformer.config.num_layers  # A and B on 10 Linears per block


def test_base_is_the_frozen_model_and_checkpointing_changes_nothing(zoo, data, tmp_path):
    from videoprior_edit.byg.train import base_velocity

    plain = _trainer(zoo, data, tmp_path / "a")
    ckpt = _trainer(zoo, data, tmp_path / "b", gradient_checkpointing=True)
    for t in (plain, ckpt):
        _randomize_lora(t)
    batch, draws = _inputs(plain)
    x = L.noised(batch["latents"], draws["noise"], draws["sigma"])
    with torch.no_grad():
        base = base_velocity(plain.transformer, x, draws["sigma"], batch["texts"][1])
        frozen = _models(zoo).transformer(hidden_states=x, timestep=draws["sigma"] * 1000,
                                          encoder_hidden_states=batch["texts"][1], return_dict=False)[0]
        student = plain.student(x, batch["latents"], draws["sigma"], batch["texts"][1])
    assert torch.equal(base, frozen)  # adapter disabled = the base model, bit for bit
    assert not torch.allclose(student[:, :, :1], base[:, :, :1])  # (and the adapter is back on)
    losses = []
    for t in (plain, ckpt):
        loss, _ = t.losses(batch, draws, identity=False)
        loss.backward()
        losses.append((loss.detach(), [p.grad.clone() for p in t.params.values()]))
    assert torch.allclose(losses[0][0], losses[1][0])
    for a, b in zip(losses[0][1], losses[1][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
