"""Ray Train end to end: 2 CPU workers, 32 px, a few epochs (about a minute or two in all)."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import tiny_config, write_pairs
from synthgen.checkpoint import load_checkpoint
from synthgen.cli import main
from synthgen.train import TrainError, fit, prepare_run_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(str(tmp_path_factory.mktemp("pairs")), n=4, size=(40, 48))


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(model_dir)
    return {f"{n}.{k}": v for n, net in ckpt.nets.items() for k, v in net.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ"


@pytest.fixture(scope="module")
def straight_run(ray_2cpu, data, tmp_path_factory):
    """4 epochs on 2 workers through the CLI (the smoke test of `synthgen train`)."""
    out = str(tmp_path_factory.mktemp("straight"))
    images, masks = data
    rc = main(["train", "--images", images, "--masks", masks, "--out", out, "--epochs", "4",
               "--image-size", "32", "--ngf", "4", "--workers", "2", "--batch-size", "2", "--lr", "1e-3",
               "--repeats", "4", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--seed", "3",
               "--config", _write_yaml(out)])
    assert rc == 0
    return out


def _write_yaml(out: str) -> str:
    path = os.path.join(out, "..", os.path.basename(out) + ".yaml")
    with open(path, "w") as f:
        f.write("pix2pix:\n  ndf: 4\ntrain:\n  decay_start: 1.0\n  samples: 2\n")
    return path


def test_two_worker_run_writes_outputs_and_l1_falls(straight_run):
    for name in ("config.yaml", "loss_curves.png", "samples.png", "summary.json", "model/state.json",
                 "model/generator.safetensors", "model/discriminator.safetensors", "model/training_state.pt"):
        path = os.path.join(straight_run, name)
        assert os.path.getsize(path) > 0, name
    ckpt = load_checkpoint(os.path.join(straight_run, "model"))
    assert ckpt.epoch == 4
    assert [h["epoch"] for h in ckpt.history] == [1, 2, 3, 4]
    l1 = [h["loss/G_l1"] for h in ckpt.history]
    assert l1[-1] < 0.8 * l1[0], l1
    assert all(0 < h["val/ssim"] <= 1 for h in ckpt.history)
    # keep_checkpoints=2: Ray deleted the older per-epoch checkpoints
    ray_dir = os.path.join(straight_run, "ray_train")
    kept = [d for d in os.listdir(ray_dir) if os.path.isdir(os.path.join(ray_dir, d))]
    assert len(kept) == 2, kept


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_same_seed_gives_same_weights_and_resume_replays_exactly(straight_run, data, tmp_path):
    images, masks = data
    base = tiny_config(images, masks, str(tmp_path / "a"), workers=2, seed=3, checkpoint_every=1, epochs=4)
    base.pix2pix.ndf, base.data.repeats = 4, 4
    same = fit(copy.deepcopy(base))
    _assert_same(_weights(same.model_dir), _weights(os.path.join(straight_run, "model")))

    half = copy.deepcopy(base)
    half.train.out, half.train.epochs = str(tmp_path / "b"), 2
    fit(half)
    resumed = copy.deepcopy(half)
    resumed.train.epochs, resumed.train.resume = 4, True
    result = fit(resumed)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    _assert_same(_weights(result.model_dir), _weights(same.model_dir))


def test_vae_trains_on_one_worker(ray_2cpu, data, tmp_path):
    images, masks = data
    cfg = tiny_config(images, masks, str(tmp_path / "vae"), model="vae", workers=1, epochs=3)
    result = fit(cfg)
    recon = [h["loss/VAE_recon_l1"] for h in result.history]
    assert recon[-1] < recon[0]
    assert set(load_checkpoint(result.model_dir).nets) == {"vae"}
    assert os.path.getsize(os.path.join(cfg.train.out, "samples.png")) > 0


def test_existing_run_is_refused_without_resume_or_overwrite(data, tmp_path):
    images, masks = data
    cfg = tiny_config(images, masks, str(tmp_path / "run"))
    os.makedirs(os.path.join(cfg.train.out, "ray_train"))
    with pytest.raises(TrainError, match="--resume"):
        prepare_run_dir(cfg, overwrite=False)
    prepare_run_dir(cfg, overwrite=True)
    assert not os.path.exists(os.path.join(cfg.train.out, "ray_train"))
    cfg.train.resume = True
    with pytest.raises(TrainError, match="no run to resume"):
        prepare_run_dir(cfg, overwrite=False)


def test_too_many_workers_is_a_clear_error(ray_2cpu, data, tmp_path):
    images, masks = data
    cfg = tiny_config(images, masks, str(tmp_path / "big"), workers=3)
    with pytest.raises(TrainError, match="CPUs"):
        fit(cfg)
