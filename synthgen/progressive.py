"""Progressive training: train at growing resolutions (64 -> 128 -> 256 px), fading each new one in.

    synthgen train --model pix2pix --resolutions 64,128,256 --fade-in-epochs 2 --epochs 12 ...
    gen.train_at_resolution(64, epochs=4); gen.train_at_resolution(128, 4, fade_in_epochs=2)   # Python API

Unlike ProGAN (Karras et al. 2018) the networks do not grow: both are fully convolutional, and their
depth is set by the smallest resolution (the models' `min_size`), so one set of weights runs at every
resolution and the final model is an ordinary checkpoint at data.image_size. Early epochs are then
cheap (a 64 px step costs ~1/16 of a 256 px one) and learn the coarse layout; later ones add detail.

Fade-in, as in ProGAN: in the k-th of the first `fade_in_epochs` epochs of a new stage the losses see
alpha * x + (1 - alpha) * up(x at the previous resolution), alpha = (k + 1) / (fade_in_epochs + 1), for
the real images (down- then up-sampled) and for the model's output (the model run on the down-sampled
mask, up-sampled). The switch to a finer grid therefore starts from what the previous stage produced
instead of a jump in the loss.

The schedule is a pure function of the epoch (like the learning rate), so a resumed run and every
data-parallel worker agree on it without extra state. Plain PyTorch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from synthgen.config import Config, ConfigError, split_list


MIN_RESOLUTION = 32
"""The 70x70 PatchGAN needs >= 32 px to leave its last instance norm more than one pixel."""


@dataclass(frozen=True)
class Stage:
    """What one epoch trains at."""

    resolution: int
    previous: int | None = None
    """The resolution being faded out, None when not fading."""
    alpha: float = 1.0
    """Weight of `resolution` in the blend; 1.0 = no fade."""
    full: int | None = field(default=None, compare=False)
    """The data's own resolution (the schedule's last), None = `resolution`."""

    @property
    def pixel_ratio(self) -> float:
        """(full / resolution)**2: what a loss summed per image is scaled by to mean the same at every stage."""
        return (self.full / self.resolution) ** 2 if self.full else 1.0


def _ints(text: str, key: str) -> list[int]:
    try:
        return [int(v) for v in split_list(text)]
    except ValueError:
        raise ConfigError(f"{key} must be a comma list of integers, got {text!r}") from None


def epochs_per_stage(cfg: Config) -> list[int]:
    """train.stage_epochs, or train.epochs split evenly over the resolutions (later ones get the rest)."""
    t = cfg.train
    n = len(split_list(t.resolutions))
    if t.stage_epochs:
        return _ints(t.stage_epochs, "train.stage_epochs")
    return [t.epochs // n + (i >= n - t.epochs % n) for i in range(n)]


def depth_for(model: str, size: int) -> int:
    """How many times the model's networks halve an input when built with min_size=size."""
    from synthgen.models import NETWORKS

    return NETWORKS["vae" if model == "vae" else "generator"].depth_for(size)


def schedule_problems(cfg: Config) -> list[str]:
    """Everything wrong with the progressive-training keys of `cfg` (empty when fine)."""
    t, size = cfg.train, cfg.data.image_size
    if t.fade_in_epochs < 0:
        return ["train.fade_in_epochs must be >= 0"]
    if not t.resolutions:
        return ["train.stage_epochs needs train.resolutions"] if t.stage_epochs else []
    try:
        resolutions = _ints(t.resolutions, "train.resolutions")
        epochs = epochs_per_stage(cfg)
    except ConfigError as e:
        return [str(e)]
    problems = []
    if any(b <= a for a, b in zip(resolutions, resolutions[1:])) or resolutions[0] < MIN_RESOLUTION:
        problems.append(f"train.resolutions must increase and start at >= {MIN_RESOLUTION} px, got {t.resolutions}")
    if resolutions[-1] != size:
        problems.append(f"train.resolutions must end at data.image_size ({size}), got {t.resolutions}")
    depth = depth_for(t.model, resolutions[0]) if resolutions[0] >= MIN_RESOLUTION else 0
    if any(r % 2**depth for r in resolutions):
        problems.append(f"train.resolutions: the {t.model} networks for {resolutions[0]} px halve their input "
                        f"{depth} times, so every resolution must be a multiple of {2**depth}")
    if len(epochs) != len(resolutions) or sum(epochs) != t.epochs or min(epochs) < 1:
        problems.append(f"train.stage_epochs must give each of the {len(resolutions)} resolutions >= 1 epoch "
                        f"and sum to train.epochs ({t.epochs}), got {epochs}")
    elif len(epochs) > 1 and t.fade_in_epochs >= min(epochs[1:]):
        problems.append(f"train.fade_in_epochs ({t.fade_in_epochs}) must be smaller than every stage after "
                        f"the first (epochs per stage: {epochs})")
    return problems


def stages(resolutions: list[int], epochs: list[int], fade_in_epochs: int, previous: int | None = None,
           full: int | None = None) -> list[Stage]:
    """One Stage per epoch: `epochs[i]` epochs at `resolutions[i]`, each new resolution (including
    the first, when `previous` is given) faded in over `fade_in_epochs` epochs; `full`: the data's
    resolution (default: the last of `resolutions`)."""
    full = full or resolutions[-1]
    out = []
    for resolution, n in zip(resolutions, epochs):
        for k in range(n):
            fading = previous is not None and previous != resolution and k < fade_in_epochs
            alpha = (k + 1) / (fade_in_epochs + 1) if fading else 1.0
            out.append(Stage(resolution, previous if fading else None, alpha, full))
        previous = resolution
    return out


def stage_for(cfg: Config, epoch: int) -> Stage:
    """The Stage of 0-based `epoch` under cfg.train's schedule (data.image_size without one)."""
    if not cfg.train.resolutions:
        return Stage(cfg.data.image_size)
    plan = stages(_ints(cfg.train.resolutions, "train.resolutions"), epochs_per_stage(cfg), cfg.train.fade_in_epochs)
    return plan[min(epoch, len(plan) - 1)]  # a run given more epochs later keeps the last stage


def min_size(cfg: Config) -> int | None:
    """The smallest training resolution when it is below data.image_size (the networks' min_size)."""
    first = _ints(cfg.train.resolutions, "train.resolutions")[:1]
    return first[0] if first and first[0] < cfg.data.image_size else None


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): 'area' to shrink (a mask becomes its foreground fraction per
    pixel, so thin structures survive), bilinear to enlarge."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if size < x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def faded(stage: Stage | None, full: torch.Tensor, at_previous: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """alpha * full + (1 - alpha) * up(at_previous(stage.previous)); `full` itself when not fading."""
    if stage is None or stage.previous is None or stage.alpha >= 1.0:
        return full
    old = resize(at_previous(stage.previous), full.shape[-1])
    return stage.alpha * full + (1.0 - stage.alpha) * old.to(full.dtype)


def stage_batch(batch: dict[str, torch.Tensor], stage: Stage) -> dict[str, torch.Tensor]:
    """A loader batch at the stage's resolution, its real images faded like the model's output."""
    mask, image = resize(batch["mask"], stage.resolution), resize(batch["image"], stage.resolution)
    return {**batch, "mask": mask, "image": faded(stage, image, lambda r: resize(image, r))}
