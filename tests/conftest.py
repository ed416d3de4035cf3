"""Shared fixtures: tiny synthetic pair folders and a 2-CPU Ray for the tests that need one."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from synthgen.config import Config

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "synthgen", "sample_data", "isbi2012")


def write_pairs(root: str, n: int = 4, size: tuple[int, int] = (48, 48), channels: int = 1, seed: int = 0):
    """Write n learnable pairs: blob masks (0/255) and images that are a smooth function of the mask."""
    rng = np.random.default_rng(seed)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        mask = np.zeros((h, w), bool)
        for _ in range(3):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 12)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        base = np.where(mask, 200.0, 60.0) + rng.normal(0, 8, (h, w))
        img = np.clip(base, 0, 255).astype(np.uint8)
        if channels == 3:
            img = np.stack([img, img // 2 + 40, 255 - img], axis=-1)
        Image.fromarray(img).save(os.path.join(images, f"p{i:02d}.png"))
        Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(masks, f"p{i:02d}.png"))
    return images, masks


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread, and timings stay stable on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pair_dirs(tmp_path):
    return write_pairs(str(tmp_path / "data"))


def tiny_config(images: str, masks: str, out: str, model: str = "pix2pix", **train) -> Config:
    """A seconds-per-epoch CPU config: 32 px, ngf/ndf 4, small VAE."""
    cfg = Config()
    cfg.data.images, cfg.data.masks, cfg.data.image_size = images, masks, 32
    cfg.data.repeats, cfg.data.val_pairs, cfg.data.min_pairs = 4, 1, 3
    cfg.pix2pix.ngf = cfg.pix2pix.ndf = 4
    cfg.vae.nf, cfg.vae.latent_dim = 4, 16
    cfg.train.model, cfg.train.out, cfg.train.batch_size = model, out, 2
    cfg.train.lr, cfg.train.decay_start, cfg.train.samples = 1e-3, 1.0, 2
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.validate()
    return cfg


@pytest.fixture(scope="session")
def ray_2cpu():
    """A private local Ray with 2 CPUs, started as synthgen starts its own (ray_session), shared by the
    tests that use it and shut down at the end of the session."""
    import ray

    from synthgen import ray_session

    ray_session.start_local(num_cpus=2)
    yield ray
    ray.shutdown()
