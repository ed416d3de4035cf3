"""The mask-conditioned diffusion model: network, training step, EMA, seeded DDIM sampling,
checkpoints, config validation and generation end to end (tiny 32 px models, CPU)."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_config, write_pairs

from synthgen.api import SyntheticDataGenerator, create_synthetic_dataloader
from synthgen.checkpoint import load_checkpoint, restore_state, save_checkpoint
from synthgen.cli import main
from synthgen.config import Config, ConfigError
from synthgen.data import load_synthetic_dataset
from synthgen.models import MaskDiffusion, build_from_config, build_models, network_kind
from synthgen.steps import (build_state, diffusion_step, ema_decay, render, render_seeded, rendering_net,
                            train_epoch, validate)

TINY = {"channels": 8, "layers_per_block": 1, "timesteps": 50, "sample_steps": 4}


def _cfg(tmp_path, **diffusion) -> Config:
    cfg = tiny_config("imgs", "masks", str(tmp_path / "run"), model="diffusion")
    for key, value in {**TINY, **diffusion}.items():
        setattr(cfg.diffusion, key, value)
    cfg.validate()
    return cfg


def _pairs(b: int = 2, channels: int = 1, size: int = 32) -> dict[str, torch.Tensor]:
    """Fixed, learnable pairs: blob-ish masks, images a function of the mask."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.nn.functional.avg_pool2d(torch.rand(b, 1, size, size, generator=g), 5, 1, 2) > 0.5).float()
    image = (mask * 1.2 - 0.6).expand(-1, channels, -1, -1).contiguous()
    return {"mask": mask, "image": image}


def _net(channels: int = 1, **config) -> MaskDiffusion:
    torch.manual_seed(0)
    return MaskDiffusion(image_channels=channels, image_size=32, **{**TINY, **config}).eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("channels", [1, 3])
