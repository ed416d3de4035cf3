"""Typed configuration: one dataclass per component, each default documented once, here.

    from synthgen.config import Config
    cfg = Config.from_yaml("run.yaml", overrides={"train.epochs": 5})
    print(cfg.to_yaml())

A YAML file holds any subset of the sections below; missing keys keep their defaults and unknown keys
are an error (a typo should not silently train with a default).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key or the file."""


@dataclass
class DataConfig:
    images: str = ""
    """Folder of training images (png, jpg, tif; gray or RGB). Paired with masks by file stem."""
    masks: str = ""
    """Folder of masks, same stems as the images."""
    image_size: int = 256
    """Training crop size in px (square). Must be a multiple of 16. Larger images are randomly cropped
    each time they are read; an image smaller than this on either side is upscaled (aspect kept) so
    its short side equals image_size, with a warning."""
    invert_mask: bool = False
    """Masks hold two values; by default the brighter one is foreground (1). True flips that, e.g. for
    ISBI 2012 where membranes are 0 (black)."""
    num_classes: int = 2
    """Classes in the masks. 2: binary masks (two gray values, see invert_mask). N > 2: label maps whose
    gray value or palette index is the class index 0..N-1. 0: such label maps, N inferred from the
    masks (largest index + 1) and printed. With `classes` set, N is the table's length."""
    classes: dict = field(default_factory=dict)
    """Class table, name -> mask value in class order, e.g. {background: 0, membrane: 1, mitochondrion: 2}
    (gray or palette values) or {sky: [70, 130, 180], road: [128, 64, 128]} (RGB colour-coded masks).
    Empty: see num_classes. A mask value outside the table is an error naming the file."""
    min_pairs: int = 3
    """Fewer valid pairs than this (validation pairs included) is refused."""
    val_pairs: int = 1
    """Pairs held out (the last ones by sorted stem) for validation SSIM; 0 disables validation."""
    repeats: int = 8
    """Random crops drawn from each training pair per epoch: with 3-30 pairs an 'epoch' of one pass
    would be a handful of steps."""
    augment: bool = True
    """Joint image/mask augmentation: random crop, flips, 90-degree rotations."""


@dataclass
class Pix2PixConfig:
    generator: str = "unet"
    """Generator network by name: 'unet' (the pix2pix U-Net) or 'attention_unet' (attention gates on
    every skip connection, as in Attention U-Net, Oktay et al. 2018)."""
    ngf: int = 64
    """Generator width: channels of the first U-Net layer (doubling per level, capped at 8*ngf)."""
    ndf: int = 64
    """Discriminator width: channels of the first PatchGAN (or OASIS encoder) layer."""
    discriminator: str = "patch"
    """Discriminator network by name: 'patch' (the pix2pix 70x70 PatchGAN on cat([mask, image]), one
    real/fake logit per patch, trained with pix2pix.gan_mode) or 'oasis' (OASIS, Schonfeld et al.
    2021: a U-Net on the image alone that labels every pixel as one of the mask's classes or 'fake',
    trained with class-balanced cross-entropy plus LabelMix; pix2pix.gan_mode is then unused). OASIS
    trains without an L1 term; pix2pix.lambda_l1 still applies, so lower it yourself to get closer."""
    lambda_labelmix: float = 10.0
    """Weight of the LabelMix consistency loss (OASIS default 10), used only with discriminator
    'oasis': D's logits for an image mixed from the real and the generated one by mask class must
    equal the same mix of its logits for the two; 0 disables it (and its extra D forward)."""
    gan_mode: str = "lsgan"
    """GAN loss: 'vanilla' (BCE, the reference pix2pix), 'lsgan' (least squares) or 'hinge'. lsgan is
    the default: on the ISBI sample (128 px, 300 steps) vanilla and hinge produced periodic stripe
    artefacts once D won (val SSIM 0.338 / 0.328), lsgan none (0.376)."""
    lambda_l1: float = 100.0
    """Weight of the L1 reconstruction term against the GAN term (pix2pix default 100)."""
    spectral_norm: bool = False
    """Spectral normalisation on the discriminator's convolutions (stabilises few-shot training)."""
    upsample: str = "resize"
    """Generator decoder: 'resize' (nearest upsample + 3x3 conv), 'bilinear' (bilinear upsample + 3x3
    conv) or 'transpose' (the reference pix2pix transposed convolutions). 'resize' and 'transpose'
    paint a fine periodic grid into flat regions after a few hundred steps on ISBI; 'bilinear' does
    not, and scored 0.711 vs 0.688 Dice downstream (k = 5, 2 seeds: within noise), but it fits sharp
    mask edges more slowly (L1 0.43 vs 0.26 after 120 steps on a one-pair toy), so it is not the
    default yet."""
    dropout: bool = True
    """Dropout 0.5 in the three innermost decoder levels (pix2pix's noise source)."""
    noise_channels: int = 0
    """Channels of per-pixel N(0, 1) noise concatenated to the generator's mask input and to every
    decoder level (OASIS-style 3D noise), so one mask renders with different textures; 0 = none (the
    generator is then deterministic in eval mode). Generation seeds the noise per candidate."""
    lambda_fm: float = 0.0
    """Weight of the pix2pixHD feature-matching loss (L1 between the discriminator's features of the
    real and the generated pair, averaged over its layers); 0 disables it. pix2pixHD uses 10."""
    lambda_texture: float = 0.0
    """Weight of the texture loss: L1 between Gram matrices of fixed random-filter features of the
    generated and the real image, foreground and background separately (synthgen.losses.texture_loss;
    no pretrained network); 0 disables it."""
    diffaug: str = "color,translation,cutout"
    """Differentiable augmentation applied to real and fake discriminator inputs in both G and D
    steps; comma list of color, translation, cutout; '' disables it."""


