"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

    from synthgen.diffaug import diff_augment
    mask_a, image_a = diff_augment(mask, image, "color,translation,cutout", generator=g)

Why: with 3-10 training pairs the discriminator memorises the real images within a few hundred steps,
its loss goes to 0 and the generator gets no useful gradient. Randomly augmenting everything the
discriminator sees (real and fake alike, in both the generator and the discriminator steps) keeps it
from memorising, without the generator learning to produce augmented images, because the augmentation
is differentiable and applied to both sides. Augmenting only reals would leak it into the fakes.

Why not kornia: its colour jitter assumes RGB, and this is ~60 lines of plain torch that also works for
gray images. Geometry ('translation', 'cutout') is applied identically to the mask and the image of a
sample so the pair stays aligned; 'color' touches the image only (a mask has no colour).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (CPU by default) and move, so a seed means the same on any device.
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)


def _randint(low: int, high: int, shape: tuple[int, ...], x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high, shape, generator=generator, device=device).to(x.device)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample brightness, saturation (3 channels only) and contrast, as in the reference."""
    b = x.shape[0]
    x = x + (_rand((b, 1, 1, 1), x, generator) - 0.5)
    if x.shape[1] == 3:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_rand((b, 1, 1, 1), x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((b, 1, 1, 1), x, generator) + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each sample by a random integer offset of up to ratio * size; vacated pixels become 0."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-sh, sh + 1, (b, 1, 1), x, generator)
    tx = _randint(-sw, sw + 1, (b, 1, 1), x, generator)
    gb, gy, gx = torch.meshgrid(
        torch.arange(b, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    # Index into a 1-px zero-padded copy; indices that fall outside land on the zero border.
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of ratio * size per sample (it may be clipped at the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(0, h + (1 - ch % 2), (b, 1, 1), x, generator)
    ox = _randint(0, w + (1 - cw % 2), (b, 1, 1), x, generator)
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (gy >= oy - ch // 2) & (gy < oy - ch // 2 + ch) & (gx >= ox - cw // 2) & (gx < ox - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(
    mask: torch.Tensor, image: torch.Tensor, policy: str, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of (mask (B, 1, H, W), image (B, C, H, W)) pairs; differentiable in both.

    policy: comma list of 'color', 'translation', 'cutout', applied in that order; '' returns the
    inputs unchanged. Every sample draws its own parameters from `generator` (global RNG if None).
    """
    ops = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in ops if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown} (known: {', '.join(POLICIES)})")
    for op in POLICIES:  # fixed order, whatever order the policy string lists them in
        if op not in ops:
            continue
        if op == "color":
            image = _color(image, generator)
            continue
        # Geometry on the concatenated pair: one set of random offsets for mask and image alike.
        # (torch.cat promotes mixed dtypes, e.g. an fp32 mask with a bf16 image under autocast.)
        pair = torch.cat([mask, image], dim=1)
        pair = _translation(pair, generator) if op == "translation" else _cutout(pair, generator)
        mask, image = pair[:, :1].to(mask.dtype), pair[:, 1:].to(image.dtype)
    return mask, image
