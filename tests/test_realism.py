"""synthgen.realism: texture figures and the classifier two-sample test on real ISBI crops."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthgen.realism import (c2st, compare_texture, format_realism, json_figures, radial_spectrum,
                              realism_report, texture_stats)
from synthgen.segment import load_items

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "synthgen", "sample_data", "isbi2012")


@pytest.fixture(scope="module")
def isbi_tiles():
    """64 px (image HxW uint8, mask) tiles of the 8 sample ISBI slices, grouped by slice."""
    by_slice = []
    for split in ("train", "test"):
        for image, mask in load_items(os.path.join(SAMPLE, split, "images"), os.path.join(SAMPLE, split, "masks"), True):
            by_slice.append([(image[y:y + 64, x:x + 64, 0], mask[y:y + 64, x:x + 64])
                             for y in range(0, 512, 128) for x in range(0, 512, 128)])
    return by_slice


def _split(tiles):
    return [t[0] for t in tiles], [t[1] for t in tiles]


def _blurred(images):
    return [ndimage.gaussian_filter(im.astype(np.float64), 2).round().astype(np.uint8) for im in images]


def _painted(images, masks):
    """Each region painted with its mean: the flat, texture-less images of today's generators, at worst."""
    def mean(pixels):
        return pixels.mean() if pixels.size else 0.0

    return [np.where(m == 1, mean(im[m == 1]), mean(im[m == 0])).astype(np.uint8) for im, m in zip(images, masks)]


def test_identical_sets_give_unit_ratios_and_zero_distances(isbi_tiles):
    images, masks = _split(isbi_tiles[0] + isbi_tiles[1])
    figures = compare_texture(images, masks, images, masks)
    for region in ("fg", "bg"):
        assert figures[f"{region}/std_ratio"] == pytest.approx(1.0)
        assert figures[f"{region}/hf_ratio"] == pytest.approx(1.0)
        assert figures[f"{region}/mean_diff"] == pytest.approx(0.0)
    assert figures["spectrum_distance"] == pytest.approx(0.0)


def test_flat_images_have_far_less_high_frequency_energy(isbi_tiles):
    images, masks = _split(isbi_tiles[0] + isbi_tiles[1])
    flat = compare_texture(images, masks, _painted(images, masks), masks)
    blurred = compare_texture(images, masks, _blurred(images), masks)
    for region in ("fg", "bg"):
        assert flat[f"{region}/hf_ratio"] < 0.02  # only uint8 rounding and the eroded edge remain
        assert flat[f"{region}/std_ratio"] < 0.1
        # Same region means by construction, up to the eroded rim (measured on the eroded interior).
        assert flat[f"{region}/mean_diff"] == pytest.approx(0.0, abs=0.05)
        assert blurred[f"{region}/hf_ratio"] < 0.1
    assert blurred["spectrum_distance"] > 1.0  # high frequencies lose orders of magnitude of power


def test_spectrum_of_noise_is_flat_and_of_blur_falls():
    noise = np.random.default_rng(0).random((64, 64))
    flat = radial_spectrum(noise)
    assert flat.shape == (32,)
    assert np.abs(np.log10(flat[2:] / np.median(flat[2:]))).max() < 0.5
    blurred = radial_spectrum(ndimage.gaussian_filter(noise, 2))
    assert blurred[-1] < 1e-3 * blurred[1]


def test_gray_hw_and_hw1_agree_and_missing_region_is_nan(isbi_tiles):
    images, masks = _split(isbi_tiles[0])
    a = texture_stats(images, masks)
    b = texture_stats([im[:, :, None] for im in images], masks)
    assert {k: v for k, v in a.items() if k != "spectrum"} == {k: v for k, v in b.items() if k != "spectrum"}
    none = texture_stats(images, [np.zeros_like(m) for m in masks])
    assert math.isnan(none["fg/std"]) and not math.isnan(none["bg/std"])


def test_c2st_groups_keep_an_image_on_one_side(isbi_tiles):
    # 16 tiles from each of 4 slices: each half must hold whole slices, so no slice is learned and tested.
    from synthgen.realism.two_sample import _halves

    groups = [s for s in range(4) for _ in range(16)]
    a, b = _halves(len(groups), groups, np.random.default_rng(0))
    assert {groups[i] for i in a}.isdisjoint({groups[i] for i in b})
    assert len(a) + len(b) == 64 and len(a) == 32