@dataclass
class VAEConfig:
    latent_dim: int = 512
    """Size of z."""
    nf: int = 32
    """Width of the first encoder level (doubling per level, capped at 8*nf)."""
    beta: float = 1.0
    """Weight of the KL term: loss = recon + beta * KL (both summed per image)."""
    kl_warmup_epochs: int = 0
    """Ramp beta linearly from 0 over this many epochs (0 = full beta from the start); avoids the
    decoder learning to ignore z early on."""
    lambda_gan: float = 0.0
    """Weight of an adversarial term (cVAE-GAN, as in BicycleGAN); 0 = the plain VAE. > 0 adds a
    PatchDiscriminator on cat([mask, image]) that sees real pairs against reconstructions and against
    decodings of z ~ N(0, I) for the same mask. The discriminator takes pix2pix's settings (ndf,
    gan_mode, spectral_norm, diffaug, and train.lr_d), so each has one default. The term is scaled by
    the image's pixel count (C*H*W at full resolution), like the summed reconstruction term, so the
    weight is per pixel: 0.01 is pix2pix's balance (GAN 1 against lambda_l1 100)."""
    lambda_fm: float = 0.0
    """Weight of the pix2pixHD feature-matching loss between the discriminator's features of the real
    and the reconstructed pair (trains the discriminator even when lambda_gan is 0); scaled per pixel
    like lambda_gan, so 0.1 is pix2pixHD's balance (FM 10 against GAN 1) at lambda_gan 0.01."""

    @property
    def adversarial(self) -> bool:
        """Whether the VAE trains with a discriminator (cVAE-GAN)."""
        return self.lambda_gan > 0 or self.lambda_fm > 0


@dataclass
class DiffusionConfig:
    """The mask-conditioned diffusion model (train.model 'diffusion', synthgen/models/diffusion.py),
    sized for a few images: 4.6M parameters at the default width, trained from scratch."""

    channels: int = 32
    """U-Net width: channels of the first level; the four levels have 1, 2, 2, 4 times this. A
    multiple of 8, >= 8."""
    layers_per_block: int = 2
    """ResNet blocks per U-Net level (1-4)."""
    timesteps: int = 1000
    """Diffusion timesteps of the training noise schedule (DDPM's 1000). >= 2."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: 'squaredcos_cap_v2' (the cosine schedule of Nichol & Dhariwal 2021, which
    destroys small images more gradually than DDPM's 'linear'), 'linear' or 'scaled_linear'."""
    prediction_type: str = "epsilon"
    """What the U-Net predicts: 'epsilon' (the noise, DDPM), 'v_prediction' (Salimans & Ho 2022) or
    'sample' (the clean image)."""
    sample_steps: int = 50
    """DDIM steps per image when sampling (samples.png, validation, generation); generation time is
    proportional to it. 1 <= sample_steps <= timesteps."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights that samples are drawn with (saved as
    the network 'diffusion_ema'); warmed up as min(decay, (1 + n) / (10 + n)) after n optimiser steps,
    so short runs are not dominated by the initial weights. 0 disables it (samples use the trained
    weights). In [0, 1)."""


@dataclass
class TrainConfig:
    model: str = "pix2pix"
    """Which model to train: 'pix2pix', 'vae' or 'diffusion'."""
    out: str = "runs/train"
    """Run directory: config, Ray checkpoints, final model, plots."""
    epochs: int = 20
    batch_size: int = 4
    """Images per worker per optimisation step (before accumulation)."""
    lr: float = 2e-4
    """Adam learning rate for every network (pix2pix default)."""
    lr_d: float = 0.0
    """Discriminator learning rate; 0 means use lr."""
    beta1: float = 0.5
    """Adam beta1 (pix2pix default)."""
    decay_start: float = 0.5
    """Fraction of the epochs after which the learning rate decays linearly to 0 (1.0 = no decay)."""
    precision: str = "fp32"
    """'fp32', 'bf16' (autocast, CPU or GPU) or 'fp16' (autocast + grad scaler, GPU only)."""
    grad_clip: float = 0.0
    """Max global gradient norm per network; 0 disables clipping."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step."""
    grad_checkpoint: bool = False
    """Gradient (activation) checkpointing: the generator's blocks (VAE: decoder stages) recompute
    their activations in the backward pass, cutting activation memory for ~30% more compute."""
    resolutions: str = ""
    """Progressive training: comma list of increasing resolutions ending at data.image_size, e.g.
    '64,128,256'; '' trains at data.image_size only. The networks' depth is set by the smallest one,
    so one set of weights runs at all of them (see synthgen/progressive.py)."""
    stage_epochs: str = ""
    """Epochs per resolution, e.g. '4,4,8' (must sum to train.epochs); '' splits train.epochs evenly,
    later resolutions taking the remainder."""
    fade_in_epochs: int = 0
    """Epochs over which each new resolution is blended in with the up-sampled previous one
    (ProGAN-style fade-in); 0 switches at once. Must be smaller than every stage but the first."""
    channels_last: bool = False
    """NHWC memory layout for networks and batches (faster convolutions on tensor-core GPUs with
    bf16/fp16; see synthgen/device.py)."""
    compile: bool = False
    """torch.compile the networks (in place; checkpoints unchanged). The first step of every input
    shape pays the compile, so it pays off only for long runs."""
    workers: int = 1
    """Ray Train data-parallel workers."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (fractions allowed, so small machines keep a CPU for the driver)."""
    gpu: bool = False
    """One GPU per worker and the NCCL backend (gloo on CPU)."""
    seed: int = 0
    """Seeds weights, data order, augmentation and dropout: the same seed gives the same weights."""
    checkpoint_every: int = 5
    """Checkpoint every K epochs (the last epoch always checkpoints)."""
    keep_checkpoints: int = 2
    """Keep only the newest N checkpoints (a 256 px pix2pix checkpoint with Adam state is ~0.7 GB)."""
    max_failures: int = 1
    """Times Ray restarts a failed worker group from the latest checkpoint before giving up."""
    resume: bool = False
    """Continue from the latest checkpoint in `out` instead of starting over."""
    storage: str = ""
    """Where Ray Train persists checkpoints: '' = `out`. On a multi-node cluster this must be reachable
    from every node: a shared-filesystem path or a cloud URI (s3://, gs://, abfs://)."""
    samples: int = 4
    """Masks shown in the sample grid at the end (VAE: 3 samples each)."""


