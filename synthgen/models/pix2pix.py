"""pix2pix networks (Isola et al. 2017): a U-Net generator mask -> image and a 70x70 PatchGAN.

    from synthgen.models.pix2pix import UNetGenerator, PatchDiscriminator
    g = UNetGenerator(in_channels=1, out_channels=3, image_size=256)
    d = PatchDiscriminator(in_channels=1 + 3)
    logits = d(torch.cat([mask, g(mask)], dim=1))   # (B, 1, 30, 30) at 256 px

Both store their constructor arguments in `.config`, so `UNetGenerator(**g.config)` rebuilds them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from synthgen.models.blocks import (UPSAMPLE_MODES, AttentionGate, check_input_size, down_block, norm_layer,
                                   run_block, up_block, unet_depth)

# Decoder levels (counted from the bottleneck) that get dropout: pix2pix's only noise source.
_DROPOUT_LEVELS = 3


class UNetGenerator(nn.Module):
    """pix2pix U-Net: encoder of 4x4 stride-2 convs, mirrored decoder, skip connections at every level.

    Depth is unet_depth(image_size): 8 at 256 px (1x1 bottleneck, as in pix2pix's unet_256), 5 at
    32 px, 4 at 48 px, so any multiple of 16 works and the output has the input's H x W.
    Channels per level: ngf, 2ngf, 4ngf, 8ngf, 8ngf, ... (capped at 8ngf).
    attention=True gives the attention-gated U-Net (pix2pix.generator 'attention_unet'): every skip
    connection passes through an AttentionGate driven by the decoder level below it.
    `gradient_checkpointing` (an attribute, not part of the architecture) recomputes each block's
    activations in the backward pass.
    `min_size` (progressive training): the smallest resolution the net must run at sets the depth
    instead, e.g. 6 for 64 px; the net then takes any multiple of 2**depth (64, 128, 256, ...).
    `noise_channels` > 0 concatenates that many channels of per-pixel N(0, 1) noise to the mask and to
    the input of every decoder level (OASIS's 3D noise, Schonfeld et al. 2021), so one mask gives
    differently textured images; pix2pix's dropout is nearly ignored as a noise source (Isola et al.
    say so). The noise is an input: `forward(mask, noise)` takes it from `draw_noise` (seedable) or
    draws it from the global RNG.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        image_size: int = 256,
        ngf: int = 64,
        upsample: str = "resize",
        dropout: bool = True,
        attention: bool = False,
        min_size: int | None = None,
        noise_channels: int = 0,
    ) -> None:
        super().__init__()
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0, got {noise_channels}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode '{upsample}' (known: {', '.join(UPSAMPLE_MODES)})")
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, image_size=image_size,
            ngf=ngf, upsample=upsample, dropout=dropout, attention=attention, min_size=min_size,
            noise_channels=noise_channels,
        )
        self.gradient_checkpointing = False
        depth = self.depth = self.depth_for(min_size or image_size)
        channels = [ngf * min(2**i, 8) for i in range(depth)]

        # Encoder, outermost first. Level 0: plain conv (no activation or norm on the raw mask).
        # The innermost level has no norm: at 256 px its output is 1x1, where instance norm is undefined.
        self.encoder = nn.ModuleList()
        for level in range(depth):
            innermost = level == depth - 1
            if level == 0:
                block = down_block(in_channels + noise_channels, channels[0], act=False, norm=False)
            else:
                block = down_block(channels[level - 1], channels[level], norm=not innermost)
            self.encoder.append(block)

        # Decoder, innermost first. Each level (except the innermost) reads its own output concatenated
        # with the matching encoder output, hence 2x input channels.
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            in_ch = (channels[level] if level == depth - 1 else 2 * channels[level]) + noise_channels
            layers: list[nn.Module] = [nn.ReLU()]
            if level == 0:
                # Outermost: straight to image space; bias kept as no norm follows.
                layers += [up_block(in_ch, out_channels, upsample, bias=True), nn.Tanh()]
            else:
                layers += [up_block(in_ch, channels[level - 1], upsample), norm_layer(channels[level - 1])]
                if dropout and depth - 1 - level < _DROPOUT_LEVELS:
                    layers.append(nn.Dropout(0.5))
            self.decoder.append(nn.Sequential(*layers))
        # One gate per skip connection, decoder order (innermost skip first): the skip of level l and
        # the decoder output reaching it both have channels[l] channels.
        self.gates = nn.ModuleList(
            AttentionGate(channels[level], channels[level], max(channels[level] // 2, 1))
            for level in reversed(range(depth - 1))
        ) if attention else None

    @staticmethod
    def depth_for(size: int) -> int:
        return unet_depth(size)

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each noise tensor for an H x W input: the input's, then each decoder level's
        (innermost first); [] without noise channels."""
        if not self.config["noise_channels"]:
            return []
        c = self.config["noise_channels"]
        return [(c, height, width)] + [(c, height >> (self.depth - i), width >> (self.depth - i))
                                       for i in range(self.depth)]

    def draw_noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Fresh N(0, 1) noise for `batch` inputs of H x W, from `generator` (global RNG if None).

        Drawn on the CPU when a generator is given, so a seed gives the same noise on every device."""
        return [torch.randn((batch, *shape), generator=generator,
                            device="cpu" if generator is not None else device).to(device)
                for shape in self.noise_shapes(height, width)]

    def forward(self, mask: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, in_channels, H, W) mask -> (B, out_channels, H, W) image in [-1, 1].

        `noise`: draw_noise's tensors (ignored without noise channels); None draws them here."""
        check_input_size(mask, self.depth, "UNetGenerator")
        ckpt = self.gradient_checkpointing and self.training
        skips: list[torch.Tensor] = []
        if self.config["noise_channels"] and noise is None:
            noise = self.draw_noise(len(mask), *mask.shape[-2:], device=mask.device)
        noise = [n.to(mask.dtype) for n in noise] if self.config["noise_channels"] else []
        x = torch.cat([mask, noise[0]], 1) if noise else mask
        for block in self.encoder:
            x = run_block(block, x, checkpointed=ckpt)
            skips.append(x)
        x = skips.pop()  # the bottleneck feeds the innermost decoder level directly
        for i, block in enumerate(self.decoder):
            if i > 0:
                skip = skips.pop()
                if self.gates is not None:
                    skip = run_block(self.gates[i - 1], skip, x, checkpointed=ckpt)
                x = torch.cat([x, skip], dim=1)
            if noise:
                x = torch.cat([x, noise[i + 1]], dim=1)
            x = run_block(block, x, checkpointed=ckpt)
        return x


class PatchDiscriminator(nn.Module):
    """PatchGAN: classifies overlapping patches as real/fake, one logit per patch.

    With n_layers=3 each logit sees a 70x70 receptive field; on a 256x256 input the logits are
    (B, 1, 30, 30). Input is cat([mask, image], dim=1), so in_channels = 1 + image channels.
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, spectral_norm: bool = False) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, ndf=ndf, n_layers=n_layers, spectral_norm=spectral_norm)

        def conv(cin: int, cout: int, stride: int, bias: bool) -> nn.Module:
            layer = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=1, bias=bias)
            # Spectral norm bounds each layer's Lipschitz constant, which keeps a discriminator that can
            # memorise a handful of pairs from producing exploding gradients.
            return _spectral_norm(layer) if spectral_norm else layer

        # First layer: no norm (as in pix2pix), so the discriminator sees raw input statistics.
        layers: list[nn.Module] = [conv(in_channels, ndf, 2, True), nn.LeakyReLU(0.2)]
        ch = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps the resolution
            layers += [conv(ch, out, stride, False), norm_layer(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(conv(ch, 1, 1, True))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, 1, H', W') raw logits (no sigmoid: the losses take logits)."""
        return self.model(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after every LeakyReLU, outermost first, then the logits: what the
        pix2pixHD feature-matching loss compares between real and generated pairs."""
        out = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                out.append(x)
        return out + [x]
