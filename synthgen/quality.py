"""Quality metrics on uint8 numpy images (scikit-image), usable without torch or Ray.

    from synthgen.quality import assess_quality, parse_weights
    scores = assess_quality(sample, reference_mask, reference_image, others=siblings,
                            weights=parse_weights("ssim=0.3,iou=0.3,edges=0.2,diversity=0.2"))

Each synthetic sample gets four scores, combined by a weighted mean into `overall_quality`:

- **ssim** (-1..1): structural similarity between the sample and the real image of its source mask,
  put through the same geometric transform as the mask. High = realistic texture and contrast. Lower
  its weight when many variations are 'morph' (the real image is not re-shaped with the mask, so it
  no longer lines up with the sample); it is left out when no real image is available.
- **iou** (0..1): overlap of the varied mask with the source mask put through only the label-preserving
  part of the variation (flip, crop): how far the label drifted from a real annotation. Raise it when
  labels must stay close to real ones; lower it when you want strongly deformed masks.
- **edges** (0..1): boundary contrast, how cleanly the gray values just inside the mask's boundaries
  separate from those just outside (a rank statistic, so faint, thin or low-contrast boundaries count
  as much as bold ones). High = the rendered image respects the label, i.e. the pair is usable for
  training a segmenter; real images score 0.4-0.8 on thin low-contrast structures and 0.7-0.95 on
  ISBI-like data, another mask's image or noise < 0.3. Raise it when label fidelity matters most.
- **diversity** (0..1): mean gray-histogram distance to the other variations of the same source
  mask. High = the variations are not near-copies of each other. Raise it to fight mode collapse;
  set it to 0 when generating one variation per mask (a single sample scores 0).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from skimage.morphology import disk

from synthgen.config import GenerateConfig

METRICS = ("ssim", "iou", "edges", "diversity", "label_fidelity")
"""Metric names a weight may refer to (the keys assess_quality returns, besides overall_quality)."""


BAND_PX = 3
"""Width in px of the bands on each side of a mask boundary that the edges score compares: wide
enough to hold the blur of a real boundary (1-2 px in ISBI), narrow enough that the bands stay next to
the boundary. On the calibration data 3 px separated real images from bad candidates best (2: real
ISBI 0.61-0.68, 3: 0.73-0.77; another mask's image <= 0.2 either way)."""
_BAND_BINS = 256  # gray histogram bins: one per uint8 level, so gray images rank exactly


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 images, HxW or HxWxC (C = 1 or 3); 1.0 means identical."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a, b = a[..., 0], b[..., 0]
    channel_axis = 2 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=255, channel_axis=channel_axis))