@dataclass
class VariationConfig:
    """How new candidates are made from one source mask (see synthgen/variations.py)."""

    noise_sigma: float = 0.1
    """Std of the Gaussian noise added to the generator's input mask (values 0/1) for 'noise'; the
    label is unchanged. Must be > 0."""
    elastic_alpha: float = 8.0
    """Largest elastic displacement in px for a 256 px image (scaled by min(H, W) / 256)."""
    elastic_sigma: float = 6.0
    """Gaussian smoothing of the elastic displacement field in px for a 256 px image (scaled like
    elastic_alpha): larger = smoother, more global deformation; smaller = wiggly boundaries."""
    affine_degrees: float = 10.0
    """Largest |rotation| in degrees for 'affine'."""
    affine_scale: float = 0.1
    """Largest relative zoom change for 'affine': the zoom is drawn from [1 - s, 1 + s]."""
    affine_shift: float = 0.05
    """Largest shift for 'affine', as a fraction of the image height (rows) and width (columns)."""
    crop_min: float = 0.7
    """'crop' keeps a fraction in [crop_min, 1] of each side (the same fraction for both, so the
    aspect ratio is kept), then resizes back (mask nearest, image bilinear). In (0, 1]."""
    morph_max_px: int = 3
    """'morph' dilates or erodes (sign drawn at random) the foreground by a disk of radius
    1..morph_max_px px. >= 1."""


@dataclass
class GenerateConfig:
    checkpoint: str = ""
    """Trained model: a `synthgen train` run directory or its `model/` directory."""
    vae_checkpoint: str = ""
    """With model 'hybrid': the VAE checkpoint (`checkpoint` is then the pix2pix one)."""
    masks: str = ""
    """Source masks: a folder, a .parquet file (column 'mask' of PNG bytes), or '' for the training
    pairs recorded in the checkpoint (whose real images then serve as SSIM references)."""
    images: str = ""
    """Optional folder of real images paired with `masks` by stem, used as SSIM references."""
    out: str = "runs/generated"
    """Output dataset directory (written to a temporary sibling, renamed when complete)."""
    model: str = ""
    """'pix2pix', 'vae', 'diffusion' or 'hybrid' (a pix2pix and a VAE checkpoint: keep the better image per
    candidate; diffusion does not take part); '' = the checkpoint's model."""
    num_variations: int = 8
    """Candidates generated per source mask (per tile of a source larger than the model's size)."""
    variations: str = "noise,elastic,morph"
    """Comma list of variation kinds, cycled over a mask's candidates: noise, elastic, affine, flip,
    crop, morph, latent (VAE: same mask, new z; diffusion: same mask, new starting noise)."""
    threshold: str = "0.8"
    """Accept a candidate when its weighted overall score is at least this: an absolute number (any
    finite value; -1 keeps everything), or 'real:F' (F > 0, e.g. real:0.9) = F times the median overall
    score of the real images of the source masks, each scored as a candidate of its own mask (see
    synthgen.quality.real_reference_score); needs sources with real images (--images or the training
    pairs). The resolved number and the reference are recorded in manifest.json."""
    weights: str = "ssim=0.3,iou=0.3,edges=0.2,diversity=0.2"
    """Metric weights of the overall score (normalised by their sum)."""
    batch_size: int = 4
    """Source masks per batch through every stage (x num_variations candidates)."""
    actors_min: int = 1
    """Smallest generator actor pool."""
    actors_max: int = 2
    """Largest generator actor pool (autoscaled by Ray Data between min and max)."""
    cpus_per_actor: float = 0.5
    """CPUs reserved per generator actor; fractional so small machines keep CPUs for the other stages."""
    gpu: bool = False
    """One GPU per generator actor."""
    actor_resources: str = ""
    """Extra Ray resources each generator actor requests, as name=amount pairs, e.g. 'gpu_pool=1' to
    keep actors on nodes started with --resources '{"gpu_pool": N}' (at most N actors per node)."""
    precision: str = "fp32"
    """Generator inference: 'fp32', 'bf16' or 'fp16' (GPU) autocast."""
    max_batch: int = 0
    """Candidates per generator forward pass; 0 sizes it to the device (GPU: measured from free
    memory; CPU: 64)."""
    channels_last: bool = False
    """NHWC layout for the generator in the actors (faster on tensor-core GPUs with bf16/fp16)."""
    compile: bool = False
    """torch.compile the generator in every actor (each actor pays the compile once)."""
    sample_steps: int = 0
    """Diffusion checkpoints: DDIM steps per candidate (generation time is proportional to it); 0 = the
    checkpoint's diffusion.sample_steps. Ignored by the other models."""
    scoring: str = "auto"
    """Where candidates are scored: 'skimage' (scikit-image in CPU tasks, the reference), 'torch'
    (batched PyTorch in the generator actors, on their GPU when --gpu; agrees with skimage within
    1e-3), or 'auto' = torch with --gpu, else skimage."""
    seed: int = 0
    """Seeds every variation and latent sample: the same seed gives byte-identical outputs."""
    png: bool = True
    """Also write images/ and masks/ PNG folders (Parquet shards are always written)."""
    keep_rejected: bool = False
    """Write rejected candidates under rejected/ (PNG) for inspection."""
    shard_rows: int = 512
    """Rows per Parquet shard."""
    segmenter: str = ""
    """Label fidelity: '' off; 'auto' trains a segmenter on the sources' real pairs first; or a
    directory saved by synthgen.segment.save_segmenter. Each candidate then gets label_fidelity = IoU
    of the segmenter's prediction on the generated image with its mask (weight it with
    `label_fidelity=...` in weights)."""
    segmenter_steps: int = 300
    """Training steps of the 'auto' segmenter (batch 8)."""
    realism: bool = True
    """After generation, measure the realism of a random sample of accepted images against the
    sources' real images (synthgen.realism: per-region texture figures, spectrum distance, C2ST
    accuracy; a few seconds on CPU), into manifest.json 'realism', the summary and realism.png.
    Without real images (mask-only sources) the manifest records null and the reason."""
    realism_samples: int = 64
    """At most this many accepted images (reservoir sample, seeded by `seed`) and this many real
    source tiles (evenly spread) enter the realism figures. >= 2."""


