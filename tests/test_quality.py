"""Quality metrics: hand-computed cases for each metric, the weighting and the weight parser."""
from __future__ import annotations

import numpy as np
import pytest

from synthgen.quality import (DEFAULT_WEIGHTS, assess_quality, diversity_scores, edge_agreement,
                              histogram_distance, mask_iou, overall_score, parse_weights,
                              rejection_reason, ssim)


def disc_mask(size: int = 64, cy: int = 30, cx: int = 28, r: int = 14) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2).astype(np.uint8)


def test_ssim_identical_is_one():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, 255 - img) < 0.5


def test_mask_iou_cases():
    a = np.zeros((4, 4), np.uint8)
    a[:, :2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[:, 2:] = 1
    assert mask_iou(a, b) == 0.0  # disjoint
    assert mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty
    # a covers columns 0-1, c covers 1-2: intersection 4 px, union 12 px.
    c = np.zeros((4, 4), np.uint8)
    c[:, 1:3] = 1
    assert mask_iou(a, c) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((3, 4)))


def test_edge_agreement_cases():
    mask = disc_mask()
    drawn = (mask * 200).astype(np.uint8)
    assert edge_agreement(drawn, mask) > 0.95
    assert edge_agreement(drawn[..., None], mask) > 0.95  # HxWx1
    assert edge_agreement(np.repeat(drawn[..., None], 3, axis=2), mask) > 0.95  # RGB
    flat = np.full((64, 64), 90, np.uint8)
    assert edge_agreement(flat, mask) == 0.0  # boundary but no contrast across it
    assert edge_agreement(255 - drawn, mask) > 0.95  # either polarity
    assert edge_agreement(drawn // 20 + 100, mask) == edge_agreement(drawn, mask)  # 10 levels of contrast
    # No boundary (empty or full mask): nothing to contradict, whatever the image shows.
    for empty_or_full in (np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8)):
        assert edge_agreement(flat, empty_or_full) == 1.0 and edge_agreement(drawn, empty_or_full) == 1.0
    # A disc far from the mask's disc leaves both bands flat.
    assert edge_agreement((disc_mask(cy=12, cx=50, r=8) * 200).astype(np.uint8), mask) == 0.0
    # A 1 px line 8 gray levels darker than its noisy background still scores high.
    line = np.zeros((64, 64), np.uint8)
    line[:, 30] = 1
    rng = np.random.default_rng(3)
    faint = np.clip(120 - 8.0 * line + rng.normal(0, 2, line.shape), 0, 255).astype(np.uint8)
    assert edge_agreement(faint, line) > 0.9
    with pytest.raises(ValueError, match="band_px"):
        edge_agreement(drawn, mask, band_px=0)


def test_histogram_distance_and_diversity():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    black, white = np.zeros((16, 16), np.uint8), np.full((16, 16), 255, np.uint8)
    assert histogram_distance(img, img) == 0.0
    assert histogram_distance(black, white) == 1.0
    # Half black/half white vs all black: the histograms share half their mass.
    half = np.concatenate([black[:8], white[:8]])
    assert histogram_distance(half, black) == pytest.approx(0.5)
    assert diversity_scores([img, img, img]) == [0.0, 0.0, 0.0]
    assert diversity_scores([img]) == [0.0]
    # black-white 1, black-half 0.5, white-half 0.5 -> means 0.75, 0.75, 0.5
    assert diversity_scores([black, white, half]) == pytest.approx([0.75, 0.75, 0.5])


def test_overall_score_and_rejection_reason():
    scores = {"ssim": 0.5, "iou": 1.0, "edges": 0.2, "diversity": 0.4}
    # (0.3*0.5 + 0.3*1 + 0.2*0.2 + 0.2*0.4) / 1.0 = 0.15 + 0.3 + 0.04 + 0.08
    assert overall_score(scores, DEFAULT_WEIGHTS) == pytest.approx(0.57)
    assert overall_score(scores, {"iou": 2.0, "edges": 2.0}) == pytest.approx(0.6)  # renormalised
    with pytest.raises(ValueError, match="label_fidelity"):
        overall_score(scores, {"iou": 1.0, "label_fidelity": 1.0})
    with pytest.raises(ValueError, match="more than 0"):
        overall_score(scores, {"iou": 0.0})
    # shortfalls: ssim 0.15, iou 0, edges 0.16, diversity 0.12 -> edges
    assert rejection_reason(scores, DEFAULT_WEIGHTS, threshold=0.6) == "low_edges"
    assert rejection_reason(scores, DEFAULT_WEIGHTS, threshold=0.57) is None
    assert rejection_reason(scores, {"ssim": 1.0, "edges": 0.1}, threshold=0.9) == "low_ssim"


