"""Batched PyTorch versions of the quality metrics in synthgen.quality, for scoring on the GPU.

synthgen.quality (scikit-image, one numpy image at a time) is the reference and stays the source of
truth for what each score means; this module computes the same numbers on batches of uint8 tensors on
any device, because the generation pipeline must score ~2000 images/s of 256x256 and the per-sample
scikit-image loop on CPU cannot keep up.

    scores = score_batch(samples, masks, ref_images, has_ref=has_ref, source_masks=src,
                         groups=group_ids, weights=parse_weights("ssim=0.3,iou=0.3,edges=0.2,diversity=0.2"))

Scores are computed in float64 with scipy's own Gaussian kernel, and every score is a continuous
function of the pixels (no thresholds to tie on), so they agree to ~1e-12, RGB included.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from synthgen.quality import _STD_FLOOR, BAND_PX, DEFAULT_WEIGHTS, LOCAL_SIGMA

_F64 = torch.float64
_RGB_TO_GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise ValueError(f"{name}: expected a uint8 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[3] not in (1, 3)):
        raise ValueError(f"{name}: expected shape (B,H,W) or (B,H,W,C) with C = 1 or 3, got {tuple(x.shape)}")


def _check_masks(name: str, m: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
    if not isinstance(m, torch.Tensor) or m.dtype.is_floating_point or m.dtype.is_complex:
        raise ValueError(f"{name}: expected a bool or integer {{0,1}} tensor, got "
                         f"{getattr(m, 'dtype', type(m).__name__)}")
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(m.shape)}")
    return m.to(device) != 0


def gray_batch(images: torch.Tensor) -> torch.Tensor:
    """(B,H,W) float64 in [0, 1], as synthgen.quality._gray (rgb2gray for RGB)."""
    _check_images("gray_batch", images)
    x = images.to(_F64)
    if x.dim() == 4 and x.shape[3] == 3:
        x = x * (1 / 255)  # img_as_float multiplies by the reciprocal, plain gray divides
        return x[..., 0] * _RGB_TO_GRAY[0] + x[..., 1] * _RGB_TO_GRAY[1] + x[..., 2] * _RGB_TO_GRAY[2]
    return (x[..., 0] if x.dim() == 4 else x) / 255.0


def _box7(t: torch.Tensor) -> torch.Tensor:
    # 7x7 window sums over valid positions only: SSIM crops 3 px anyway, so padding never matters.
    # Integer-valued float64 cumulative sums are exact, unlike a running float mean.
    for dim in (-1, -2):
        c = F.pad(t.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))
        n = c.shape[dim]
        t = c.narrow(dim, 7, n - 7) - c.narrow(dim, 0, n - 7)
    return t


def ssim_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM as synthgen.quality.ssim (7x7 uniform window, sample covariance, per-channel mean)."""
    _check_images("ssim_batch: a", a)
    _check_images("ssim_batch: b", b)
    if a.shape != b.shape:
        raise ValueError(f"ssim_batch: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[1:3]) < 7:
        raise ValueError(f"ssim_batch: images must be at least 7x7, got {tuple(a.shape[1:3])}")
    x, y = (t.to(_F64) if t.dim() == 4 else t.to(_F64)[..., None] for t in (a, b.to(a.device)))
    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    n = 49.0
    sx, sy, sxx, syy, sxy = (_box7(t) for t in (x, y, x * x, y * y, x * y))
    ux, uy = sx / n, sy / n
    # n*sum(x^2) - sum(x)^2 is an exact integer: no cancellation error in flat regions.
    cov = 1.0 / (n * (n - 1))
    vx, vy, vxy = (n * sxx - sx * sx) * cov, (n * syy - sy * sy) * cov, (n * sxy - sx * sy) * cov
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)