MIXING_MODES = ("replace", "add", "pretrain")
"""evaluate.mixing values (see EvaluateConfig.mixing and synthgen.mixing)."""


@dataclass
class EvaluateConfig:
    real_images: str = ""
    """Folder of real training images; condition k uses the first k pairs by stem."""
    real_masks: str = ""
    test_images: str = ""
    """Held-out real images the segmenters are scored on (never used for training or generation)."""
    test_masks: str = ""
    invert_mask: bool = False
    """As data.invert_mask: flips which mask value is the foreground scored by Dice/IoU."""
    out: str = "runs/evaluate"
    k: str = "3,5,10"
    """Comma list of real-pair counts."""
    seeds: int = 3
    """Segmenter seeds per (condition, k)."""
    conditions: str = "real,classic,pix2pix,vae,hybrid"
    """Which of real (random crops only), classic (crops, flips, rot90, elastic, intensity), pix2pix,
    vae, hybrid, diffusion (real with classic augmentation + that generator's filtered synthetic pairs)
    to run. diffusion is not in the default list: its sampler costs seconds per candidate on a CPU."""
    all_real: bool = True
    """Also train on all real pairs: the upper reference."""
    image_size: int = 128
    """Crop size for segmenters and generators (multiple of 16)."""
    seg_steps: int = 300
    """Optimizer steps per segmenter (the real schedule): a fixed budget keeps conditions comparable. Choose
    one where the real-only curve has flattened (see curve_every), or synthetic gains may only be speed."""
    seg_batch: int = 8
    seg_width: int = 16
    """Base width of the segmentation U-Net."""
    mixing: str = "add"
    """How a synthetic condition's segmenter uses its synthetic items (see synthgen.mixing):
    'add' (default) = every step the baselines' exact real batch plus a synthetic batch, loss
    L(real) + synthetic_weight * L(synthetic); 'pretrain' = pretrain_steps synthetic-only steps, then the
    baselines' real schedule; 'replace' = each item synthetic with probability synthetic_fraction (the
    old protocol). 'add' is the default because it is the fair one at a fixed budget: the real pairs are
    drawn exactly as often as by real/classic (replace halves that), the synthetic data gets as many
    updates as in training alone (pretrain spends them before the real schedule, where they can be
    forgotten), and with synthetic_weight 0 it is the classic baseline plus a BatchNorm difference only."""
    synthetic_fraction: float = 0.5
    """mixing 'replace' only: share of synthetic items in a synthetic condition's training stream."""
    synthetic_batch: int = 0
    """mixing 'add' only: synthetic items per step, added to the seg_batch real ones; 0 = seg_batch."""
    synthetic_weight: float = 1.0
    """mixing 'add' only: lambda in L(real) + lambda * L(synthetic); 1 weighs a synthetic item like a real
    one (GenSeg's setting), 0 trains on the real batch alone (but BatchNorm still sees the synthetic)."""
    pretrain_steps: int = 0
    """mixing 'pretrain' only: synthetic-only steps (batch seg_batch) before the real schedule; 0 = seg_steps."""
    curve_every: int = 100
    """Score every segmenter on the test pairs every this many steps (and at the last one): the Dice-vs-step
    curves of results.json / results_curves.png, which show whether a budget was long enough; 0 = off.
    Costs one test pass (~1 s for ISBI's 6 images at 128 px) per point."""
    thresholds: str = ""
    """Filter ablation: comma list of acceptance thresholds, e.g. "0,0.5". Each generated set is then
    generated once with every candidate kept and re-filtered at each value, giving conditions named
    '<model>@t<value>' (pix2pix@t0, pix2pix@t0.5); '' = one set per model, filtered at `threshold`."""
    label_fidelity: float = 0.0
    """Weight of label fidelity in the generation score (generate.segmenter 'auto': a segmenter trained on
    the k pairs scores each candidate; weights += label_fidelity=this); 0 = off."""
    gen_steps: int = 300
    """Generator optimizer steps per (k, model) (batch 4)."""
    gen_ngf: int = 32
    """Width of the generators trained for the evaluation (pix2pix ngf/ndf, VAE nf = gen_ngf // 2,
    diffusion channels = gen_ngf // 2, at least 8; evaluate.gen_set overrides any of them)."""
    gen_generator: str = "unet"
    """pix2pix generator network of the evaluation: 'unet' or 'attention_unet' (see pix2pix.generator)."""
    gen_set: str = ""
    """Extra settings for the generators trained here: comma list of dotted key=value, e.g.
    "pix2pix.noise_channels=4,pix2pix.lambda_texture=50" (any section; applied after the keys above)."""
    num_variations: int = 8
    """Candidates per 128 px source tile in the generated sets."""
    variations: str = ""
    """Variation kinds of the generated sets (as generate.variations); '' = per model, pix2pix
    'noise,elastic,morph,flip', vae/hybrid 'latent,elastic,morph,flip'. Their parameters come from this
    config's `variations` section, e.g. the mild-geometry recipe "affine,elastic,flip" with
    variations.affine_degrees=15, variations.affine_scale=0.2 (README, downstream)."""
    threshold: str = "0.5"
    """Generation acceptance threshold used for the synthetic sets, as generate.threshold: a number or
    'real:F' (then relative to the k real pairs of each condition)."""
    synthetic: str = ""
    """Optional ready-made synthetic dataset, evaluated as condition 'given' for every k (make sure
    it was generated from no more than those k pairs, or it leaks)."""


