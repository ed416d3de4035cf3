"""Close the loop: generate -> train a segmenter -> downstream gain on held-out real pairs.

    from synthgen.api import SyntheticDataGenerator
    from synthgen.feedback import FeedbackOptimizer
    opt = FeedbackOptimizer({"steps": 300, "width": 16}, SyntheticDataGenerator.load("runs/p2p/model"))
    report = opt.optimize_synthetic_generation(("real/images", "real/masks"), ("test/images", "test/masks"))
    print(report["best_threshold"], report["best_gain"])

`downstream_gain` is the objective a hyperparameter search can maximise: the test Dice of a segmenter
trained on real pairs (classic augmentation) plus synthetic pairs, minus that of one trained on the
real pairs alone with the same step budget and seeds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from synthgen.data import load_synthetic_dataset
from synthgen.config import EvaluateConfig
from synthgen.mixing import fit_segmenter
from synthgen.segment import evaluate_segmenter, load_items


@dataclass
class SegmenterSettings:
    """Defaults: the evaluation's (synthgen.config.EvaluateConfig), their one source of truth."""

    steps: int = EvaluateConfig.seg_steps
    """Optimizer steps per segmenter (the same for every condition)."""
    batch_size: int = EvaluateConfig.seg_batch
    width: int = EvaluateConfig.seg_width
    mixing: str = EvaluateConfig.mixing
    """How synthetic items join the real ones: 'add', 'pretrain' or 'replace' (see EvaluateConfig.mixing)."""
    synthetic_fraction: float = EvaluateConfig.synthetic_fraction
    synthetic_batch: int = EvaluateConfig.synthetic_batch
    synthetic_weight: float = EvaluateConfig.synthetic_weight
    pretrain_steps: int = EvaluateConfig.pretrain_steps
    seeds: tuple[int, ...] = field(default=(0,))

    def mixing_kwargs(self) -> dict:
        """The mixing arguments of synthgen.mixing.fit_segmenter."""
        return {"mixing": self.mixing, "synthetic_fraction": self.synthetic_fraction,
                "synthetic_batch": self.synthetic_batch, "synthetic_weight": self.synthetic_weight,
                "pretrain_steps": self.pretrain_steps}


def segmenter_dice(real_items, test_items, synthetic, size: int, settings: SegmenterSettings) -> float:
    """Mean test Dice over `settings.seeds` of segmenters trained on real pairs (classic augmentation)
    plus, when given, `synthetic` items ({"image", "mask"} tensors) mixed in as settings.mixing says."""
    s, scores = settings, []
    for seed in s.seeds:
        model = fit_segmenter(real_items, size, s.steps, s.batch_size, seed=seed, width=s.width,
                              synthetic=synthetic, **s.mixing_kwargs())
        scores.append(evaluate_segmenter(model, test_items, size)["dice"])
    return float(np.mean(scores))


class FeedbackOptimizer:
    """Pick the generation setting (here: the acceptance threshold) that helps a segmenter most."""

    def __init__(self, segmentation_model: dict | SegmenterSettings | None = None, generator=None):
        s = segmentation_model or {}
        self.settings = s if isinstance(s, SegmenterSettings) else SegmenterSettings(**s)
        self.generator = generator  # a SyntheticDataGenerator with trained weights

    def downstream_gain(self, synthetic_dir: str, real_data: tuple[str, str], test_data: tuple[str, str],
                        invert_mask: bool, size: int, min_score: float | None = None) -> dict[str, float]:
        """Dice with and without the synthetic set (filtered at `min_score`), and their difference."""
        real_items = load_items(*real_data, invert_mask)
        test_items = load_items(*test_data, invert_mask)
        synthetic = load_synthetic_dataset(synthetic_dir, min_score)
        base = segmenter_dice(real_items, test_items, None, size, self.settings)
        with_syn = segmenter_dice(real_items, test_items, synthetic if len(synthetic) else None, size, self.settings)
        return {"dice_real": base, "dice_synthetic": with_syn, "gain": with_syn - base, "n_synthetic": len(synthetic)}

    def optimize_synthetic_generation(self, real_data: tuple[str, str], test_data: tuple[str, str],
                                      thresholds: tuple[float, ...] = (0.0, 0.4, 0.5, 0.6), num_variations: int = 4,
                                      out_dir: str = "runs/feedback", **generate) -> dict:
        """Generate once from the real masks keeping every candidate, then re-filter it at each
        threshold and measure the downstream gain; returns the table and the best threshold."""
        if self.generator is None:
            raise ValueError("FeedbackOptimizer needs a trained generator (SyntheticDataGenerator)")
        cfg = self.generator.cfg
        size, invert = cfg.data.image_size, cfg.data.invert_mask
        out = os.path.abspath(out_dir)
        synthetic_dir = os.path.join(out, "synthetic")
        # threshold -1 keeps every candidate (scores are >= -1): filtering happens below, per threshold
        self.generator.generate_synthetic_data(real_data[1], num_variations, synthetic_dir, overwrite=True,
                                               images=real_data[0], threshold=-1.0, png=False, **generate)
        real_items, test_items = load_items(*real_data, invert), load_items(*test_data, invert)
        base = segmenter_dice(real_items, test_items, None, size, self.settings)
        table = {}
        for t in thresholds:
            synthetic = load_synthetic_dataset(synthetic_dir, t)
            dice = segmenter_dice(real_items, test_items, synthetic, size, self.settings) if len(synthetic) else base
            table[t] = {"dice": dice, "gain": dice - base, "n_synthetic": len(synthetic)}
        best = max(table, key=lambda t: table[t]["gain"])
        return {"dice_real": base, "by_threshold": table, "best_threshold": best, "best_gain": table[best]["gain"]}