def test_loss_and_render_shapes(prediction_type, channels) -> None:
    net = _net(channels, prediction_type=prediction_type)
    b = _pairs(channels=channels)
    loss = net.loss(b["mask"], b["image"], generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    again = net.loss(b["mask"], b["image"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)  # noise and timesteps come from the generator
    out = net.render(b["mask"], seeds=[1, 2])
    assert out.shape == (2, channels, 32, 32) and out.abs().max() <= 1.0
    assert net.render(b["mask"], seeds=[1, 2], steps=2).shape == out.shape
    with pytest.raises(ValueError, match="2 masks but 1 seeds"):
        net.render(b["mask"], seeds=[1])


def test_same_seed_same_sample_other_seed_differs() -> None:
    net, mask = _net(), _pairs()["mask"]
    a = net.render(mask, seeds=[5, 6])
    assert torch.equal(a, net.render(mask, seeds=[5, 6]))
    b = net.render(mask, seeds=[7, 6])
    assert (a[0] - b[0]).abs().max() > 1e-2
    assert torch.equal(a[1], b[1])


def test_a_sample_does_not_depend_on_its_batch() -> None:
    net, mask = _net(), _pairs(b=3)["mask"]
    together = net.render(mask, seeds=[10, 11, 12])
    alone = net.render(mask[1:2], seeds=[11])
    reordered = net.render(mask[[2, 1]], seeds=[12, 11])
    # Equal up to float rounding: conv kernels may block a batch of 3 differently from one of 1.
    torch.testing.assert_close(together[1:2], alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(together[[2, 1]], reordered, atol=1e-4, rtol=0)
    as_uint8 = render_seeded({"diffusion": net}, mask, np.array([10, 11, 12]))
    single = render_seeded({"diffusion": net}, mask[1:2], np.array([11]))
    assert np.abs(as_uint8[1:2].astype(int) - single.astype(int)).max() <= 1


def test_training_loss_falls_on_two_pairs(tmp_path) -> None:
    state = build_state(_cfg(tmp_path), channels=1)
    batch = _pairs()
    torch.manual_seed(0)
    losses = [diffusion_step(state, [batch])["loss/diffusion_mse"] for _ in range(30)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_bf16_step_is_finite_on_cpu(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    cfg.train.precision = "bf16"
    state = build_state(cfg, channels=1)
    assert np.isfinite(diffusion_step(state, [_pairs()])["loss/diffusion_mse"])


def test_ema_is_not_optimised_and_follows_the_weights(tmp_path) -> None:
    state = build_state(_cfg(tmp_path), channels=1)
    assert set(state.nets) == {"diffusion", "diffusion_ema"}
    assert set(state.optimizers) == set(state.scalers) == {"diffusion"}
    ema, net = state.nets["diffusion_ema"], state.nets["diffusion"]
    assert rendering_net(state.nets) is ema
    assert not any(p.requires_grad for p in ema.parameters())
    start = [p.clone() for p in ema.parameters()]
    for _ in range(3):
        diffusion_step(state, [_pairs()])
    assert ema_decay(state, "diffusion") == pytest.approx(4 / 13)  # warm-up after 3 steps, below 0.999
    moved = [(a - s).abs().max() for a, s in zip(ema.parameters(), start)]
    apart = [(a - w).abs().max() for a, w in zip(ema.parameters(), net.parameters())]
    assert max(moved) > 0 and max(apart) > 0  # between the initial and the current weights


def test_ema_decay_zero_builds_no_average(tmp_path) -> None:
    state = build_state(_cfg(tmp_path, ema_decay=0.0), channels=1)
    assert set(state.nets) == {"diffusion"}
    diffusion_step(state, [_pairs()])
    assert rendering_net(state.nets) is state.nets["diffusion"]


def test_render_validate_and_train_epoch(tmp_path, pair_dirs) -> None:
    cfg = _cfg(tmp_path)
    state = build_state(cfg, channels=1)
    masks = _pairs()["mask"]
    out = render(state.nets, masks, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 1, 32, 32)
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-3  # several different samples per mask
    assert torch.equal(out, render(state.nets, masks, num_samples=3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(render(state.nets, masks, prior_mean=True), render(state.nets, masks, prior_mean=True))
    loader = create_synthetic_dataloader(*pair_dirs, batch_size=2, image_size=32, repeats=2)
    metrics = train_epoch(state, loader)
    assert metrics["steps"] >= 1 and np.isfinite(metrics["loss/diffusion_mse"])
    scores = validate(state, {"mask": masks, "image": _pairs()["image"]})
    assert set(scores) == {"val/ssim", "val/l1"}


def test_checkpoint_round_trip_gives_identical_samples(tmp_path) -> None:
    state = build_state(_cfg(tmp_path), channels=1)
    for _ in range(2):
        diffusion_step(state, [_pairs()])
    state.epoch = 1
    directory = save_checkpoint(str(tmp_path / "ckpt"), state)
    ckpt = load_checkpoint(directory, training_state=True)
    assert ckpt.model == "diffusion" and set(ckpt.nets) == {"diffusion", "diffusion_ema"}
    masks, seeds = _pairs()["mask"], np.array([3, 4])
    assert np.array_equal(render_seeded(ckpt.nets, masks, seeds), render_seeded(state.nets, masks, seeds))
    # Resuming continues the EMA warm-up from the saved optimiser step count.
    resumed = build_state(ckpt.cfg, 1)
    restore_state(resumed, ckpt)
    assert ema_decay(resumed, "diffusion") == ema_decay(state, "diffusion")
    # The registry rebuilds each network from its saved config.
    for name, net in ckpt.nets.items():
        rebuilt = build_from_config(network_kind(name, ckpt.cfg), net.config)
        assert isinstance(rebuilt, MaskDiffusion) and rebuilt.config == net.config


def test_generate_sample_steps_overrides_the_checkpoints(tmp_path) -> None:
    nets = build_models(_cfg(tmp_path), channels=1)
    masks, seeds = _pairs()["mask"], np.array([3, 4])
    default = render_seeded(nets, masks, seeds)
    assert np.array_equal(default, render_seeded(nets, masks, seeds, sample_steps=4))
    assert not np.array_equal(default, render_seeded(nets, masks, seeds, sample_steps=2))


@pytest.mark.parametrize("key, value", [
    ("diffusion.channels", 12), ("diffusion.channels", 0), ("diffusion.layers_per_block", 0),
    ("diffusion.timesteps", 1), ("diffusion.beta_schedule", "cosine"), ("diffusion.prediction_type", "x0"),
    ("diffusion.sample_steps", 0), ("diffusion.sample_steps", 2000), ("diffusion.ema_decay", 1.0),
    ("diffusion.ema_decay", -0.1), ("generate.sample_steps", -1), ("train.model", "ddpm"),
    ("generate.model", "ddpm"),
])
def test_bad_values_are_config_errors_naming_the_key(key, value) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.from_dict({key.split(".")[0]: {key.split(".")[1]: value}})


def test_progressive_training_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.resolutions .* not supported with train.model diffusion"):
        Config.from_dict({"train": {"model": "diffusion", "resolutions": "16,32"}, "data": {"image_size": 32}})


def test_defaults_and_cli_flags(tmp_path, capsys) -> None:
    cfg = Config.from_dict({"train": {"model": "diffusion"}, "generate": {"model": "diffusion"}})
    d = cfg.diffusion
    assert (d.channels, d.timesteps, d.beta_schedule, d.prediction_type, d.sample_steps, d.ema_decay) == \
        (32, 1000, "squaredcos_cap_v2", "epsilon", 50, 0.999)
    images, masks = write_pairs(str(tmp_path))
    assert main(["train", "--model", "diffusion", "--images", images, "--masks", masks, "--sample-steps", "10",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "model: diffusion" in printed and "sample_steps: 10" in printed


def test_tune_refuses_diffusion_clearly(tmp_path) -> None:
    """(evaluate takes diffusion as a condition: tests/test_evaluate.py.)"""
    from synthgen.search import run_search

    cfg = Config.from_dict({"train": {"model": "diffusion"}})
    with pytest.raises(ConfigError, match="does not search the diffusion model"):
        run_search(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny diffusion model trained in process for one epoch (API), saved as a checkpoint."""
    root = tmp_path_factory.mktemp("diffusion")
    images, masks = write_pairs(str(root / "pairs"), n=3, size=(32, 32))
    cfg = Config()
    for key, value in TINY.items():
        setattr(cfg.diffusion, key, value)
    loader = create_synthetic_dataloader(images, masks, batch_size=2, image_size=32, repeats=2)
    gen = SyntheticDataGenerator("diffusion", "cpu", image_size=32, config=cfg)
    gen.train_diffusion(loader, num_epochs=1)
    return {"root": root, "images": images, "masks": masks, "checkpoint": gen.save(str(root / "model"))}


def test_api_load_and_visualize(trained, tmp_path) -> None:
    gen = SyntheticDataGenerator.load(trained["checkpoint"])
    assert gen.cfg.train.model == "diffusion" and gen.history
    mask = _pairs()["mask"][0, 0]
    out = gen.visualize_generation(mask, num_samples=2, save_path=str(tmp_path / "samples.png"), seed=1)
    assert out.shape == (1, 2, 1, 32, 32) and os.path.getsize(tmp_path / "samples.png") > 0
    assert torch.equal(out, gen.visualize_generation(mask, num_samples=2, seed=1))
    with pytest.raises(ValueError, match="not supported for the diffusion model"):
        gen.train_at_resolution(16, epochs=1)


def test_generate_writes_a_valid_dataset(ray_2cpu, trained, tmp_path) -> None:
    from synthgen.generate import generate

    cfg = Config()
    g = cfg.generate
    g.checkpoint, g.masks, g.images, g.out = trained["checkpoint"], trained["masks"], trained["images"], str(tmp_path / "o")
    g.num_variations, g.variations, g.threshold, g.actors_max, g.sample_steps = 3, "latent", "0", 1, 2
    g.realism = False
    cfg.validate()
    result = generate(cfg)
    assert result.generated == 3 * 3
    with open(os.path.join(result.out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["counts"]["generated"] == 9
    table = pq.read_table(os.path.join(result.out, "data"))
    assert set(table.column("model").to_pylist()) == {"diffusion"}
    images = [r for r in table.to_pylist() if r["source_id"] == table.column("source_id")[0].as_py()]
    assert len({r["image"] for r in images}) == 3  # the latent variations differ by their noise seed
    assert len(load_synthetic_dataset(result.out)) == result.accepted


@pytest.mark.slow  # Ray Train with 2 workers (DDP beside the unwrapped EMA), then the CLI's generate: ~1 min
def test_cli_train_two_workers_then_generate(ray_2cpu, tmp_path) -> None:
    images, masks = write_pairs(str(tmp_path / "pairs"), n=4, size=(32, 32))
    out = str(tmp_path / "run")
    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text("diffusion:\n  channels: 8\n  layers_per_block: 1\n  timesteps: 50\n"
                        "train:\n  samples: 2\n  cpus_per_worker: 0.5\n")
    assert main(["train", "--model", "diffusion", "--images", images, "--masks", masks, "--out", out,
                 "--epochs", "2", "--image-size", "32", "--workers", "2", "--batch-size", "2", "--repeats", "2",
                 "--sample-steps", "3", "--config", str(cfg_path)]) == 0
    ckpt = load_checkpoint(os.path.join(out, "model"))
    assert set(ckpt.nets) == {"diffusion", "diffusion_ema"} and ckpt.epoch == 2
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0
    assert main(["generate", "--checkpoint", out, "--out", str(tmp_path / "synth"), "--num-variations", "2",
                 "--variations", "latent", "--threshold", "0", "--actors", "1,1"]) == 0
    assert pq.read_table(os.path.join(str(tmp_path / "synth"), "data")).num_rows == 4 * 2