@dataclass
class SearchConfig:
    """`synthgen tune`: a Ray Tune search (Optuna TPE + ASHA) over any numeric or categorical key."""

    model: str = ""
    """'pix2pix', 'vae', or 'hybrid' (train.model becomes a searched choice of the two and the best trial
    of each model is written, since hybrid generation takes one checkpoint of each); '' = train.model."""
    out: str = "runs/tune"
    """Search directory: Ray Tune state, one folder per trial, trials.csv/md, plot, best configs."""
    trials: int = 12
    """Trials (sampled configurations) in the search."""
    max_concurrent: int = 0
    """Trials run at once; 0 = as many as the free CPUs (GPUs) allow."""
    workers_per_trial: int = 1
    """1 = each trial trains in its own Tune actor; > 1 = each trial runs a data-parallel Ray Train
    TorchTrainer with this many workers (needs Ray's state API, i.e. a dashboard, to free the
    resources of trials ASHA stops)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial, split evenly over its workers (fractions let small trials share a GPU)."""
    objective: str = "val_ssim"
    """What the search optimises, measured on the validation pairs after every epoch: val_ssim,
    val_l1, quality (generate.weights score without diversity), label_fidelity (IoU of a segmenter
    trained on the real training pairs, run on generated images) or dice_gain (a segmenter trained on
    real + generated pairs vs on real pairs alone; costs seg_steps steps per epoch) or realism (C2ST
    accuracy of a small CNN telling generated from real validation tiles, 0.5 = indistinguishable;
    minimised; a few seconds per epoch on CPU)."""
    mode: str = ""
    """'max' or 'min'; '' = the objective's own direction (min for val_l1 and realism, max otherwise)."""
    val_images: str = ""
    """Held-out validation images for the objective; '' = hold out data.val_pairs training pairs."""
    val_masks: str = ""
    scheduler: str = "asha"
    """'asha' (stop trials that fall behind at epochs grace_period, grace_period * reduction_factor,
    ...) or 'fifo' (every trial runs all train.epochs)."""
    grace_period: int = 1
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: int = 2
    """ASHA keeps the best 1/reduction_factor of the trials at each rung."""
    space: dict = field(default_factory=dict)
    """Search space: config key -> distribution, e.g. {'pix2pix.lambda_l1': 'loguniform(10, 300)',
    'pix2pix.gan_mode': 'choice(lsgan, hinge)'}; distributions are loguniform(lo, hi), uniform(lo, hi),
    int(lo, hi) (inclusive) and choice(a, b, ...). Empty = the model's default space (see search.py).
    On the command line: --space "pix2pix.lambda_l1=loguniform(10,300);train.lr=loguniform(1e-5,1e-3)"."""
    seg_steps: int = 150
    """Segmenter training steps for the label_fidelity and dice_gain objectives."""
    val_tiles: int = 16
    """Validation tiles (data.image_size) the objective is measured on, cut from the validation pairs."""
    seed: int = 0
    """Seeds the Optuna sampler (trials themselves use train.seed)."""
    resume: bool = False
    """Continue an interrupted search in `out` (Tuner.restore) instead of starting a new one."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    pix2pix: Pix2PixConfig = field(default_factory=Pix2PixConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variations: VariationConfig = field(default_factory=VariationConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        """cfg.get("train.epochs") == cfg.train.epochs."""
        section, _, key = dotted.partition(".")
        return getattr(getattr(self, section), key)

    def set(self, dotted: str, value: Any, source: str = "config") -> None:
        """Set one key by its dotted name, converted to the key's type (errors name `source`)."""
        _set(self, dotted, value, source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, directory: str, name: str = "config.yaml") -> str:
        """Write the resolved config beside a run's outputs (atomically)."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            if name.endswith(".json"):
                json.dump(self.to_dict(), f, indent=2)
            else:
                f.write(self.to_yaml())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config") -> "Config":
        cfg = cls()
        for section, values in (d or {}).items():
            if section not in SECTIONS:
                raise ConfigError(f"{source}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section '{section}' must be a mapping")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value, source)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | None = None, overrides: dict[str, Any] | None = None) -> "Config":
        """Defaults, then the YAML file (if any), then `overrides` ({'train.epochs': 5, ...})."""
        d: dict[str, Any] = {}
        if path:
            try:
                with open(path) as f:
                    loaded = yaml.safe_load(f)
            except OSError as e:
                raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({e})") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: top level must be a mapping of sections")
            d = loaded or {}
        cfg = cls.from_dict(d, source=path or "config")
        for dotted, value in (overrides or {}).items():
            if value is not None:
                _set(cfg, dotted, value, "command line")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        t, dt, p = self.train, self.data, self.pix2pix
        checks = [
            (t.model in TRAIN_MODELS, f"train.model must be one of {', '.join(TRAIN_MODELS)}, got {t.model!r}"),
            (dt.image_size >= 16 and dt.image_size % 16 == 0, "data.image_size must be a multiple of 16, >= 16"),
            (t.epochs >= 1, "train.epochs must be >= 1"),
            (t.batch_size >= 1, "train.batch_size must be >= 1"),
            (t.workers >= 1, "train.workers must be >= 1"),
            (t.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (t.lr > 0 and t.lr_d >= 0, "train.lr must be > 0 and train.lr_d >= 0"),
            (0.0 <= t.decay_start <= 1.0, "train.decay_start must be in [0, 1]"),
            (t.precision in ("fp32", "bf16", "fp16"), "train.precision must be fp32, bf16 or fp16"),
            (t.precision != "fp16" or t.gpu, "train.precision fp16 needs --gpu (use bf16 on CPU)"),
            (t.checkpoint_every >= 1 and t.keep_checkpoints >= 1, "checkpoint_every and keep_checkpoints must be >= 1"),
            (p.gan_mode in ("vanilla", "lsgan", "hinge"), "pix2pix.gan_mode must be vanilla, lsgan or hinge"),
            (p.discriminator in ("patch", "oasis"),
             f"pix2pix.discriminator must be patch or oasis, got {p.discriminator!r}"),
            (p.lambda_labelmix >= 0, "pix2pix.lambda_labelmix must be >= 0"),
            (p.generator in ("unet", "attention_unet") and self.evaluate.gen_generator in ("unet", "attention_unet"),
             "pix2pix.generator and evaluate.gen_generator must be unet or attention_unet"),
            (p.upsample in ("resize", "bilinear", "transpose"), "pix2pix.upsample must be resize, bilinear or transpose"),
            (p.lambda_l1 >= 0, "pix2pix.lambda_l1 must be >= 0"),
            (all(a in ("color", "translation", "cutout") for a in split_list(p.diffaug)),
             "pix2pix.diffaug is a comma list of color, translation, cutout"),
            (self.vae.latent_dim >= 1 and self.vae.beta >= 0, "vae.latent_dim >= 1 and vae.beta >= 0"),
            (self.vae.lambda_gan >= 0 and self.vae.lambda_fm >= 0,
             f"vae.lambda_gan and vae.lambda_fm must be >= 0 (0 disables the term), got "
             f"{self.vae.lambda_gan} and {self.vae.lambda_fm}"),
            (dt.val_pairs >= 0 and dt.repeats >= 1, "data.val_pairs >= 0 and data.repeats >= 1"),
            (dt.num_classes == 0 or dt.num_classes >= 2, "data.num_classes must be 0 (infer) or >= 2"),
            (not dt.classes or dt.num_classes in (0, 2, len(dt.classes)),
             f"data.classes lists {len(dt.classes)} classes but data.num_classes is {dt.num_classes}"),
            (not dt.classes or len(dt.classes) >= 2, "data.classes needs at least 2 classes"),
            (not dt.invert_mask or (dt.num_classes == 2 and not dt.classes),
             "data.invert_mask applies to binary masks only (data.num_classes 2, no data.classes)"),
            (dt.min_pairs >= dt.val_pairs + 1, "data.min_pairs must leave at least one training pair"),
        ] + self._diffusion_checks() + self._generate_checks() + self._search_checks() + self._evaluate_checks() + _progressive_checks(self)
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))

    def _diffusion_checks(self) -> list[tuple[bool, str]]:
        d = self.diffusion
        return [
            (d.channels >= 8 and d.channels % 8 == 0, f"diffusion.channels must be a multiple of 8, >= 8, got {d.channels}"),
            (1 <= d.layers_per_block <= 4, f"diffusion.layers_per_block must be in 1..4, got {d.layers_per_block}"),
            (d.timesteps >= 2, f"diffusion.timesteps must be >= 2, got {d.timesteps}"),
            (d.beta_schedule in BETA_SCHEDULES,
             f"diffusion.beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {d.beta_schedule!r}"),
            (d.prediction_type in PREDICTION_TYPES,
             f"diffusion.prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {d.prediction_type!r}"),
            (1 <= d.sample_steps <= d.timesteps,
             f"diffusion.sample_steps must be in 1..diffusion.timesteps ({d.timesteps}), got {d.sample_steps}"),
            (0.0 <= d.ema_decay < 1.0, f"diffusion.ema_decay must be in [0, 1), got {d.ema_decay}"),
            (self.train.model != "diffusion" or not self.train.resolutions,
             "train.resolutions (progressive training) is not supported with train.model diffusion"),
        ]

    def _evaluate_checks(self) -> list[tuple[bool, str]]:
        e = self.evaluate
        return [
            (e.mixing in MIXING_MODES, f"evaluate.mixing must be one of {', '.join(MIXING_MODES)}"),
            (0.0 <= e.synthetic_fraction <= 1.0, "evaluate.synthetic_fraction must be in [0, 1]"),
            (min(e.synthetic_batch, e.pretrain_steps, e.curve_every) >= 0 and e.synthetic_weight >= 0
             and e.label_fidelity >= 0, "evaluate: synthetic_batch, synthetic_weight, pretrain_steps, "
                                        "curve_every and label_fidelity must be >= 0"),
            (e.seg_steps >= 1 and e.seg_batch >= 1, "evaluate: seg_steps >= 1 and seg_batch >= 1"),
        ]

    def _search_checks(self) -> list[tuple[bool, str]]:
        s = self.tune
        return [
            (s.model in ("", "pix2pix", "vae", "hybrid"), "tune.model must be pix2pix, vae or hybrid"),
            (s.trials >= 1, "tune.trials must be >= 1"),
            (s.max_concurrent >= 0 and s.workers_per_trial >= 1 and s.gpus_per_trial >= 0,
             "tune: max_concurrent >= 0, workers_per_trial >= 1, gpus_per_trial >= 0"),
            (s.objective in OBJECTIVES, f"tune.objective must be one of {', '.join(OBJECTIVES)}"),
            (s.mode in ("", "max", "min"), "tune.mode must be max, min or '' (the objective's direction)"),
            (s.scheduler in ("asha", "fifo"), "tune.scheduler must be asha or fifo"),
            (s.grace_period >= 1 and s.reduction_factor >= 2, "tune: grace_period >= 1, reduction_factor >= 2"),
            (s.seg_steps >= 1 and s.val_tiles >= 1, "tune: seg_steps >= 1 and val_tiles >= 1"),
            (bool(s.val_images) == bool(s.val_masks), "tune.val_images and tune.val_masks go together"),
        ]

    def _generate_checks(self) -> list[tuple[bool, str]]:
        g, v = self.generate, self.variations
        kinds = ("noise", "elastic", "affine", "flip", "crop", "morph", "latent")
        return [
            (g.model in GENERATE_MODELS, f"generate.model must be one of {', '.join(GENERATE_MODELS[1:])}, got {g.model!r}"),
            (g.num_variations >= 1, "generate.num_variations must be >= 1"),
            (bool(split_list(g.variations)) and all(k in kinds for k in split_list(g.variations)),
             "generate.variations is a comma list of " + ", ".join(kinds)),
            (all(k in kinds for k in split_list(self.evaluate.variations)),
             "evaluate.variations is '' or a comma list of " + ", ".join(kinds)),
            (1 <= g.actors_min <= g.actors_max, "need 1 <= generate.actors_min <= generate.actors_max"),
            (g.batch_size >= 1 and g.shard_rows >= 1, "generate.batch_size and shard_rows must be >= 1"),
            (g.cpus_per_actor > 0, "generate.cpus_per_actor must be > 0"),
            (_resources_ok(g.actor_resources), "generate.actor_resources is a comma list of name=amount (amount > 0)"),
            (g.precision in ("fp32", "bf16", "fp16"), "generate.precision must be fp32, bf16 or fp16"),
            (g.max_batch >= 0, "generate.max_batch must be >= 0 (0 = sized to the device)"),
            (g.sample_steps >= 0, f"generate.sample_steps must be >= 0 (0 = the checkpoint's), got {g.sample_steps}"),
            (g.realism_samples >= 2, "generate.realism_samples must be >= 2 (the C2ST holds out half)"),
            (g.scoring in ("auto", "skimage", "torch"), "generate.scoring must be auto, skimage or torch"),
            *[(problem is None, f"{key} {problem}") for key, value in
              (("generate.threshold", g.threshold), ("evaluate.threshold", self.evaluate.threshold))
              for problem in [threshold_problem(value)]],
            (v.noise_sigma > 0, "variations.noise_sigma must be > 0"),
            (v.elastic_alpha >= 0 and v.elastic_sigma > 0, "variations: elastic_alpha >= 0 and elastic_sigma > 0"),
            (v.affine_degrees >= 0 and 0 <= v.affine_scale < 1 and v.affine_shift >= 0,
             "variations: affine_degrees >= 0, 0 <= affine_scale < 1, affine_shift >= 0"),
            (0 < v.crop_min <= 1, "variations.crop_min must be in (0, 1]"),
            (v.morph_max_px >= 1, "variations.morph_max_px must be >= 1"),
        ]


def _progressive_checks(cfg: Config) -> list[tuple[bool, str]]:
    from synthgen.progressive import schedule_problems  # progressive.py imports this module

    return [(False, problem) for problem in schedule_problems(cfg)]


TRAIN_MODELS = ("pix2pix", "vae", "diffusion")
"""train.model values (see synthgen.models.MODELS)."""

GENERATE_MODELS = ("", *TRAIN_MODELS, "hybrid")
"""generate.model values ('' = the checkpoint's model)."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""diffusion.prediction_type values (diffusers' names)."""

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""diffusion.beta_schedule values (diffusers' names)."""

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}

