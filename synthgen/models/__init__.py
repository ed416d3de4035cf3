"""Model registry: build the networks of a run from its Config, or rebuild one from a saved `.config`.

    from synthgen.models import build_models, build_from_config
    nets = build_models(cfg, channels=3)        # {"generator", "discriminator"}, {"vae"[, "discriminator"]}
                                                # or {"diffusion"[, "diffusion_ema"]}
    g = build_from_config("generator", nets["generator"].config)   # same architecture, fresh weights
    d = build_from_config(network_kind("discriminator", cfg), nets["discriminator"].config)
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn
from torch.nn.utils import parametrize

from synthgen.config import Config
from synthgen.progressive import min_size as schedule_min_size
from synthgen.models.diffusion import MaskDiffusion
from synthgen.models.oasis import OASISDiscriminator
from synthgen.models.pix2pix import PatchDiscriminator, UNetGenerator
from synthgen.models.vae import ConditionalVAE

__all__ = [
    "MODELS", "NETWORKS", "build_models", "build_from_config", "build_discriminator", "build_pix2pix",
    "build_vae", "build_diffusion", "init_weights", "network_kind", "EMA_SUFFIX",
    "UNetGenerator", "PatchDiscriminator", "OASISDiscriminator", "ConditionalVAE", "MaskDiffusion",
]


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix 'normal' init, in place: conv/linear weights N(0, gain), norm weights N(1, gain), biases 0.

    Small weights keep the Tanh output and the discriminator logits near 0 at the start, which is what
    the pix2pix learning rate and lambda_l1 were tuned for. Returns the module for chaining.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Under spectral norm `weight` is computed from `parametrizations.weight.original`.
            if parametrize.is_parametrized(m, "weight"):
                weight = m.parametrizations.weight.original
            else:
                weight = m.weight
            nn.init.normal_(weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def build_pix2pix(cfg: Config, channels: int, min_size: int | None = None) -> dict[str, nn.Module]:
    """Generator mask (1 channel) -> image (`channels`); discriminator (pix2pix.discriminator): the
    PatchGAN on cat([mask, image]) or the OASIS segmenter on the image alone."""
    p = cfg.pix2pix
    generator = UNetGenerator(
        in_channels=1, out_channels=channels, image_size=cfg.data.image_size,
        ngf=p.ngf, upsample=p.upsample, dropout=p.dropout, attention=p.generator == "attention_unet",
        min_size=min_size, noise_channels=p.noise_channels,
    )
    # Both constructed before either is initialised: the seeded weights of existing runs depend on it.
    discriminator = build_discriminator(cfg, channels, min_size)
    return {"generator": init_weights(generator), "discriminator": init_weights(discriminator)}


def build_discriminator(cfg: Config, channels: int, min_size: int | None = None) -> nn.Module:
    """The discriminator of pix2pix and of the cVAE-GAN, from the pix2pix settings (not yet
    initialised: pass it to init_weights): the PatchGAN on cat([mask, image]), or for pix2pix with
    pix2pix.discriminator "oasis" the OASIS segmenter on the image alone (see network_kind)."""
    p = cfg.pix2pix
    if network_kind("discriminator", cfg) == "oasis_discriminator":
        # Masks are binary (data.py), so the OASIS D segments 2 classes (background, foreground) + fake.
        return OASISDiscriminator(in_channels=channels, num_classes=2, image_size=cfg.data.image_size,
                                  ndf=p.ndf, spectral_norm=p.spectral_norm, min_size=min_size)
    return PatchDiscriminator(in_channels=1 + channels, ndf=p.ndf, spectral_norm=p.spectral_norm)


def build_vae(cfg: Config, channels: int, min_size: int | None = None) -> dict[str, nn.Module]:
    """{"vae": ...}, plus {"discriminator": ...} when vae.lambda_gan or vae.lambda_fm is > 0.

    The VAE is built first, so for a seed its initial weights are the same with or without one."""
    v = cfg.vae
    vae = ConditionalVAE(image_channels=channels, image_size=cfg.data.image_size, latent_dim=v.latent_dim, nf=v.nf,
                         min_size=min_size)
    nets = {"vae": init_weights(vae)}
    if v.adversarial:
        nets["discriminator"] = init_weights(build_discriminator(cfg, channels))
    return nets


EMA_SUFFIX = "_ema"
"""A network named <name>_ema is a moving average of <name>'s weights: never optimised, only sampled from."""


def build_diffusion(cfg: Config, channels: int, min_size: int | None = None) -> dict[str, nn.Module]:
    """{"diffusion": ...}, plus {"diffusion_ema": ...} (a copy, averaged during training) when
    diffusion.ema_decay > 0. Diffusers' own initialisation is kept (its U-Net is built for it), and
    progressive training is refused by the config, so `min_size` is unused."""
    d = cfg.diffusion
    net = MaskDiffusion(image_channels=channels, image_size=cfg.data.image_size, channels=d.channels,
                        layers_per_block=d.layers_per_block, timesteps=d.timesteps, beta_schedule=d.beta_schedule,
                        prediction_type=d.prediction_type, sample_steps=d.sample_steps)
    nets = {"diffusion": net}
    if d.ema_decay > 0:
        nets["diffusion" + EMA_SUFFIX] = copy.deepcopy(net).requires_grad_(False)
    return nets


MODELS: dict[str, Callable[..., dict[str, nn.Module]]] = {"pix2pix": build_pix2pix, "vae": build_vae,
                                                          "diffusion": build_diffusion}
"""cfg.train.model -> builder of that model's networks."""

NETWORKS: dict[str, type[nn.Module]] = {
    "generator": UNetGenerator, "discriminator": PatchDiscriminator, "oasis_discriminator": OASISDiscriminator,
    "vae": ConditionalVAE, "diffusion": MaskDiffusion, "diffusion" + EMA_SUFFIX: MaskDiffusion,
}
"""Network kind -> class, for rebuilding from a saved `.config`. The kind is the name build_models
gives the network, except for an OASIS discriminator (see network_kind)."""


def network_kind(name: str, cfg: Config) -> str:
    """The NETWORKS key of the network that a run of `cfg` holds under `name` (a build_models key).

    Both discriminators are stored as "discriminator", so that the training loop and checkpoints
    name one network whichever it is; the run's config says which class rebuilds it. The cVAE-GAN's
    discriminator is always the PatchGAN (its loss in steps.vae_step is the PatchGAN's)."""
    if name == "discriminator" and cfg.train.model == "pix2pix" and cfg.pix2pix.discriminator == "oasis":
        return "oasis_discriminator"
    return name


def build_models(cfg: Config, channels: int, min_size: int | None = None) -> dict[str, nn.Module]:
    """The freshly initialised networks of cfg.train.model for images with `channels` (1 or 3).

    `min_size`: the smallest resolution they must run at (progressive training); default: the first
    of train.resolutions when below data.image_size."""
    if cfg.train.model not in MODELS:
        raise ValueError(f"unknown model '{cfg.train.model}' (known: {', '.join(MODELS)})")
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    return MODELS[cfg.train.model](cfg, channels, min_size or schedule_min_size(cfg))


def build_from_config(kind: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its `.config` dict (weights are the caller's: load_state_dict next)."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind '{kind}' (known: {', '.join(NETWORKS)})")
    return NETWORKS[kind](**config)
