"""Python front end, in-process (no Ray): thin wrappers over the same data, models and steps.

    from synthgen import create_synthetic_dataloader, SyntheticDataGenerator
    loader = create_synthetic_dataloader("imgs/", "masks/", batch_size=4, image_size=128)
    gen = SyntheticDataGenerator(model_type="pix2pix", device="cpu", image_size=128)
    gen.train_pix2pix(loader, num_epochs=10, lr=2e-4, lambda_l1=100.0)
    gen.plot_training_curves("curves.png")
    gen.visualize_generation(loader.dataset[0]["mask"], num_samples=1, save_path="samples.png")

For multi-worker or GPU-cluster training use `synthgen train` (Ray Train); both run `steps.train_epoch`.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import DataLoader

from synthgen import plots
from synthgen.checkpoint import load_checkpoint, restore_state, save_checkpoint
from synthgen.config import Config, ConfigError
from synthgen.data import PairDataset, find_pairs
from synthgen.progressive import MIN_RESOLUTION, Stage, depth_for, stages
from synthgen.steps import (TrainState, build_state, format_metrics, render, rendering_net, seed_epoch,
                            train_epoch)


def create_synthetic_dataloader(images_dir: str, masks_dir: str, batch_size: int = 4, image_size: int = 256,
                                invert_mask: bool = False, repeats: int | None = None, seed: int = 0,
                                min_pairs: int | None = None) -> DataLoader:
    """Validated pairs -> augmented, shuffled batches {"image", "mask", "index"} (see synthgen.data)."""
    d = Config().data
    pairs = find_pairs(images_dir, masks_dir, min_pairs if min_pairs is not None else d.min_pairs)
    dataset = PairDataset(pairs, image_size, invert_mask, augment=True,
                          repeats=repeats if repeats is not None else d.repeats, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _image_shape(loader: DataLoader) -> tuple[int, int]:
    """(channels, size) of the loader's images, from one dataset item: iterating the loader would load a
    whole batch and advance its shuffling generator."""
    image = loader.dataset[0]["image"]
    return int(image.shape[0]), int(image.shape[-1])


class SyntheticDataGenerator:
    """Train a pix2pix, conditional-VAE or diffusion generator in this process and render images from masks."""

    def __init__(self, model_type: str = "pix2pix", device: str = "cpu", image_size: int | None = None,
                 latent_dim: int | None = None, config: Config | None = None):
        """`image_size` / `latent_dim` override `config` when given (defaults: synthgen.config)."""
        self.cfg = copy.deepcopy(config) if config is not None else Config()
        self.cfg.train.model = model_type
        if image_size is not None:
            self.cfg.data.image_size = image_size
        if latent_dim is not None:
            self.cfg.vae.latent_dim = latent_dim
        self.cfg.validate()
        self.device = torch.device(device)
        self.state: TrainState | None = None
        self._loader: DataLoader | None = None  # the last one trained on, for train_at_resolution

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state.history if self.state else []

    def _train(self, model: str, dataloader: DataLoader, num_epochs: int,
                plan: list[Stage] | None = None, min_size: int | None = None) -> list[dict[str, float]]:
        if self.cfg.train.model != model:
            raise ConfigError(f"this generator was created with model_type='{self.cfg.train.model}', "
                              f"not '{model}'")
        start = self.state.epoch if self.state else 0
        self.cfg.train.epochs = start + num_epochs
        self.cfg.validate()
        channels, size = _image_shape(dataloader)
        if self.state is None:
            self.state = build_state(self.cfg, channels, self.device, min_size)
        self._loader = dataloader
        plan = plan or [Stage(size)] * num_epochs  # the loader's own resolution
        dataset = dataloader.dataset
        target = self.cfg.train.epochs
        while self.state.epoch < target:
            epoch = self.state.epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            seed_epoch(self.cfg, epoch, rank=0)
            metrics = train_epoch(self.state, dataloader, plan[epoch - start])
            metrics["epoch"] = float(epoch + 1)
            self.state.epoch += 1
            self.state.history.append(metrics)
            print(format_metrics(epoch, target, metrics), flush=True)
        return self.history

    def train_pix2pix(self, dataloader: DataLoader, num_epochs: int = 20, lr: float = 2e-4,
                      lambda_l1: float = 100.0) -> list[dict[str, float]]:
        """Train (or continue training) pix2pix; returns the per-epoch metric history."""
        self.cfg.train.lr, self.cfg.pix2pix.lambda_l1 = lr, lambda_l1
        return self._train("pix2pix", dataloader, num_epochs)

    def train_vae(self, dataloader: DataLoader, num_epochs: int = 20, lr: float = 2e-4,
                  beta: float = 1.0) -> list[dict[str, float]]:
        """Train (or continue training) the conditional VAE; returns the per-epoch metric history."""
        self.cfg.train.lr, self.cfg.vae.beta = lr, beta
        return self._train("vae", dataloader, num_epochs)

    def train_diffusion(self, dataloader: DataLoader, num_epochs: int = 20,
                        lr: float = 2e-4) -> list[dict[str, float]]:
        """Train (or continue training) the diffusion model (config section `diffusion`); returns the
        per-epoch metric history."""
        self.cfg.train.lr = lr
        return self._train("diffusion", dataloader, num_epochs)

    def train_at_resolution(self, resolution: int, epochs: int, fade_in_epochs: int = 0,
                            dataloader: DataLoader | None = None) -> list[dict[str, float]]:
        """Progressive training, one stage per call (see synthgen.progressive):

            gen.train_at_resolution(64, epochs=4, dataloader=loader)   # first call: needs a loader
            gen.train_at_resolution(128, epochs=4, fade_in_epochs=2)   # same loader, 128 px, faded in
            gen.train_at_resolution(256, epochs=8, fade_in_epochs=2)

        The loader's images (data.image_size) are down-sampled to `resolution`. The first call fixes
        the smallest resolution, which sets the networks' depth; later calls may not go below it.
        Uses the learning rate and loss weights of the generator's config (train.lr, ...).
        """
        if self.cfg.train.model == "diffusion":
            raise ValueError("train_at_resolution: progressive training is not supported for the diffusion model")
        loader = dataloader or self._loader
        if loader is None:
            raise ValueError("train_at_resolution: pass a dataloader on the first call")
        size = _image_shape(loader)[1]
        # The first stage builds the networks for `resolution`; they must still divide `size`.
        depth = (rendering_net(self.state.nets).depth if self.state
                 else depth_for(self.cfg.train.model, resolution))
        problem = None
        if not MIN_RESOLUTION <= resolution <= size:
            problem = f"resolution {resolution} must lie between {MIN_RESOLUTION} and the loader's {size} px"
        elif resolution % 2**depth or size % 2**depth:
            problem = (f"the networks halve their input {depth} times, so {resolution} and the loader's {size} px "
                       f"must be multiples of {2**depth} (the first resolution trained sets this depth)")
        elif epochs < 1 or not 0 <= fade_in_epochs < epochs:
            problem = f"need epochs >= 1 and 0 <= fade_in_epochs < epochs, got {epochs} and {fade_in_epochs}"
        if problem:
            raise ValueError(f"train_at_resolution: {problem}")
        plan = stages([resolution], [epochs], fade_in_epochs, previous=self._trained_resolution(), full=size)
        return self._train(self.cfg.train.model, loader, epochs, plan, min_size=resolution)

    def _trained_resolution(self) -> int | None:
        last = self.history[-1] if self.history else {}
        return int(last["resolution"]) if "resolution" in last else None

    def _require_trained(self) -> TrainState:
        if self.state is None:
            raise RuntimeError("train or load the generator first (train_pix2pix / train_vae / train_diffusion / load)")
        return self.state

    def plot_training_curves(self, save_path: str) -> str:
        return plots.plot_loss_curves(self._require_trained().history, save_path)

    def visualize_generation(self, input_mask, num_samples: int = 4, save_path: str | None = None,
                             seed: int = 0) -> torch.Tensor:
        """Generate `num_samples` images per mask -> (B, num_samples, C, H, W) in [-1, 1].

        `input_mask`: HxW numpy array or tensor of {0,1}, or a (1,H,W) / (B,1,H,W) tensor.
        Pix2pix in eval mode is deterministic, so its samples are identical; the VAE's and the diffusion
        model's differ.
        """
        state = self._require_trained()
        masks = torch.as_tensor(np.asarray(input_mask) if not torch.is_tensor(input_mask) else input_mask)
        masks = masks.float()
        while masks.dim() < 4:
            masks = masks.unsqueeze(0)
        if masks.shape[1] != 1:
            raise ValueError(f"visualize_generation: expected a 1-channel mask, got shape {tuple(masks.shape)}")
        masks = masks.to(self.device)
        if save_path:
            plots.save_sample_grid(state.nets, masks.cpu(), None, save_path, num_samples, seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return render(state.nets, masks, num_samples, generator=gen).cpu()

    def generate_synthetic_data(self, input_masks: str, num_variations: int = 8, output_dir: str = "runs/generated",
                                model_path: str | None = None, overwrite: bool = False, **generate) -> dict:
        """Run the Ray Data generation pipeline (see synthgen.generate) and return its manifest.

        `input_masks`: a folder of masks, a .parquet file, or '' for the checkpoint's training pairs.
        `model_path`: a checkpoint / `synthgen train` run; None saves this generator's current
        weights into `output_dir + '.model'` and uses them. Extra keyword arguments set
        `generate` config keys (threshold=0.5, variations="elastic,morph", ...).
        """
        import json
        import os

        from synthgen.generate import generate as run_generation

        if model_path is None:
            model_path = self.save(os.path.abspath(output_dir) + ".model")
        cfg = Config.from_dict({"generate": {"checkpoint": model_path, "masks": input_masks,
                                             "num_variations": num_variations, "out": output_dir, **generate}})
        result = run_generation(cfg, overwrite=overwrite)
        with open(os.path.join(result.out, "manifest.json")) as f:
            return json.load(f)

    def assess_batch_quality(self, images, masks, reference_images=None, reference_masks=None,
                             weights: dict[str, float] | None = None) -> list[dict[str, float]]:
        """Score generated images (uint8 HxW[xC] arrays) against their masks, like the pipeline does:
        diversity is measured among the whole batch (pass one mask's variations together)."""
        from synthgen.quality import DEFAULT_WEIGHTS, assess_quality

        images = [np.asarray(i) for i in images]
        refs = reference_images if reference_images is not None else [None] * len(images)
        ref_masks = reference_masks if reference_masks is not None else [None] * len(images)
        return [assess_quality(img, np.asarray(m), ref, images[:k] + images[k + 1:], weights or DEFAULT_WEIGHTS, rm)
                for k, (img, m, ref, rm) in enumerate(zip(images, masks, refs, ref_masks))]

    def save(self, directory: str) -> str:
        return save_checkpoint(directory, self._require_trained())

    @classmethod
    def load(cls, directory: str, device: str = "cpu") -> "SyntheticDataGenerator":
        ckpt = load_checkpoint(directory, device, training_state=True)
        gen = cls(ckpt.model, device, config=ckpt.cfg)
        net_config = rendering_net(ckpt.nets).config  # carries min_size
        gen.state = build_state(ckpt.cfg, ckpt.channels, device, net_config.get("min_size"))
        restore_state(gen.state, ckpt)
        return gen
