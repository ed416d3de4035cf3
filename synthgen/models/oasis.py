"""OASIS discriminator (Schonfeld et al. 2021, "You Only Need Adversarial Supervision for Semantic
Image Synthesis"): a per-pixel (N+1)-class segmenter of the image alone.

    from synthgen.models.oasis import OASISDiscriminator
    d = OASISDiscriminator(in_channels=3, num_classes=2, image_size=256)
    logits = d(image)        # (B, 3, 256, 256): class 0 = fake, 1..N = the mask's classes

A PatchGAN judges cat([mask, image]) with one real/fake logit per patch; this D never sees the mask.
It must say, for every pixel of a real image, which mask class is there, and for every pixel of a
generated one, 'fake'. The generator is then rewarded per pixel for images whose segmentation is its
own mask, which is the alignment signal the PatchGAN gets only through the concatenated mask.
Stores its constructor arguments in `.config`, so `OASISDiscriminator(**d.config)` rebuilds it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from synthgen.models.blocks import check_input_size, down_block, norm_layer, unet_depth, up_block

# The paper's D halves 6 times at 256 px and up; 5 keeps this one small (8x8 bottleneck at 256 px).
_MAX_DEPTH = 5
# Instance norm over a 1x1 or 2x2 map is (nearly) undefined; stop halving at 4x4.
_MIN_BOTTLENECK = 4
# Widths capped at 4*ndf, not the PatchGAN's 8*ndf: the decoder's skip concatenations double every
# level's input, and at 8*ndf this D had 4.5x the PatchGAN's parameters (12.5M vs 2.8M at ndf 64).
_MAX_WIDTH = 4


class OASISDiscriminator(nn.Module):
    """U-Net encoder-decoder on the image: 4x4 stride-2 conv encoder (ndf, 2ndf, ... capped at 4ndf),
    nearest-upsample + 3x3 conv decoder with skip connections, 1x1 head to num_classes + 1 logits per
    pixel at the input's resolution.

    Depth is unet_depth(min_size or image_size) capped at 5 with a >= 4 px bottleneck (32 px -> 3,
    256 px -> 5), so H and W must be multiples of 2**depth. `spectral_norm` wraps every convolution,
    as in PatchDiscriminator (the paper's D uses spectral norm throughout).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, image_size: int = 256, ndf: int = 64,
                 spectral_norm: bool = False, min_size: int | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size, ndf=ndf,
                           spectral_norm=spectral_norm, min_size=min_size)
        depth = self.depth = self.depth_for(min_size or image_size)
        channels = [ndf * min(2**i, _MAX_WIDTH) for i in range(depth)]
        # Level 0 sees the raw image: no activation or norm before it, as in PatchDiscriminator.
        self.encoder = nn.ModuleList(
            [down_block(in_channels, channels[0], act=False, norm=False)]
            + [down_block(channels[level - 1], channels[level]) for level in range(1, depth)]
        )
        # Decoder, innermost first; every level but the innermost also reads the matching encoder output.
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            in_ch = channels[level] * (1 if level == depth - 1 else 2)
            out_ch = channels[max(level - 1, 0)]
            self.decoder.append(nn.Sequential(nn.LeakyReLU(0.2), up_block(in_ch, out_ch, "resize"),
                                              norm_layer(out_ch)))
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(channels[0], num_classes + 1, kernel_size=1))
        if spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, nn.Conv2d):
                    _spectral_norm(m)  # registers the parametrisation in place

    @staticmethod
    def depth_for(size: int) -> int:
        return unet_depth(size, max_depth=_MAX_DEPTH, min_bottleneck=_MIN_BOTTLENECK)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every encoder and decoder level's output, outermost encoder level first, then the logits:
        what the feature-matching loss compares between real and generated images."""
        check_input_size(x, self.depth, "OASISDiscriminator")
        out: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            out.append(x)
        skips = out[:-1]
        for i, block in enumerate(self.decoder):
            x = block(x if i == 0 else torch.cat([x, skips[-i]], dim=1))
            out.append(x)
        return out + [self.head(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) image -> (B, num_classes + 1, H, W) raw logits (class 0 = fake)."""
        return self.features(x)[-1]
