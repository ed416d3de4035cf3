"""Loss functions: pure functions of tensors, no state, no modules.

    from synthgen.losses import discriminator_loss, generator_adversarial_loss, l1_loss
    d_loss = discriminator_loss(d(real_pair), d(fake_pair.detach()), "vanilla")
    g_loss = generator_adversarial_loss(d(fake_pair), "vanilla") + 100 * l1_loss(fake, real)
    # OASIS discriminator (N+1 classes per pixel), label = mask_to_label(mask):
    d_loss = oasis_discriminator_loss(d(real), d(fake.detach()), label)
    g_loss = oasis_generator_loss(d(fake), label)

GAN modes: 'vanilla' (binary cross-entropy on logits, pix2pix), 'lsgan' (least squares, Mao et al.
2017) and 'hinge' (Lim & Ye 2017; BigGAN, SAGAN). All take raw logits, never sigmoid outputs.
"""
from __future__ import annotations

import functools

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


def feature_matching_loss(real_features: list[torch.Tensor], fake_features: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature-matching loss (Wang et al. 2018): mean over the discriminator's layers of the
    L1 distance between its features of the real and of the generated pair (real ones detached).

    It asks the generator to reproduce the statistics the discriminator looks at, layer by layer,
    instead of the pixels themselves, which is what pulls a high-L1 generator to the blurry mean."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(f"need the same non-zero number of real and fake feature maps, "
                         f"got {len(real_features)} and {len(fake_features)}")
    terms = [l1_loss(fake.float(), real.detach().float()) for real, fake in zip(real_features, fake_features)]
    return torch.stack(terms).mean()


TEXTURE_WIDTHS = (16, 32, 32)
"""Channels of the fixed random-filter layers of the texture loss (3x3 convs, each followed by ReLU and
a 2x average pool, so the three layers see textures at 1x, 2x and 4x scale)."""


@functools.lru_cache(maxsize=8)
def random_filters(in_channels: int, seed: int = 0, widths: tuple[int, ...] = TEXTURE_WIDTHS) -> tuple[torch.Tensor, ...]:
    """Fixed He-initialised 3x3 conv weights, a pure function of (in_channels, seed, widths).

    Random, untrained filters are enough for Gram-matrix texture statistics (Ustyuzhaninov et al. 2017,
    "What does it take to generate natural textures?"), and need no downloaded ImageNet network."""
    g = torch.Generator().manual_seed(seed)
    out, cin = [], in_channels
    for w in widths:
        out.append(torch.randn(w, cin, 3, 3, generator=g) * (2.0 / (cin * 9)) ** 0.5)
        cin = w
    return tuple(out)


