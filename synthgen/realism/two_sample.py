"""Classifier two-sample test (C2ST): can a small CNN tell real crops from synthetic ones? (torch, no Ray)

    from synthgen.realism.two_sample import c2st
    result = c2st(real_images, synth_images, seed=0)
    result.accuracy   # held-out accuracy: 0.5 = indistinguishable, 1.0 = always told apart

Lopez-Paz & Oquab, "Revisiting classifier two-sample tests" (ICLR 2017). Each set's images are split
in two halves *by image* (or by a group label): a classifier trains on random crops of one half and is
scored on crops of the other, so it must learn what tells the sets apart, not memorise images; then
the halves swap (two-fold cross-fitting). Classes are balanced in
every training batch and in the test crops. Pixels go in as they are (x / 127.5 - 1, no per-crop
normalisation): a brightness or contrast difference is part of (un)realism. Training crops get random
flips and 90-degree rotations, which neither set's realism depends on.

Repeatable: every draw comes from generators seeded by `seed`, and the network trains on one
intra-op thread (restored afterwards), so the same inputs and seed give the same accuracy bit for bit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from synthgen.realism.texture import to_gray


@dataclass
class C2STResult:
    accuracy: float
    """Held-out accuracy on n_test balanced crops (0.5 = chance)."""
    std: float
    """Binomial standard error of `accuracy`: sqrt(a (1 - a) / n_test)."""
    n_test: int
    """Held-out crops scored (half real, half synthetic)."""

    def to_dict(self, prefix: str = "c2st_") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in asdict(self).items()}


class CropClassifier(nn.Module):
    """Three strided 3x3 convolutions, global average pooling, one logit (real > 0)."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            # Strided from the first layer: a 3x3 filter still sees pixel-scale texture, at a quarter of the cost.
            nn.Conv2d(channels, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(2 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))[:, 0]


def _as_arrays(images: list[np.ndarray], rgb: bool, name: str) -> list[np.ndarray]:
    """Each image as float32 CxHxW in [-1, 1]: RGB kept when both sets are RGB, else gray."""
    out = []
    for i, im in enumerate(images):
        if rgb:
            out.append(im.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)
        else:
            out.append(to_gray(im, f"{name}[{i}]")[None].astype(np.float32) * 2.0 - 1.0)
    return out


def _is_rgb(im: np.ndarray) -> bool:
    return im.ndim == 3 and im.shape[2] == 3


def _crops(arrays: list[np.ndarray], indices: np.ndarray, n: int, crop: int,
           rng: np.random.Generator) -> np.ndarray:
    """n random crop x crop patches drawn from the images `indices` (image, then position)."""
    out = np.empty((n, arrays[0].shape[0], crop, crop), np.float32)
    for j, i in enumerate(rng.choice(indices, n)):
        _, h, w = arrays[i].shape
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        out[j] = arrays[i][:, y:y + crop, x:x + crop]
    return out


def _halves(n: int, groups: list | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Image indices in two halves; images sharing a group label stay in the same half."""
    labels = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"c2st: {len(labels)} group labels for {n} images")
    unique = sorted(set(labels), key=str)
    if len(unique) < 2:
        raise ValueError("c2st: each set needs images from at least 2 groups (one to train, one to test)")
    order = [unique[i] for i in rng.permutation(len(unique))]
    first = set(order[:len(order) // 2])
    side = np.array([label in first for label in labels])
    return [np.flatnonzero(side), np.flatnonzero(~side)]


def _fit_and_score(sets: list[list[np.ndarray]], train: list[np.ndarray], test_x: np.ndarray, crop: int,
                   steps: int, batch_size: int, width: int, lr: float, rng: np.random.Generator) -> np.ndarray:
    """Train a fresh CropClassifier on the `train` images of each set; its logits on test_x."""
    model = CropClassifier(sets[0][0].shape[0], width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    half = batch_size // 2
    y = torch.cat([torch.ones(half), torch.zeros(half)])
    for _ in range(steps):
        x = np.concatenate([_crops(s, idx, half, crop, rng) for s, idx in zip(sets, train)])
        x = np.rot90(x, int(rng.integers(0, 4)), axes=(2, 3))
        if rng.random() < 0.5:
            x = x[:, :, :, ::-1]
        loss = nn.functional.binary_cross_entropy_with_logits(model(torch.from_numpy(x.copy())), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(test_x)).numpy()


def c2st(real_images: list[np.ndarray], synth_images: list[np.ndarray], seed: int = 0, crop: int = 32,
         steps: int = 150, batch_size: int = 32, width: int = 16, lr: float = 2e-3, test_crops: int = 256,
         real_groups: list | None = None, synth_groups: list | None = None) -> C2STResult:
    """Train CropClassifier to tell the sets apart; its accuracy on held-out images' crops.

        c2st([real uint8 HxW(xC) ...], [synthetic ...], seed=0).accuracy

    Two-fold cross-fitting: each set's images are split in two halves; one classifier trains on
    halves A and is scored on halves B, a second the other way round, and the accuracy is over both.
    Every image is then scored once, which halves the spread that a few odd images (a brighter slice)
    give a single split. real_groups / synth_groups: optional label per image (e.g. its source
    image, for tiles of one image); a group never lands on both sides. Each set needs >= 2 images
    (groups). crop: side of the random crops, clipped to the smallest image side. steps x batch_size:
    each fold's training budget (half of each batch real). test_crops: held-out crops per class, over
    both folds. ~3 s on one CPU thread at the defaults.
    """
    for name, images in (("real", real_images), ("synthetic", synth_images)):
        if len(images) < 2:
            raise ValueError(f"c2st: the {name} set needs at least 2 images (one to train, one to test), "
                             f"got {len(images)}")
    rgb = all(_is_rgb(im) for im in real_images) and all(_is_rgb(im) for im in synth_images)
    sets = [_as_arrays(real_images, rgb, "real"), _as_arrays(synth_images, rgb, "synthetic")]
    crop = min(crop, *(a.shape[1] for s in sets for a in s), *(a.shape[2] for s in sets for a in s))
    rng = np.random.default_rng(seed)
    halves = [_halves(len(s), g, rng) for s, g in zip(sets, (real_groups, synth_groups))]
    per_fold = [test_crops // 2, test_crops - test_crops // 2]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: CPU kernels then sum in a fixed order (bit-repeatable)
    correct, n = 0, 0
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            torch.manual_seed(seed)
            for fold in (0, 1):
                test_x = np.concatenate([_crops(s, h[fold], per_fold[fold], crop, rng) for s, h in zip(sets, halves)])
                test_y = np.repeat([True, False], per_fold[fold])
                logits = _fit_and_score(sets, [h[1 - fold] for h in halves], test_x, crop, steps, batch_size,
                                        width, lr, rng)
                correct += int(((logits > 0) == test_y).sum())
                n += len(test_y)
    finally:
        torch.set_num_threads(threads)
    accuracy = correct / n
    return C2STResult(accuracy, float(np.sqrt(accuracy * (1 - accuracy) / n)), n)
