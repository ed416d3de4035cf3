"""Optimisation steps and the per-epoch loop, plain PyTorch (no Ray).

Ray Train (`synthgen.train`) and the in-process Python API (`synthgen.api`) both drive training through
`build_state` + `train_epoch`, so there is one training loop whatever runs it. A step returns flat named
scalars ("loss/G_l1", ...) that progress lines, Ray reports and plots consume generically.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from synthgen.config import Config
from synthgen.data import tensor_to_image
from synthgen.device import prepare_module, to_device
from synthgen.diffaug import diff_augment
from synthgen.losses import (discriminator_loss, discriminator_loss_terms, generator_adversarial_loss,
                             feature_matching_loss, kl_divergence, l1_loss, labelmix, labelmix_loss,
                             mask_to_label, oasis_discriminator_loss_terms, oasis_generator_loss, texture_loss,
                             vae_reconstruction_loss)
from synthgen.models import EMA_SUFFIX, MaskDiffusion, build_models
from synthgen.progressive import Stage, faded, resize, stage_batch, stage_for
from synthgen.quality import ssim


@dataclass
class TrainState:
    """Everything one worker trains and checkpoints. `nets` may be DDP-wrapped by the caller."""

    cfg: Config
    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler]
    device: torch.device
    channels: int
    epoch: int = 0
    """The next epoch to run (0-based); equals the number of finished epochs."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One dict of metrics per finished epoch."""
    stage: Stage | None = None
    """Resolution and fade-in of the epoch being trained (see synthgen/progressive.py)."""


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module behind a DistributedDataParallel wrapper."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


RENDERERS = ("diffusion" + EMA_SUFFIX, "diffusion", "vae", "generator")
"""Networks that draw images, in order of preference: the diffusion model's weight average before its
trained weights (sampling from the average is why it is kept)."""


def rendering_net(nets: dict[str, nn.Module]) -> nn.Module:
    """The network that draws images (the first of RENDERERS in `nets`, unwrapped); never the
    discriminator, which pix2pix and the cVAE-GAN both have."""
    return unwrap(nets[next(name for name in RENDERERS if name in nets)])


def lr_factor(epoch: int, epochs: int, decay_start: float) -> float:
    """pix2pix schedule: constant, then linear decay towards 0 over the remaining epochs."""
    start = int(round(decay_start * epochs))
    if epoch < start:
        return 1.0
    return 1.0 - (epoch - start + 1) / float(epochs - start + 1)


def base_lr(cfg: Config, net_name: str) -> float:
    t = cfg.train
    return t.lr_d if (net_name == "discriminator" and t.lr_d > 0) else t.lr


def set_learning_rates(state: TrainState, epoch: int) -> float:
    """Set every optimiser's LR for `epoch` from the config: the schedule is a pure function of the
    epoch, so a resumed run (even one given more epochs) needs no scheduler state."""
    t = state.cfg.train
    factor = lr_factor(epoch, t.epochs, t.decay_start)
    for name, opt in state.optimizers.items():
        for group in opt.param_groups:
            group["lr"] = base_lr(state.cfg, name) * factor
    return factor


def build_state(cfg: Config, channels: int, device: torch.device | str = "cpu",
                min_size: int | None = None) -> TrainState:
    """Fresh networks (seeded: identical on every worker) and an Adam optimiser for each one with
    trainable weights (a weight average, models.EMA_SUFFIX, has none); `min_size` as in
    models.build_models."""
    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    nets = {name: net.to(device) for name, net in build_models(cfg, channels, min_size).items()}
    t = cfg.train
    for net in nets.values():
        if hasattr(net, "gradient_checkpointing"):
            net.gradient_checkpointing = t.grad_checkpoint
        prepare_module(net, t.channels_last, t.compile)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=base_lr(cfg, name), betas=(t.beta1, 0.999))
                  for name, net in nets.items() if any(p.requires_grad for p in net.parameters())}
    use_scaler = t.precision == "fp16"
    scalers = {name: torch.amp.GradScaler(device.type, enabled=use_scaler) for name in optimizers}
    return TrainState(cfg, nets, optimizers, scalers, device, channels)


def autocast(state: TrainState) -> contextlib.AbstractContextManager:
    p = state.cfg.train.precision
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)