def _gray(image: np.ndarray) -> np.ndarray:
    """HxW float in [0, 1] from a uint8 HxW, HxWx1 or HxWx3 image."""
    if image.ndim == 3 and image.shape[2] == 3:
        return rgb2gray(image)  # uint8 in -> float in [0, 1]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC (C = 1 or 3) image, got shape {image.shape}")
    return image.astype(np.float64) / 255.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two {0,1} masks; two empty masks agree perfectly (1.0)."""
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ {a.shape} vs {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)


def boundary_bands(mask: np.ndarray, band_px: int = BAND_PX) -> tuple[np.ndarray, np.ndarray]:
    """(inner, outer): foreground pixels within `band_px` px (Euclidean) of the background, and
    background pixels within `band_px` px of the foreground. Outside the image counts as neither, so
    the image border is no boundary. A 1-3 px line is its own inner band.

        >>> inner, outer = boundary_bands(np.eye(5, dtype=np.uint8), band_px=1)
        >>> int(inner.sum()), int(outer.sum())
        (5, 8)
    """
    if band_px < 1:
        raise ValueError(f"band_px must be >= 1, got {band_px}")
    m = mask.astype(bool)
    footprint = disk(band_px).astype(bool)
    return (m & ndimage.binary_dilation(~m, structure=footprint),
            ~m & ndimage.binary_dilation(m, structure=footprint))


def edge_agreement(image: np.ndarray, mask: np.ndarray, band_px: int = BAND_PX) -> float:
    """Boundary contrast: |2 AUC - 1| of the gray values just inside vs just outside the mask boundary.

    AUC is the probability that a pixel of the inner band (foreground within `band_px` px of the
    boundary) is brighter than one of the outer band (ties count half), from 256-bin gray histograms.
    1.0: the two sides never overlap in brightness (the image draws the label's boundary); 0.0: the
    image shows nothing at the boundary (flat, noise, another mask's image); either polarity counts.
    A mask with no boundary (empty or full) scores 1.0: there is no boundary for the image to contradict.

    Why not Canny edges: Canny's fixed thresholds and smoothing scale erase low-contrast or 1-3 px wide
    structures (edges was 0.0 on the real images of thin low-contrast RGB lines), and its precision
    counts every unlabelled texture edge (organelles in ISBI cells) against the image, so real images
    scored barely above noise. A rank statistic needs no threshold, is unchanged by any increasing
    contrast/brightness change, and the bands follow the structure whatever its width.

        >>> mask = np.zeros((32, 32), np.uint8); mask[8:24, 8:24] = 1
        >>> edge_agreement((mask * 40 + 100).astype(np.uint8), mask)
        1.0
        >>> edge_agreement(np.full((32, 32), 90, np.uint8), mask)
        0.0
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"edge_agreement: image {image.shape} and mask {mask.shape} differ in size")
    inner, outer = boundary_bands(mask, band_px)
    gray = _gray(image)
    return contrast_from_histograms(*(np.histogram(gray[band], bins=_BAND_BINS, range=(0.0, 1.0))[0]
                                      for band in (inner, outer)))


def contrast_from_histograms(inner: np.ndarray, outer: np.ndarray) -> float:
    """|2 AUC - 1| from integer histograms of the two bands; 1.0 when either band is empty.

    In integers, 2 U = sum(inner * (2 * outer-below + outer-same)), so the result is exact (and
    synthgen.quality_torch gets the same bits)."""
    inner, outer = inner.astype(np.int64), outer.astype(np.int64)
    n_in, n_out = int(inner.sum()), int(outer.sum())
    if n_in == 0 or n_out == 0:
        return 1.0
    twice_u = int((inner * (2 * (np.cumsum(outer) - outer) + outer)).sum())
    return abs(twice_u - n_in * n_out) / (n_in * n_out)


def _histogram(image: np.ndarray, bins: int) -> np.ndarray:
    counts, _ = np.histogram(_gray(image), bins=bins, range=(0.0, 1.0))
    return counts / max(counts.sum(), 1)


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """1 - intersection of the normalised gray histograms: 0 = same distribution, 1 = disjoint."""
    if bins < 1:
        raise ValueError(f"histogram_distance: bins must be >= 1, got {bins}")
    return _intersection_distance(_histogram(a, bins), _histogram(b, bins))


def _intersection_distance(ha: np.ndarray, hb: np.ndarray) -> float:
    # Clip: float rounding can push 1 - sum(min) a hair outside [0, 1].
    return float(np.clip(1.0 - np.minimum(ha, hb).sum(), 0.0, 1.0))


def diversity_scores(images: list[np.ndarray], bins: int = 32) -> list[float]:
    """For each image, the mean histogram_distance to the other images; one image -> [0.0]."""
    if bins < 1:
        raise ValueError(f"diversity_scores: bins must be >= 1, got {bins}")
    if len(images) < 2:
        return [0.0] * len(images)
    hists = [_histogram(im, bins) for im in images]  # once per image, not once per pair
    n = len(hists)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = _intersection_distance(hists[i], hists[j])
    return [float(dist[i].sum() / (n - 1)) for i in range(n)]


def overall_score(scores: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted mean of the scores named in `weights` (SSIM used as-is, in [-1, 1])."""
    missing = sorted(k for k in weights if k not in scores)
    if missing:
        raise ValueError(f"weights name metrics with no score: {', '.join(missing)} "
                         f"(scores has: {', '.join(sorted(scores)) or 'none'})")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"weights must sum to more than 0, got {weights}")
    return float(sum(w * scores[k] for k, w in weights.items()) / total)


def rejection_reason(scores: dict[str, float], weights: dict[str, float], threshold: float) -> str | None:
    """None when the sample passes, else 'low_<metric>' for the metric that costs the most.

    The culprit is the metric with the largest weighted shortfall w * (1 - score).
    """
    if overall_score(scores, weights) >= threshold:
        return None
    worst = max(weights, key=lambda k: weights[k] * (1.0 - scores[k]))
    return f"low_{worst}"


def assess_quality(sample: np.ndarray, reference_mask: np.ndarray, reference_image: np.ndarray | None = None,
                   others: list[np.ndarray] | None = None, weights: dict[str, float] | None = None,
                   source_mask: np.ndarray | None = None, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Score one generated sample; returns ssim, iou, edges, diversity and overall_quality.

    With a `Variation` v from synthgen.variations, call
    `assess_quality(sample, v.mask, aligned_image, others, weights, source_mask=v.reference_mask)`
    (the same numbers synthgen.generate computes):
    sample: the generated HxWxC uint8 image. reference_mask: the mask the sample was rendered from;
    its boundaries are compared with the sample's edges, and its IoU with `source_mask` (the label-
    preserving reference) is the iou score (1.0 when source_mask is None). reference_image: the real
    image put through the same geometry; None omits ssim and renormalises the weights over the other
    metrics. others: the other variations of the same source mask (diversity 0.0 when none).
    """
    if sample.shape[:2] != reference_mask.shape:
        raise ValueError(f"assess_quality: sample {sample.shape} and reference_mask "
                         f"{reference_mask.shape} differ in size")
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    scores: dict[str, float] = {}
    if reference_image is not None:
        scores["ssim"] = ssim(sample, reference_image)
    else:
        weights.pop("ssim", None)
    scores["iou"] = 1.0 if source_mask is None else mask_iou(reference_mask, source_mask)
    scores["edges"] = edge_agreement(sample, reference_mask)
    others = others or []
    scores["diversity"] = (float(np.mean([histogram_distance(sample, o) for o in others]))
                           if others else 0.0)
    scores.update(extra or {})  # metrics computed elsewhere, e.g. label_fidelity by the generator actor
    scores["overall_quality"] = overall_score(scores, weights)
    return scores


def parse_weights(text: str) -> dict[str, float]:
    """'ssim=0.3,iou=0.3,edges=0.2,diversity=0.2' -> dict. Metrics left out get no weight."""
    weights: dict[str, float] = {}
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError(f"quality weights are empty; expected e.g. '{_format(DEFAULT_WEIGHTS)}'")
    for item in items:
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"quality weights: '{item}' is not name=value "
                             f"(expected e.g. '{_format(DEFAULT_WEIGHTS)}')")
        if name not in METRICS:
            raise ValueError(f"quality weights: unknown metric '{name}' (known: {', '.join(METRICS)})")
        if name in weights:
            raise ValueError(f"quality weights: '{name}' is given twice")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"quality weights: '{name}={value}' is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"quality weights: '{name}={value}' must be a finite number >= 0")
        weights[name] = w
    if sum(weights.values()) == 0:
        raise ValueError(f"quality weights are all 0 ('{text}'); give at least one metric a weight > 0")
    return weights


def _format(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


# One source of truth: the default lives in synthgen.config.GenerateConfig.weights.
DEFAULT_WEIGHTS = parse_weights(GenerateConfig().weights)
