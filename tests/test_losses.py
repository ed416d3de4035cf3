"""Loss values against hand-computed formulas, and DiffAugment's geometry, determinism and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from synthgen.diffaug import diff_augment
from synthgen.losses import (
    discriminator_loss,
    discriminator_loss_terms,
    generator_adversarial_loss,
    kl_divergence,
    l1_loss,
    vae_reconstruction_loss,
)

REAL = torch.tensor([[2.0, -1.0]])
FAKE = torch.tensor([[0.5, -3.0]])


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_vanilla_matches_bce_formula() -> None:
    # BCE(x, 1) = -log sigmoid(x) = softplus(-x); BCE(x, 0) = softplus(x).
    real = (_softplus(-2.0) + _softplus(1.0)) / 2
    fake = (_softplus(0.5) + _softplus(-3.0)) / 2
    r, f = discriminator_loss_terms(REAL, FAKE, "vanilla")
    assert r.item() == pytest.approx(real, rel=1e-6) and f.item() == pytest.approx(fake, rel=1e-6)
    assert discriminator_loss(REAL, FAKE, "vanilla").item() == pytest.approx(0.5 * (real + fake), rel=1e-6)
    g = (_softplus(-0.5) + _softplus(3.0)) / 2
    assert generator_adversarial_loss(FAKE, "vanilla").item() == pytest.approx(g, rel=1e-6)


def test_lsgan() -> None:
    real = ((2 - 1) ** 2 + (-1 - 1) ** 2) / 2  # 2.5
    fake = (0.5**2 + 3.0**2) / 2  # 4.625
    assert discriminator_loss_terms(REAL, FAKE, "lsgan")[0].item() == pytest.approx(real)
    assert discriminator_loss(REAL, FAKE, "lsgan").item() == pytest.approx(0.5 * (real + fake))
    g = ((0.5 - 1) ** 2 + (-3 - 1) ** 2) / 2  # 8.125
    assert generator_adversarial_loss(FAKE, "lsgan").item() == pytest.approx(g)


def test_hinge() -> None:
    real = (max(0, 1 - 2.0) + max(0, 1 + 1.0)) / 2  # 1.0
    fake = (max(0, 1 + 0.5) + max(0, 1 - 3.0)) / 2  # 0.75
    r, f = discriminator_loss_terms(REAL, FAKE, "hinge")
    assert (r.item(), f.item()) == pytest.approx((real, fake))
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(real + fake)
    assert generator_adversarial_loss(FAKE, "hinge").item() == pytest.approx(1.25)  # -mean(0.5, -3)


def test_unknown_mode_raises() -> None:
    with pytest.raises(ValueError, match="wgan"):
        discriminator_loss(REAL, FAKE, "wgan")
    with pytest.raises(ValueError, match="wgan"):
        generator_adversarial_loss(FAKE, "wgan")


def test_losses_give_gradients() -> None:
    fake = FAKE.clone().requires_grad_()
    for mode in ("vanilla", "lsgan", "hinge"):
        fake.grad = None
        generator_adversarial_loss(fake, mode).backward()
        assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_kl_divergence() -> None:
    zeros = torch.zeros(4, 8)
    assert kl_divergence(zeros, zeros).item() == 0.0
    mu = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    # Per sample 0.5 * sum(mu^2) = 2.5 and 4.5; mean over the batch = 3.5.
    assert kl_divergence(mu, torch.zeros_like(mu)).item() == pytest.approx(3.5)
    # A wider posterior (logvar = log 4): 0.5 * (4 - 1 - log 4) per dim.
    logvar = torch.full((1, 2), math.log(4.0))
    assert kl_divergence(torch.zeros(1, 2), logvar).item() == pytest.approx(2 * 0.5 * (3 - math.log(4.0)))


def test_l1_and_reconstruction() -> None:
    a = torch.randn(2, 3, 4, 4)
    assert l1_loss(a, a).item() == 0.0
    assert l1_loss(torch.zeros(2, 2), torch.ones(2, 2)).item() == pytest.approx(1.0)
    # Summed over the 1*4*4 pixels of each image: 16 * 0.5, mean over 2 images.
    assert vae_reconstruction_loss(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)).item() == pytest.approx(8)


def _pair(b: int = 3, c: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    image = torch.rand(b, c, size, size, generator=g) * 1.6 - 0.8
    return mask, image


def test_diffaug_empty_policy_is_identity() -> None:
    mask, image = _pair()
    m, i = diff_augment(mask, image, "")
    assert m is mask and i is image


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
@pytest.mark.parametrize("channels", [1, 3])
def test_diffaug_shapes_and_seed(policy: str, channels: int) -> None:
    mask, image = _pair(c=channels)
    m1, i1 = diff_augment(mask, image, policy, torch.Generator().manual_seed(5))
    m2, i2 = diff_augment(mask, image, policy, torch.Generator().manual_seed(5))
    m3, i3 = diff_augment(mask, image, policy, torch.Generator().manual_seed(6))
    assert m1.shape == mask.shape and i1.shape == image.shape
    assert torch.equal(m1, m2) and torch.equal(i1, i2)
    assert not torch.equal(i1, i3)


def test_diffaug_color_leaves_mask() -> None:
    mask, image = _pair()
    m, i = diff_augment(mask, image, "color", torch.Generator().manual_seed(0))
    assert torch.equal(m, mask) and not torch.allclose(i, image)


def test_diffaug_translation_same_shift_for_mask_and_image() -> None:
    # The image is an exact function of the mask; a shared shift keeps that relation, zero padding included.
    mask, _ = _pair(b=8, c=1)
    image = torch.cat([mask * 0.5, -mask, mask * 0.25], dim=1)
    m, i = diff_augment(mask, image, "translation", torch.Generator().manual_seed(1))
    assert not torch.equal(m, mask)  # some sample moved
    assert torch.equal(i, torch.cat([m * 0.5, -m, m * 0.25], dim=1))
    for k in range(8):  # an integer shift of at most 1/8 of the size: some shift reproduces the result
        found = any(
            torch.equal(m[k, 0, max(dy, 0): 32 + min(dy, 0), max(dx, 0): 32 + min(dx, 0)],
                        mask[k, 0, max(-dy, 0): 32 + min(-dy, 0), max(-dx, 0): 32 + min(-dx, 0)])
            for dy in range(-4, 5) for dx in range(-4, 5)
        )
        assert found


def test_diffaug_cutout_same_square_for_mask_and_image() -> None:
    mask = torch.ones(4, 1, 32, 32)
    image = torch.full((4, 3, 32, 32), 0.7)
    m, i = diff_augment(mask, image, "cutout", torch.Generator().manual_seed(2))
    zeros_m = m[:, 0] == 0
    for c in range(3):
        assert torch.equal(i[:, c] == 0, zeros_m)
    for k in range(4):  # a (possibly border-clipped) square of at most half the size
        rows = zeros_m[k].any(dim=1).nonzero().flatten()
        cols = zeros_m[k].any(dim=0).nonzero().flatten()
        assert 0 < len(rows) <= 16 and 0 < len(cols) <= 16
        assert zeros_m[k].sum() == len(rows) * len(cols)


def test_diffaug_gradients_flow_to_image() -> None:
    mask, image = _pair()
    image.requires_grad_()
    _, out = diff_augment(mask, image, "color,translation,cutout", torch.Generator().manual_seed(0))
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_diffaug_unknown_policy_raises() -> None:
    mask, image = _pair()
    with pytest.raises(ValueError, match="rotate"):
        diff_augment(mask, image, "color,rotate")