def mask_iou_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) IoU of (B,H,W) {0,1} masks; two empty masks give 1.0."""
    if not isinstance(a, torch.Tensor) or a.dim() != 3:
        raise ValueError(f"mask_iou_batch: expected (B,H,W) masks, got {getattr(a, 'shape', type(a).__name__)}")
    a = _check_masks("mask_iou_batch: a", a, a.shape, a.device)
    b = _check_masks("mask_iou_batch: b", b, a.shape, a.device)
    union, inter = (a | b).sum(dim=(1, 2)), (a & b).sum(dim=(1, 2))
    return torch.where(union == 0, 1.0, inter.to(_F64) / union.clamp(min=1))


def _dilate_disk(x: torch.Tensor, r: int) -> torch.Tensor:
    # conv2d pads with zeros: outside the image is not foreground, as ndimage's border_value=0.
    k = torch.arange(-r, r + 1, device=x.device)
    disk = ((k[:, None] ** 2 + k[None, :] ** 2) <= r * r).float()  # skimage.morphology.disk(r)
    return F.conv2d(x[:, None].float(), disk[None, None], padding=r)[:, 0] > 0.5


def boundary_bands_batch(masks: torch.Tensor, band_px: int = BAND_PX) -> tuple[torch.Tensor, torch.Tensor]:
    """(inner, outer) (B,H,W) bool bands as synthgen.quality.boundary_bands."""
    if band_px < 1:
        raise ValueError(f"band_px must be >= 1, got {band_px}")
    return masks & _dilate_disk(~masks, band_px), ~masks & _dilate_disk(masks, band_px)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    # The impulse response of scipy's own filter gives its kernel bit for bit (radius 4 sigma).
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return torch.from_numpy(ndimage.gaussian_filter1d(impulse, sigma, mode="constant"))


_KERNEL = _gaussian_kernel(LOCAL_SIGMA)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """(B,H,W) float64 Gaussian filter as ndimage.gaussian_filter(x, LOCAL_SIGMA, mode="constant")."""
    k, r = _KERNEL.to(x.device), len(_KERNEL) // 2
    x = F.conv2d(x[:, None], k.view(1, 1, -1, 1), padding=(r, 0))  # zero padding = mode "constant"
    return F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))[:, 0]


def _band_stats(gray: torch.Tensor, band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = band.to(_F64)
    weight = _smooth(b).clamp(min=1e-300)
    mean = _smooth(gray * b) / weight
    return mean, (_smooth(gray * gray * b) / weight - mean * mean).clamp(min=0.0)


def edge_agreement_batch(images: torch.Tensor, masks: torch.Tensor, band_px: int = BAND_PX) -> torch.Tensor:
    """(B,) boundary contrast |mean tanh(local contrast / local std)| as quality.edge_agreement."""
    _check_images("edge_agreement_batch: images", images)
    masks = _check_masks("edge_agreement_batch: masks", masks, images.shape[:3], images.device)
    inner, outer = boundary_bands_batch(masks, band_px)
    gray = gray_batch(images)
    (mean_in, var_in), (mean_out, var_out) = (_band_stats(gray, band) for band in (inner, outer))
    diff = mean_in - mean_out
    diff = torch.where(diff.abs() < _STD_FLOOR, 0.0, diff)  # float rounding, as quality.edge_agreement
    t = torch.tanh(diff / (((var_in + var_out) / 2).sqrt() + _STD_FLOOR))
    n_in = inner.sum(dim=(1, 2))
    score = torch.where(inner, t, 0.0).sum(dim=(1, 2)).abs() / n_in.clamp(min=1).to(_F64)
    return torch.where((n_in == 0) | (outer.sum(dim=(1, 2)) == 0), 1.0, score)


def histograms_batch(images: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """(B, bins) normalised gray histograms on [0, 1], bin for bin as np.histogram."""
    if bins < 1:
        raise ValueError(f"histograms_batch: bins must be >= 1, got {bins}")
    g = gray_batch(images).flatten(1)
    edges = torch.as_tensor(np.linspace(0.0, 1.0, bins + 1), dtype=_F64, device=g.device)
    # np.histogram: half-open bins except the last, which also takes 1.0; values outside are dropped.
    idx = (torch.bucketize(g, edges, right=True) - 1).clamp(0, bins - 1)
    inside = ((g >= 0) & (g <= 1)).to(_F64)
    counts = torch.zeros(g.shape[0], bins, dtype=_F64, device=g.device).scatter_add_(1, idx, inside)
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def diversity_batch(images: torch.Tensor, groups: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """(B,) mean histogram distance to the other images with the same group id; 0.0 alone in a group."""
    return _diversity(histograms_batch(images, bins), groups)


def _diversity(h: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    if groups.dim() != 1 or groups.shape[0] != h.shape[0]:
        raise ValueError(f"diversity_batch: groups must have shape ({h.shape[0]},), got {tuple(groups.shape)}")
    groups = groups.to(h.device)
    same = groups[:, None] == groups[None, :]
    same.fill_diagonal_(False)
    i, j = same.nonzero(as_tuple=True)  # only pairs within a group: groups are small, batches large
    d = (1.0 - torch.minimum(h[i], h[j]).sum(dim=1)).clamp(0.0, 1.0)
    total = torch.zeros(h.shape[0], dtype=_F64, device=h.device).index_add_(0, i, d)
    n = same.sum(dim=1)
    return torch.where(n > 0, total / n.clamp(min=1), 0.0)


def score_batch(samples: torch.Tensor, masks: torch.Tensor, ref_images: torch.Tensor | None = None,
                has_ref: torch.Tensor | None = None, source_masks: torch.Tensor | None = None,
                groups: torch.Tensor | None = None, weights: dict[str, float] | None = None,
                extra: dict[str, torch.Tensor] | None = None, band_px: int = BAND_PX,
                bins: int = 32, chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Per-sample scores as synthgen.quality.assess_quality, each a (B,) float64 tensor.

    samples (B,H,W[,C]) uint8; masks (B,H,W) the masks they were rendered from; ref_images like
    samples, with has_ref (B,) bool marking rows that have one (ssim is NaN and its weight dropped
    elsewhere; None = all rows); source_masks (B,H,W) for iou (None: iou 1.0); groups (B,) ids of
    variations of one source mask, for diversity (None: every row alone, diversity 0.0); extra: scores
    computed elsewhere, e.g. {"label_fidelity": (B,)}. chunk_size: images per step (default 256 on a
    GPU, a few GB of float64 maps; 4 on CPU, where cache-sized steps run several times faster).
    """
    _check_images("score_batch: samples", samples)
    dev, (B, H, W) = samples.device, samples.shape[:3]
    masks = _check_masks("score_batch: masks", masks, (B, H, W), dev)
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    step = chunk_size or (256 if dev.type == "cuda" else 4)

    def chunked(fn, *batches):  # every metric is per image, so chunks only change the speed
        return torch.cat([fn(*(x[i:i + step] for x in batches)) for i in range(0, B, step)])

    scores: dict[str, torch.Tensor] = {}
    has = torch.zeros(B, dtype=torch.bool, device=dev)
    if ref_images is not None:
        if has_ref is not None and tuple(has_ref.shape) != (B,):
            raise ValueError(f"score_batch: has_ref must have shape ({B},), got {tuple(has_ref.shape)}")
        has = torch.ones(B, dtype=torch.bool, device=dev) if has_ref is None else has_ref.to(dev, torch.bool)
        scores["ssim"] = torch.where(has, chunked(ssim_batch, samples, ref_images.to(dev)), float("nan"))
    elif has_ref is not None:
        raise ValueError("score_batch: has_ref given without ref_images")
    else:
        weights.pop("ssim", None)
    scores["iou"] = (torch.ones(B, dtype=_F64, device=dev) if source_masks is None
                     else mask_iou_batch(masks, source_masks.to(dev)))
    scores["edges"] = chunked(lambda x, m: edge_agreement_batch(x, m, band_px), samples, masks)
    scores["diversity"] = (torch.zeros(B, dtype=_F64, device=dev) if groups is None
                           else _diversity(chunked(lambda x: histograms_batch(x, bins), samples), groups))
    scores.update({k: torch.as_tensor(v, dtype=_F64, device=dev) for k, v in (extra or {}).items()})
    missing = sorted(k for k in weights if k not in scores)
    if missing:
        raise ValueError(f"weights name metrics with no score: {', '.join(missing)} "
                         f"(scores has: {', '.join(sorted(scores))})")
    num = torch.zeros(B, dtype=_F64, device=dev)
    den = torch.zeros(B, dtype=_F64, device=dev)
    for k, w in weights.items():
        if k == "ssim":  # assess_quality drops ssim's weight on rows without a reference image
            num = num + torch.where(has, w * scores[k], 0.0)
            den = den + has.to(_F64) * w
        else:
            num, den = num + w * scores[k], den + w
    if bool((den <= 0).any()):
        raise ValueError(f"weights must sum to more than 0 on every row, got {weights}")
    scores["overall_quality"] = num / den
    return scores
