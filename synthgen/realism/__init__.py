"""Realism of a synthetic image set against real images, with no downloaded weights (no Ray).

    from synthgen.realism import format_realism, realism_report
    report = realism_report(real_images, real_masks, synth_images, synth_masks, seed=0)
    print(format_realism(report))   # c2st 0.97±0.01  fg std×0.42 hf×0.05  bg ...  spectrum Δ0.81

Two families of figures, flat floats (NaN where a region is missing from a set):
- texture (texture.py): per mask region (fg, bg) mean_diff (synthetic - real gray level), std_ratio and
  hf_ratio (synthetic / real intensity spread and Laplacian variance, 1.0 = same), and
  spectrum_distance (mean |Δ log10 power| over the radial spectrum, 0 = same).
- c2st_accuracy (two_sample.py): held-out accuracy of a small CNN telling real from synthetic crops
  (0.5 = indistinguishable, 1.0 = always told apart), with c2st_std and c2st_n_test.
"""
from __future__ import annotations

import math

import numpy as np

from synthgen.realism.texture import (check_set, compare_stats, compare_texture, radial_spectrum, texture_stats,
                                      to_gray)
from synthgen.realism.two_sample import C2STResult, c2st

__all__ = ["realism_report", "format_realism", "json_figures", "compare_texture", "texture_stats",
           "compare_stats", "radial_spectrum", "to_gray", "c2st", "C2STResult", "HEADLINE"]

HEADLINE = ("c2st_accuracy", "fg/hf_ratio", "bg/hf_ratio", "spectrum_distance")
"""The figures plots and summaries lead with."""


def realism_report(real_images: list[np.ndarray], real_masks: list[np.ndarray],
                   synth_images: list[np.ndarray], synth_masks: list[np.ndarray], seed: int = 0,
                   two_sample: bool = True, **c2st_args) -> dict[str, float]:
    """Texture figures and (two_sample=True) the C2ST accuracy of synthetic vs real images.

        realism_report(reals, real_masks, fakes, fake_masks, seed=0)["c2st_accuracy"]

    Images: uint8 HxW, HxWx1 or HxWx3 of any size; masks: HxW of {0, 1}. c2st_args go to
    two_sample.c2st (crop, steps, batch_size, width, lr, test_crops). Raises ValueError for an
    empty set, a mask that does not match its image or is not binary.
    """
    check_set(real_images, real_masks, "real")
    check_set(synth_images, synth_masks, "synthetic")
    out = compare_texture(real_images, real_masks, synth_images, synth_masks)
    if two_sample:
        out.update(c2st(real_images, synth_images, seed=seed, **c2st_args).to_dict())
    return out


def json_figures(report: dict[str, float]) -> dict[str, float | None]:
    """The report with NaN as None (JSON has no NaN), rounded to 4 decimals."""
    return {k: None if v is None or math.isnan(v) else round(float(v), 4) for k, v in report.items()}


def format_realism(report: dict[str, float | None]) -> str:
    """One line of the headline figures: 'c2st 0.97±0.01  fg std×0.42 hf×0.05 Δmean+0.03  bg ...'."""
    def f(key: str, fmt: str) -> str:
        v = report.get(key)
        return "n/a" if v is None or math.isnan(v) else format(v, fmt)

    parts = []
    if "c2st_accuracy" in report:
        parts.append(f"c2st {f('c2st_accuracy', '.2f')}±{f('c2st_std', '.2f')}")
    for region in ("fg", "bg"):
        parts.append(f"{region} std×{f(region + '/std_ratio', '.2f')} hf×{f(region + '/hf_ratio', '.2f')} "
                     f"Δmean{f(region + '/mean_diff', '+.3f')}")
    parts.append(f"spectrum Δ{f('spectrum_distance', '.2f')}")
    return "  ".join(parts)
