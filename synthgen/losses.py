"""Loss functions: pure functions of tensors, no state, no modules.

    from synthgen.losses import discriminator_loss, generator_adversarial_loss, l1_loss
    d_loss = discriminator_loss(d(real_pair), d(fake_pair.detach()), "vanilla")
    g_loss = generator_adversarial_loss(d(fake_pair), "vanilla") + 100 * l1_loss(fake, real)

GAN modes: 'vanilla' (binary cross-entropy on logits, pix2pix), 'lsgan' (least squares, Mao et al.
2017) and 'hinge' (Lim & Ye 2017; BigGAN, SAGAN). All take raw logits, never sigmoid outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "hinge")


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"unknown GAN mode '{mode}' (known: {', '.join(GAN_MODES)})")


def discriminator_loss_terms(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real_term, fake_term): the discriminator's loss on real and on fake inputs, each a mean over
    patches and batch, unweighted, so a trainer can report them separately."""
    _check_mode(mode)
    if mode == "vanilla":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    elif mode == "lsgan":
        real = F.mse_loss(real_logits, torch.ones_like(real_logits))
        fake = F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
    else:  # hinge
        real = F.relu(1.0 - real_logits).mean()
        fake = F.relu(1.0 + fake_logits).mean()
    return real, fake


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Discriminator loss. vanilla/lsgan: 0.5 * (real + fake), as pix2pix halves it so D learns more
    slowly than G; hinge: real + fake, its standard form."""
    real, fake = discriminator_loss_terms(real_logits, fake_logits, mode)
    if mode == "hinge":
        return real + fake
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Generator's GAN loss on the discriminator's logits for fakes. vanilla uses the non-saturating
    form (BCE towards 'real') rather than -log(1 - D), whose gradient vanishes once D wins."""
    _check_mode(mode)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if mode == "lsgan":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    return -fake_logits.mean()


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over all elements (pix2pix's reconstruction term)."""
    return (a - b).abs().mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)): summed over latent dimensions, mean over the batch."""
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    return kl.flatten(1).sum(dim=1).mean()


def vae_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 summed over the pixels (and channels) of each image, mean over the batch.

    This is the negative log-likelihood of a unit-scale Laplace decoder up to a constant. It is summed,
    not averaged, because kl_divergence is summed over latent dims: both are then per-image
    log-likelihood terms, so recon + beta * KL with beta = 1 is the (negative) ELBO. A per-pixel mean
    would implicitly weight KL by H*W*C and push the model into ignoring z (posterior collapse).
    """
    return (recon - target).abs().flatten(1).sum(dim=1).mean()
