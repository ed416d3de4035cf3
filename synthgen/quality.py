"""Quality metrics on uint8 numpy images (scikit-image), usable without torch or Ray."""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 images, HxW or HxWxC (C = 1 or 3); 1.0 means identical."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a, b = a[..., 0], b[..., 0]
    channel_axis = 2 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=255, channel_axis=channel_axis))
