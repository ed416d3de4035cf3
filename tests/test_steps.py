"""Optimisation steps, schedules, the epoch loop, validation and rendering (tiny seeded CPU models)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config
from torch.utils.data import DataLoader

from synthgen.data import PairDataset, find_pairs, split_pairs
from synthgen.steps import (build_state, format_metrics, kl_weight, lr_factor, pix2pix_step, render,
                            seed_epoch, train_epoch, validate, vae_step)

PIX2PIX_KEYS = {"loss/G_gan", "loss/G_l1", "loss/D_real", "loss/D_fake"}
VAE_KEYS = {"loss/VAE_recon_l1", "loss/VAE_kl", "loss/VAE_total"}


def _batch(channels: int = 1, seed: int = 0, b: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    image = torch.rand(b, channels, size, size, generator=g) * 2 - 1
    return {"mask": mask, "image": image}


def _cfg(tmp_path, model: str = "pix2pix", **train):
    return tiny_config("imgs", "masks", str(tmp_path / "run"), model=model, **train)


def _weights(state) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, net in state.nets.items() for k, v in net.state_dict().items()}


def _datasets(pair_dirs, cfg):
    images, masks = pair_dirs
    train, val = split_pairs(find_pairs(images, masks, cfg.data.min_pairs), cfg.data.val_pairs)
    ds = PairDataset(train, cfg.data.image_size, augment=True, repeats=cfg.data.repeats, seed=cfg.train.seed)
    val_ds = PairDataset(val, cfg.data.image_size, augment=False, repeats=1)
    return ds, val_ds


def _fit(cfg, ds, epochs: int):
    """The same loop as api/train: set_epoch, seed_epoch, train_epoch; returns (state, history)."""
    state = build_state(cfg, ds.channels)
    history = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        seed_epoch(cfg, epoch, rank=0)
        loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.train.seed * 100 + epoch))
        history.append(train_epoch(state, loader))
        state.epoch += 1
    return state, history


@pytest.mark.parametrize("model,step,keys", [("pix2pix", pix2pix_step, PIX2PIX_KEYS), ("vae", vae_step, VAE_KEYS)])
@pytest.mark.parametrize("channels", [1, 3])
def test_step_returns_documented_finite_metrics_and_updates_weights(tmp_path, model, step, keys, channels) -> None:
    state = build_state(_cfg(tmp_path, model), channels)
    before = _weights(state)
    out = step(state, [_batch(channels)])
    assert set(out) == keys
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values()), out
    after = _weights(state)
    assert all(n.split(".")[0] in state.nets for n in after)
    for name in state.nets:  # every network took an optimiser step
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
    for opt in state.optimizers.values():
        assert all(float(s["step"]) == 1.0 for s in opt.state.values())


def test_pix2pix_step_metric_ranges(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    cfg.pix2pix.gan_mode = "vanilla"
    state = build_state(cfg, 1)
    out = pix2pix_step(state, [_batch()])
    # Freshly initialised (N(0, 0.02) weights): D logits ~0, so the vanilla BCE terms are ~log 2; the
    # generator's tanh output ~0, so L1 against U(-1, 1) targets is ~0.5.
    for k in ("loss/G_gan", "loss/D_real", "loss/D_fake"):
        assert out[k] == pytest.approx(math.log(2), abs=0.1), k
    assert out["loss/G_l1"] == pytest.approx(0.5, abs=0.1)


def test_vae_step_metric_relations(tmp_path) -> None:
    cfg = _cfg(tmp_path, "vae")
    cfg.vae.beta = 1.0
    state = build_state(cfg, 1)
    out = vae_step(state, [_batch()])
    assert out["loss/VAE_kl"] >= 0.0
    assert 0.0 <= out["loss/VAE_recon_l1"] <= 2.0
    # total = summed-per-image recon (per-pixel mean * H * W * C) + beta * KL
    assert out["loss/VAE_total"] == pytest.approx(out["loss/VAE_recon_l1"] * 32 * 32 + out["loss/VAE_kl"],
                                                  rel=1e-4)


@pytest.mark.parametrize("model,step,keys", [("pix2pix", pix2pix_step, PIX2PIX_KEYS), ("vae", vae_step, VAE_KEYS)])
def test_two_micro_batches(tmp_path, model, step, keys) -> None:
    state = build_state(_cfg(tmp_path, model, grad_accum=2), 1)
    out = step(state, [_batch(seed=0), _batch(seed=1)])
    assert set(out) == keys and all(math.isfinite(v) for v in out.values())
    for opt in state.optimizers.values():  # one optimiser step for the two micro-batches
        assert all(float(s["step"]) == 1.0 for s in opt.state.values())


def test_accumulated_gradient_equals_big_batch(tmp_path) -> None:
    """Two micro-batches of 1 give the gradient of one batch of 2 (per-image losses, no dropout/aug)."""
    cfg = _cfg(tmp_path, "pix2pix")
    cfg.pix2pix.diffaug, cfg.pix2pix.dropout = "", False
    b = _batch(b=2)
    halves = [{k: v[i:i + 1] for k, v in b.items()} for i in range(2)]
    grads = []
    for batches in ([b], halves):
        state = build_state(cfg, 1)
        for opt in state.optimizers.values():  # keep the gradients: stop the update, inspect .grad
            opt.step = lambda *a, **k: None
        pix2pix_step(state, batches)
        grads.append(torch.cat([p.grad.flatten() for p in state.nets["generator"].parameters()]))
    # Instance norm and per-patch means make each image's loss independent of the others.
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_bf16_step_is_finite_on_cpu(tmp_path) -> None:
    for model, step in (("pix2pix", pix2pix_step), ("vae", vae_step)):
        state = build_state(_cfg(tmp_path, model, precision="bf16"), 1)
        out = step(state, [_batch()])
        assert all(math.isfinite(v) for v in out.values()), (model, out)
        assert all(p.dtype == torch.float32 for net in state.nets.values() for p in net.parameters())


@pytest.mark.parametrize("gan_mode", ["vanilla", "lsgan", "hinge"])
def test_each_gan_mode_gives_finite_losses(tmp_path, gan_mode) -> None:
    cfg = _cfg(tmp_path)
    cfg.pix2pix.gan_mode = gan_mode
    state = build_state(cfg, 1)
    outs = [pix2pix_step(state, [_batch(seed=s)]) for s in range(2)]
    for out in outs:
        assert set(out) == PIX2PIX_KEYS and all(math.isfinite(v) for v in out.values()), out
    # At init, D logits are small (|logit| well below 1): vanilla terms ~log 2; lsgan ~1 (real) and
    # ~0 (fake); hinge ~1 each for D and ~0 for G. D terms are never negative in any mode.
    first = outs[0]
    expected = {"vanilla": (math.log(2), math.log(2), math.log(2)), "lsgan": (1.0, 0.0, 1.0),
                "hinge": (1.0, 1.0, 0.0)}[gan_mode]
    got = (first["loss/D_real"], first["loss/D_fake"], first["loss/G_gan"])
    assert got == pytest.approx(expected, abs=0.5)
    assert all(o["loss/D_real"] >= 0 and o["loss/D_fake"] >= 0 for o in outs)


def test_grad_clip_step_is_finite(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, grad_clip=0.1), 1)
    out = pix2pix_step(state, [_batch()])
    assert all(math.isfinite(v) for v in out.values())


def test_lr_factor_schedule() -> None:
    # epochs=10, decay_start=0.5: constant for epochs 0..4, then 1 - (e - 5 + 1) / 6.
    got = [lr_factor(e, 10, 0.5) for e in range(11)]
    expected = [1.0] * 5 + [5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]
    assert got == pytest.approx(expected, abs=1e-12)
    assert [lr_factor(e, 10, 1.0) for e in range(10)] == [1.0] * 10  # no decay
    assert lr_factor(0, 4, 0.0) == pytest.approx(0.8)  # decay from the start: 1 - 1/5
    assert lr_factor(3, 4, 0.0) == pytest.approx(0.2)


@pytest.mark.parametrize("model", ["pix2pix", "vae"])
def test_train_epoch_sets_lr_from_the_epoch(tmp_path, model) -> None:
    cfg = _cfg(tmp_path, model, epochs=4, decay_start=0.5, lr=1e-3, lr_d=4e-4)
    state = build_state(cfg, 1)
    batches = [_batch(seed=s) for s in range(2)]
    lrs = []
    for epoch in range(4):
        state.epoch = epoch
        lrs.append(train_epoch(state, batches)["lr"])
        for name, opt in state.optimizers.items():
            base = 4e-4 if name == "discriminator" else 1e-3
            assert opt.param_groups[0]["lr"] == pytest.approx(base * lr_factor(epoch, 4, 0.5)), name
    # start = 2: epochs 0, 1 at lr; epoch 2 at 1 - 1/3; epoch 3 at 1 - 2/3
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    # The schedule is a function of (epoch, epochs): a run resumed with more epochs picks it up.
    cfg.train.epochs = 8
    state.epoch = 4
    assert train_epoch(state, batches)["lr"] == pytest.approx(1e-3 * lr_factor(4, 8, 0.5)) == pytest.approx(
        1e-3 * 4 / 5)


def test_lr_d_overrides_discriminator_lr(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, lr=1e-3, lr_d=4e-4), 1)
    assert state.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert state.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(4e-4)


def test_kl_weight_warmup(tmp_path) -> None:
    cfg = _cfg(tmp_path, "vae")
    cfg.vae.beta, cfg.vae.kl_warmup_epochs = 2.0, 4
    assert [kl_weight(cfg, e) for e in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    cfg.vae.kl_warmup_epochs = 0
    assert [kl_weight(cfg, e) for e in range(3)] == [2.0, 2.0, 2.0]
    cfg.vae.beta = 0.0
    assert kl_weight(cfg, 0) == 0.0


def test_vae_step_uses_the_epochs_kl_weight(tmp_path) -> None:
    cfg = _cfg(tmp_path, "vae")
    cfg.vae.beta, cfg.vae.kl_warmup_epochs = 1.0, 4
    state = build_state(cfg, 1)
    torch.manual_seed(0)
    out = vae_step(state, [_batch()])  # epoch 0: beta 0.25
    assert out["loss/VAE_total"] == pytest.approx(out["loss/VAE_recon_l1"] * 32 * 32 + 0.25 * out["loss/VAE_kl"],
                                                  rel=1e-4)


def test_train_epoch_refuses_fewer_batches_than_grad_accum(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, grad_accum=3), 1)
    with pytest.raises(RuntimeError, match="grad_accum"):
        train_epoch(state, [_batch(seed=0), _batch(seed=1)])


def test_train_epoch_groups_micro_batches(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, grad_accum=2, epochs=2, decay_start=0.5), 1)
    batches = [dict(_batch(seed=s), index=torch.zeros(2, dtype=torch.long)) for s in range(5)]
    m = train_epoch(state, batches)  # 5 batches -> 2 steps of 2; the 5th is dropped
    assert m["steps"] == 2.0 and m["images"] == 8.0
    assert PIX2PIX_KEYS <= set(m) and m["time_s"] >= 0
    assert m["lr"] == pytest.approx(1e-3)  # the learning rate this epoch ran at
    assert state.epoch == 0  # the caller advances the epoch
    state.epoch = 1  # epoch 1 of 2 with decay_start 0.5 runs at half the learning rate
    assert train_epoch(state, batches)["lr"] == pytest.approx(1e-3 * 0.5)
    assert all(float(s["step"]) == 4.0 for s in state.optimizers["generator"].state.values())
    line = format_metrics(0, 2, m)
    assert line.startswith("epoch 1/2 @32px  ") and "G_l1" in line and "steps" not in line


def test_training_reduces_l1(tmp_path, pair_dirs) -> None:
    cfg = tiny_config(*pair_dirs, str(tmp_path / "run"), epochs=6)
    ds, _ = _datasets(pair_dirs, cfg)
    assert len(ds) == 12
    _, history = _fit(cfg, ds, 6)
    l1 = [h["loss/G_l1"] for h in history]
    assert all(h["steps"] == 6.0 for h in history)
    assert l1[-1] < 0.7 * l1[0], l1
    assert min(l1[3:]) < min(l1[:3]), l1


def test_vae_training_reduces_reconstruction(tmp_path, pair_dirs) -> None:
    cfg = tiny_config(*pair_dirs, str(tmp_path / "run"), model="vae", epochs=6)
    ds, _ = _datasets(pair_dirs, cfg)
    _, history = _fit(cfg, ds, 6)
    recon = [h["loss/VAE_recon_l1"] for h in history]
    assert recon[-1] < 0.8 * recon[0], recon


def test_same_seed_same_weights_other_seed_differs(tmp_path, pair_dirs) -> None:
    def run(seed: int):
        cfg = tiny_config(*pair_dirs, str(tmp_path / "run"), epochs=2, seed=seed)
        ds, _ = _datasets(pair_dirs, cfg)
        state, history = _fit(cfg, ds, 2)
        return _weights(state), history

    w0, h0 = run(0)
    w0b, h0b = run(0)
    w1, _ = run(1)
    assert w0.keys() == w0b.keys() == w1.keys()
    assert all(torch.equal(w0[k], w0b[k]) for k in w0)
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in h0]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"} for h in h0b]
    differing = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert len(differing) > len(w0) // 2


def test_validate_returns_ssim_and_l1(tmp_path, pair_dirs) -> None:
    cfg = tiny_config(*pair_dirs, str(tmp_path / "run"))
    _, val_ds = _datasets(pair_dirs, cfg)
    val_batch = next(iter(DataLoader(val_ds, batch_size=len(val_ds))))
    assert val_batch["image"].shape == (1, 1, 32, 32)
    for model in ("pix2pix", "vae"):
        cfg.train.model = model
        state = build_state(cfg, 1)
        scores = validate(state, val_batch)
        assert set(scores) == {"val/ssim", "val/l1"}
        assert -1.0 <= scores["val/ssim"] <= 1.0
        assert 0.0 <= scores["val/l1"] <= 2.0
        assert validate(state, val_batch) == scores  # eval mode, prior mean: deterministic
        rendering = "generator" if model == "pix2pix" else "vae"
        assert not state.nets[rendering].training
    assert validate(state, None) == {}


def test_validate_perfect_match_scores_one(tmp_path) -> None:
    """A 'generator' that returns the real image scores SSIM 1 and L1 0."""
    cfg = _cfg(tmp_path)
    state = build_state(cfg, 1)
    real = _batch()["image"].clamp(-1, 1)
    real = ((real + 1) * 127.5).round() / 127.5 - 1  # exactly representable as uint8

    class Echo(torch.nn.Module):
        def forward(self, mask):
            return real

    state.nets["generator"] = Echo()
    scores = validate(state, {"mask": _batch()["mask"], "image": real})
    assert scores["val/ssim"] == pytest.approx(1.0)
    assert scores["val/l1"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_render_pix2pix_shapes(tmp_path, channels) -> None:
    state = build_state(_cfg(tmp_path), channels)
    masks = _batch(b=2)["mask"]
    out = render(state.nets, masks, num_samples=3)
    assert out.shape == (2, 3, channels, 32, 32)
    assert out.abs().max() <= 1.0
    assert torch.equal(out[:, 0], out[:, 2])  # eval mode: deterministic, samples repeat
    assert not torch.equal(out[0, 0], out[1, 0])  # different masks differ
    assert not state.nets["generator"].training


@pytest.mark.parametrize("channels", [1, 3])
def test_render_vae_shapes_and_sample_diversity(tmp_path, channels) -> None:
    state = build_state(_cfg(tmp_path, "vae"), channels)
    masks = _batch(b=2)["mask"]
    out = render(state.nets, masks, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, channels, 32, 32)
    assert out.abs().max() <= 1.0
    for b in range(2):  # the samples for one mask differ
        assert (out[b, 0] - out[b, 1]).abs().max() > 1e-4
        assert (out[b, 1] - out[b, 2]).abs().max() > 1e-4
    again = render(state.nets, masks, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # same generator seed, same samples
    mean = render(state.nets, masks, prior_mean=True)
    assert mean.shape == (2, 1, channels, 32, 32)
    assert torch.equal(mean, render(state.nets, masks, num_samples=5, prior_mean=True))


@pytest.mark.parametrize("model, step", [("pix2pix", pix2pix_step), ("vae", vae_step)])
def test_grad_checkpoint_config_gives_the_same_step(tmp_path, model, step) -> None:
    """train.grad_checkpoint changes memory, not results: one full step gives the same weights."""
    results = []
    for flag in (False, True):
        cfg = _cfg(tmp_path, model, grad_checkpoint=flag)
        state = build_state(cfg, 1)
        assert all(getattr(n, "gradient_checkpointing", flag) == flag for n in state.nets.values())
        torch.manual_seed(1)
        step(state, [_batch()])
        results.append(_weights(state))
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-5, atol=1e-6, msg=k)


def test_attention_unet_trains(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    cfg.pix2pix.generator = "attention_unet"
    state = build_state(cfg, 1)
    metrics = [pix2pix_step(state, [_batch(seed=0)]) for _ in range(5)]
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    assert metrics[-1]["loss/G_l1"] < metrics[0]["loss/G_l1"]
