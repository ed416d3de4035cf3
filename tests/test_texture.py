"""Stochastic texture in pix2pix: noise injection, feature matching, random-filter texture loss."""
import numpy as np
import pytest
import torch

from synthgen.config import Config
from synthgen.losses import feature_matching_loss, random_filters, texture_loss
from synthgen.models import PatchDiscriminator, UNetGenerator, build_from_config
from synthgen.steps import build_state, pix2pix_step, render, render_seeded


def _mask(size: int = 32, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()


def test_noise_changes_the_output_for_a_fixed_mask():
    torch.manual_seed(0)
    g = UNetGenerator(1, 1, image_size=32, ngf=4, noise_channels=2).eval()
    mask = _mask()
    n1 = g.draw_noise(2, 32, 32, torch.Generator().manual_seed(1))
    n2 = g.draw_noise(2, 32, 32, torch.Generator().manual_seed(2))
    a, b = g(mask, n1), g(mask, n2)
    assert a.shape == (2, 1, 32, 32)
    assert (a - b).abs().mean() > 1e-3                       # different noise, different image
    assert torch.equal(g(mask, n1), a)                       # same noise, same image
    assert [tuple(n.shape[1:]) for n in n1] == g.noise_shapes(32, 32)
    assert g.noise_shapes(32, 32)[0] == (2, 32, 32) and g.noise_shapes(32, 32)[1] == (2, 1, 1)


def test_generator_without_noise_has_no_noise_inputs():
    g = UNetGenerator(1, 1, image_size=32, ngf=4).eval()
    assert g.noise_shapes(32, 32) == [] and g.draw_noise(2, 32, 32) == []
    assert torch.equal(g(_mask()), g(_mask()))


def test_noise_channels_travel_with_the_config():
    g = UNetGenerator(1, 3, image_size=32, ngf=4, noise_channels=3)
    rebuilt = build_from_config("generator", g.config)
    rebuilt.load_state_dict(g.state_dict())                  # same architecture, same parameter shapes
    assert rebuilt.config["noise_channels"] == 3
    with pytest.raises(ValueError, match="noise_channels"):
        UNetGenerator(1, 1, image_size=32, noise_channels=-1)


def test_render_seeded_depends_on_each_rows_seed_only():
    cfg = Config()
    cfg.data.image_size, cfg.pix2pix.ngf, cfg.pix2pix.ndf, cfg.pix2pix.noise_channels = 32, 4, 4, 2
    nets = build_state(cfg, 1).nets
    mask = _mask(batch=3)
    both = render_seeded(nets, mask, np.array([5, 6, 7]))
    alone = render_seeded(nets, mask[1:2], np.array([6]))
    assert np.array_equal(both[1:2], alone)                  # batching does not change an image
    other = render_seeded(nets, mask, np.array([8, 9, 10]))
    assert np.abs(both.astype(int) - other).mean() > 0.5     # new seeds, new textures
    samples = render(nets, mask, num_samples=2)
    assert samples.shape == (3, 2, 1, 32, 32) and (samples[:, 0] - samples[:, 1]).abs().mean() > 1e-3
    assert torch.equal(render(nets, mask, prior_mean=True), render(nets, mask, prior_mean=True))


def test_feature_matching_is_zero_for_identical_features_and_positive_otherwise():
    torch.manual_seed(0)
    d = PatchDiscriminator(2, ndf=4)
    x = torch.randn(2, 2, 32, 32)
    feats = d.features(x)
    assert len(feats) == 5 and torch.equal(feats[-1], d(x))  # four LeakyReLU outputs + the logits
    with torch.no_grad():
        assert float(feature_matching_loss(feats, d.features(x.clone()))) == 0.0
    fake = x.clone().requires_grad_(True)
    loss = feature_matching_loss(feats, d.features(fake + 0.5))
    assert float(loss) > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        feature_matching_loss(feats, feats[:-1])


def test_texture_loss_sees_texture_per_region():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 16:] = 1
    grainy = torch.randn(1, 1, 32, 32, generator=g) * 0.3
    flat = torch.zeros(1, 1, 32, 32)
    assert float(texture_loss(grainy, grainy.clone(), mask)) == 0.0
    assert float(texture_loss(flat, grainy, mask)) > 0.01
    # The same grain on the other side of the label costs more than on the right side.
    left_grain = grainy * (1 - mask)
    right_grain = grainy * mask
    assert float(texture_loss(right_grain, left_grain, mask)) > float(texture_loss(left_grain, left_grain, mask))
    assert random_filters(1)[0].shape == (16, 1, 3, 3) and torch.equal(random_filters(1)[0], random_filters(1, 0)[0])
    with pytest.raises(ValueError):
        texture_loss(flat, torch.zeros(1, 3, 32, 32), mask)


def test_texture_terms_are_reported_and_the_texture_loss_falls():
    cfg = Config()
    cfg.data.image_size, cfg.pix2pix.ngf, cfg.pix2pix.ndf = 32, 8, 4
    cfg.pix2pix.noise_channels, cfg.pix2pix.lambda_fm, cfg.pix2pix.lambda_texture = 2, 10.0, 10.0
    cfg.pix2pix.lambda_l1, cfg.pix2pix.diffaug, cfg.train.lr = 0.0, "", 2e-3
    state = build_state(cfg, 1)
    g = torch.Generator().manual_seed(1)
    batch = {"mask": _mask(), "image": (torch.randn(2, 1, 32, 32, generator=g) * 0.4).clamp(-1, 1)}
    torch.manual_seed(0)
    losses = [pix2pix_step(state, [batch]) for _ in range(20)]
    assert {"loss/G_fm", "loss/G_texture"} <= set(losses[0])
    first = np.mean([m["loss/G_texture"] for m in losses[:3]])
    last = np.mean([m["loss/G_texture"] for m in losses[-3:]])
    assert last < 0.7 * first


def test_evaluation_generators_take_extra_settings():
    from synthgen.config import ConfigError
    from synthgen.evaluate import _generator_config

    cfg = Config()
    cfg.evaluate.gen_set = "pix2pix.noise_channels=4, pix2pix.lambda_texture=50"
    g = _generator_config(cfg, "pix2pix", 3, ("imgs", "masks"), "out")
    assert g.pix2pix.noise_channels == 4 and g.pix2pix.lambda_texture == 50.0 and g.pix2pix.ngf == cfg.evaluate.gen_ngf
    cfg.evaluate.gen_set = "pix2pix.noise_channels"
    with pytest.raises(ConfigError, match="key=value"):
        _generator_config(cfg, "pix2pix", 3, ("imgs", "masks"), "out")
    cfg.evaluate.gen_set = "pix2pix.no_such_key=1"
    with pytest.raises(ConfigError):
        _generator_config(cfg, "pix2pix", 3, ("imgs", "masks"), "out")