def test_parse_weights_good():
    assert parse_weights("ssim=0.3,iou=0.3,edges=0.2,diversity=0.2") == DEFAULT_WEIGHTS
    assert parse_weights(" iou = 1 , edges=0 ") == {"iou": 1.0, "edges": 0.0}


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("ssim=0.3,sharpness=1", "unknown metric 'sharpness'"),
    ("ssim=-0.1,iou=1", "must be a finite number >= 0"),
    ("ssim=nan", "must be a finite number >= 0"),
    ("ssim=0,iou=0", "all 0"),
    ("ssim:0.3", "not name=value"),
    ("ssim=0.3,", "not name=value"),
    ("ssim=", "not name=value"),
    ("ssim=abc", "not a number"),
    ("ssim=1,ssim=2", "given twice"),
])
def test_parse_weights_bad(text, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(text)


def test_assess_quality_keys_and_ranges():
    mask = disc_mask()
    real = (mask * 200 + 20).astype(np.uint8)[..., None]
    jitter = np.random.default_rng(2).integers(-10, 11, real.shape)
    noisy = np.clip(real.astype(int) + jitter, 0, 255).astype(np.uint8)
    others = [255 - real, real]
    scores = assess_quality(noisy, mask, real, others=others, source_mask=mask)
    assert set(scores) == {"ssim", "iou", "edges", "diversity", "overall_quality"}
    assert -1.0 <= scores["ssim"] <= 1.0 and scores["ssim"] > 0.5
    assert scores["iou"] == 1.0
    assert scores["edges"] > 0.9
    assert 0.0 < scores["diversity"] <= 1.0
    parts = {k: v for k, v in scores.items() if k != "overall_quality"}
    assert scores["overall_quality"] == pytest.approx(overall_score(parts, DEFAULT_WEIGHTS))
    assert all(isinstance(v, float) for v in scores.values())


def test_assess_quality_without_reference_image_renormalises():
    mask = disc_mask()
    sample = (mask * 200).astype(np.uint8)[..., None]
    shifted = np.roll(mask, 5, axis=1)
    scores = assess_quality(sample, shifted, source_mask=mask)
    assert "ssim" not in scores
    assert scores["diversity"] == 0.0  # no others
    assert 0.0 < scores["iou"] < 1.0
    expected = (0.3 * scores["iou"] + 0.2 * scores["edges"] + 0.2 * 0.0) / 0.7
    assert scores["overall_quality"] == pytest.approx(expected)
    assert assess_quality(sample, mask)["iou"] == 1.0  # no source mask
    with pytest.raises(ValueError, match="differ in size"):
        assess_quality(sample, mask[:10])


def test_assess_quality_with_a_variation():
    """The documented call: a flip keeps the label (iou 1); a dilation lowers it."""
    from synthgen.variations import make_variation

    mask = disc_mask()
    real = (mask * 200).astype(np.uint8)[..., None]
    flip, flipped_real = make_variation(mask, "flip", seed=0, image=real)
    scores = assess_quality(flipped_real, flip.mask, flipped_real, source_mask=flip.reference_mask)
    assert scores["iou"] == 1.0 and scores["ssim"] == pytest.approx(1.0) and scores["edges"] > 0.95
    morph, _ = make_variation(mask, "morph", seed=0)
    sample = (morph.mask * 200).astype(np.uint8)[..., None]
    scores = assess_quality(sample, morph.mask, real, source_mask=morph.reference_mask)
    assert scores["iou"] == pytest.approx(mask_iou(morph.mask, mask)) and scores["iou"] < 1.0


def test_real_reference_score_and_resolve_threshold():
    from synthgen.quality import real_reference_score, resolve_threshold

    mask = disc_mask()
    drawn = (mask * 200 + 20).astype(np.uint8)
    flat = np.full_like(drawn, 90)
    # ssim 1, iou 1 (a real image is its own reference, its label did not move); edges 1.0 (drawn) and
    # 0.0 (flat); diversity = histogram distance between the two real images = 1.0 (disjoint gray levels).
    weights = {"ssim": 0.3, "iou": 0.3, "edges": 0.2, "diversity": 0.2}
    pairs = [(drawn, mask), (flat, mask)]
    assert real_reference_score(pairs, weights) == pytest.approx(np.median([1.0, 0.8]))
    assert real_reference_score(pairs[:1], weights) == pytest.approx(0.8)  # a lone image: diversity 0
    threshold, reference = resolve_threshold("real:0.5", pairs, weights)
    assert reference == pytest.approx(0.9) and threshold == pytest.approx(0.45)
    assert resolve_threshold(0.3, [], weights) == (0.3, None)
    with pytest.raises(ValueError, match="none has one"):
        resolve_threshold("real:0.9", [], weights)
    with pytest.raises(ValueError, match="label_fidelity"):
        real_reference_score(pairs, {"iou": 1.0, "label_fidelity": 1.0})
    assert real_reference_score(pairs, {"iou": 1.0, "label_fidelity": 1.0}, [0.5, 0.7]) == pytest.approx(0.8)