def _sync_unless(net: nn.Module | None, last: bool) -> contextlib.AbstractContextManager:
    """Accumulating micro-batches under DDP: all-reduce gradients only on the last one (None: no net)."""
    if not last and isinstance(net, nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _frozen(net: nn.Module | None):
    """No parameter gradients for `net` inside (a generator's loss through D); None: a no-op."""
    params = list(net.parameters()) if net is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _optimiser_step(state: TrainState, name: str) -> None:
    scaler, opt = state.scalers[name], state.optimizers[name]
    if state.cfg.train.grad_clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(state.nets[name].parameters(), state.cfg.train.grad_clip)
    scaler.step(opt)
    scaler.update()


def _add(sums: dict[str, float], values: dict[str, torch.Tensor | float], n: int) -> None:
    """Accumulate one micro-batch's reported values (their mean over the n micro-batches)."""
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) / n


def _d_input(pc, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """What the discriminator judges: the image alone for OASIS (it segments the image, so it must not
    be shown the mask), cat([mask, image]) for the PatchGAN."""
    return image if pc.discriminator == "oasis" else torch.cat([mask, image], 1)


def _augment_alike(mask: torch.Tensor, images: list[torch.Tensor], policy: str):
    """DiffAugment each of `images` with one set of parameters (drawn from the global RNG, so seeded
    runs replay): (augmented mask, [augmented images])."""
    seed = int(torch.randint(0, 2**62, (1,)))
    out = [diff_augment(mask, image, policy, torch.Generator().manual_seed(seed)) for image in images]
    return out[0][0], [image for _, image in out]


def _patch_d_loss(D: nn.Module, mask: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, pc):
    """PatchGAN D loss under pix2pix.gan_mode: (loss, reported terms by name). `fake` may stack k
    fakes per real pair (the cVAE-GAN shows D two), each paired with `mask`."""
    # Real and fakes through D in one forward: one DDP forward per backward, and the per-sample
    # DiffAugment parameters differ for every image anyway.
    k = len(fake) // len(real)
    m, x = diff_augment(torch.cat([mask] * (1 + k)), torch.cat([real, fake]), pc.diffaug)
    logits = D(torch.cat([m, x], 1))
    real_logits, fake_logits = logits[:len(real)], logits[len(real):]
    d_real, d_fake = discriminator_loss_terms(real_logits, fake_logits, pc.gan_mode)
    return discriminator_loss(real_logits, fake_logits, pc.gan_mode), {"loss/D_real": d_real, "loss/D_fake": d_fake}


def _oasis_d_loss(D: nn.Module, mask: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, pc):
    """OASIS D loss, N+1-class CE plus lambda_labelmix * LabelMix: (loss, reported terms by name).

    DiffAugment still applies: a handful of pairs is as easy to memorise for a per-pixel D as for a
    PatchGAN (see diffaug.py), and its geometry already moves the mask with the image, so the
    augmented mask is the label and the pair stays aligned. Real and fake share one set of parameters
    here so that LabelMix can mix them pixel by pixel; real, fake and mixed go through D in one
    forward, as in _patch_d_loss."""
    m, images = _augment_alike(mask, [real, fake], pc.diffaug)
    label = mask_to_label(m)
    if pc.lambda_labelmix > 0:
        mixed, mix = labelmix(*images, label)
        images.append(mixed)
    logits = D(torch.cat(images)).chunk(len(images))
    d_real, d_fake = oasis_discriminator_loss_terms(logits[0], logits[1], label)
    terms = {"loss/D_real": d_real, "loss/D_fake": d_fake}
    loss = d_real + d_fake
    if pc.lambda_labelmix > 0:
        terms["loss/D_labelmix"] = labelmix_loss(logits[2], logits[0], logits[1], mix)
        loss = loss + pc.lambda_labelmix * terms["loss/D_labelmix"]
    return loss, terms


D_LOSSES = {"patch": _patch_d_loss, "oasis": _oasis_d_loss}
"""pix2pix.discriminator -> fn(D, mask, real, fake (detached), pix2pix config) -> (D loss, terms)."""


def _discriminator_backward(state: TrainState, pc, mask: torch.Tensor, real: torch.Tensor,
                            fakes: list[torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Back-propagate D's loss (D_LOSSES[pc.discriminator], weight 1/n) on real pairs against each of
    `fakes` (detached), all paired with `mask`; returns the reported terms by loss name."""
    with autocast(state):
        loss_d, terms = D_LOSSES[pc.discriminator](state.nets["discriminator"], mask, real,
                                                   torch.cat([f.detach() for f in fakes]), pc)
    state.scalers["discriminator"].scale(loss_d / n).backward()
    return terms


def _generator_adversarial(D: nn.Module, mask: torch.Tensor, fake: torch.Tensor, pc) -> torch.Tensor:
    """The generator's adversarial loss on its (augmented) output through D."""
    m, x = diff_augment(mask, fake, pc.diffaug)
    logits = D(_d_input(pc, m, x))
    if pc.discriminator == "oasis":
        return oasis_generator_loss(logits, mask_to_label(m))
    return generator_adversarial_loss(logits, pc.gan_mode)


def _texture_terms(D: nn.Module, pc, mask: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, prefix: str,
                   lambda_fm: float, lambda_texture: float = 0.0) -> dict[str, tuple[torch.Tensor, float]]:
    """The optional generator terms that reward texture rather than the pixel mean, by loss name
    ("loss/<prefix>_fm", ...): (value, weight); a zero weight leaves its term out. Feature matching
    compares D's features of the un-augmented pairs: DiffAugment draws different parameters per
    sample, so augmented real and fake features would not line up."""
    terms = {}
    if lambda_fm > 0:
        with torch.no_grad():
            real_features = D.features(_d_input(pc, mask, real))
        terms[f"loss/{prefix}_fm"] = (feature_matching_loss(real_features, D.features(_d_input(pc, mask, fake))),
                                      lambda_fm)
    if lambda_texture > 0:
        terms[f"loss/{prefix}_texture"] = (texture_loss(fake, real, mask), lambda_texture)
    return terms


def pix2pix_step(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One D and one G update over `batches` (grad_accum micro-batches).

    Per micro-batch the D loss (fake detached) and the G loss (through a frozen, unwrapped D) are both
    back-propagated before either optimiser steps: a simultaneous update, which keeps every DDP module
    at one forward per backward. The G step goes through `unwrap(D)` so no DDP reduction is started
    for gradients that are thrown away. The adversarial losses follow pix2pix.discriminator (D_LOSSES,
    _generator_adversarial); L1 and the texture terms apply to either.
    """
    G, D = state.nets["generator"], state.nets["discriminator"]
    pc, n = state.cfg.pix2pix, len(batches)
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for i, b in enumerate(batches):
        last = i == n - 1
        mask, real = b["mask"], b["image"]
        with _sync_unless(G, last), _sync_unless(D, last):
            with autocast(state):
                # Fading in a new resolution: blend with the generator's output one stage coarser.
                fake = faded(state.stage, G(mask), lambda r: unwrap(G)(resize(mask, r)))
            d_terms = _discriminator_backward(state, pc, mask, real, [fake], n)
            with _frozen(D):
                with autocast(state):
                    g_gan = _generator_adversarial(unwrap(D), mask, fake, pc)
                    g_l1 = l1_loss(fake.float(), real)
                    loss_g = g_gan + pc.lambda_l1 * g_l1
                    extra = _texture_terms(unwrap(D), pc, mask, real, fake, "G", pc.lambda_fm, pc.lambda_texture)
                    for value, weight in extra.values():
                        loss_g = loss_g + weight * value
                state.scalers["generator"].scale(loss_g / n).backward()
        _add(sums, {"loss/G_gan": g_gan, "loss/G_l1": g_l1, **d_terms}, n)
        _add(sums, {key: value for key, (value, _) in extra.items()}, n)
    _optimiser_step(state, "discriminator")
    _optimiser_step(state, "generator")
    return sums


def kl_weight(cfg: Config, epoch: int) -> float:
    """beta, ramped linearly over the first kl_warmup_epochs epochs."""
    v = cfg.vae
    if v.kl_warmup_epochs <= 0:
        return v.beta
    return v.beta * min(1.0, (epoch + 1) / v.kl_warmup_epochs)


def _vae_fakes(state: TrainState, recon: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """What D is shown against the real pairs: the reconstruction (cVAE-GAN) and, when the adversarial
    term is on, a decoding of z ~ N(0, I) for the same mask (BicycleGAN's cLR-GAN half).

    Generation decodes prior samples, never posterior ones, and while KL > 0 the two occupy different
    regions of z, so only this second fake makes the images the pipeline uses sharp. With lambda_gan 0
    (feature matching only) no term would use what D learns from it, so it is not drawn."""
    if state.cfg.vae.lambda_gan <= 0:
        return [recon]
    vae = unwrap(state.nets["vae"])
    z = torch.randn_like(mu)
    with autocast(state):
        sample = faded(state.stage, vae.decode(z, mask), lambda r: vae.decode(z, resize(mask, r)))
    return [recon, sample]


def _vae_d_config(cfg: Config):
    """The pix2pix settings the cVAE-GAN's discriminator follows (ndf, gan_mode, diffaug, ...), with
    the PatchGAN whatever pix2pix.discriminator says (see models.network_kind)."""
    return dataclasses.replace(cfg.pix2pix, discriminator="patch")


def _vae_gan_terms(state: TrainState, mask: torch.Tensor, real: torch.Tensor, fakes: list[torch.Tensor],
                   pixels: float) -> dict[str, tuple[torch.Tensor, float]]:
    """The VAE's adversarial and feature-matching terms by loss name: (value, weight). The weights are
    scaled by `pixels` (C*H*W at full resolution) to match the summed reconstruction term."""
    v, pc, D = state.cfg.vae, _vae_d_config(state.cfg), unwrap(state.nets["discriminator"])
    terms = {}
    with autocast(state):
        if v.lambda_gan > 0:
            adv = _generator_adversarial(D, torch.cat([mask] * len(fakes)), torch.cat(fakes), pc)
            terms["loss/VAE_gan"] = (adv, v.lambda_gan * pixels)
        terms.update(_texture_terms(D, pc, mask, real, fakes[0], "VAE", v.lambda_fm * pixels))
    return terms


def vae_step(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One update of loss = recon + beta * KL (both summed per image, averaged over the batch).

    cVAE-GAN (vae.lambda_gan or vae.lambda_fm > 0, BicycleGAN's cVAE-GAN and cLR-GAN halves): D also
    steps, on real pairs against (mask, reconstruction) and (mask, decoded z ~ N(0, I)) pairs, and the
    loss gains lambda_gan * P * G_adv + lambda_fm * P * FM. G_adv and FM are means (per patch, per
    feature) but recon is summed over the P = C*H*W pixels of an image, so the weights are multiplied
    by P: lambda_gan is a per-pixel weight, independent of the image size, and lambda_gan 0.01 gives
    pix2pix's balance of GAN against L1 (1 : 100). As in pix2pix_step, D and VAE are updated
    simultaneously from the same micro-batches. With both weights 0 no discriminator exists and the
    step (loss, random draws, reported values) is the plain VAE's.
    """
    vae, n = state.nets["vae"], len(batches)
    D = state.nets.get("discriminator")
    beta = kl_weight(state.cfg, state.epoch)
    for opt in state.optimizers.values():
        opt.zero_grad(set_to_none=True)
    sums = dict.fromkeys(["loss/VAE_recon_l1", "loss/VAE_kl", "loss/VAE_total"], 0.0)
    for i, b in enumerate(batches):
        last = i == n - 1
        mask, real = b["mask"], b["image"]
        with _sync_unless(vae, last), _sync_unless(D, last):
            with autocast(state):
                recon, mu, logvar = vae(real, mask)
                recon = faded(state.stage, recon, lambda r: unwrap(vae)(resize(real, r), resize(mask, r))[0])
            # Summed per image, so a coarser progressive stage would shrink it against the KL term;
            # scaling by the pixel ratio keeps beta's meaning the same at every resolution.
            scale = state.stage.pixel_ratio if state.stage else 1.0
            recon_loss = vae_reconstruction_loss(recon.float(), real) * scale
            kl = kl_divergence(mu.float(), logvar.float())
            extra, d_terms = {}, {}
            if D is not None:
                fakes = _vae_fakes(state, recon, mu, mask)
                d_terms = _discriminator_backward(state, _vae_d_config(state.cfg), mask, real, fakes, n)
            with _frozen(D):
                if D is not None:
                    extra = _vae_gan_terms(state, mask, real, fakes, real[0].numel() * scale)
                loss = recon_loss + beta * kl
                for value, weight in extra.values():
                    loss = loss + weight * value
                state.scalers["vae"].scale(loss / n).backward()
        _add(sums, {"loss/VAE_recon_l1": l1_loss(recon.detach().float(), real), "loss/VAE_kl": kl,
                    "loss/VAE_total": loss, **d_terms}, n)
        _add(sums, {key: value for key, (value, _) in extra.items()}, n)
    if D is not None:
        _optimiser_step(state, "discriminator")
    _optimiser_step(state, "vae")
    return sums


def ema_decay(state: TrainState, name: str) -> float:
    """diffusion.ema_decay, warmed up as min(decay, (1 + n) / (10 + n)) after n optimiser steps of
    `name` (diffusers' EMAModel default): a run of a few hundred steps would otherwise sample from
    weights still mostly at their initial values. n is Adam's own step count, which the checkpoint's
    optimiser state carries, so a resumed run continues the warm-up where it stopped."""
    steps = [int(s["step"]) for s in state.optimizers[name].state.values() if "step" in s]
    n = max(steps, default=0)
    return min(state.cfg.diffusion.ema_decay, (1 + n) / (10 + n))


@torch.no_grad()
def update_ema(state: TrainState, name: str) -> None:
    """Move the weight average nets[name + EMA_SUFFIX] (if any) towards nets[name]: ema += (1 - decay)
    * (w - ema), after the optimiser step."""
    ema = state.nets.get(name + EMA_SUFFIX)
    if ema is None:
        return
    weight = 1.0 - ema_decay(state, name)
    for average, current in zip(unwrap(ema).parameters(), unwrap(state.nets[name]).parameters()):
        average.lerp_(current, weight)


def diffusion_step(state: TrainState, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One update of the diffusion model's noise-prediction MSE (models.diffusion: fresh noise and
    timesteps per image from the global RNG, seeded per epoch), then of its weight average."""
    net, n = state.nets["diffusion"], len(batches)
    state.optimizers["diffusion"].zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for i, b in enumerate(batches):
        with _sync_unless(net, i == n - 1):
            with autocast(state):
                loss = net(b["mask"], b["image"])  # forward is the loss, so DDP sees the call
            state.scalers["diffusion"].scale(loss / n).backward()
        _add(sums, {"loss/diffusion_mse": loss}, n)
    _optimiser_step(state, "diffusion")
    update_ema(state, "diffusion")
    return sums


STEPS: dict[str, Callable[[TrainState, list], dict[str, float]]] = {"pix2pix": pix2pix_step, "vae": vae_step,
                                                                     "diffusion": diffusion_step}


def seed_epoch(cfg: Config, epoch: int, rank: int) -> None:
    """Seed dropout/DiffAugment per (seed, epoch, rank): a resumed run replays the epochs it redoes."""
    torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 1009 + rank)


def train_epoch(state: TrainState, batches: Iterable[dict[str, torch.Tensor]],
                stage: Stage | None = None) -> dict[str, float]:
    """Run one epoch over `batches`, group them into accumulation steps, return mean metrics.

    `stage`: resolution and fade-in to train at; default: the config's schedule for this epoch."""
    state.stage = stage or stage_for(state.cfg, state.epoch)
    for net in state.nets.values():
        net.train()
    set_learning_rates(state, state.epoch)
    step = STEPS[state.cfg.train.model]
    accum = state.cfg.train.grad_accum
    totals: dict[str, float] = {}
    steps, images, group = 0, 0, []
    t0 = time.perf_counter()
    for batch in batches:
        batch = {k: to_device(v, state.device, state.cfg.train.channels_last)
                 for k, v in batch.items() if k in ("image", "mask")}
        group.append(stage_batch(batch, state.stage))
        if len(group) < accum:
            continue
        for key, value in step(state, group).items():
            totals[key] = totals.get(key, 0.0) + value
        steps += 1
        images += sum(len(b["image"]) for b in group)
        group = []
    if steps == 0:
        raise RuntimeError("an epoch produced no optimisation step: fewer batches than grad_accum "
                           "(lower train.grad_accum or train.batch_size, or raise data.repeats)")
    metrics = {k: v / steps for k, v in totals.items()}
    metrics.update({"steps": float(steps), "images": float(images), "time_s": time.perf_counter() - t0,
                    "resolution": float(state.stage.resolution), "fade_alpha": state.stage.alpha,
                    "lr": state.optimizers[next(iter(state.optimizers))].param_groups[0]["lr"]})
    return metrics


def metrics_text(metrics: dict[str, float]) -> str:
    """An epoch's losses and validation scores, e.g. 'G_l1 0.5306  val_ssim 0.1430'."""
    return "  ".join(f"{k.replace('loss/', '').replace('/', '_')} {v:.4f}" for k, v in metrics.items() if "/" in k)


def format_metrics(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """The per-epoch progress line."""
    at = f" @{metrics['resolution']:.0f}px" if "resolution" in metrics else ""
    if metrics.get("fade_alpha", 1.0) < 1.0:
        at += f" (fade-in {metrics['fade_alpha']:.2f})"
    return f"epoch {epoch + 1}/{epochs}{at}  " + metrics_text(metrics) + f"  ({metrics['time_s']:.1f}s)"


def _noise_channels(gen: nn.Module) -> int:
    return int(getattr(gen, "config", {}).get("noise_channels", 0))


@torch.no_grad()
def render(nets: dict[str, nn.Module], masks: torch.Tensor, num_samples: int = 1,
           generator: torch.Generator | None = None, prior_mean: bool = False) -> torch.Tensor:
    """Images for `masks` (B,1,H,W) -> (B, num_samples, C, H, W), nets in eval mode.

    pix2pix without noise channels is deterministic in eval mode, so its samples repeat; with them each
    sample draws fresh noise (from `generator`; a fixed seed when `prior_mean`). The VAE draws
    z ~ N(0, I) per sample, or uses z = 0 (the prior mean) when `prior_mean` (used for validation,
    where we want one image). The diffusion model samples with DDIM from one seed per image, drawn
    from `generator`; `prior_mean` (it has no mean image) takes the fixed seeds 0, 1, ... instead, so
    validation compares the same draws every epoch.
    """
    net = rendering_net(nets)
    if isinstance(net, MaskDiffusion):
        count = len(masks) * num_samples
        if prior_mean:
            seeds = torch.arange(count)
        else:
            seeds = torch.randint(0, 2**62, (count,), generator=generator,
                                  device=generator.device if generator is not None else "cpu")
        out = net.eval().render(masks.repeat_interleave(num_samples, dim=0), seeds.tolist())
        return out.view(len(masks), num_samples, *out.shape[1:])
    if "vae" in nets:
        vae = unwrap(nets["vae"]).eval()
        if prior_mean:
            z = torch.zeros(len(masks), vae.config["latent_dim"], device=masks.device)
            return vae.decode(z, masks).unsqueeze(1)
        out = vae.sample(masks, num_samples=num_samples, generator=generator)
        return out.view(len(masks), num_samples, *out.shape[1:])
    gen = unwrap(nets["generator"]).eval()
    if not _noise_channels(gen):
        out = gen(masks)
        return out.unsqueeze(1).expand(-1, num_samples, *out.shape[1:])
    if generator is None and prior_mean:
        generator = torch.Generator().manual_seed(0)  # validation: the same noise every epoch
    return torch.stack([gen(masks, gen.draw_noise(len(masks), *masks.shape[-2:], generator, masks.device))
                        for _ in range(num_samples)], dim=1)


def render_seeded(nets: dict[str, nn.Module], inputs: torch.Tensor, seeds: np.ndarray,
                  precision: str = "fp32", sample_steps: int = 0) -> np.ndarray:
    """Generated images (B, H, W, C) uint8 for generator inputs (B,1,H,W) on the nets' device.

    The VAE draws one z per row, a noise-injected pix2pix its noise and the diffusion model its starting
    noise, from a generator seeded by that row's seed, so an image depends on its own seed only, never
    on how rows were batched (the diffusion model up to float rounding, ~1e-6, which can move a pixel
    by one grey level); pix2pix without noise channels is deterministic in eval mode. `sample_steps`:
    the diffusion model's DDIM steps, 0 = its config's."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.inference_mode(), torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
        net = rendering_net(nets)
        if isinstance(net, MaskDiffusion):
            out = net.eval().render(inputs, seeds.tolist(), sample_steps or None)
        elif "vae" in nets:
            vae = unwrap(nets["vae"]).eval()
            z = torch.stack([torch.randn(vae.config["latent_dim"], generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]).to(inputs.device)
            out = vae.decode(z, inputs)
        else:
            gen = unwrap(nets["generator"]).eval()
            if _noise_channels(gen):
                per_row = [gen.draw_noise(1, *inputs.shape[-2:], torch.Generator().manual_seed(int(s)), inputs.device)
                           for s in seeds]
                out = gen(inputs, [torch.cat(level) for level in zip(*per_row)])
            else:
                out = gen(inputs)
    img = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def validate(state: TrainState, val_batch: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """SSIM and L1 of the generated image against the real one on held-out pairs (centre crops)."""
    if val_batch is None:
        return {}
    masks = val_batch["mask"].to(state.device)
    real = val_batch["image"].to(state.device)
    fake = render(state.nets, masks, prior_mean=True)[:, 0].float()
    scores = [ssim(tensor_to_image(f), tensor_to_image(r)) for f, r in zip(fake.cpu(), real.cpu())]
    return {"val/ssim": float(np.mean(scores)), "val/l1": float(l1_loss(fake, real))}
