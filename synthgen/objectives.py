"""Search objectives: how good a generator is on held-out pairs. Plain torch/numpy, no Ray.

    spec = ObjectiveSpec("val_ssim", val_pairs=[[stem, image, mask], ...])
    evaluate = ObjectiveEvaluator(spec, cfg, channels)
    evaluate(state.nets)   # {"val_ssim": 0.41, "val_l1": 0.22}

Every objective is measured on the same validation tiles (up to tune.val_tiles tiles of
data.image_size cut from the validation pairs, so a 512 px validation image counts for more than one
centre crop). val_ssim and val_l1 are always reported; the selected objective is added:

- quality: the mean generate.weights score of one image per validation mask (diversity left out:
  there are no sibling variations to compare with).
- label_fidelity: mean IoU between each validation mask and a segmenter's prediction on the image
  generated from it; the segmenter is trained once, on the real training pairs, before the search.
- dice_gain: test Dice on the validation pairs of a segmenter trained on real + generated training
  pairs, minus that of one trained on the real pairs alone (`baseline_dice`, computed once). Both use
  the same seed and tune.seg_steps steps, so the difference is the effect of the generated data.
- realism (minimised): held-out accuracy of the classifier two-sample test (synthgen.realism.c2st,
  seed train.seed) telling the validation tiles from images generated from their masks, tiles of one
  validation image kept on one side (with several validation images) (0.5 = indistinguishable, 1.0 = always told apart). The VAE
  samples z here (seeded per tile), not z = 0: its mean image is blurrier than its samples. Needs >= 2
  validation images or tiles; a C2ST on few tiles is noisy (c2st_std is reported beside it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from synthgen.config import OBJECTIVES, Config, split_list
from synthgen.data import (Pair, fit_to_size, image_to_tensor, load_image, load_mask, mask_to_tensor,
                           tensor_to_image, tiles)
from synthgen.feedback import SegmenterSettings, segmenter_dice
from synthgen.quality import assess_quality, parse_weights, ssim
from synthgen.steps import render, render_seeded
from synthgen.variations import add_input_noise, make_variation, variation_plan

_RENDER_BATCH = 8  # tiles rendered at once: bounds memory at 256 px


@dataclass
class ObjectiveSpec:
    """What a trial needs to measure its objective; plain values, so it travels to Ray workers."""

    name: str
    val_pairs: list[list[str]]
    """[stem, image path, mask path] of each validation pair."""
    train_pairs: list[list[str]] = field(default_factory=list)
    """The training pairs (dice_gain generates from their masks and trains on their images)."""
    segmenter: str = ""
    """label_fidelity: directory of the segmenter trained on the real training pairs."""
    baseline_dice: float = 0.0
    """dice_gain: validation Dice of the segmenter trained on the real training pairs alone."""


def segmenter_settings(cfg: Config) -> SegmenterSettings:
    """The segmenter budget of the label_fidelity and dice_gain objectives (one seed: train.seed)."""
    e = cfg.evaluate
    return SegmenterSettings(steps=cfg.tune.seg_steps, batch_size=e.seg_batch, width=e.seg_width,
                             mixing=e.mixing, synthetic_fraction=e.synthetic_fraction,
                             synthetic_batch=e.synthetic_batch, synthetic_weight=e.synthetic_weight,
                             pretrain_steps=e.pretrain_steps, seeds=(cfg.train.seed,))


def load_full_items(rows: list[list[str]], cfg: Config, channels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Whole (image, mask) pairs, upscaled where smaller than data.image_size."""
    items = []
    for stem, image_path, mask_path in rows:
        image, mask = load_image(image_path, channels), load_mask(mask_path, cfg.data.invert_mask)
        items.append(fit_to_size(image, mask, cfg.data.image_size, name=image_path))
    return items


def validation_tiles(items: list[tuple[np.ndarray, np.ndarray]], size: int, limit: int,
                     names: list[str], groups: bool = False) -> tuple[list[np.ndarray], ...]:
    """Up to `limit` size x size (image, mask) tiles, spread evenly over all tiles of all items
    (groups=True: also the index of each tile's item)."""
    cut = [(t, n) for n, ((image, mask), name) in enumerate(zip(items, names))
           for t in tiles(name, mask, image, size, name)]
    keep = np.unique(np.linspace(0, len(cut) - 1, min(limit, len(cut))).round().astype(int))
    out = [cut[i][0].image for i in keep], [cut[i][0].mask for i in keep]
    return (*out, [cut[i][1] for i in keep]) if groups else out


def _generate(nets: dict[str, nn.Module], inputs: list[np.ndarray], seeds: list[int], device) -> list[np.ndarray]:
    out = []
    for i in range(0, len(inputs), _RENDER_BATCH):
        batch = torch.from_numpy(np.stack(inputs[i:i + _RENDER_BATCH]).astype(np.float32)).unsqueeze(1).to(device)
        out.extend(render_seeded(nets, batch, np.array(seeds[i:i + _RENDER_BATCH])))
    return out


