"""The in-process Python API: data loader, training, plots, sampling, save/load (tiny, CPU)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import write_pairs
from PIL import Image

from synthgen.api import SyntheticDataGenerator, create_synthetic_dataloader
from synthgen.config import Config, ConfigError
from synthgen.data import DataError
from synthgen.steps import lr_factor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_config() -> Config:
    cfg = Config()
    cfg.pix2pix.ngf = cfg.pix2pix.ndf = 4
    cfg.vae.nf = 4
    return cfg


def _loader(pair_dirs, **kw):
    return create_synthetic_dataloader(*pair_dirs, batch_size=2, image_size=32, repeats=2, **kw)


def _assert_png(path: str) -> None:
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        assert im.size[0] > 50 and im.size[1] > 50
    assert [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n] == []


@pytest.fixture
def pix2pix(pair_dirs):
    gen = SyntheticDataGenerator("pix2pix", "cpu", image_size=32, config=_tiny_config())
    gen.train_pix2pix(_loader(pair_dirs), num_epochs=2, lr=1e-3)
    return gen


@pytest.fixture
def vae(pair_dirs):
    gen = SyntheticDataGenerator("vae", "cpu", image_size=32, latent_dim=8, config=_tiny_config())
    gen.train_vae(_loader(pair_dirs), num_epochs=2, lr=1e-3)
    return gen


def test_dataloader_batches(pair_dirs) -> None:
    loader = _loader(pair_dirs)
    assert len(loader.dataset) == 4 * 2  # 4 pairs x 2 repeats
    batches = list(loader)
    assert len(batches) == 4
    for b in batches:
        assert b["image"].shape == (2, 1, 32, 32) and b["image"].dtype == torch.float32
        assert b["mask"].shape == (2, 1, 32, 32)
        assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert b["index"].shape == (2,)
    indices = torch.cat([b["index"] for b in batches]).sort().values.tolist()
    assert indices == [0, 0, 1, 1, 2, 2, 3, 3]


def test_dataloader_is_seeded(pair_dirs) -> None:
    a, b = list(_loader(pair_dirs, seed=3)), list(_loader(pair_dirs, seed=3))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    c = list(_loader(pair_dirs, seed=4))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_dataloader_rgb(tmp_path) -> None:
    dirs = write_pairs(str(tmp_path / "rgb"), n=3, channels=3)
    batch = next(iter(create_synthetic_dataloader(*dirs, batch_size=3, image_size=32)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 1, 32, 32)


def test_dataloader_refuses_too_few_pairs(tmp_path) -> None:
    dirs = write_pairs(str(tmp_path / "few"), n=2)
    with pytest.raises(DataError, match="need at least 3"):
        create_synthetic_dataloader(*dirs, image_size=32)
    assert len(create_synthetic_dataloader(*dirs, image_size=32, min_pairs=2, repeats=1).dataset) == 2


def test_train_pix2pix_history(pix2pix, pair_dirs) -> None:
    h = pix2pix.history
    assert len(h) == 2
    assert [e["epoch"] for e in h] == [1.0, 2.0]
    for e in h:
        assert {"loss/G_gan", "loss/G_l1", "loss/D_real", "loss/D_fake", "steps", "images", "lr"} <= set(e)
        assert all(np.isfinite(v) for v in e.values())
        assert e["steps"] == 4.0 and e["images"] == 8.0
    assert pix2pix.state.epoch == 2
    assert pix2pix.cfg.train.lr == 1e-3
    assert pix2pix.state.nets["generator"].config["ngf"] == 4
    # Continuing trains more epochs onto the same history.
    # Default decay_start 0.5 over 2 epochs: epoch 0 at lr, epoch 1 at half.
    assert [e["lr"] for e in h] == pytest.approx([1e-3, 5e-4])
    more = pix2pix.train_pix2pix(_loader(pair_dirs), num_epochs=1, lr=2e-3)
    assert len(more) == 3 and more[-1]["epoch"] == 3.0 and pix2pix.state.epoch == 3
    # The schedule is recomputed for the new total (3 epochs: epoch 2 at half) with the new lr.
    assert more[-1]["lr"] == pytest.approx(2e-3 * lr_factor(2, 3, 0.5)) == pytest.approx(1e-3)


def test_train_returns_the_history(pair_dirs) -> None:
    gen = SyntheticDataGenerator("pix2pix", "cpu", image_size=32, config=_tiny_config())
    out = gen.train_pix2pix(_loader(pair_dirs), num_epochs=2)
    assert len(out) == 2 and out is gen.history


def test_plot_training_curves(pix2pix, tmp_path) -> None:
    path = str(tmp_path / "curves.png")
    assert pix2pix.plot_training_curves(path) == path
    _assert_png(path)


def test_visualize_generation_pix2pix(pix2pix, pair_dirs, tmp_path) -> None:
    mask = _loader(pair_dirs).dataset[0]["mask"]
    assert mask.shape == (1, 32, 32)
    path = str(tmp_path / "samples.png")
    out = pix2pix.visualize_generation(mask, num_samples=3, save_path=path)
    assert out.shape == (1, 3, 1, 32, 32)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.equal(out[0, 0], out[0, 2])  # pix2pix in eval mode is deterministic
    _assert_png(path)
    # HxW numpy masks and (B,1,H,W) batches are accepted too.
    np_out = pix2pix.visualize_generation(mask[0].numpy(), num_samples=1)
    assert np_out.shape == (1, 1, 1, 32, 32)
    torch.testing.assert_close(np_out[0, 0], out[0, 0])
    batch = torch.stack([mask, 1 - mask])
    assert pix2pix.visualize_generation(batch, num_samples=2).shape == (2, 2, 1, 32, 32)


def test_visualize_generation_rejects_multichannel_mask(pix2pix) -> None:
    with pytest.raises(ValueError, match="1-channel mask"):
        pix2pix.visualize_generation(torch.zeros(1, 3, 32, 32))


def test_vae_samples_differ(vae, pair_dirs, tmp_path) -> None:
    assert len(vae.history) == 2
    assert {"loss/VAE_recon_l1", "loss/VAE_kl", "loss/VAE_total"} <= set(vae.history[0])
    assert vae.state.nets["vae"].config["latent_dim"] == 8
    mask = _loader(pair_dirs).dataset[0]["mask"]
    path = str(tmp_path / "vae.png")
    out = vae.visualize_generation(mask, num_samples=3, save_path=path, seed=1)
    assert out.shape == (1, 3, 1, 32, 32)
    _assert_png(path)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert (out[0, i] - out[0, j]).abs().max() > 1e-4, (i, j)
    assert torch.equal(out, vae.visualize_generation(mask, num_samples=3, seed=1))  # seeded
    assert not torch.equal(out, vae.visualize_generation(mask, num_samples=3, seed=2))


def test_model_type_mismatch_raises(pair_dirs) -> None:
    gen = SyntheticDataGenerator("pix2pix", "cpu", image_size=32, config=_tiny_config())
    with pytest.raises(ConfigError, match="model_type='pix2pix'"):
        gen.train_vae(_loader(pair_dirs), num_epochs=1)
    assert gen.state is None
    gen = SyntheticDataGenerator("vae", "cpu", image_size=32, latent_dim=8, config=_tiny_config())
    with pytest.raises(ConfigError, match="not 'pix2pix'"):
        gen.train_pix2pix(_loader(pair_dirs), num_epochs=1)


def test_bad_constructor_arguments_raise() -> None:
    with pytest.raises(ConfigError, match="train.model"):
        SyntheticDataGenerator("gan", "cpu", image_size=32)
    with pytest.raises(ConfigError, match="image_size"):
        SyntheticDataGenerator("pix2pix", "cpu", image_size=30)


@pytest.mark.parametrize("which", ["pix2pix", "vae"])
def test_save_load_round_trip(which, request, pair_dirs, tmp_path) -> None:
    gen = request.getfixturevalue(which)
    mask = _loader(pair_dirs).dataset[1]["mask"]
    directory = str(tmp_path / "model")
    assert gen.save(directory) == directory
    loaded = SyntheticDataGenerator.load(directory)
    assert loaded.cfg == gen.cfg
    assert loaded.state.epoch == 2 and loaded.history == gen.history
    assert loaded.state.channels == 1
    for name, net in gen.state.nets.items():
        sd = loaded.state.nets[name].state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in net.state_dict().items())
    a = gen.visualize_generation(mask, num_samples=2, seed=5)
    b = loaded.visualize_generation(mask, num_samples=2, seed=5)
    assert a.shape == (1, 2, 1, 32, 32) and torch.equal(a, b)
    # The loaded generator can continue training.
    loader = _loader(pair_dirs)
    train = loaded.train_pix2pix if which == "pix2pix" else loaded.train_vae
    assert len(train(loader, num_epochs=1, lr=1e-3)) == 3


def test_load_missing_directory_raises(tmp_path) -> None:
    from synthgen.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        SyntheticDataGenerator.load(str(tmp_path / "nothing"))


def test_methods_before_training_raise(tmp_path) -> None:
    gen = SyntheticDataGenerator("pix2pix", "cpu", image_size=32, config=_tiny_config())
    assert gen.history == []
    with pytest.raises(RuntimeError, match="train or load"):
        gen.plot_training_curves(str(tmp_path / "c.png"))
    with pytest.raises(RuntimeError, match="train or load"):
        gen.visualize_generation(np.zeros((32, 32)))
    with pytest.raises(RuntimeError, match="train or load"):
        gen.save(str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "c.png") and not os.path.exists(tmp_path / "m")