def _region_grams(image: torch.Tensor, mask: torch.Tensor, filters: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Per layer: (B, 2, C, C) Gram matrices of the random features over the background (mask 0) and
    the foreground (mask 1), each normalised by its (soft) pixel count."""
    grams, x, m = [], image.float(), mask.float()
    for weight in filters:
        x = F.avg_pool2d(F.relu(F.conv2d(x, weight.to(x.device), padding=1)), 2)
        m = F.avg_pool2d(m, 2)
        regions = torch.stack([1.0 - m, m], dim=1)                       # (B, 2, 1, h, w)
        f = x.unsqueeze(1) * regions                                      # (B, 2, C, h, w)
        f = f.flatten(3)
        count = regions.flatten(2).sum(-1).clamp_min(1.0)[..., None, None]  # (B, 2, 1, 1)
        grams.append(torch.einsum("brcp,brdp->brcd", f, x.unsqueeze(1).flatten(3).expand_as(f)) / count)
    return grams


def texture_loss(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gram-matrix texture loss (Gatys et al. 2015) on fixed random-filter features, per mask region.

    fake, real: (B, C, H, W) images in [-1, 1] rendered from / belonging to the same `mask` (B, 1, H, W).
    Foreground and background are compared separately, so a textured interior cannot be paid for by
    noise on the membranes. Zero when fake == real."""
    if fake.shape != real.shape or mask.shape[0] != fake.shape[0] or mask.shape[-2:] != fake.shape[-2:]:
        raise ValueError(f"texture_loss: fake {tuple(fake.shape)}, real {tuple(real.shape)} and mask "
                         f"{tuple(mask.shape)} must agree")
    filters = random_filters(int(fake.shape[1]), seed)
    terms = [l1_loss(gf, gr.detach()) for gf, gr in zip(_region_grams(fake, mask, filters),
                                                       _region_grams(real, mask, filters))]
    return torch.stack(terms).sum()


# OASIS (Schonfeld et al. 2021): the discriminator is an (N+1)-class per-pixel segmenter, class 0 =
# 'fake', class c + 1 = mask class c. Labels are (B, H, W) integer class maps (see mask_to_label).

def mask_to_label(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) mask of class ids (float, e.g. binary {0, 1}) -> (B, H, W) int64 class map.

    Rounds, so the fractional masks that progressive training's area downsampling produces take the
    majority class of each pixel."""
    return mask.detach().round().long().squeeze(1)


def class_balance_weights(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes,) OASIS class weights for a (B, H, W) label batch: numel / (K * count_c), with K
    the number of classes present in the batch (as in OASIS's code), and 0 for absent classes.

    The pixel-weighted mean of the weights is then 1, so a balanced loss keeps the scale of a plain
    mean while a thin class (membranes) counts as much as a large one."""
    counts = torch.bincount(label.flatten(), minlength=num_classes).float()
    if counts.numel() > num_classes:
        raise ValueError(f"label holds class {counts.numel() - 1}, but there are only {num_classes} classes")
    present = (counts > 0).sum()
    return torch.where(counts > 0, label.numel() / (present * counts.clamp_min(1.0)), torch.zeros_like(counts))


def balanced_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of (B, N+1, H, W) logits towards class label + 1 (the 'real, class c'
    outputs), each pixel weighted by class_balance_weights of its class; mean over pixels."""
    weights = class_balance_weights(label, logits.shape[1] - 1)[label]
    return (F.cross_entropy(logits.float(), label + 1, reduction="none") * weights).mean()


def oasis_discriminator_loss_terms(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                                   label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real_term, fake_term): balanced CE of the real image's logits towards its label, and plain CE
    of the generated image's logits towards 'fake' (class 0), both per-pixel means."""
    fake_target = torch.zeros(fake_logits.shape[:1] + fake_logits.shape[2:], dtype=torch.long,
                              device=fake_logits.device)
    return balanced_cross_entropy(real_logits, label), F.cross_entropy(fake_logits.float(), fake_target)


def oasis_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """OASIS discriminator loss: real_term + fake_term (not halved, as in the paper)."""
    real, fake = oasis_discriminator_loss_terms(real_logits, fake_logits, label)
    return real + fake


def oasis_generator_loss(fake_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """OASIS generator loss: balanced CE of the generated image's logits towards the mask it was
    rendered from, i.e. every pixel must look real *and* of its mask class."""
    return balanced_cross_entropy(fake_logits, label)


def labelmix(real: torch.Tensor, fake: torch.Tensor, label: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LabelMix (OASIS): (mixed image, mix map (B, 1, H, W) in {0, 1}); mixed = real where the map is 1,
    fake where it is 0. Every class of the label is taken whole from the real or from the fake image
    (a coin flip from `generator`, global RNG if None), so the seams between the two are class edges.

    OASIS flips one coin per class for the whole batch; this flips one per class per image: with binary
    masks, one coin pair per batch leaves the whole batch unmixed (all real or all fake, where the
    consistency loss is exactly 0) half the time, one pair per image only for 1 batch in 2**B."""
    num_classes = int(label.max()) + 1
    coins = torch.randint(0, 2, (label.shape[0], num_classes), generator=generator).to(label.device)
    mix = coins.gather(1, label.flatten(1)).view_as(label).unsqueeze(1).to(real.dtype)
    return mix * real + (1 - mix) * fake, mix


def labelmix_loss(mixed_logits: torch.Tensor, real_logits: torch.Tensor, fake_logits: torch.Tensor,
                  mix: torch.Tensor) -> torch.Tensor:
    """OASIS's LabelMix consistency: MSE between D's logits for the mixed image and the same mix of its
    logits for the real and the fake one. OASIS uses it to make D's per-pixel verdict depend on the
    content and structure at that pixel rather than on the rest of the image."""
    target = mix * real_logits.float() + (1 - mix) * fake_logits.float()
    return F.mse_loss(mixed_logits.float(), target)
