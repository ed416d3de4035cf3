"""Conditional VAE: q(z | image, mask) and p(image | z, mask), for many different images per mask.

    from synthgen.models.vae import ConditionalVAE
    vae = ConditionalVAE(image_channels=1, image_size=256)
    recon, mu, logvar = vae(image, mask)                       # training
    images = vae.sample(mask, num_samples=4, generator=g)      # (B * 4, 1, 256, 256), mask-major

Unlike pix2pix (one image per mask, up to dropout noise) the point of this model is that different z
give different images for the same mask, so the decoder is built so that it cannot ignore z: z sets
the starting grid and scales/shifts the features of every decoder stage (FiLM, Perez et al. 2018).
The mask is fed at every decoder scale, so z does not have to carry the layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.models.blocks import check_input_size, down_block, norm_layer, run_block, up_block, unet_depth

# Clamp for log-variance: exp(logvar) stays finite in fp16/bf16 and early training cannot blow up.
_LOGVAR_RANGE = (-30.0, 20.0)


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # 'area' averages the mask into the coarse grid (the foreground fraction per cell), so thin
    # structures that nearest-neighbour would drop still reach the coarse stages.
    if mask.shape[-2:] == size:
        return mask
    return F.interpolate(mask, size=size, mode="area")


class FiLM(nn.Module):
    """Feature-wise linear modulation: x * (1 + gamma(z)) + beta(z), per channel."""

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_dim, 2 * channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(z).chunk(2, dim=1)
        # 1 + gamma: a zero output of the linear layer leaves the features unchanged.
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class DecoderStage(nn.Module):
    """cat(features, mask at this scale) -> 2x resize-conv -> norm -> FiLM(z) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, latent_dim: int) -> None:
        super().__init__()
        # 'resize' upsampling: transposed convs leave checkerboard patterns that a VAE, with no
        # discriminator to punish them, would keep.
        self.up = up_block(in_channels + 1, out_channels, "resize")
        self.norm = norm_layer(out_channels)
        self.film = FiLM(latent_dim, out_channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, _resize_mask(mask, tuple(x.shape[-2:]))], dim=1)
        return F.relu(self.film(self.norm(self.up(x)), z))


class ConditionalVAE(nn.Module):
    """Encoder of strided convs to a base grid of >= 4 px (depth unet_depth(image_size, 6, 4): 6 at
    256 px -> 4x4, 3 at 32 px -> 4x4), Linear to mu / logvar; decoder mirrors it with the mask and z
    injected at every scale. Channels per level: nf, 2nf, 4nf, 8nf, 8nf, ... (capped at 8nf).

    It runs at any multiple of 2**depth px: the encoder averages its last grid down to the base grid
    and the decoder stretches z's base grid to the input's bottleneck (both no-ops at image_size).
    `min_size` (progressive training) sets depth and base grid from the smallest resolution instead.
    """

    def __init__(self, image_channels: int = 1, image_size: int = 256, latent_dim: int = 512, nf: int = 32,
                 min_size: int | None = None) -> None:
        super().__init__()
        self.config = dict(image_channels=image_channels, image_size=image_size, latent_dim=latent_dim, nf=nf,
                           min_size=min_size)
        self.latent_dim = latent_dim
        self.gradient_checkpointing = False  # recompute decoder stages in backward (see blocks.run_block)
        size = min_size or image_size
        depth = self.depth = self.depth_for(size)
        if depth == 0:
            raise ValueError(f"image_size {size} is too small for the VAE (needs >= 8 px)")
        self.base = size // 2**depth
        channels = [nf * min(2**i, 8) for i in range(depth)]
        flat = channels[-1] * self.base * self.base

        # Encoder q(z | image, mask): input is cat([image, mask]).
        blocks = [down_block(image_channels + 1, channels[0], act=False, norm=False)]
        blocks += [down_block(channels[i - 1], channels[i]) for i in range(1, depth)]
        # The pool comes after the parameterised layers, so checkpoints from before it still load.
        self.encoder = nn.Sequential(*blocks, nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(self.base), nn.Flatten())
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)

        # Decoder p(image | z, mask): z -> base grid, then one stage per encoder level, coarse to fine.
        self.from_z = nn.Linear(latent_dim, flat)
        out_channels = [channels[max(i - 1, 0)] for i in reversed(range(depth))]
        in_channels = [channels[-1]] + out_channels[:-1]
        self.stages = nn.ModuleList(
            DecoderStage(cin, cout, latent_dim) for cin, cout in zip(in_channels, out_channels)
        )
        # Full resolution: the mask once more, then to image space.
        self.to_image = nn.Sequential(nn.Conv2d(out_channels[-1] + 1, image_channels, 3, padding=1), nn.Tanh())

    @staticmethod
    def depth_for(size: int) -> int:
        return unet_depth(size, max_depth=6, min_bottleneck=4)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) image, (B, 1, H, W) mask -> mu, logvar, each (B, latent_dim)."""
        check_input_size(image, self.depth, "ConditionalVAE")
        h = self.encoder(torch.cat([image, mask], dim=1))
        return self.to_mu(h), self.to_logvar(h).clamp(*_LOGVAR_RANGE)

    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) z, (B, 1, H, W) mask -> (B, C, H, W) image in [-1, 1]."""
        check_input_size(mask, self.depth, "ConditionalVAE")
        x = F.relu(self.from_z(z)).view(z.shape[0], -1, self.base, self.base)
        grid = (mask.shape[-2] // 2**self.depth, mask.shape[-1] // 2**self.depth)
        if x.shape[-2:] != grid:
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        ckpt = self.gradient_checkpointing and self.training
        for stage in self.stages:
            x = run_block(stage, x, z, mask, checkpointed=ckpt)
        return self.to_image(torch.cat([x, mask], dim=1))

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct through a reparameterised sample z = mu + sigma * eps: (recon, mu, logvar)."""
        mu, logvar = self.encode(image, mask)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z, mask), mu, logvar

    def sample(
        self, mask: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw z ~ N(0, I) and decode: (B * num_samples, C, H, W), all samples of mask 0 first.

        z is drawn on the generator's device (CPU if none given) and then moved, so one seeded CPU
        generator gives the same images on any device. Wrap in torch.no_grad() when not training.
        """
        masks = mask.repeat_interleave(num_samples, dim=0)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(masks.shape[0], self.latent_dim, generator=generator, device=gen_device)
        return self.decode(z.to(device=mask.device, dtype=mask.dtype), masks)
