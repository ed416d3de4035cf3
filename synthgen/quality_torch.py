"""Batched PyTorch versions of the quality metrics in synthgen.quality, for scoring on the GPU.

synthgen.quality (scikit-image, one numpy image at a time) is the reference and stays the source of
truth for what each score means; this module computes the same numbers on batches of uint8 tensors on
any device, because the generation pipeline must score ~2000 images/s of 256x256 and the per-sample
scikit-image loop on CPU cannot keep up.

    scores = score_batch(samples, masks, ref_images, has_ref=has_ref, source_masks=src,
                         groups=group_ids, weights=parse_weights("ssim=0.3,iou=0.3,edges=0.2,diversity=0.2"))

Scores are computed in float64 and, where a comparison can tie (Canny's smoothing, Sobel and
non-maximum suppression), in scipy's order of floating-point operations, so they agree to ~1e-12 and
edge maps are identical on gray images and on noisy RGB ones. One known gap: scikit-image's rgb2gray
goes through BLAS, whose fused multiply-adds can round an RGB pixel's gray value one bit differently;
on flat, noise-free RGB shapes that flips exact ties in non-maximum suppression (a few % of edge
pixels, edges score up to ~0.05 off), which generated images, never exactly flat, do not hit.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from synthgen.quality import _CANNY_SIGMA, DEFAULT_WEIGHTS

_F64 = torch.float64
# skimage.feature.canny's default thresholds; the low one reaches the suppression code as a C float.
_LOW, _HIGH = float(np.float32(0.1)), 0.2
_RGB_TO_GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray


def _gaussian_weights(sigma: float) -> list[float]:
    # The impulse response of scipy's own filter gives its kernel bit for bit: [centre, +-1, +-2, ...].
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndimage.gaussian_filter1d(impulse, sigma, mode="constant")[radius:].tolist()


_GAUSS = _gaussian_weights(_CANNY_SIGMA)


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


def _smooth(x: torch.Tensor, dim: int) -> torch.Tensor:
    # scipy's correlate1d for a symmetric kernel: centre term, then the pairs from the outermost in.
    r, n = len(_GAUSS) - 1, x.shape[dim]
    xp = F.pad(x[:, None], (r, r, 0, 0) if dim == -1 else (0, 0, r, r), mode="replicate")[:, 0]  # mode="nearest"
    out = xp.narrow(dim, r, n) * _GAUSS[0]
    for k in range(r, 0, -1):
        out = out + (xp.narrow(dim, r - k, n) + xp.narrow(dim, r + k, n)) * _GAUSS[k]
    return out


def canny_batch(gray: torch.Tensor) -> torch.Tensor:
    """(B,H,W) bool edges as skimage.feature.canny(g, sigma=_CANNY_SIGMA, mode="nearest").

    `gray`: uint8 images (converted as synthgen.quality._gray) or a float (B,H,W) gray batch in [0, 1].
    """
    if gray.dtype == torch.uint8:
        gray = gray_batch(gray)
    elif not gray.dtype.is_floating_point or gray.dim() != 3:
        raise ValueError(f"canny_batch: expected uint8 images or a float (B,H,W) gray batch, "
                         f"got {gray.dtype} {tuple(gray.shape)}")
    s = _smooth(_smooth(gray.to(_F64), -2), -1)
    H, W = s.shape[1:]
    p = F.pad(s[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # ndimage.sobel's 'reflect' at 1 px

    def at(di: int, dj: int, t: torch.Tensor = p) -> torch.Tensor:
        return t[:, 1 + di:1 + di + H, 1 + dj:1 + dj + W]

    dj = [at(k, 1) - at(k, -1) for k in (-1, 0, 1)]
    di = [at(1, k) - at(-1, k) for k in (-1, 0, 1)]
    jsobel, isobel = 2 * dj[1] + (dj[0] + dj[2]), 2 * di[1] + (di[0] + di[2])
    mag = torch.sqrt(isobel * isobel + jsobel * jsobel)

    # Non-maximum suppression as skimage's _nonmaximum_suppression_bilinear, all four sectors at once.
    ai, aj = isobel.abs(), jsobel.abs()
    same_sign = (isobel <= 0) == (jsobel <= 0)
    steep = torch.where(same_sign, ai > aj, ~(ai < aj))  # gradient closer to axis 0 than to axis 1
    w = torch.where(steep, aj / ai, ai / aj)
    m = F.pad(mag, (1, 1, 1, 1))

    def pick(steep_same, flat_same, steep_opp, flat_opp):
        same = torch.where(steep, at(*steep_same, m), at(*flat_same, m))
        return torch.where(same_sign, same, torch.where(steep, at(*steep_opp, m), at(*flat_opp, m)))

    n11 = pick((1, 0), (0, 1), (-1, 0), (0, 1))
    n12 = pick((1, 1), (1, 1), (-1, 1), (-1, 1))
    n21 = pick((-1, 0), (0, -1), (1, 0), (0, -1))
    n22 = pick((-1, -1), (-1, -1), (1, -1), (1, -1))
    interior = torch.zeros_like(mag, dtype=torch.bool)
    interior[:, 1:-1, 1:-1] = True  # skimage's eroded mask: the image border never holds an edge
    low = (interior & (mag >= _LOW) & (n12 * w + n11 * (1.0 - w) <= mag)
           & (n22 * w + n21 * (1.0 - w) <= mag))
    return _hysteresis(low, low & (mag >= _HIGH))


def _hysteresis(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    # skimage labels the 8-connected components of `low` and keeps those holding a `high` pixel. Same
    # here, on the few low pixels only, by min-label propagation with pointer jumping: each round
    # halves path lengths, so a long edge takes a few rounds, not one round per pixel of its length.
    # Low pixels never touch the image border, so flat offsets never wrap across rows or images.
    B, H, W = low.shape
    pos = low.flatten().nonzero().squeeze(1)
    n = pos.numel()
    ids = torch.full((B * H * W,), n, dtype=torch.long, device=low.device)  # n: "not a low pixel"
    ids[pos] = torch.arange(n, device=low.device)
    offsets = torch.tensor([-W - 1, -W, -W + 1, -1, 1, W - 1, W, W + 1], device=low.device)
    neighbours = ids[pos[:, None] + offsets]  # (n, 8)
    label = torch.arange(n + 1, device=low.device)  # label[n] = n stays the largest, never chosen
    while True:
        smallest = torch.minimum(label[neighbours].amin(dim=1), label[:n])
        new = label.clone()
        new[:n] = smallest
        new.scatter_reduce_(0, label[:n], smallest, reduce="amin")  # hook the old label's root too
        new = new[new[new]]
        if torch.equal(new, label):
            break
        label = new
    seeded = torch.zeros(n + 1, dtype=torch.bool, device=low.device)
    seeded[label[:n][high.flatten()[pos]]] = True
    out = torch.zeros(B * H * W, dtype=torch.bool, device=low.device)
    out[pos[seeded[label[:n]]]] = True
    return out.view(B, H, W)


def _inner_boundary(m: torch.Tensor) -> torch.Tensor:
    # find_boundaries(mode="inner"): a foreground pixel with a 4-neighbour in the background; the
    # image border is replicated ('reflect' erosion), so it is not a boundary by itself.
    p = F.pad(m[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    H, W = m.shape[1:]
    eroded = torch.stack([p[:, 1 + i:1 + i + H, 1 + j:1 + j + W]
                          for i, j in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))]).amin(0)
    return m & (eroded == 0)


def _dilate_disk(x: torch.Tensor, r: int) -> torch.Tensor:
    k = torch.arange(-r, r + 1, device=x.device)
    disk = ((k[:, None] ** 2 + k[None, :] ** 2) <= r * r).float()  # skimage.morphology.disk(r)
    return F.conv2d(x[:, None].float(), disk[None, None], padding=r)[:, 0] > 0.5


def edge_agreement_batch(images: torch.Tensor, masks: torch.Tensor, tolerance_px: int = 2) -> torch.Tensor:
    """(B,) F1 of Canny edges vs inner mask boundaries within `tolerance_px`, as quality.edge_agreement."""
    _check_images("edge_agreement_batch: images", images)
    masks = _check_masks("edge_agreement_batch: masks", masks, images.shape[:3], images.device)
    if tolerance_px < 0:
        raise ValueError(f"edge_agreement_batch: tolerance_px must be >= 0, got {tolerance_px}")
    edges, boundary = canny_batch(images), _inner_boundary(masks)
    n_e, n_b = edges.sum(dim=(1, 2)), boundary.sum(dim=(1, 2))
    precision = (edges & _dilate_disk(boundary, tolerance_px)).sum(dim=(1, 2)) / n_e.clamp(min=1).to(_F64)
    recall = (boundary & _dilate_disk(edges, tolerance_px)).sum(dim=(1, 2)) / n_b.clamp(min=1).to(_F64)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = torch.where((n_e == 0) | (n_b == 0), 0.0, f1)
    return torch.where((n_e == 0) & (n_b == 0), 1.0, f1)


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
                extra: dict[str, torch.Tensor] | None = None, tolerance_px: int = 2,
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
    scores["edges"] = chunked(lambda x, m: edge_agreement_batch(x, m, tolerance_px), samples, masks)
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
