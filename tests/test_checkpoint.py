"""Checkpoint round trips (weights, optimiser state, metadata) and every load/save failure (tiny, CPU)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import tiny_config

from synthgen import checkpoint as ckpt_mod
from synthgen.checkpoint import CheckpointError, load_checkpoint, restore_state, save_checkpoint
from synthgen.steps import STEPS, build_state


def _batch(channels: int, seed: int = 0, b: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.5).float()
    image = torch.rand(b, channels, size, size, generator=g) * 2 - 1
    return {"mask": mask, "image": image}


def _trained_state(tmp_path, model: str, channels: int, seed: int = 0):
    """A TrainState after one optimiser step (so Adam holds exp_avg/exp_avg_sq/step), epoch 1 finished."""
    cfg = tiny_config("imgs", "masks", str(tmp_path / "run"), model=model, seed=seed)
    state = build_state(cfg, channels)
    torch.manual_seed(1)
    STEPS[model](state, [_batch(channels)])
    state.epoch = 1
    state.history = [{"loss/x": 0.25, "epoch": 1.0}]
    return state


def _assert_nested_equal(a, b, where: str = "") -> None:
    """Equal structure, tensors bit-identical (torch.equal and same dtype), other leaves ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_nested_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_nested_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _n_tensors(d) -> int:
    if isinstance(d, torch.Tensor):
        return 1
    if isinstance(d, dict):
        return sum(_n_tensors(v) for v in d.values())
    if isinstance(d, (list, tuple)):
        return sum(_n_tensors(v) for v in d)
    return 0


@pytest.mark.parametrize("model,channels,nets", [
    ("pix2pix", 1, {"generator", "discriminator"}),
    ("pix2pix", 3, {"generator", "discriminator"}),
    ("vae", 1, {"vae"}),
    ("vae", 3, {"vae"}),
])
def test_round_trip_is_bit_exact(tmp_path, model: str, channels: int, nets: set[str]) -> None:
    state = _trained_state(tmp_path, model, channels)
    for opt in state.optimizers.values():  # Adam really has state to round-trip
        assert len(opt.state) == sum(1 for g in opt.param_groups for _ in g["params"])
    path = save_checkpoint(str(tmp_path / "ckpt"), state)
    assert path == str(tmp_path / "ckpt")
    files = set(os.listdir(path))
    assert {f"{n}.safetensors" for n in nets} | {"nets.json", "config.json", "state.json",
                                                "training_state.pt"} == files

    loaded = load_checkpoint(path, training_state=True)
    assert loaded.model == model and set(loaded.nets) == nets
    assert loaded.epoch == 1 and loaded.channels == channels
    assert loaded.history == [{"loss/x": 0.25, "epoch": 1.0}]
    assert loaded.cfg == state.cfg
    for name in nets:
        _assert_nested_equal(state.nets[name].state_dict(), loaded.nets[name].state_dict(), name)

    # Restore into a fresh state with different weights (seed 7) and no optimiser state.
    fresh = build_state(tiny_config("imgs", "masks", str(tmp_path / "run"), model=model, seed=7), channels)
    name0 = next(iter(nets))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.nets[name0].state_dict().values(),
                                                      state.nets[name0].state_dict().values()))
    restore_state(fresh, loaded)
    assert fresh.epoch == 1 and fresh.history == state.history
    for name in nets:
        sd = state.nets[name].state_dict()
        assert len(sd) > 0
        _assert_nested_equal(sd, fresh.nets[name].state_dict(), f"nets.{name}")
        opt_sd = state.optimizers[name].state_dict()
        assert _n_tensors(opt_sd["state"]) == 3 * len(opt_sd["state"])  # step, exp_avg, exp_avg_sq
        _assert_nested_equal(opt_sd, fresh.optimizers[name].state_dict(), f"optimizers.{name}")
        assert fresh.optimizers[name].param_groups[0]["lr"] == state.optimizers[name].param_groups[0]["lr"]

    # The restored state takes the same next step as the original: identical weights afterwards.
    torch.manual_seed(2)
    STEPS[model](state, [_batch(channels, seed=5)])
    torch.manual_seed(2)
    STEPS[model](fresh, [_batch(channels, seed=5)])
    for name in nets:
        _assert_nested_equal(state.nets[name].state_dict(), fresh.nets[name].state_dict(), f"after.{name}")


def test_weights_only_checkpoint(tmp_path) -> None:
    state = _trained_state(tmp_path, "pix2pix", 1)
    path = save_checkpoint(str(tmp_path / "ckpt"), state, include_training_state=False)
    assert "training_state.pt" not in os.listdir(path)
    loaded = load_checkpoint(path)
    assert loaded.training_state is None
    with pytest.raises(CheckpointError, match="training_state.pt.*weights only"):
        load_checkpoint(path, training_state=True)


