"""Mask-conditioned denoising diffusion: p(image | mask) with the mask as extra input channels
(segmentation-guided diffusion, Konz et al. 2024), on diffusers' UNet2DModel, trained from scratch.

    from synthgen.models.diffusion import MaskDiffusion
    net = MaskDiffusion(image_channels=1, image_size=64, channels=32)
    loss = net(mask, image)                              # training: noise-prediction MSE
    images = net.render(mask, seeds=[3, 4], steps=25)    # DDIM, (2, 1, 64, 64) in [-1, 1]

DDPM noising (Ho et al. 2020) for training, deterministic DDIM (eta 0, Song et al. 2021) for
sampling: the only randomness of a sample is its starting noise, drawn from a generator seeded by its
own seed, so a sample depends on its seed and mask alone, never on the batch it was drawn in.
diffusers is imported when a model is built, not with this module: it costs seconds to import and
every synthgen process imports the model registry.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.config import PREDICTION_TYPES

LEVELS = 4
"""U-Net resolutions (3 halvings): the input size must be a multiple of 2**(LEVELS - 1)."""


class MaskDiffusion(nn.Module):
    """UNet2DModel on cat([noisy image, mask]) predicting `prediction_type`, with its noise schedules.

    Widths per level: channels, 2, 2, 4 x channels, `layers_per_block` ResNet blocks each; self-attention
    only at the lowest resolution (and in the middle block), where it is cheap and where the global
    layout is decided. The schedules hold no learnt state, so `.config` rebuilds the whole model.
    `sample_steps` is the default number of DDIM steps of `render`.
    """

    def __init__(self, image_channels: int = 1, image_size: int = 256, channels: int = 32, layers_per_block: int = 2,
                 timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon",
                 sample_steps: int = 50) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type '{prediction_type}' (known: {', '.join(PREDICTION_TYPES)})")
        self.config = dict(image_channels=image_channels, image_size=image_size, channels=channels,
                           layers_per_block=layers_per_block, timesteps=timesteps, beta_schedule=beta_schedule,
                           prediction_type=prediction_type, sample_steps=sample_steps)
        widths = (channels, 2 * channels, 2 * channels, 4 * channels)
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=image_channels + 1, out_channels=image_channels,
            block_out_channels=widths, layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * (LEVELS - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (LEVELS - 1),
            # GroupNorm groups must divide every width; 32 (the DDPM choice) when channels allows.
            norm_num_groups=math.gcd(32, channels), attention_head_dim=8,
        )
        self.noise = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule,
                                   prediction_type=prediction_type)

    def _predict(self, noisy: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([noisy, mask.to(noisy.dtype)], dim=1), t).sample

    def forward(self, mask: torch.Tensor, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of (B,1,H,W) masks and (B,C,H,W) images in [-1, 1]: MSE between the
        U-Net's output and its prediction_type target at uniformly drawn timesteps. It is `forward`
        (alias `loss`) so that a DistributedDataParallel wrapper sees the call. Noise and timesteps
        come from `generator` (its device; default: the global RNG on the image's device)."""
        device = generator.device if generator is not None else image.device
        noise = torch.randn(image.shape, generator=generator, device=device).to(image.device)
        t = torch.randint(0, self.config["timesteps"], (len(image),), generator=generator, device=device)
        t = t.to(image.device)
        noisy = self.noise.add_noise(image, noise, t)
        target = {"epsilon": noise, "sample": image}.get(self.config["prediction_type"])
        if target is None:
            target = self.noise.get_velocity(image, noise, t)
        return F.mse_loss(self._predict(noisy, mask, t).float(), target.float())

    loss = forward

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the U-Net in place (train.compile, generate.compile): it is what both the loss
        and the sampler run, while nn.Module.compile would compile only `forward`, the loss."""
        self.unet.compile(*args, **kwargs)

    def sampler(self, steps: int):
        """A DDIM scheduler on this model's noise schedule, set to `steps` steps. 'trailing' spacing
        starts at the last training timestep, so few-step sampling starts from pure noise, as the
        initial draw assumes ('leading' starts well below it; Lin et al. 2024)."""
        from diffusers import DDIMScheduler

        c = self.config
        ddim = DDIMScheduler(num_train_timesteps=c["timesteps"], beta_schedule=c["beta_schedule"],
                             prediction_type=c["prediction_type"], timestep_spacing="trailing")
        ddim.set_timesteps(steps)
        return ddim

    @torch.no_grad()
    def render(self, mask: torch.Tensor, seeds: Sequence[int], steps: int | None = None) -> torch.Tensor:
        """DDIM samples for (B,1,H,W) masks, one per seed: (B, C, H, W) in [-1, 1].

        Sample i starts from N(0, I) noise drawn on the CPU by a generator seeded with seeds[i], so it
        is the same on any device and in any batch. `steps`: DDIM steps, default config sample_steps.
        """
        if len(seeds) != len(mask):
            raise ValueError(f"render: {len(mask)} masks but {len(seeds)} seeds")
        shape = (self.config["image_channels"], *mask.shape[-2:])
        x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        x = x.to(mask.device)
        ddim = self.sampler(steps or self.config["sample_steps"])
        for t in ddim.timesteps:
            out = self._predict(x, mask, t.expand(len(x)).to(mask.device))
            x = ddim.step(out.float(), t, x).prev_sample
        return x.clamp(-1, 1)
