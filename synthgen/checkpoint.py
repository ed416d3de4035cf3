"""Checkpoints that never unpickle arbitrary objects.

A checkpoint is a directory:
    <net>.safetensors     weights of each network (generator, discriminator | vae [, discriminator] |
                          diffusion [, diffusion_ema]), exact bytes
    nets.json             each network's constructor arguments, enough to rebuild it
    config.json           the full run Config
    state.json            epoch (finished epochs), model name, image channels, metrics history
    training_state.pt     optimisers and grad scalers (tensors, numbers, lists only), read back with
                          torch.load(weights_only=True); optional, not needed to generate. The LR
                          schedule is a function of the epoch, so it has no state to save.
Writes go to a temporary sibling directory that is renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from synthgen.config import Config, ConfigError
from synthgen.models import build_from_config, network_kind

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names the path."""


@dataclass
class LoadedCheckpoint:
    cfg: Config
    nets: dict[str, nn.Module]
    epoch: int
    channels: int
    history: list[dict[str, float]] = field(default_factory=list)
    training_state: dict | None = None

    @property
    def model(self) -> str:
        return self.cfg.train.model


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def save_checkpoint(directory: str, state, include_training_state: bool = True) -> str:
    """Write `state` (a steps.TrainState) to `directory`, replacing it atomically."""
    from synthgen.steps import unwrap  # steps imports models/losses; keep this module light to import

    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=parent)
    try:
        nets = {name: unwrap(net) for name, net in state.nets.items()}
        for name, net in nets.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            save_file(tensors, os.path.join(tmp, f"{name}.safetensors"))
        _write_json(os.path.join(tmp, "nets.json"), {name: net.config for name, net in nets.items()})
        _write_json(os.path.join(tmp, "config.json"), state.cfg.to_dict())
        _write_json(os.path.join(tmp, "state.json"), {
            "format_version": FORMAT_VERSION, "epoch": state.epoch, "model": state.cfg.train.model,
            "channels": state.channels, "history": state.history})
        if include_training_state:
            torch.save({
                "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
                "scalers": {k: s.state_dict() for k, s in state.scalers.items()},
            }, os.path.join(tmp, "training_state.pt"))
        # Swap by renames: at every instant a complete checkpoint sits under `directory` or `aside`.
        aside = None
        if os.path.isdir(directory):
            aside = tempfile.mkdtemp(prefix=".old-ckpt-", dir=parent)
            os.rmdir(aside)
            os.replace(directory, aside)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside:
        shutil.rmtree(aside, ignore_errors=True)
    return directory


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a synthgen checkpoint, or incomplete)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def load_checkpoint(directory: str, device: str | torch.device = "cpu",
                    training_state: bool = False) -> LoadedCheckpoint:
    """Rebuild the networks of a checkpoint directory (and, on request, the optimiser state)."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    state = _read_json(os.path.join(directory, "state.json"))
    if not isinstance(state, dict) or not {"epoch", "channels", "format_version"} <= state.keys():
        raise CheckpointError(f"{directory}/state.json: not a synthgen checkpoint state "
                              "(needs format_version, epoch, channels)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: unsupported checkpoint format {state.get('format_version')!r}")
    try:
        cfg = Config.from_dict(_read_json(os.path.join(directory, "config.json")), source=directory)
    except ConfigError as e:
        raise CheckpointError(f"{directory}/config.json: {e}") from None
    nets = {}
    for name, net_config in _read_json(os.path.join(directory, "nets.json")).items():
        path = os.path.join(directory, f"{name}.safetensors")
        try:
            net = build_from_config(network_kind(name, cfg), net_config)
            net.load_state_dict(load_file(path))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing weights file") from None
        except (SafetensorError, RuntimeError, OSError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or does not match nets.json ({str(e)[:300]})") from None
        nets[name] = net.to(device)
    extra = None
    if training_state:
        path = os.path.join(directory, "training_state.pt")
        try:
            extra = torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (this checkpoint holds weights only)") from None
        except Exception as e:  # torch raises several unpickling error types for a damaged file
            raise CheckpointError(f"{path}: corrupt ({str(e)[:300]})") from None
    return LoadedCheckpoint(cfg, nets, int(state["epoch"]), int(state["channels"]),
                            state.get("history", []), extra)


def restore_state(state, ckpt: LoadedCheckpoint) -> None:
    """Load a checkpoint's weights, optimiser state and history into a freshly built TrainState."""
    from synthgen.steps import unwrap

    if state.nets.keys() != ckpt.nets.keys():
        raise CheckpointError(f"the checkpoint holds networks {sorted(ckpt.nets)} but the config builds "
                              f"{sorted(state.nets)} (a discriminator comes with pix2pix, and with the VAE when "
                              f"vae.lambda_gan or vae.lambda_fm > 0; diffusion_ema with diffusion.ema_decay > 0: "
                              f"keep those as the run was started)")
    for name, net in state.nets.items():
        unwrap(net).load_state_dict(ckpt.nets[name].state_dict())
    if ckpt.training_state is not None:
        for kind, objs in (("optimizers", state.optimizers), ("scalers", state.scalers)):
            for name, obj in objs.items():
                obj.load_state_dict(ckpt.training_state[kind][name])
    state.epoch = ckpt.epoch
    state.history = list(ckpt.history)