def test_c2st_real_vs_real_is_near_chance(isbi_tiles):
    # Interleaved slices: the stack drifts in brightness from slice 0 to 25, and halves cut from its two
    # ends differ for real (the C2ST reaches ~0.7 on slices 0-3 vs 4, 5, 24, 25).
    real, other = _split(sum(isbi_tiles[0::2], [])), _split(sum(isbi_tiles[1::2], []))
    result = c2st(real[0], other[0], seed=0)
    assert 0.35 <= result.accuracy <= 0.65
    assert result.n_test == 512 and 0 < result.std < 0.05


def test_c2st_real_vs_blurred_and_flat_is_near_one(isbi_tiles):
    real, other = _split(sum(isbi_tiles[:4], [])), _split(sum(isbi_tiles[4:], []))
    assert c2st(real[0], _blurred(other[0]), seed=0).accuracy >= 0.9
    assert c2st(real[0], _painted(*other), seed=1).accuracy >= 0.9


def test_c2st_is_repeatable_and_leaves_global_rng_alone(isbi_tiles):
    real, fake = _split(sum(isbi_tiles[:2], []))[0], _blurred(_split(sum(isbi_tiles[2:4], []))[0])
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a = c2st(real, fake, seed=3, steps=40)
    assert torch.rand(1) == expected_draw
    b = c2st(real, fake, seed=3, steps=40)
    assert a == b


def test_realism_report_on_rgb(isbi_tiles):
    images, masks = _split(isbi_tiles[0] + isbi_tiles[1])
    rgb = [np.stack([im, im // 2 + 40, 255 - im], axis=-1) for im in images]
    report = realism_report(rgb, masks, rgb, masks, seed=0, steps=20)
    assert report["fg/hf_ratio"] == pytest.approx(1.0) and report["spectrum_distance"] == pytest.approx(0.0)
    assert 0.0 <= report["c2st_accuracy"] <= 1.0 and report["c2st_n_test"] == 512
    # A gray synthetic set against RGB reals: both compared in luminance, no error.
    gray = realism_report(rgb, masks, images, masks, seed=0, steps=20)
    assert set(gray) == set(report)


def test_summary_and_json_handle_missing_values(isbi_tiles):
    images, masks = _split(isbi_tiles[0])
    report = realism_report(images, masks, _painted(images, masks), masks, two_sample=False)
    report["fg/hf_ratio"] = float("nan")
    line = format_realism(report)
    assert "fg std×" in line and "hf×n/a" in line and "c2st" not in line
    assert json.loads(json.dumps(json_figures(report)))["fg/hf_ratio"] is None


@pytest.mark.parametrize("case, message", [
    ("empty", "empty"), ("count", "masks"), ("shape", "does not match"), ("binary", "only 0 and 1"),
    ("dtype", "uint8"), ("channels", "HxWx3"), ("one_image", "at least 2 images"),
    ("one_group", "at least 2 groups"), ("group_count", "1 group labels for 2 images"),
])
def test_bad_inputs_raise_value_error(case, message):
    im, m = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    images, masks = [im, im], [m, m]
    if case == "empty":
        images, masks = [], []
    elif case == "count":
        masks = [m]
    elif case == "shape":
        masks = [m, np.zeros((16, 32), np.uint8)]
    elif case == "binary":
        masks = [m, m + 255]
    elif case == "dtype":
        images = [im, im.astype(np.float32)]
    elif case == "channels":
        images = [im, np.zeros((32, 32, 2), np.uint8)]
    elif case == "one_image":
        with pytest.raises(ValueError, match=message):
            c2st([im], [im, im])
        return
    elif case in ("one_group", "group_count"):
        with pytest.raises(ValueError, match=message):
            c2st([im, im], [im, im], real_groups=["a", "a"] if case == "one_group" else ["a"])
        return
    with pytest.raises(ValueError, match=message):
        realism_report([im, im], [m, m], images, masks)
