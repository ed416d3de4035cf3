"""Mask variations: binary outputs, determinism by seed, and image/mask alignment."""
from __future__ import annotations

from synthgen.config import Config, ConfigError

import json

import numpy as np
import pytest

from synthgen.quality import mask_iou
from synthgen.variations import (KINDS, VariationConfig, add_input_noise, make_variation,
                                 variation_plan)

RANDOM_KINDS = ("elastic", "affine", "flip", "crop", "morph")


def blob_mask(h: int = 64, w: int = 64) -> np.ndarray:
    """Two discs of different size off-centre: no flip or rotation maps it onto itself."""
    yy, xx = np.mgrid[0:h, 0:w]
    m = ((yy - 0.4 * h) ** 2 + (xx - 0.3 * w) ** 2) < (0.2 * min(h, w)) ** 2
    m |= ((yy - 0.75 * h) ** 2 + (xx - 0.7 * w) ** 2) < (0.1 * min(h, w)) ** 2
    return m.astype(np.uint8)


def gradient_image(h: int = 64, w: int = 64) -> np.ndarray:
    """A non-symmetric RGB image: each channel a different ramp."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 3, xx * 2, (yy * xx) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_every_kind_binary_same_shape(kind, shape):
    mask = blob_mask(*shape)
    image = gradient_image(*shape)
    var, out = make_variation(mask, kind, seed=5, image=image)
    for m in (var.mask, var.reference_mask):
        assert m.dtype == np.uint8 and m.shape == shape
        assert set(np.unique(m)) <= {0, 1}
    assert out.shape == image.shape and out.dtype == np.uint8
    assert var.kind == kind and var.seed == 5
    json.dumps(var.params)  # auditable: must serialise
    assert (var.noise_sigma > 0) == (kind == "noise")


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_output(kind):
    mask, image = blob_mask(), gradient_image()
    a, ia = make_variation(mask, kind, seed=11, image=image)
    b, ib = make_variation(mask, kind, seed=11, image=image)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.reference_mask, b.reference_mask)
    assert np.array_equal(ia, ib) and a.params == b.params


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_different_seeds_differ(kind):
    mask = blob_mask()
    results = [make_variation(mask, kind, seed=s)[0] for s in range(6)]
    # A few seeds may coincide on discrete draws (flip, morph); six cannot all agree.
    assert len({json.dumps(v.params, sort_keys=True) for v in results}) > 1
    assert len({v.mask.tobytes() for v in results}) > 1


def test_noise_keeps_label_and_noise_std():
    mask = blob_mask(128, 128)
    var, out = make_variation(mask, "noise", seed=3, cfg=VariationConfig(noise_sigma=0.25),
                              image=gradient_image(128, 128))
    assert np.array_equal(var.mask, mask) and np.array_equal(var.reference_mask, mask)
    assert np.array_equal(out, gradient_image(128, 128))
    assert var.noise_sigma == 0.25
    noisy = add_input_noise(mask, var.noise_sigma, var.seed)
    assert noisy.dtype == np.float32 and noisy.shape == mask.shape
    assert np.std(noisy - mask) == pytest.approx(0.25, rel=0.05)
    assert abs(float(np.mean(noisy - mask))) < 0.01
    assert np.array_equal(noisy, add_input_noise(mask, 0.25, var.seed))


def test_morph_changes_area_in_drawn_direction():
    mask = blob_mask()
    ops = set()
    for seed in range(12):
        var, _ = make_variation(mask, "morph", seed, cfg=VariationConfig(morph_max_px=2))
        op, radius = var.params["operation"], var.params["radius_px"]
        ops.add(op)
        assert 1 <= radius <= 2
        if op == "dilate":
            assert var.mask.sum() > mask.sum() and np.all(var.mask >= mask)
        else:
            assert var.mask.sum() < mask.sum() and np.all(var.mask <= mask)
        assert np.array_equal(var.reference_mask, mask)
    assert ops == {"dilate", "erode"}


def _dihedral_variants(a: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(a, k) for k in range(4)] + [np.rot90(a, k)[:, ::-1] for k in range(4)]


@pytest.mark.parametrize("seed", range(6))
def test_flip_transforms_mask_and_image_together(seed):
    mask, image = blob_mask(), gradient_image()
    var, out = make_variation(mask, "flip", seed, image=image)
    assert np.array_equal(var.mask, var.reference_mask)
    assert mask_iou(var.mask, var.reference_mask) == 1.0
    # Recompute the recorded transform by hand and check both outputs went through it.
    k, lr = var.params["rot90"], var.params["flip_lr"]
    expect = lambda a: np.rot90(a, k)[:, ::-1] if lr else np.rot90(a, k)  # noqa: E731
    assert (k, lr) != (0, False)  # identity excluded
    assert np.array_equal(var.mask, expect(mask))
    assert np.array_equal(out, expect(image))
    assert not np.array_equal(out, image)


def test_flip_non_square_keeps_shape():
    mask, image = blob_mask(32, 48), gradient_image(32, 48)
    for seed in range(10):
        var, out = make_variation(mask, "flip", seed, image=image)
        assert var.params["rot90"] in (0, 2) and var.mask.shape == (32, 48) and out.shape == image.shape


def test_elastic_image_follows_mask():
    mask = blob_mask(128, 128)
    image = (mask * 200).astype(np.uint8)[..., None]
    cfg = VariationConfig(elastic_alpha=30.0, elastic_sigma=8.0)
    var, out = make_variation(mask, "elastic", seed=7, cfg=cfg, image=image)
    assert mask_iou(var.mask, mask) < 0.98  # it really deforms
    assert np.array_equal(var.reference_mask, mask)
    assert var.params["max_displacement_px"] > 1.0
    assert mask_iou((out[..., 0] > 100).astype(np.uint8), var.mask) > 0.8


def test_affine_and_crop_image_follow_mask():
    mask = blob_mask(96, 96)
    image = (mask * 200).astype(np.uint8)
    for kind in ("affine", "crop"):
        var, out = make_variation(mask, kind, seed=2, image=image)
        assert mask_iou((out > 100).astype(np.uint8), var.mask) > 0.9
    crop, _ = make_variation(mask, "crop", seed=2)
    assert np.array_equal(crop.mask, crop.reference_mask)
    assert 0.7 <= crop.params["fraction"] <= 1.0


def test_variation_plan_cycles_and_seeds():
    plan = variation_plan(7, ["noise", "elastic", "morph"], base_seed=0, source_index=4)
    assert [k for k, _ in plan] == ["noise", "elastic", "morph"] * 2 + ["noise"]
    seeds = [s for _, s in plan]
    assert len(set(seeds)) == 7 and all(isinstance(s, int) for s in seeds)
    assert plan == variation_plan(7, ["noise", "elastic", "morph"], base_seed=0, source_index=4)
    other_source = {s for _, s in variation_plan(7, ["noise"], base_seed=0, source_index=5)}
    other_base = {s for _, s in variation_plan(7, ["noise"], base_seed=1, source_index=4)}
    assert not other_source & set(seeds) and not other_base & set(seeds)
    # Stable across processes and numpy versions: SeedSequence, not hash().
    assert seeds[0] == int(np.random.SeedSequence([0, 4, 0]).generate_state(1)[0])
    assert variation_plan(0, ["noise"], 0, 0) == []


def test_bad_inputs_raise():
    mask = blob_mask()
    with pytest.raises(ValueError, match="unknown variation kind 'swirl'"):
        make_variation(mask, "swirl", 0)
    with pytest.raises(ValueError, match="swirl"):
        variation_plan(3, ["noise", "swirl"], 0, 0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        make_variation(mask * 255, "flip", 0)
    with pytest.raises(ValueError, match="does not match"):
        make_variation(mask, "flip", 0, image=gradient_image(32, 32))
    with pytest.raises(ConfigError, match="crop_min"):
        Config.from_yaml(None, {"variations.crop_min": 0.0})