OBJECTIVES = {"val_ssim": "max", "val_l1": "min", "quality": "max", "label_fidelity": "max", "dice_gain": "max",
              "realism": "min"}
"""Search objectives and their direction (computed in synthgen/objectives.py)."""


def parse_threshold(value: str | float) -> tuple[str, float]:
    """'0.8' -> ('absolute', 0.8); 'real:0.9' -> ('real', 0.9): F times the real images' median score.

        >>> parse_threshold("real:0.9"), parse_threshold(0.5)
        (('real', 0.9), ('absolute', 0.5))
    """
    text = str(value).strip()
    kind, number = ("real", text[5:]) if text.lower().startswith("real:") else ("absolute", text)
    try:
        x = float(number)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or (kind == "real" and x <= 0):
        raise ValueError(f"must be a number or 'real:F' with F > 0 (e.g. 0.8 or real:0.9), got {value!r}")
    return kind, x


def threshold_problem(value: str | float) -> str | None:
    """parse_threshold's complaint about `value`, or None when it parses."""
    try:
        parse_threshold(value)
    except ValueError as e:
        return str(e)
    return None


def parse_resources(text: str) -> dict[str, float]:
    """'a=1,b=0.5' -> {'a': 1.0, 'b': 0.5} (custom Ray resources)."""
    out = {}
    for item in split_list(text):
        name, _, amount = item.partition("=")
        out[name.strip()] = float(amount)
    return out


