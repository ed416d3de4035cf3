"""Train the downstream segmenter, and how synthetic items join the real ones (the mixing modes).

    from synthgen.data import SyntheticDataset
    from synthgen.mixing import fit_segmenter
    from synthgen.segment import evaluate_segmenter, load_items
    train = load_items("isbi/train/images", "isbi/train/masks", invert_mask=True)[:5]
    test = load_items("isbi/test/images", "isbi/test/masks", invert_mask=True)
    curve = []
    model = fit_segmenter(train, 128, 300, synthetic=SyntheticDataset("runs/syn"), mixing="add",
                          curve=curve, curve_every=100, test_items=test)
    print(evaluate_segmenter(model, test, 128), curve)  # curve: [{"step": 100, "dice": ...}, ...]

Mixing modes (MIXING_MODES), for a budget of `steps` optimiser steps of `batch_size` items:
  replace   each item of the one stream is synthetic with probability synthetic_fraction, so the real
            pairs are drawn only (1 - fraction) as often as by the baselines (the historical protocol);
  add       every step holds the baselines' exact real batch plus a synthetic batch of synthetic_batch
            items; loss = L(real) + synthetic_weight * L(synthetic) (GenSeg, Zhang et al. 2024);
  pretrain  pretrain_steps steps on synthetic items only, then the baselines' exact real schedule
            (fresh Adam and cosine) on real items only.
In 'add' and 'pretrain' the real stream is item for item the one the real/classic baseline of the same
seed trains on, so a difference in Dice comes from the synthetic items alone. Plain PyTorch: no Ray.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.config import MIXING_MODES
from synthgen.segment import SegmentationData, SegmentationUNet, evaluate_segmenter

PRECISIONS = ("auto", "fp32", "bf16")
SYNTHETIC_SEED_OFFSET = 1_000_003
"""Added to the seed of the synthetic stream (its crops, augmentations and order) in 'add' and
'pretrain', so those draws are independent of the real stream's and the real stream stays the baseline's."""


def _dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, None = fp32. 'auto' picks bf16 only where the hardware does bf16 matmuls natively
    (CPU AMX, CUDA bf16): there it halves the step time; emulated bf16 would be slower than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if precision == "auto":  # _is_amx_tile_supported is private, hence the fallback (then fp32)
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else bool(
            getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
        precision = "bf16" if native else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits + soft Dice; Dice pooled over the batch so crops without foreground stay defined."""
    logits = logits.float()
    prob = torch.sigmoid(logits)
    soft_dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return F.binary_cross_entropy_with_logits(logits, target) + (1.0 - soft_dice)


class _Stream:
    """Batches of `batch_size` items walking through seeded permutations of `data`, cycling as needed."""

    def __init__(self, data: torch.utils.data.Dataset, batch_size: int, seed: int, weight: float = 1.0) -> None:
        self.data, self.batch_size, self.weight = data, batch_size, weight
        self.order, self.queue = torch.Generator().manual_seed(seed), []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.queue) < self.batch_size:
            self.queue.extend(torch.randperm(len(self.data), generator=self.order).tolist())
        items = [self.data[j] for j in self.queue[:self.batch_size]]
        del self.queue[:self.batch_size]
        return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])


