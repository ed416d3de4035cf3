"""Mask variations for synthetic data generation, each reproducible from (mask, kind, seed, config).

    from synthgen.variations import variation_plan, make_variation
    for kind, seed in variation_plan(8, ["elastic", "morph", "noise"], base_seed=0, source_index=3):
        var, aligned_image = make_variation(mask, kind, seed, image=real_image)

Kinds (masks are HxW uint8 in {0, 1} and stay strictly binary after every kind):
- noise:   label unchanged; the generator's INPUT gets Gaussian noise (`add_input_noise`).
- latent:  label unchanged; the seed picks a new latent sample of a VAE generator.
- elastic: smooth random displacement field (Simard et al. 2003), mask nearest, image bilinear.
- affine:  random rotation, zoom and shift about the centre.
- flip:    one of the 7 non-identity flips/90-degree rotations (only shape-keeping ones if HxW is
           not square, so every variation has its source's shape).
- crop:    random square-proportioned crop resized back to the full size.
- morph:   dilate or erode the foreground by a disk of 1..morph_max_px px.

Geometric kinds warp the real image with the same transform, giving an aligned reference for SSIM.
Border pixels are filled by reflection in both mask and image, so the two stay consistent and no
artificial empty band appears at the edges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import dilation, disk, erosion
from skimage.transform import AffineTransform, resize, warp

from synthgen.config import VariationConfig

KINDS = ("noise", "elastic", "affine", "flip", "crop", "morph", "latent")

# Elastic and size-dependent defaults are tuned for 256 px images and scaled linearly with size.
_REFERENCE_SIZE = 256.0


@dataclass
class Variation:
    kind: str
    seed: int
    mask: np.ndarray
    """The new label, HxW uint8 in {0, 1}; equal to the source for noise and latent."""
    reference_mask: np.ndarray
    """The source put through only the label-preserving geometric part (flip, crop); the source
    itself for noise, latent, morph, elastic and affine. Compared with the source for the IoU metric."""
    noise_sigma: float = 0.0
    """> 0 only for 'noise': the std the generator must add to its input (see add_input_noise)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Every parameter drawn, JSON-serialisable, for audit; (mask, kind, seed, config) reproduces it."""


def add_input_noise(mask: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """What the generator receives for 'noise': float32 mask + N(0, sigma^2), seeded."""
    rng = np.random.default_rng(seed)
    return (mask.astype(np.float32) + rng.normal(0.0, sigma, mask.shape)).astype(np.float32)


def variation_plan(num_variations: int, kinds: list[str], base_seed: int,
                   source_index: int) -> list[tuple[str, int]]:
    """(kind, seed) per variation of one source mask: kinds cycled in order, seeds from SeedSequence.

    SeedSequence mixes (base_seed, source_index, v) into well-spread 32-bit seeds that are the same in
    every process and run, unlike hash(); neighbouring sources do not get overlapping seed ranges.
    """
    if num_variations < 0:
        raise ValueError(f"num_variations must be >= 0, got {num_variations}")
    if not kinds:
        raise ValueError("kinds is empty; choose from " + ", ".join(KINDS))
    for kind in kinds:
        _check_kind(kind)
    if base_seed < 0 or source_index < 0:
        raise ValueError(f"base_seed and source_index must be >= 0, got {base_seed}, {source_index}")
    return [(kinds[v % len(kinds)],
             int(np.random.SeedSequence([base_seed, source_index, v]).generate_state(1)[0]))
            for v in range(num_variations)]


def make_variation(mask: np.ndarray, kind: str, seed: int, cfg: VariationConfig | None = None,
                   image: np.ndarray | None = None) -> tuple[Variation, np.ndarray | None]:
    """One variation of `mask`, plus `image` (the source's real image) put through the same geometry.

    Deterministic: the same (mask, kind, seed, cfg) gives identical outputs. morph/noise/latent return
    a copy of the image unchanged (its geometry is unchanged).
    """
    _check_kind(kind)
    cfg = cfg or VariationConfig()
    _check_inputs(mask, image)
    mask = mask.astype(np.uint8)
    rng = np.random.default_rng(seed)
    out_image = None if image is None else image.copy()
    noise_sigma = 0.0
    new_mask, reference = mask.copy(), mask.copy()

    if kind == "noise":
        noise_sigma = cfg.noise_sigma
        params: dict[str, Any] = {"noise_sigma": float(cfg.noise_sigma)}
    elif kind == "latent":
        params = {"latent_seed": int(seed)}  # the generator samples z from this seed
    elif kind == "morph":
        radius = int(rng.integers(1, cfg.morph_max_px + 1))
        op = "dilate" if rng.random() < 0.5 else "erode"
        # Grayscale dilation/erosion on a {0,1} image is binary morphology; mode='reflect' (the
        # default) keeps objects touching the border from being eroded by the outside.
        new_mask = (dilation if op == "dilate" else erosion)(mask, disk(radius)).astype(np.uint8)
        params = {"operation": op, "radius_px": radius}
    elif kind == "flip":
        options = range(1, 8) if mask.shape[0] == mask.shape[1] else (2, 4, 6)  # 2, 4, 6 keep HxW
        code = int(rng.choice(list(options)))
        params = {"rot90": code % 4, "flip_lr": bool(code // 4)}
        new_mask = reference = _dihedral(mask, code)
        if image is not None:
            out_image = _dihedral(image, code)
    elif kind == "crop":
        params, new_mask, out_image = _crop(mask, image, rng, cfg)
        reference = new_mask
    elif kind == "affine":
        params, new_mask, out_image = _affine(mask, image, rng, cfg)
    else:  # elastic
        params, new_mask, out_image = _elastic(mask, image, rng, cfg)

    variation = Variation(kind=kind, seed=int(seed), mask=_binary(new_mask),
                          reference_mask=_binary(reference), noise_sigma=float(noise_sigma), params=params)
    return variation, out_image


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown variation kind '{kind}' (known: {', '.join(KINDS)})")


def _check_inputs(mask: np.ndarray, image: np.ndarray | None) -> None:
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"mask must hold only 0 and 1, got values {np.unique(mask)[:5].tolist()}...")
    if image is not None:
        if image.shape[:2] != mask.shape or image.ndim not in (2, 3):
            raise ValueError(f"image {image.shape} does not match mask {mask.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype}")


def _binary(mask: np.ndarray) -> np.ndarray:
    """Contiguous uint8 {0,1}: flips/rot90 return strided views that writers may not accept."""
    return np.ascontiguousarray(mask > 0, dtype=np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _dihedral(a: np.ndarray, code: int) -> np.ndarray:
    """code in 0..7: rotate by 90 * (code % 4) degrees, then mirror left-right if code >= 4."""
    out = np.rot90(a, code % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if code >= 4 else out)


def _crop(mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator,
          cfg: VariationConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    h, w = mask.shape
    fraction = float(rng.uniform(cfg.crop_min, 1.0))
    ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = (slice(top, top + ch), slice(left, left + cw))
    new_mask = resize(mask[window], (h, w), order=0, anti_aliasing=False, preserve_range=True)
    out_image = None
    if image is not None:
        out_image = _to_uint8(resize(image[window].astype(np.float64), (h, w) + image.shape[2:], order=1,
                                     anti_aliasing=False, preserve_range=True))
    params = {"fraction": fraction, "top": top, "left": left, "height": ch, "width": cw}
    return params, new_mask, out_image


def _affine(mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator,
            cfg: VariationConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    h, w = mask.shape
    degrees = float(rng.uniform(-cfg.affine_degrees, cfg.affine_degrees))
    scale = float(1.0 + rng.uniform(-cfg.affine_scale, cfg.affine_scale))
    shift_y, shift_x = (float(v) for v in rng.uniform(-cfg.affine_shift, cfg.affine_shift, 2))
    # Rotate and zoom about the image centre, then shift (skimage uses (x=col, y=row) coordinates).
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    tform = (AffineTransform(translation=-centre)
             + AffineTransform(scale=scale, rotation=np.deg2rad(degrees))
             + AffineTransform(translation=centre + [shift_x * w, shift_y * h]))
    new_mask = warp(mask, tform.inverse, order=0, mode="reflect", preserve_range=True)
    out_image = None
    if image is not None:
        out_image = _to_uint8(warp(image.astype(np.float64), tform.inverse, order=1, mode="reflect",
                                   preserve_range=True))
    params = {"degrees": degrees, "scale": scale, "shift_x": shift_x, "shift_y": shift_y,
              "matrix": np.asarray(tform.params).tolist()}
    return params, new_mask, out_image


def _elastic(mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator,
             cfg: VariationConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    h, w = mask.shape
    size_scale = min(h, w) / _REFERENCE_SIZE
    alpha, sigma = cfg.elastic_alpha * size_scale, cfg.elastic_sigma * size_scale
    displacement = []
    for _ in range(2):  # rows, then columns
        field_ = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (h, w)), sigma, mode="reflect")
        # Smoothing shrinks the field's amplitude by ~1/sigma; normalising its peak to 1 makes alpha
        # the largest displacement in px, a unit a user can reason about.
        peak = float(np.abs(field_).max())
        displacement.append(field_ * (alpha / peak) if peak > 0 else field_)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [rows + displacement[0], cols + displacement[1]]
    new_mask = ndimage.map_coordinates(mask, coords, order=0, mode="reflect")
    out_image = None
    if image is not None:
        planes = image[..., None] if image.ndim == 2 else image
        warped = np.stack([ndimage.map_coordinates(planes[..., c].astype(np.float64), coords, order=1,
                                                   mode="reflect") for c in range(planes.shape[2])], axis=-1)
        out_image = _to_uint8(warped.reshape(image.shape))
    magnitude = np.hypot(displacement[0], displacement[1])
    params = {"alpha_px": float(alpha), "sigma_px": float(sigma),
              "max_displacement_px": float(magnitude.max()), "mean_displacement_px": float(magnitude.mean())}
    return params, new_mask, out_image