def _resources_ok(text: str) -> bool:
    try:
        return all(name and amount > 0 for name, amount in parse_resources(text).items())
    except ValueError:
        return False


def split_list(s: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"]."""
    return [a.strip() for a in s.split(",") if a.strip()]


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    section, _, key = dotted.partition(".")
    obj = getattr(cfg, section, None)
    names = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if key not in names:
        raise ConfigError(f"{source}: unknown key '{dotted}'")
    default = getattr(obj, key)
    if dotted == "data.classes":
        setattr(obj, key, _class_table(value, source))
        return
    if isinstance(default, dict):
        setattr(obj, key, _mapping(dotted, value, source))
        return
    if isinstance(default, str) and isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(str(v) for v in value)  # YAML lists for the comma-list keys
    if value is None or isinstance(value, (list, dict)):
        raise ConfigError(f"{source}: '{dotted}' must be a single {type(default).__name__} value, got {value!r}")
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1", "yes")
            value = bool(value)
        elif isinstance(default, (int, float)) and not isinstance(value, bool):
            if isinstance(default, int) and float(value) != int(float(value)):
                raise ValueError(value)
            value = type(default)(float(value) if isinstance(default, float) else int(float(value)))
        elif isinstance(default, str):
            value = str(value)
        else:
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: '{dotted}' must be {type(default).__name__}, got {value!r}") from None
    setattr(obj, key, value)


def _class_table(value: Any, source: str) -> dict[str, int | list[int]]:
    """data.classes from YAML ({name: 0, name: [r, g, b]}) or the command line
    ('background=0;membrane=1' or 'road=128,64,128;sky=70,130,180'); values are checked by labels.py."""
    table = _mapping("data.classes", value, source) if isinstance(value, str) else value
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: 'data.classes' must be a mapping of class name to value, got {value!r}")
    out: dict[str, int | list[int]] = {}
    for name, v in table.items():
        if isinstance(v, str):
            try:
                parts = [int(c) for c in v.replace("/", ",").split(",")]
            except ValueError:
                raise ConfigError(f"{source}: data.classes '{name}' must be an int or r,g,b, got {v!r}") from None
            v = parts[0] if len(parts) == 1 else parts
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, list) and len(v) == 3 and
                                       all(isinstance(c, int) and 0 <= c <= 255 for c in v))):
            raise ConfigError(f"{source}: data.classes '{name}' must be a mask value (int) or an [r, g, b] "
                              f"colour, got {v!r}")
        out[str(name)] = v
    return out


def _mapping(dotted: str, value: Any, source: str) -> dict[str, str]:
    """A str -> str mapping from YAML, or from 'key=value;key=value' on the command line."""
    if isinstance(value, str):
        items = [item.partition("=") for item in value.split(";") if item.strip()]
        if any(not sep or not k.strip() for k, sep, _ in items):
            raise ConfigError(f"{source}: '{dotted}' takes 'key=value;key=value', got {value!r}")
        value = {k.strip(): v.strip() for k, _, v in items}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{source}: '{dotted}' must be a mapping of config keys to values, got {value!r}")
    return {k: str(v) for k, v in value.items()}
