"""Texture statistics per mask region and their real-vs-synthetic comparison (numpy/scipy, no torch).

    from synthgen.realism.texture import compare_texture
    figures = compare_texture(real_images, real_masks, synth_images, synth_masks)
    figures["fg/hf_ratio"]   # 1.0 = as much fine texture as the real foreground; flat images give ~0

Every image is reduced to gray in [0, 1] (RGB via luminance, skimage.color.rgb2gray). Per region
(foreground = mask 1, background = mask 0, each eroded by `erode_px` so the label boundary, where
intensity jumps by construction, does not dominate) and per image: the mean and standard deviation of
the intensity, and the variance of the Laplacian (high-frequency energy). A set's figure is the mean
over its images that have at least MIN_REGION_PX pixels in the region (NaN when none has).

The power spectrum is that of the whole gray image (both regions: it measures texture scale, which the
mask does not change), mean-subtracted and Hann-windowed (so the image border does not add a spurious
cross of high frequencies), radially averaged into SPECTRUM_BINS bins of normalised frequency
(cycles/px, 0..0.5), so images of any size are comparable, and averaged over the set.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray

SPECTRUM_BINS = 32  # radial bins over 0..0.5 cycles/px: fine enough for 32 px crops and up
MIN_REGION_PX = 16  # fewer eroded pixels than this say nothing about a region's texture
REGIONS = {"fg": 1, "bg": 0}


def to_gray(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 HxW, HxWx1 or HxWx3 -> float64 HxW in [0, 1] (RGB via luminance)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy image, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image.astype(np.float64) / 255.0
    if image.ndim == 3 and image.shape[2] == 3:
        return rgb2gray(image)
    raise ValueError(f"{name}: expected HxW, HxWx1 or HxWx3, got shape {image.shape}")


def check_set(images: list[np.ndarray], masks: list[np.ndarray], name: str) -> None:
    """ValueError unless images and masks are non-empty, equally many, {0,1} masks matching each image."""
    if len(images) == 0:
        raise ValueError(f"{name}: the set is empty")
    if len(images) != len(masks):
        raise ValueError(f"{name}: {len(images)} images but {len(masks)} masks")
    for i, (image, mask) in enumerate(zip(images, masks)):
        mask = np.asarray(mask)
        if mask.shape != np.asarray(image).shape[:2]:
            raise ValueError(f"{name}[{i}]: mask shape {mask.shape} does not match image shape "
                             f"{np.asarray(image).shape[:2]}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name}[{i}]: mask must hold only 0 and 1, got values {np.unique(mask)[:5]}")


def radial_spectrum(gray: np.ndarray, bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Radially averaged power spectrum of a gray image (Hann-windowed, mean removed), `bins` values
    over normalised frequency 0..0.5 cycles/px.

        radial_spectrum(np.random.default_rng(0).random((64, 64))).shape   # (32,)
    """
    h, w = gray.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((gray - gray.mean()) * window)) ** 2 / window.sum() ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx)
    keep = radius <= 0.5  # the corners beyond Nyquist in one direction only exist along the diagonals
    index = np.minimum((radius[keep] / 0.5 * bins).astype(int), bins - 1)
    total = np.bincount(index, power[keep], bins)
    count = np.bincount(index, minlength=bins)
    return total / np.maximum(count, 1)


def region_stats(gray: np.ndarray, mask: np.ndarray, erode_px: int = 2) -> dict[str, float]:
    """{'fg/mean', 'fg/std', 'fg/hf', 'bg/...'} of one gray image; NaN for a region too small."""
    laplacian = ndimage.laplace(gray)  # of the whole image, so region edges see their true neighbours
    out = {}
    for region, value in REGIONS.items():
        inside = mask == value
        if erode_px > 0:
            inside = ndimage.binary_erosion(inside, iterations=erode_px, border_value=1)
        if inside.sum() < MIN_REGION_PX:
            out.update({f"{region}/mean": np.nan, f"{region}/std": np.nan, f"{region}/hf": np.nan})
            continue
        pixels = gray[inside]
        out.update({f"{region}/mean": float(pixels.mean()), f"{region}/std": float(pixels.std()),
                    f"{region}/hf": float(laplacian[inside].var())})
    return out


def texture_stats(images: list[np.ndarray], masks: list[np.ndarray], erode_px: int = 2,
                  name: str = "images") -> dict:
    """A set's mean region statistics (floats, NaN where no image has the region) and its mean
    radial spectrum ('spectrum', an array of SPECTRUM_BINS).

        texture_stats([np.full((32, 32), 128, np.uint8)], [np.zeros((32, 32), np.uint8)])["bg/std"]  # 0.0
    """
    check_set(images, masks, name)
    grays = [to_gray(im, f"{name}[{i}]") for i, im in enumerate(images)]
    per_image = [region_stats(g, np.asarray(m), erode_px) for g, m in zip(grays, masks)]
    out: dict = {}
    for key in per_image[0]:
        values = np.array([s[key] for s in per_image])
        out[key] = float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")
    out["spectrum"] = np.mean([radial_spectrum(g) for g in grays], axis=0)
    return out


def _ratio(synth: float, real: float) -> float:
    if np.isnan(synth) or np.isnan(real) or real <= 0:
        return float("nan")
    return synth / real


def spectrum_distance(real: np.ndarray, synth: np.ndarray) -> float:
    """Mean |log10 synth - log10 real| over the radial bins except DC (0 = same spectrum; 1 = a
    factor of ten in power on average)."""
    floor = 1e-12  # a perfectly flat image has zero power: keep the log finite
    return float(np.abs(np.log10(synth[1:] + floor) - np.log10(real[1:] + floor)).mean())


def compare_stats(real: dict, synth: dict) -> dict[str, float]:
    """Flat figures from two texture_stats results: <region>/mean_diff (synthetic - real, gray units),
    <region>/std_ratio and <region>/hf_ratio (synthetic / real, 1.0 = same) and spectrum_distance."""
    out = {}
    for region in REGIONS:
        out[f"{region}/mean_diff"] = synth[f"{region}/mean"] - real[f"{region}/mean"]
        out[f"{region}/std_ratio"] = _ratio(synth[f"{region}/std"], real[f"{region}/std"])
        out[f"{region}/hf_ratio"] = _ratio(synth[f"{region}/hf"], real[f"{region}/hf"])
    out["spectrum_distance"] = spectrum_distance(real["spectrum"], synth["spectrum"])
    return out


def compare_texture(real_images: list[np.ndarray], real_masks: list[np.ndarray],
                    synth_images: list[np.ndarray], synth_masks: list[np.ndarray],
                    erode_px: int = 2) -> dict[str, float]:
    """compare_stats of the two sets' texture_stats (see there); NaN where a region is missing."""
    real = texture_stats(real_images, real_masks, erode_px, "real")
    synth = texture_stats(synth_images, synth_masks, erode_px, "synthetic")
    return compare_stats(real, synth)
