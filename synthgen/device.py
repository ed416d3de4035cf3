"""Device placement and speed settings shared by training (steps.py) and generation (generate.py).

- channels_last: NHWC memory layout for weights and activations. cuDNN's tensor-core convolutions
  (bf16/fp16 on Ampere and later) work in NHWC, so NCHW tensors pay a transpose around every conv;
  on CPU oneDNN prefers it too. The math is unchanged, only the strides differ.
- compile: `torch.compile` through nn.Module.compile(), which compiles in place, so state_dict keys and
  checkpoints stay exactly as without it. The first batch of each new input shape pays the compile
  (tens of seconds), so it pays off for long runs only; off by default.
- to_device: host -> GPU copies from pinned memory with non_blocking=True, so the copy overlaps the
  work already queued on the GPU; a plain .to() on CPU.
- inference_batch_size: how many images one forward pass renders. On CUDA it is measured: one probe
  forward of 8 images gives the memory per image, and the batch fills `budget` of the free memory.

Plain PyTorch, no Ray.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

CPU_INFERENCE_BATCH = 64
"""Images per forward pass on CPU: larger batches no longer speed up a CPU conv net, only use memory."""

PROBE_BATCH = 8


def prepare_module(net: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """`net` (already on its device) in NHWC layout and/or compiled, in place; returns it."""
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile:
        net.compile()
    return net


def to_device(t: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Copy a (B, C, H, W) host tensor to `device`: pinned + non-blocking to a GPU."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    t = t.to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def inference_batch_size(forward: Callable[[torch.Tensor], object], sample: torch.Tensor,
                         cap: int = 1024, budget: float = 0.6) -> int:
    """Images per forward pass for inputs like `sample` (1, C, H, W) on its device.

    CPU: CPU_INFERENCE_BATCH. CUDA: runs `forward` once on PROBE_BATCH copies of `sample`, takes the peak
    memory it allocated per image, and returns the batch that fills `budget` of the free memory, a
    multiple of PROBE_BATCH between PROBE_BATCH and `cap`.
    """
    device = sample.device
    if device.type != "cuda":
        return min(CPU_INFERENCE_BATCH, cap)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward(sample.expand(PROBE_BATCH, *sample.shape[1:]).contiguous())
    torch.cuda.synchronize(device)
    per_image = max((torch.cuda.max_memory_allocated(device) - base) / PROBE_BATCH, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    fits = int(budget * free / per_image) // PROBE_BATCH * PROBE_BATCH
    return max(PROBE_BATCH, min(cap, fits))