def _phase(model: SegmentationUNet, streams: list[_Stream], steps: int, lr: float, dev: torch.device,
           dtype: torch.dtype | None, log_every: int = 0, after_step: Callable[[int], None] | None = None) -> None:
    """`steps` Adam steps (fresh optimiser, cosine from lr to 0); each step takes one batch per stream
    through ONE forward pass (BatchNorm sees the joint batch) and sums the streams' weighted losses."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batches = [s.next() for s in streams]
        x = torch.cat([b[0] for b in batches]).to(dev, memory_format=torch.channels_last)
        y = torch.cat([b[1] for b in batches]).to(dev)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss, first = 0.0, 0
        for s, (bx, _) in zip(streams, batches):
            part = _loss(logits[first:first + len(bx)], y[first:first + len(bx)])
            # Weight 1 for the first stream: its loss is then exactly the single-stream one (bit-identical).
            loss = part if first == 0 else loss + s.weight * part
            first += len(bx)
        # Cosine decay to 0 over the budget: with a constant rate the test Dice of the final weights swung
        # by up to 0.3 from one 100-step checkpoint to the next on ISBI, drowning the condition effects.
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step}/{steps} loss {loss.item():.4f} {(time.perf_counter() - start) / step:.3f} s/step")
        if after_step is not None:
            after_step(step)


def train_segmenter(data: torch.utils.data.Dataset, steps: int, batch_size: int = 8, lr: float = 1e-3,
                    seed: int = 0, width: int = 16, device: str = "cpu", log_every: int = 0,
                    precision: str = "auto", synthetic_data: torch.utils.data.Dataset | None = None,
                    mixing: str = "replace", synthetic_batch: int = 0, synthetic_weight: float = 1.0,
                    pretrain_steps: int = 0, curve: list[dict] | None = None, curve_every: int = 0,
                    test_items: list[tuple[np.ndarray, np.ndarray]] | None = None, size: int = 0) -> SegmentationUNet:
    """Train a SegmentationUNet for exactly `steps` Adam steps on `data` (a fixed budget makes conditions
    comparable), plus `synthetic_data` as `mixing` says (see the module docstring; 'replace' ignores
    synthetic_data, since `data` already mixes). Returns the model in eval mode.

    Loss: BCE-with-logits + soft Dice. lr: Adam's initial rate, decayed to 0 by a cosine over `steps`.
    synthetic_batch: synthetic items per 'add' step (0 = batch_size). synthetic_weight: lambda of 'add'.
    pretrain_steps: synthetic-only steps of 'pretrain' (0 = steps), batch batch_size, their own cosine.
    Same seed, data and machine -> identical weights. log_every: print loss and s/step every N steps
    (0 = silent). precision: 'fp32', 'bf16' (autocast) or 'auto' (see _dtype).
    curve: a list to append {"step", "dice", "dice_mean"} to after every curve_every-th step of the real
    schedule and after the last one, scored on test_items with `size` px windows; scoring draws no
    random numbers and leaves BatchNorm untouched, so the weights do not depend on it.
    """
    if steps < 1 or batch_size < 1 or len(data) == 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and a non-empty dataset, "
                         f"got {steps}, {batch_size}, {len(data)} items")
    if mixing not in MIXING_MODES:
        raise ValueError(f"unknown mixing '{mixing}' (known: {', '.join(MIXING_MODES)})")
    if synthetic_batch < 0 or pretrain_steps < 0 or synthetic_weight < 0:
        raise ValueError(f"need synthetic_batch, pretrain_steps, synthetic_weight >= 0, "
                         f"got {synthetic_batch}, {pretrain_steps}, {synthetic_weight}")
    if curve is not None and (curve_every < 1 or not test_items or size < 1):
        raise ValueError("a curve needs curve_every >= 1, test_items and size >= 1")
    if synthetic_data is not None and len(synthetic_data) == 0:
        raise ValueError("synthetic_data is empty")
    dev = torch.device(device)
    dtype = _dtype(precision, dev)
    # Subnormal floats take a slow microcode path on x86: one ISBI run slowed from 0.2 to 7 s/step once
    # its gradients went subnormal. Flushing them to zero costs nothing measurable here.
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model = SegmentationUNet(int(data[0]["image"].shape[0]), width)
    # channels_last lets oneDNN skip layout reorders around every conv (15-30% faster on CPU).
    model = model.to(dev, memory_format=torch.channels_last).train()
    real = _Stream(data, batch_size, seed)
    mixed = synthetic_data is not None and mixing != "replace"
    syn_seed = seed + SYNTHETIC_SEED_OFFSET
    if mixed and mixing == "pretrain":
        _phase(model, [_Stream(synthetic_data, batch_size, syn_seed)], pretrain_steps or steps, lr, dev, dtype,
               log_every)
    streams = [real]
    if mixed and mixing == "add":
        streams.append(_Stream(synthetic_data, synthetic_batch or batch_size, syn_seed, synthetic_weight))

    def score(step: int) -> None:
        if step % curve_every == 0 or step == steps:
            curve.append({"step": step, **{k: v for k, v in evaluate_segmenter(model, test_items, size).items()
                                           if k in ("dice", "dice_mean")}})
            model.train()

    _phase(model, streams, steps, lr, dev, dtype, log_every, score if curve is not None else None)
    return model.eval()


def fit_segmenter(real_items: list[tuple[np.ndarray, np.ndarray]], size: int, steps: int, batch_size: int = 8,
                  augment: str = "classic", seed: int = 0, width: int = 16,
                  synthetic: torch.utils.data.Dataset | None = None, synthetic_fraction: float = 0.0,
                  mixing: str = "replace", synthetic_batch: int = 0, synthetic_weight: float = 1.0,
                  pretrain_steps: int = 0, curve: list[dict] | None = None, curve_every: int = 0,
                  test_items: list[tuple[np.ndarray, np.ndarray]] | None = None) -> SegmentationUNet:
    """The usual recipe: SegmentationData with a fresh crop at every draw, then train_segmenter.

    'replace' mixes `synthetic` into the one stream at `synthetic_fraction` (ignored without
    `synthetic`). 'add' and 'pretrain' keep the real stream exactly the baseline's (same seed, length
    steps * batch_size) and draw synthetic items from their own SegmentationData (same `augment`, seed
    offset by SYNTHETIC_SEED_OFFSET), so both see the real pairs exactly as often as the baselines.
    """
    if mixing not in MIXING_MODES:
        raise ValueError(f"unknown mixing '{mixing}' (known: {', '.join(MIXING_MODES)})")
    replace = mixing == "replace" and synthetic is not None
    data = SegmentationData(real_items, size, augment, synthetic if replace else None,
                            synthetic_fraction if replace else 0.0, seed, length=steps * batch_size)
    synthetic_data = None
    if synthetic is not None and not replace:
        draws = steps * (synthetic_batch or batch_size) if mixing == "add" else (pretrain_steps or steps) * batch_size
        synthetic_data = SegmentationData([], size, augment, synthetic, 1.0, seed + SYNTHETIC_SEED_OFFSET, draws)
    return train_segmenter(data, steps, batch_size, seed=seed, width=width, synthetic_data=synthetic_data,
                           mixing=mixing, synthetic_batch=synthetic_batch, synthetic_weight=synthetic_weight,
                           pretrain_steps=pretrain_steps, curve=curve, curve_every=curve_every,
                           test_items=test_items, size=size)
