"""Speed settings: channels_last, torch.compile, device copies, inference batch sizing (CPU here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from synthgen.checkpoint import load_checkpoint, save_checkpoint
from synthgen.device import CPU_INFERENCE_BATCH, inference_batch_size, prepare_module, to_device
from synthgen.generate import GeneratorActor
from synthgen.models import ConditionalVAE, UNetGenerator
from synthgen.steps import build_state, pix2pix_step, seed_epoch, vae_step


@pytest.mark.parametrize("make", [lambda: UNetGenerator(1, 3, 32, ngf=4), lambda: ConditionalVAE(1, 32, 8, nf=4)])
def test_channels_last_changes_layout_not_results(make):
    torch.manual_seed(0)
    plain = make().eval()
    nhwc = make().eval()
    nhwc.load_state_dict(plain.state_dict())
    prepare_module(nhwc, channels_last=True)
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    mask = torch.rand(2, 1, 32, 32)
    x = to_device(mask, torch.device("cpu"), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, mask)
    if isinstance(plain, UNetGenerator):
        a, b = plain(mask), nhwc(x)
    else:
        z = torch.randn(2, 8)
        a, b = plain.decode(z, mask), nhwc.decode(z, x)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model, step", [("pix2pix", pix2pix_step), ("vae", vae_step)])
def test_channels_last_training_step_gives_the_same_losses(tmp_path, model, step):
    def losses(channels_last: bool) -> dict:
        cfg = tiny_config("", "", str(tmp_path), model, channels_last=channels_last)
        state = build_state(cfg, 1)
        g = torch.Generator().manual_seed(1)
        batch = {"image": torch.rand(2, 1, 32, 32, generator=g) * 2 - 1,
                 "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()}
        batch = {k: to_device(v, state.device, channels_last) for k, v in batch.items()}
        out = {}
        for i in range(2):
            seed_epoch(cfg, i, 0)
            out.update({f"{k}@{i}": v for k, v in step(state, [batch]).items()})
        return out

    plain, nhwc = losses(False), losses(True)
    assert plain.keys() == nhwc.keys()
    for k in plain:
        assert nhwc[k] == pytest.approx(plain[k], rel=1e-3, abs=1e-4), k


def test_inference_batch_on_cpu_is_fixed_and_capped():
    forward_calls = []
    sample = torch.zeros(1, 1, 32, 32)
    assert inference_batch_size(forward_calls.append, sample) == CPU_INFERENCE_BATCH
    assert inference_batch_size(forward_calls.append, sample, cap=16) == 16
    assert not forward_calls  # no probe on CPU


@pytest.mark.parametrize("model", ["pix2pix", "vae"])
def test_actor_renders_the_same_images_in_any_chunk_size(tmp_path, model):
    cfg = tiny_config("", "", str(tmp_path), model)
    path = save_checkpoint(str(tmp_path / "ckpt"), build_state(cfg, 1))
    rng = np.random.default_rng(0)
    batch = {"var_mask": (rng.random((2, 5, 32, 32)) > 0.5).astype(np.uint8),
             "noise_sigma": np.zeros((2, 5), np.float32), "seed": np.arange(10).reshape(2, 5)}
    one = GeneratorActor({model: path}, gpu=False, precision="fp32")(dict(batch))
    chunked_actor = GeneratorActor({model: path}, gpu=False, precision="fp32", max_batch=3, channels_last=True)
    chunked = chunked_actor(dict(batch))
    assert chunked_actor.chunk == {model: 3}
    assert one[f"generated_{model}"].shape == (2, 5, 32, 32, 1)
    diff = np.abs(one[f"generated_{model}"].astype(int) - chunked[f"generated_{model}"].astype(int))
    assert diff.max() <= 1  # NHWC kernels may round a pixel differently, never more


@pytest.mark.slow
def test_compiled_network_matches_and_checkpoints_unchanged(tmp_path):
    """torch.compile in place (about 30 s of compiling on 2 cores, hence slow)."""
    cfg = tiny_config("", "", str(tmp_path), compile=True)
    state = build_state(cfg, 1)
    plain = build_state(tiny_config("", "", str(tmp_path)), 1)
    mask = torch.rand(2, 1, 32, 32)
    g, p = state.nets["generator"].eval(), plain.nets["generator"].eval()
    assert torch.allclose(g(mask), p(mask), atol=1e-5)
    path = save_checkpoint(str(tmp_path / "ckpt"), state)
    loaded = load_checkpoint(path).nets["generator"].eval()
    assert set(loaded.state_dict()) == set(p.state_dict())
    assert torch.allclose(loaded(mask), p(mask), atol=1e-5)
