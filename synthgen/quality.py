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
- **edges** (0..1): boundary contrast, how consistently the image differs just inside vs just outside
  the mask's boundaries, relative to the local noise (so faint, thin or low-contrast boundaries count
  as much as bold ones). High = the rendered image respects the label, i.e. the pair is usable for
  training a segmenter; real images score 0.8-0.96 on thin low-contrast RGB lines, 0.84-0.89 on ISBI,
  0.56-0.75 on ssTEM mitochondria; another mask's image, noise or a shifted image < 0.35. Raise it
  when label fidelity matters most.
- **diversity** (0..1): mean gray-histogram distance to the other variations of the same source
  mask. High = the variations are not near-copies of each other. Raise it to fight mode collapse;
  set it to 0 when generating one variation per mask (a single sample scores 0).
  It measures a group, not realism: an outlier (a flat or noise image) scores 0.6-0.9 among
  real-looking siblings where a real image scores ~0.3, so ssim and edges must reject those.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from skimage.morphology import disk

from synthgen.config import GenerateConfig, parse_threshold

METRICS = ("ssim", "iou", "edges", "diversity", "label_fidelity")
"""Metric names a weight may refer to (the keys assess_quality returns, besides overall_quality)."""


BAND_PX = 3
"""Width in px of the bands on each side of a mask boundary that the edges score compares: wide
enough to hold the blur of a real boundary (1-2 px in ISBI) and a 1-3 px structure's surroundings,
narrow enough that the bands stay next to the boundary."""
LOCAL_SIGMA = 1.5
"""Gaussian scale in px of the local band statistics of the edges score: a few px of boundary
average out pixel noise; larger would blend in shading (1.0-2.0 gave the same calibration results)."""
# Gray units (one 8-bit level is 0.004): smaller mean differences are float rounding (flat -> 0.0), and a
# noise-free boundary's std is ~0, so its contrast ratio is huge and tanh gives exactly +-1.
_STD_FLOOR = 1e-6


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
    """Boundary contrast: how consistently the image is brighter (or darker) just inside the mask's
    boundaries than just outside, relative to the local spread of gray values there. In [0, 1].

    At every inner-band pixel x (foreground within `band_px` px of the background), Gaussian-weighted
    (sigma LOCAL_SIGMA px) means and variances of the gray values are taken over the inner band and,
    separately, over the outer band (background within `band_px` px of the foreground), so the two
    sides never mix however thin the structure. t(x) = tanh((mean_in - mean_out) / pooled std) is a
    local contrast-to-noise ratio (1 std -> 0.76, 2 std -> 0.96); the score is |mean of t| over the
    inner band, so either polarity counts but it must be the same along the boundary. 1.0: the image
    draws every boundary clearly; ~0: nothing at the boundary (flat, noise, another mask's image). A
    mask with no boundary (empty or full) scores 1.0: nothing for the image to contradict.

    Why this and not Canny edges: Canny's fixed thresholds and smoothing scale erased low-contrast or
    1-3 px wide structures (edges was 0.0 on the real images of thin low-contrast RGB lines) and its
    precision counted every unlabelled texture edge against the image (real ISBI 0.51-0.56, noise
    0.42). This score is unchanged by brightness/contrast changes (a ratio), follows the structure at
    any width (the bands) and ignores slow background shading (local means).

        >>> mask = np.zeros((32, 32), np.uint8); mask[8:24, 8:24] = 1
        >>> edge_agreement((mask * 40 + 100).astype(np.uint8), mask)
        1.0
        >>> edge_agreement(np.full((32, 32), 90, np.uint8), mask)
        0.0
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"edge_agreement: image {image.shape} and mask {mask.shape} differ in size")
    inner, outer = boundary_bands(mask, band_px)
    if not inner.any() or not outer.any():
        return 1.0
    gray = _gray(image)
    (mean_in, var_in), (mean_out, var_out) = (_band_stats(gray, band) for band in (inner, outer))
    diff = mean_in - mean_out
    diff[np.abs(diff) < _STD_FLOOR] = 0.0  # float rounding of two equal means, not contrast
    t = np.tanh(diff / (np.sqrt((var_in + var_out) / 2) + _STD_FLOOR))
    return float(abs(t[inner].sum()) / np.count_nonzero(inner))


def _band_stats(gray: np.ndarray, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean and variance of `gray` over the pixels of `band`, at every pixel."""
    def smooth(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, LOCAL_SIGMA, mode="constant")  # outside the image: no weight

    b = band.astype(np.float64)
    # Every band pixel lies within band_px (< the kernel's 4 sigma) of both bands: weight > 0 there.
    weight = np.maximum(smooth(b), 1e-300)
    mean = smooth(gray * b) / weight
    return mean, np.maximum(smooth(gray * gray * b) / weight - mean * mean, 0.0)


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


def real_reference_score(pairs: list[tuple[np.ndarray, np.ndarray]], weights: dict[str, float],
                         label_fidelity: list[float] | None = None) -> float:
    """Median overall score of real (image, mask) pairs, each scored as a candidate of its own mask.

    What each metric means for a real image scored against itself: ssim 1.0 and iou 1.0 (it is its
    own reference and its label did not move: the ceiling a perfect candidate reaches); edges its
    true boundary contrast (below 1 on faint or noisy data, which is what makes the reference
    data-specific); diversity its mean histogram distance to the other real images (the natural
    variation of the data; 0.0 for a single pair, as for a lone candidate); label_fidelity the given
    per-pair values (a segmenter's IoU on the real image), required when it has a weight.

        >>> mask = np.zeros((32, 32), np.uint8); mask[8:24, 8:24] = 1
        >>> real_reference_score([((mask * 40 + 100).astype(np.uint8), mask)], {"iou": 1, "edges": 1})
        1.0
    """
    if not pairs:
        raise ValueError("real_reference_score: no real (image, mask) pairs")
    if weights.get("label_fidelity") and (label_fidelity is None or len(label_fidelity) != len(pairs)):
        raise ValueError("real_reference_score: weights use label_fidelity but no per-pair values are given")
    diversity = diversity_scores([image for image, _ in pairs])
    scores = []
    for i, (image, mask) in enumerate(pairs):
        extra = {"diversity": diversity[i]}
        if label_fidelity is not None:
            extra["label_fidelity"] = float(label_fidelity[i])
        scores.append(assess_quality(image, mask, image, None, weights, source_mask=mask,
                                     extra=extra)["overall_quality"])
    return float(np.median(scores))


def resolve_threshold(spec: str | float, pairs: list[tuple[np.ndarray, np.ndarray]], weights: dict[str, float],
                      label_fidelity: list[float] | None = None) -> tuple[float, float | None]:
    """(absolute threshold, real reference score or None) for a generate.threshold value.

        >>> resolve_threshold("0.7", [], {"iou": 1.0})
        (0.7, None)
    """
    kind, value = parse_threshold(spec)
    if kind == "absolute":
        return value, None
    if not pairs:
        raise ValueError(f"threshold '{spec}' is relative to the real images of the source masks, but none "
                         "has one (give --images with --masks, or generate from the checkpoint's training pairs)")
    reference = real_reference_score(pairs, weights, label_fidelity)
    return value * reference, reference


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
