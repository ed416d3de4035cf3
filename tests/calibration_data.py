"""Image/mask pairs for the score calibration tests: procedural (seeded) and real, plus bad candidates.

    from calibration_data import DATA_KINDS, bad_candidates
    pairs = DATA_KINDS["thin_rgb"]()          # [(image uint8 HxWx3, mask {0,1} HxW), ...]
    bad = bad_candidates(pairs, 0)            # {"flat": ..., "other": ..., "noise": ..., ...}

The procedural images imitate microscopy: a smooth background texture, structures a few tens of gray
levels off it, optical blur, then sensor noise; thin structures are 1-3 px wide curves.
"""
from __future__ import annotations

import glob
import os

import numpy as np
from PIL import Image
from scipy import ndimage

HERE = os.path.dirname(__file__)
ISBI_SAMPLE = os.path.join(HERE, "..", "synthgen", "sample_data", "isbi2012", "train")
SSTEM = "/work/shared/data/ssTEM_drosophila_vnc_5class/train"
CROP = 256  # px of real images used: enough structures, fast scores


def _texture(rng: np.random.Generator, shape: tuple[int, ...], scale: float, amp: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.normal(0, 1, shape), scale)
    return t * amp / t.std()


def thin_rgb(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """4-6 wavy curves 1-3 px wide, 10-20 gray levels darker than a tinted textured background."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    t = np.linspace(0, 1, 4 * size)
    for _ in range(rng.integers(4, 7)):
        y0, y1, amp, freq, phase = *rng.uniform(0, size, 2), rng.uniform(3, 15), rng.uniform(0.5, 2), rng.uniform(0, 6.3)
        rows = np.clip(np.round(y0 + (y1 - y0) * t + amp * np.sin(2 * np.pi * freq * t + phase)), 0, size - 1)
        cols = np.round(t * (size - 1))
        if rng.random() < 0.5:
            rows, cols = cols, rows
        curve = np.zeros_like(mask)
        curve[rows.astype(int), cols.astype(int)] = True
        width = int(rng.integers(1, 4))
        mask |= ndimage.binary_dilation(curve, np.ones((width, width), bool)) if width > 1 else curve
    gray = rng.uniform(110, 150) + _texture(rng, mask.shape, 6, 10) - rng.uniform(10, 20) * mask
    tint = np.array([rng.uniform(0.8, 1.1), rng.uniform(0.9, 1.1), rng.uniform(0.6, 0.9)])
    img = gray[..., None] * tint + _texture(rng, (size, size, 3), 2, 3)
    img = ndimage.gaussian_filter(img, (0.7, 0.7, 0)) + rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def thick_gray(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """5-8 elliptic cells 6-18 px in radius, textured, 70 levels brighter than the background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(5, 9)):
        cy, cx, ry, rx = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 18), rng.uniform(6, 18)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img = 80 + 70 * mask + _texture(rng, mask.shape, 3, 12)
    img = ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _real(folder: str, foreground, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for path in sorted(glob.glob(os.path.join(folder, "images", "*.png")))[:n]:
        image = np.asarray(Image.open(path))[:CROP, :CROP]
        labels = np.asarray(Image.open(path.replace(os.sep + "images" + os.sep, os.sep + "masks" + os.sep)))
        pairs.append((image, foreground(labels[:CROP, :CROP]).astype(np.uint8)))
    return pairs


DATA_KINDS = {
    "thin_rgb": lambda: [thin_rgb(s) for s in range(6)],
    "thick_gray": lambda: [thick_gray(s) for s in range(6)],
    # ISBI 2012: membranes (1-5 px wide, dark) are 0 in the masks, as data.invert_mask=True reads them
    "isbi_membranes": lambda: _real(ISBI_SAMPLE, lambda m: m == 0, 6),
    # ssTEM classes (see its classes.txt): 1 membrane (thin), 2 mitochondria (thick blobs)
    "sstem_membrane": lambda: _real(SSTEM, lambda m: m == 1, 4),
    "sstem_mitochondria": lambda: _real(SSTEM, lambda m: m == 2, 4),
}
THIN = ("thin_rgb",)  # 1-3 px: a sigma-4 blur erases them (EM membranes are 3-8 px and survive it)


def available(kind: str) -> bool:
    return not kind.startswith("sstem") or os.path.isdir(SSTEM)


def bad_candidates(pairs: list[tuple[np.ndarray, np.ndarray]], i: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images that should not pass for the real image of mask i, each the real image's shape."""
    rng = np.random.default_rng(seed)
    image, mask = pairs[i]
    m = mask.astype(bool)
    fg, bg = image[m].mean(axis=0), image[~m].mean(axis=0)
    sigma = (4, 4, 0) if image.ndim == 3 else 4
    return {
        "flat": np.where(m[..., None] if image.ndim == 3 else m, fg, bg).astype(np.uint8),  # painted label
        "other": pairs[(i + 1) % len(pairs)][0],  # the real image of a different mask
        "noise": rng.integers(0, 256, image.shape).astype(np.uint8),
        "blur": ndimage.gaussian_filter(image.astype(float), sigma).round().astype(np.uint8),
        "shift": np.roll(image, (7, 5), axis=(0, 1)),
    }