class ObjectiveEvaluator:
    """Decodes the validation tiles (and whatever the objective needs) once; call it after each epoch."""

    def __init__(self, spec: ObjectiveSpec | dict, cfg: Config, channels: int,
                 device: torch.device | str = "cpu") -> None:
        self.spec = spec if isinstance(spec, ObjectiveSpec) else ObjectiveSpec(**spec)
        if self.spec.name not in OBJECTIVES:
            raise ValueError(f"unknown objective '{self.spec.name}' (known: {', '.join(OBJECTIVES)})")
        if not self.spec.val_pairs:
            raise ValueError("the objective needs at least one validation pair")
        self.cfg, self.device, self.size = cfg, torch.device(device), cfg.data.image_size
        self.val_items = load_full_items(self.spec.val_pairs, cfg, channels)
        self.images, self.masks, self.groups = validation_tiles(self.val_items, self.size, cfg.tune.val_tiles,
                                                                [r[1] for r in self.spec.val_pairs], groups=True)
        self.segmenter = None
        if self.spec.name == "label_fidelity":
            from synthgen.segment import load_segmenter

            self.segmenter = load_segmenter(self.spec.segmenter, self.device)
        if self.spec.name == "dice_gain":
            self.train_items = load_full_items(self.spec.train_pairs, cfg, channels)

    def __call__(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        # Validation uses z = 0 for the VAE (its mean image), like steps.validate; seeds only matter there.
        fakes = self._render_prior_mean(nets)
        out = {"val_ssim": float(np.mean([ssim(f, r) for f, r in zip(fakes, self.images)])),
               "val_l1": float(np.mean([np.abs(f.astype(np.float64) - r).mean() / 127.5
                                        for f, r in zip(fakes, self.images)]))}
        name = self.spec.name
        if name == "quality":
            weights = {k: w for k, w in parse_weights(self.cfg.generate.weights).items() if k != "diversity"}
            if not any(weights.values()):
                raise ValueError("the quality objective needs a non-zero weight besides diversity in generate.weights")
            out["quality"] = float(np.mean([assess_quality(f, m, r, weights=weights)["overall_quality"]
                                            for f, m, r in zip(fakes, self.masks, self.images)]))
        elif name == "label_fidelity":
            from synthgen.segment import label_fidelity

            out["label_fidelity"] = float(np.mean(label_fidelity(self.segmenter, fakes, self.masks, self.size)))
        elif name == "dice_gain":
            dice = segmenter_dice(self.train_items, self.val_items, self.synthetic_items(nets), self.size,
                                  segmenter_settings(self.cfg))
            out.update({"dice": dice, "dice_gain": dice - self.spec.baseline_dice})
        elif name == "realism":
            from synthgen.realism import c2st

            inputs = [m.astype(np.float32) for m in self.masks]
            samples = _generate(nets, inputs, list(range(len(inputs))), self.device)
            # One validation image: its tiles are the held-out units (they do not overlap).
            groups = self.groups if len(set(self.groups)) >= 2 else None
            result = c2st(self.images, samples, seed=self.cfg.train.seed, real_groups=groups, synth_groups=groups)
            out.update({"realism": result.accuracy, "c2st_std": result.std})
        return out

    def _render_prior_mean(self, nets: dict[str, nn.Module]) -> list[np.ndarray]:
        fakes = []
        for i in range(0, len(self.masks), _RENDER_BATCH):
            masks = torch.stack([mask_to_tensor(m) for m in self.masks[i:i + _RENDER_BATCH]]).to(self.device)
            fakes.extend(tensor_to_image(t) for t in render(nets, masks, prior_mean=True)[:, 0].float().cpu())
        return fakes

    def synthetic_items(self, nets: dict[str, nn.Module]) -> list[dict[str, torch.Tensor]]:
        """generate.num_variations generated pairs per training tile (generate.variations kinds)."""
        g, size = self.cfg.generate, self.size
        sources = [t for n, (image, mask) in enumerate(self.train_items)
                   for t in tiles(f"train{n}", mask, image, size, self.spec.train_pairs[n][1])]
        labels, inputs, seeds = [], [], []
        for s, src in enumerate(sources):
            for kind, seed in variation_plan(g.num_variations, split_list(g.variations), g.seed, s):
                variation, _ = make_variation(src.mask, kind, seed, self.cfg.variations)
                labels.append(variation.mask)
                inputs.append(add_input_noise(variation.mask, variation.noise_sigma, seed)
                              if variation.noise_sigma > 0 else variation.mask)
                seeds.append(seed)
        images = _generate(nets, inputs, seeds, self.device)
        return [{"image": image_to_tensor(im), "mask": mask_to_tensor(m)} for im, m in zip(images, labels)]


def pair_rows(pairs: list[Pair]) -> list[list[str]]:
    return [[p.stem, p.image, p.mask] for p in pairs]
