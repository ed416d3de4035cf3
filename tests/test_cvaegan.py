"""The cVAE-GAN (vae.lambda_gan / vae.lambda_fm): networks, the step's losses, checkpoints, config (tiny, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from synthgen.api import SyntheticDataGenerator
from synthgen.checkpoint import CheckpointError, load_checkpoint, restore_state, save_checkpoint
from synthgen.config import Config, ConfigError
from synthgen.progressive import Stage
from synthgen.search_space import SearchError, parse_space
from synthgen.steps import build_state, render, render_seeded, vae_step

PLAIN_KEYS = {"loss/VAE_recon_l1", "loss/VAE_kl", "loss/VAE_total"}
D_KEYS = {"loss/D_real", "loss/D_fake"}


def _cfg(tmp_path, lambda_gan: float | None = None, lambda_fm: float | None = None, **train) -> Config:
    cfg = tiny_config("imgs", "masks", str(tmp_path / "run"), model="vae", **train)
    if lambda_gan is not None:
        cfg.vae.lambda_gan = lambda_gan
    if lambda_fm is not None:
        cfg.vae.lambda_fm = lambda_fm
    return cfg


def _batch(seed: int = 0, b: int = 2, size: int = 32, channels: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    # Image a function of the mask plus noise: something D can learn to tell from a blurred fake.
    image = (mask * 1.2 - 0.6).expand(-1, channels, -1, -1) + 0.3 * torch.randn(b, channels, size, size, generator=g)
    return {"mask": mask, "image": image.clamp(-1, 1)}


def _steps(state, n: int, micro: int = 1) -> list[dict[str, float]]:
    torch.manual_seed(1)
    return [vae_step(state, [_batch(seed=i * micro + j) for j in range(micro)]) for i in range(n)]


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("explicit_zero", [False, True])
def test_default_is_the_plain_vae_with_todays_loss(tmp_path, explicit_zero) -> None:
    cfg = _cfg(tmp_path, 0.0, 0.0) if explicit_zero else _cfg(tmp_path)
    state, reference = build_state(cfg, 1), build_state(cfg, 1)
    assert set(state.nets) == set(state.optimizers) == {"vae"}
    batch = _batch()
    torch.manual_seed(7)
    out = vae_step(state, [batch])
    assert set(out) == PLAIN_KEYS

    # Today's loss written out by hand: L1 summed per image + beta * KL, one Adam step, same draws.
    torch.manual_seed(7)
    vae, opt = reference.nets["vae"], reference.optimizers["vae"]
    opt.zero_grad()
    recon, mu, logvar = vae(batch["image"], batch["mask"])
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean()
    loss = (recon - batch["image"]).abs().sum((1, 2, 3)).mean() + cfg.vae.beta * kl
    loss.backward()
    opt.step()
    assert out["loss/VAE_total"] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert out["loss/VAE_kl"] == pytest.approx(float(kl.detach()), rel=1e-6)
    for name, value in _weights(state.nets["vae"]).items():
        torch.testing.assert_close(value, vae.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_cvaegan_adds_a_discriminator_with_the_pix2pix_settings(tmp_path) -> None:
    cfg = _cfg(tmp_path, lambda_gan=0.01)
    cfg.train.lr_d = 1e-4
    state = build_state(cfg, 3)
    assert list(state.nets) == list(state.optimizers) == list(state.scalers) == ["vae", "discriminator"]
    assert state.nets["discriminator"].config["in_channels"] == 4  # cat([mask, RGB image])
    assert state.nets["discriminator"].config["ndf"] == cfg.pix2pix.ndf
    assert state.optimizers["discriminator"].param_groups[0]["lr"] == 1e-4
    assert state.optimizers["vae"].param_groups[0]["lr"] == cfg.train.lr
    assert set(build_state(_cfg(tmp_path, lambda_fm=1.0), 1).nets) == {"vae", "discriminator"}
    # The VAE is built first: its initial weights do not depend on whether a discriminator follows.
    plain = build_state(_cfg(tmp_path), 3).nets["vae"].state_dict()
    for name, value in state.nets["vae"].state_dict().items():
        assert torch.equal(value, plain[name]), name


@pytest.mark.parametrize("lambda_gan, lambda_fm, extra", [
    (0.01, 0.0, {"loss/VAE_gan"}), (0.0, 0.1, {"loss/VAE_fm"}), (0.01, 0.1, {"loss/VAE_gan", "loss/VAE_fm"})])
def test_step_reports_finite_losses_and_the_total_is_the_documented_sum(tmp_path, lambda_gan, lambda_fm, extra) -> None:
    state = build_state(_cfg(tmp_path, lambda_gan, lambda_fm), 1)
    before = {name: _weights(net) for name, net in state.nets.items()}
    for out in _steps(state, 2, micro=2):  # grad_accum 2
        assert set(out) == PLAIN_KEYS | D_KEYS | extra
        assert all(np.isfinite(v) for v in out.values()), out
    for name, net in state.nets.items():
        assert any(not torch.equal(v, before[name][k]) for k, v in net.state_dict().items()), name

    _assert_total_is_the_sum(_steps(state, 1)[0], 32 * 32, state.cfg)


def _assert_total_is_the_sum(out: dict[str, float], pixels: int, cfg: Config) -> None:
    """One micro-batch: total = P * (recon + lambda_gan * gan + lambda_fm * fm) + beta * KL, P the
    full-resolution pixel count (the documented scaling of the adversarial terms)."""
    v = cfg.vae
    expected = pixels * (out["loss/VAE_recon_l1"] + v.lambda_gan * out.get("loss/VAE_gan", 0.0)
                         + v.lambda_fm * out.get("loss/VAE_fm", 0.0)) + v.beta * out["loss/VAE_kl"]
    assert out["loss/VAE_total"] == pytest.approx(expected, rel=1e-4)


def test_the_adversarial_term_changes_the_vae_update(tmp_path) -> None:
    plain, gan = build_state(_cfg(tmp_path), 1), build_state(_cfg(tmp_path, lambda_gan=0.05), 1)
    _steps(plain, 1), _steps(gan, 1)
    a, b = _weights(plain.nets["vae"]), _weights(gan.nets["vae"])
    # The decoder gets the GAN gradient (recon and prior sample); the encoder only through recon.
    assert max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith("stages.")) > 1e-5


def test_discriminator_loss_falls(tmp_path) -> None:
    # Seeded and deterministic on CPU; over 30 steps it falls by ~35% on seeds 0-2 (first vs last 5).
    state = build_state(_cfg(tmp_path, lambda_gan=0.01), 1)
    state.cfg.pix2pix.diffaug = ""
    d_loss = [h["loss/D_real"] + h["loss/D_fake"] for h in _steps(state, 30)]
    assert np.mean(d_loss[-5:]) < 0.8 * np.mean(d_loss[:5]), d_loss


def test_progressive_stages_scale_the_terms_like_the_reconstruction(tmp_path) -> None:
    cfg = _cfg(tmp_path, lambda_gan=0.01, lambda_fm=0.1)
    cfg.data.image_size = 64
    state = build_state(cfg, 1, min_size=32)
    state.stage = Stage(32, full=64)  # a coarse stage: summed terms count 4x its pixels
    torch.manual_seed(1)
    out = vae_step(state, [_batch(size=32)])
    _assert_total_is_the_sum(out, 64 * 64, cfg)
    state.stage = Stage(64, 32, 0.5, full=64)  # fading in 64 px over the 32 px output
    torch.manual_seed(1)
    out = vae_step(state, [_batch(size=64)])
    assert all(np.isfinite(v) for v in out.values()) and {"loss/VAE_gan", "loss/VAE_fm"} <= set(out)
    _assert_total_is_the_sum(out, 64 * 64, cfg)


def test_checkpoint_round_trip_renders_the_same_images(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, lambda_gan=0.01, lambda_fm=0.1), 1)
    _steps(state, 2)
    state.epoch = 1
    path = save_checkpoint(str(tmp_path / "ckpt"), state)
    loaded = load_checkpoint(path, training_state=True)
    assert set(loaded.nets) == {"vae", "discriminator"} and loaded.cfg.vae.lambda_gan == 0.01
    masks, seeds = _batch(b=3)["mask"], np.array([3, 1, 4])
    assert np.array_equal(render_seeded(loaded.nets, masks, seeds), render_seeded(state.nets, masks, seeds))
    assert render(loaded.nets, masks, num_samples=2).shape == (3, 2, 1, 32, 32)

    gen = SyntheticDataGenerator.load(path)  # rebuilds the discriminator and its Adam state
    d = gen.state.nets["discriminator"].state_dict()
    assert all(torch.equal(v, d[k]) for k, v in state.nets["discriminator"].state_dict().items())
    assert gen.state.optimizers["discriminator"].state_dict()["state"]

    plain = build_state(_cfg(tmp_path), 1)
    with pytest.raises(CheckpointError, match="vae.lambda_gan"):
        restore_state(plain, loaded)


@pytest.mark.parametrize("key", ["vae.lambda_gan", "vae.lambda_fm"])
def test_negative_or_nan_weights_are_refused(key) -> None:
    for bad in (-0.5, float("nan")):
        with pytest.raises(ConfigError, match=rf"vae.lambda_gan and vae.lambda_fm must be >= 0"):
            Config.from_yaml(None, {key: bad})
    assert Config.from_yaml(None, {key: 0.02}).get(key) == 0.02


def test_the_weights_are_searchable_within_their_valid_range() -> None:
    (param,) = parse_space({"vae.lambda_gan": "uniform(0, 0.05)"}, Config())
    assert param.contains(0.01)
    with pytest.raises(SearchError, match="lambda_gan"):
        parse_space({"vae.lambda_fm": "uniform(-1, 1)", "vae.lambda_gan": "uniform(-1, 1)"}, Config())
