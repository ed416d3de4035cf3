"""Score calibration: the real image of a mask must land near the top of each score's range.

On gray and RGB data, thick structures (cells, mitochondria) and thin ones (1-3 px curves, ISBI and
ssTEM membranes), the real image is scored against its own mask next to bad candidates (see
calibration_data.bad_candidates): a flat image painted from the mask, another mask's real image, pure
noise, a heavily blurred image and a shifted image. Which candidates a score must beat depends on
what it measures: the painted mask is the ideal label rendering, so `edges` may rank it first; a
blurred structure wider than the blur keeps its label, so only on 1-3 px structures must `edges`
drop with blur.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration_data import DATA_KINDS, THIN, available, bad_candidates
from synthgen import quality_torch as QT
from synthgen.quality import DEFAULT_WEIGHTS, assess_quality, edge_agreement

KINDS = [pytest.param(k, marks=pytest.mark.skipif(not available(k), reason="ssTEM data not on this machine"))
         for k in DATA_KINDS]
UNRELATED = ("other", "noise", "shift")  # show nothing at the mask's boundaries


@pytest.fixture(scope="module")
def pairs():
    return {k: DATA_KINDS[k]() for k in DATA_KINDS if available(k)}


@pytest.mark.parametrize("kind", KINDS)
def test_edges_puts_the_real_image_near_the_top(pairs, kind):
    data = pairs[kind]
    real = np.array([edge_agreement(image, mask) for image, mask in data])
    # Thin and low-contrast structures included: the old Canny score gave thin RGB lines 0.0.
    assert real.min() > 0.5, real
    for i, (image, mask) in enumerate(data):
        bad = {name: edge_agreement(x, mask) for name, x in bad_candidates(data, i).items()}
        for name in UNRELATED + (("blur",) if kind in THIN else ()):
            assert real[i] > bad[name] + 0.2, (i, name, real[i], bad)
        assert bad["flat"] >= real[i] - 1e-9  # the painted label is the score's ideal
    # Above the 95th percentile of all unrelated images scored against these masks.
    unrelated = [edge_agreement(bad_candidates(data, i, seed=s)[name], mask)
                 for i, (_, mask) in enumerate(data) for s in (1, 2) for name in UNRELATED]
    assert real.min() > np.quantile(unrelated, 0.95)


def test_edges_is_unchanged_by_brightness_and_contrast(pairs):
    image, mask = pairs["thin_rgb"][0]
    faint = (image.astype(float) * 0.25 + 100).round().astype(np.uint8)  # a quarter of the contrast
    bright = np.clip(image.astype(int) + 60, 0, 255).astype(np.uint8)
    assert edge_agreement(bright, mask) == pytest.approx(edge_agreement(image, mask), abs=1e-6)
    assert edge_agreement(faint, mask) == pytest.approx(edge_agreement(image, mask), abs=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_overall_quality_ranks_the_real_image_first(pairs, kind):
    """Default weights; each candidate is scored as generate does: against the real image of its
    mask (ssim), its own mask (iou 1) and the other candidates of the same mask (diversity)."""
    data = pairs[kind]
    for i, (image, mask) in enumerate(data):
        group = [image] + list(bad_candidates(data, i).values())
        overall = [assess_quality(x, mask, image, group[:j] + group[j + 1:], DEFAULT_WEIGHTS,
                                  source_mask=mask)["overall_quality"] for j, x in enumerate(group)]
        assert overall[0] > max(overall[1:]), (i, overall)
        assert overall[0] > 0.75


@pytest.mark.parametrize("kind", ["thin_rgb", "isbi_membranes"])
def test_torch_scores_agree_on_calibration_data(pairs, kind):
    data = pairs[kind][:3]
    images = [x for i in range(len(data)) for x in [data[i][0], *bad_candidates(data, i).values()]]
    masks = [data[i][1] for i in range(len(data)) for _ in range(6)]
    got = QT.edge_agreement_batch(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)))
    np.testing.assert_allclose(got.numpy(), [edge_agreement(x, m) for x, m in zip(images, masks)], atol=1e-12)