def test_save_overwrites_existing_checkpoint(tmp_path) -> None:
    state = _trained_state(tmp_path, "vae", 1)
    path = str(tmp_path / "ckpt")
    save_checkpoint(path, state)
    state.epoch, state.history = 2, state.history + [{"loss/x": 0.5, "epoch": 2.0}]
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded.epoch == 2 and len(loaded.history) == 2
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-ckpt-")] == []


@pytest.fixture
def saved(tmp_path) -> str:
    return save_checkpoint(str(tmp_path / "ckpt"), _trained_state(tmp_path, "pix2pix", 1))


def test_missing_directory(tmp_path) -> None:
    path = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_checkpoint(path)
    assert path in str(e.value)


def test_missing_state_json(saved: str) -> None:
    os.remove(os.path.join(saved, "state.json"))
    with pytest.raises(CheckpointError, match="missing") as e:
        load_checkpoint(saved)
    assert os.path.join(saved, "state.json") in str(e.value)


def test_corrupt_state_json(saved: str) -> None:
    with open(os.path.join(saved, "state.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="unreadable") as e:
        load_checkpoint(saved)
    assert os.path.join(saved, "state.json") in str(e.value)


def test_unsupported_format_version(saved: str) -> None:
    p = os.path.join(saved, "state.json")
    with open(p) as f:
        state = json.load(f)
    state["format_version"] = 99
    with open(p, "w") as f:
        json.dump(state, f)
    with pytest.raises(CheckpointError, match="unsupported checkpoint format 99") as e:
        load_checkpoint(saved)
    assert saved in str(e.value)


def test_missing_weights_file(saved: str) -> None:
    p = os.path.join(saved, "discriminator.safetensors")
    os.remove(p)
    with pytest.raises(CheckpointError, match="missing weights") as e:
        load_checkpoint(saved)
    assert p in str(e.value)


def test_corrupt_safetensors(saved: str) -> None:
    p = os.path.join(saved, "generator.safetensors")
    with open(p, "wb") as f:
        f.write(b"\xff" * 7 + b"garbage, not a safetensors file" * 3)
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(saved)
    assert p in str(e.value)


def test_truncated_safetensors(saved: str) -> None:
    p = os.path.join(saved, "generator.safetensors")
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(saved)
    assert p in str(e.value)


def test_weights_that_do_not_match_nets_json(saved: str) -> None:
    p = os.path.join(saved, "nets.json")
    with open(p) as f:
        nets = json.load(f)
    assert nets["generator"]["ngf"] == 4
    nets["generator"]["ngf"] = 8
    with open(p, "w") as f:
        json.dump(nets, f)
    with pytest.raises(CheckpointError, match="does not match nets.json") as e:
        load_checkpoint(saved)
    assert os.path.join(saved, "generator.safetensors") in str(e.value)


def test_unknown_constructor_argument_in_nets_json(saved: str) -> None:
    p = os.path.join(saved, "nets.json")
    with open(p) as f:
        nets = json.load(f)
    nets["discriminator"]["width"] = 3
    with open(p, "w") as f:
        json.dump(nets, f)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(saved)
    assert os.path.join(saved, "discriminator.safetensors") in str(e.value)


def test_invalid_config_json(saved: str) -> None:
    p = os.path.join(saved, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg["pix2pix"]["gan_mode"] = "foo"
    with open(p, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="gan_mode") as e:
        load_checkpoint(saved)
    assert p in str(e.value)


def test_corrupt_training_state(saved: str) -> None:
    p = os.path.join(saved, "training_state.pt")
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04 this is not a torch file" * 4)
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(saved, training_state=True)
    assert p in str(e.value)
    # The weights alone still load: training state is only needed to resume.
    assert set(load_checkpoint(saved).nets) == {"generator", "discriminator"}


def test_failed_save_keeps_existing_checkpoint(tmp_path, saved: str, monkeypatch) -> None:
    before = {n: open(os.path.join(saved, n), "rb").read() for n in os.listdir(saved)}
    state = _trained_state(tmp_path, "pix2pix", 1, seed=3)
    state.epoch = 9
    calls = []

    def broken_save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the first file is written, then the disk "fills up"
            raise OSError(28, "No space left on device")
        return real_save_file(tensors, filename, *args, **kwargs)

    real_save_file = ckpt_mod.save_file
    monkeypatch.setattr(ckpt_mod, "save_file", broken_save_file)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(saved, state)
    assert len(calls) == 2 and all(os.path.dirname(c) != saved for c in calls)  # wrote to a temp dir
    after = {n: open(os.path.join(saved, n), "rb").read() for n in os.listdir(saved)}
    assert after == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []
    assert load_checkpoint(saved).epoch == 1


def test_failed_save_of_a_new_checkpoint_leaves_nothing(tmp_path, monkeypatch) -> None:
    state = _trained_state(tmp_path, "vae", 1)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    parent = tmp_path / "ckpts"
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(str(parent / "epoch_1"), state)
    assert os.listdir(parent) == []
