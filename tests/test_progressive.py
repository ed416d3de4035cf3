"""Progressive training: the schedule, resolution-independent networks, fade-in, the API and Ray Train."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config, write_pairs
from synthgen import SyntheticDataGenerator, create_synthetic_dataloader
from synthgen.checkpoint import load_checkpoint
from synthgen.cli import main
from synthgen.config import Config, ConfigError
from synthgen.models import ConditionalVAE, UNetGenerator
from synthgen.progressive import Stage, epochs_per_stage, faded, stage_batch, stage_for, stages
from synthgen.steps import build_state, render, seed_epoch, train_epoch


def _cfg(**train) -> Config:
    return Config.from_dict({"data": {"image_size": 256}, "train": train})


def test_schedule_gives_resolution_and_fade_weight_per_epoch():
    cfg = _cfg(resolutions="64,128,256", epochs=9, fade_in_epochs=2)
    plan = [stage_for(cfg, e) for e in range(9)]
    assert [s.resolution for s in plan] == [64] * 3 + [128] * 3 + [256] * 3
    assert [s.previous for s in plan] == [None] * 3 + [64, 64, None, 128, 128, None]
    assert [round(s.alpha, 4) for s in plan] == [1, 1, 1, 0.3333, 0.6667, 1, 0.3333, 0.6667, 1]
    assert stage_for(cfg, 20) == Stage(256)  # a run given more epochs later stays at the last stage
    assert stage_for(_cfg(epochs=3), 1) == Stage(256)  # no schedule: data.image_size throughout
    # A per-image sum at 64 px covers 1/16 of the pixels of one at 256 px: the VAE's scale.
    assert plan[0].pixel_ratio == 16 and plan[-1].pixel_ratio == 1 and Stage(128).pixel_ratio == 1


def test_epochs_split_evenly_later_stages_take_the_rest_or_as_given():
    assert epochs_per_stage(_cfg(resolutions="64,128,256", epochs=8)) == [2, 3, 3]
    assert epochs_per_stage(_cfg(resolutions="64,128,256", epochs=9)) == [3, 3, 3]
    cfg = _cfg(resolutions="64,128,256", epochs=10, stage_epochs="2,3,5", fade_in_epochs=1)
    assert [s.resolution for s in (stage_for(cfg, e) for e in range(10))] == [64] * 2 + [128] * 3 + [256] * 5
    assert stages([64], [2], 1, previous=32) == [Stage(64, 32, 0.5), Stage(64)]


def test_yaml_list_is_accepted(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  image_size: 128\ntrain:\n  resolutions: [32, 64, 128]\n  epochs: 3\n")
    assert Config.from_yaml(str(path)).train.resolutions == "32,64,128"


@pytest.mark.parametrize("train, message", [
    (dict(resolutions="128,64,256"), "must increase"),
    (dict(resolutions="16,256"), "start at >= 32"),
    (dict(resolutions="64,128"), "must end at data.image_size (256)"),
    (dict(resolutions="64,96,256"), "multiple of 64"),
    (dict(resolutions="64,x"), "comma list of integers"),
    (dict(resolutions="64,256", epochs=4, stage_epochs="1,2"), "sum to train.epochs (4)"),
    (dict(resolutions="64,256", epochs=4, stage_epochs="4,0"), ">= 1 epoch"),
    (dict(resolutions="64,256", epochs=4, fade_in_epochs=2), "fade_in_epochs (2) must be smaller"),
    (dict(stage_epochs="2,2"), "needs train.resolutions"),
    (dict(fade_in_epochs=-1), "fade_in_epochs must be >= 0"),
])
def test_bad_schedules_are_refused(train, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(**train)


def test_vae_schedule_follows_its_own_depth():
    # The VAE stops halving at a 4 px grid: built for 64 px it halves 4 times, so 96 px is fine.
    assert _cfg(model="vae", resolutions="64,96,256", epochs=3).train.resolutions == "64,96,256"


def test_cli_refuses_a_bad_schedule_before_training(tmp_path, capsys):
    images, masks = write_pairs(str(tmp_path / "d"))
    rc = main(["train", "--images", images, "--masks", masks, "--out", str(tmp_path / "run"),
               "--image-size", "64", "--resolutions", "32,48", "--dry-run"])
    assert rc == 2
    assert "train.resolutions must end at data.image_size (64)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("net", [
    UNetGenerator(1, 3, image_size=128, ngf=4, min_size=32),
    ConditionalVAE(1, image_size=128, latent_dim=8, nf=4, min_size=32),
])
def test_networks_built_for_the_smallest_resolution_run_at_every_one(net):
    for size in (32, 64, 128):
        mask = torch.rand(2, 1, size, size)
        out = net(mask) if isinstance(net, UNetGenerator) else net(torch.rand(2, 1, size, size), mask)[0]
        assert out.shape[-2:] == (size, size)
    with pytest.raises(ValueError, match=r"36x36 px.*multiples of"):
        net(torch.rand(1, 1, 36, 36)) if isinstance(net, UNetGenerator) else net.encode(
            torch.rand(1, 1, 36, 36), torch.rand(1, 1, 36, 36))


def test_old_vae_checkpoints_still_load():
    """The pooling added for resolution independence has no weights: old state dicts fit."""
    vae = ConditionalVAE(1, image_size=32, latent_dim=8, nf=4)
    keys = set(vae.state_dict())
    assert all(not k.startswith("encoder.") or int(k.split(".")[1]) < vae.depth for k in keys)


def test_fade_blends_with_the_upsampled_coarser_output():
    full = torch.rand(2, 1, 8, 8)
    coarse = torch.rand(2, 1, 4, 4)
    out = faded(Stage(8, 4, 0.25), full, lambda r: coarse if r == 4 else None)
    expected = 0.25 * full + 0.75 * F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected)
    assert faded(Stage(8), full, lambda r: 1 / 0) is full  # not fading: the coarse branch is never run


def test_stage_batch_downsamples_and_fades_the_real_images():
    image = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    out = stage_batch({"image": image, "mask": mask}, Stage(8))
    assert out["image"].shape[-1] == out["mask"].shape[-1] == 8
    assert torch.allclose(out["mask"], F.avg_pool2d(mask, 2))  # area: thin structures survive as fractions
    faded_out = stage_batch({"image": image, "mask": mask}, Stage(16, 8, 0.5))
    blurred = F.interpolate(F.avg_pool2d(image, 2), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(faded_out["image"], 0.5 * image + 0.5 * blurred)


@pytest.mark.parametrize("model", ["pix2pix", "vae"])
def test_scheduled_epochs_train_at_the_stage_resolution_and_repeat_with_the_seed(tmp_path, model):
    images, masks = write_pairs(str(tmp_path / "d"), size=(64, 64))
    cfg = tiny_config(images, masks, str(tmp_path / "o"), model)
    cfg.data.image_size = 64
    cfg.train.resolutions, cfg.train.epochs, cfg.train.fade_in_epochs = "32,64", 3, 1
    cfg.validate()
    loss = "loss/G_l1" if model == "pix2pix" else "loss/VAE_total"

    def run():
        loader = create_synthetic_dataloader(images, masks, batch_size=2, image_size=64, repeats=2)
        state = build_state(cfg, 1)  # min_size comes from the schedule: 32
        history = []
        for epoch in range(3):
            seed_epoch(cfg, epoch, 0)
            history.append(train_epoch(state, loader))
            state.epoch += 1
        return state, history

    state, history = run()
    assert next(iter(state.nets.values())).config["min_size"] == 32
    assert [(h["resolution"], h["fade_alpha"]) for h in history] == [(32, 1.0), (64, 0.5), (64, 1.0)]
    assert all(torch.isfinite(torch.tensor(h[loss])) for h in history)
    _, again = run()
    assert [h[loss] for h in history] == [h[loss] for h in again]


@pytest.mark.parametrize("model", ["pix2pix", "vae"])
def test_train_at_resolution_api(tmp_path, model):
    images, masks = write_pairs(str(tmp_path / "d"), size=(128, 128))
    loader = create_synthetic_dataloader(images, masks, batch_size=2, image_size=128, repeats=2)
    cfg = tiny_config(images, masks, str(tmp_path / "o"), model)
    cfg.data.image_size = 128
    gen = SyntheticDataGenerator(model, config=cfg)
    with pytest.raises(ValueError, match="pass a dataloader on the first call"):
        gen.train_at_resolution(32, 1)
    with pytest.raises(ValueError, match="between 32 and the loader's 128 px"):
        gen.train_at_resolution(256, 1, dataloader=loader)
    with pytest.raises(ValueError, match="fade_in_epochs < epochs"):
        gen.train_at_resolution(32, 1, fade_in_epochs=1, dataloader=loader)

    masks_128 = next(iter(loader))["mask"]
    gen.train_at_resolution(32, 2, dataloader=loader)
    before = gen.visualize_generation(masks_128, num_samples=1)
    gen.train_at_resolution(64, 2, fade_in_epochs=1)
    gen.train_at_resolution(128, 2, fade_in_epochs=1)
    assert [(h["resolution"], round(h["fade_alpha"], 2)) for h in gen.history] == [
        (32, 1.0), (32, 1.0), (64, 0.5), (64, 1.0), (128, 0.5), (128, 1.0)]
    if model == "pix2pix":
        with pytest.raises(ValueError, match="multiples of 32"):  # built for 32 px: depth 5
            gen.train_at_resolution(48, 2)
    after = gen.visualize_generation(masks_128, num_samples=1)
    assert after.shape == before.shape == (2, 1, 1, 128, 128)

    saved = gen.save(str(tmp_path / "model"))
    assert load_checkpoint(saved).nets["generator" if model == "pix2pix" else "vae"].config["min_size"] == 32
    loaded = SyntheticDataGenerator.load(saved)
    assert torch.equal(loaded.visualize_generation(masks_128, num_samples=1), after)


def test_progressive_pix2pix_learns_the_pairs(tmp_path):
    """The same data and seed: after progressive training the generator's L1 on the training tiles falls."""
    images, masks = write_pairs(str(tmp_path / "d"), size=(64, 64))
    loader = create_synthetic_dataloader(images, masks, batch_size=2, image_size=64, repeats=4, seed=1)
    cfg = tiny_config(images, masks, str(tmp_path / "o"))
    cfg.data.image_size = 64
    batch = next(iter(loader))

    def l1(gen):
        return float((render(gen.state.nets, batch["mask"])[:, 0] - batch["image"]).abs().mean())

    gen = SyntheticDataGenerator("pix2pix", config=cfg)
    gen.train_at_resolution(32, 1, dataloader=loader)
    start = l1(gen)
    gen.train_at_resolution(32, 3)
    gen.train_at_resolution(64, 4, fade_in_epochs=1)
    assert l1(gen) < 0.8 * start


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_ray_train_follows_the_schedule_across_workers(ray_2cpu, tmp_path):
    images, masks = write_pairs(str(tmp_path / "d"), n=4, size=(64, 64))
    out = str(tmp_path / "run")
    rc = main(["train", "--images", images, "--masks", masks, "--out", out, "--image-size", "64",
               "--resolutions", "32,64", "--stage-epochs", "1,2", "--fade-in-epochs", "1", "--epochs", "3",
               "--ngf", "4", "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "2", "--repeats", "2"])
    assert rc == 0
    ckpt = load_checkpoint(os.path.join(out, "model"))
    assert [(h["resolution"], h["fade_alpha"]) for h in ckpt.history] == [(32, 1.0), (64, 0.5), (64, 1.0)]
    assert ckpt.nets["generator"].config["min_size"] == 32
    assert ckpt.cfg.train.resolutions == "32,64"
