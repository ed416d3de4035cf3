"""python benchmarks/bench_diffusion.py [--parts train,generate] [--train-sizes 64,128] [--batch 4]
                                      [--train-steps N] [--gen-sizes 128,256] [--sample-steps 10,25,50]
                                      [--gen-batch 8] [--channels 32] [--layers-per-block 2] [--threads N]
                                      [--gpu] [--precision fp32|bf16]

Speed of the diffusion model (train.model diffusion), by default at its default width
(diffusion.channels 32, layers_per_block 2; 4.6M parameters), in this process, without Ray:

- training: s_per_step and images_per_s of `steps.diffusion_step` (forward, backward, Adam, EMA
  update) on random masks/images of `--batch` images, per size in --train-sizes; one warm-up step;
- generation: samples_per_s of `steps.render_seeded` (what a generator actor runs per forward batch:
  DDIM from one seed per candidate, the EMA weights) on `--gen-batch` masks, per size in --gen-sizes
  and DDIM step count in --sample-steps; one warm-up batch of 1 step. Ray Data, variations and
  scoring are excluded (bench_generate.py measures the pipeline); the time is proportional to the
  DDIM steps, so s_per_sample / sample_steps is one U-Net forward per image.

Progress goes to stderr; stdout gets exactly one JSON line:
    {"benchmark": "diffusion", "device": ..., "torch": ..., "diffusers": ..., "threads": n, "params": n, ...,
     "train": [{"image_size", "batch", "s_per_step", "images_per_s"}, ...],
     "generate": [{"image_size", "sample_steps", "batch", "samples_per_s", "s_per_sample"}, ...]}
CPU by default; --gpu on CUDA (synchronised timings). A part left out of --parts reports [].
Torch runs on --threads 1 thread by default, as a synthgen Ray worker or actor with one CPU does:
with more threads than free cores (another job running alongside) every small op waits on a
descheduled thread, and a step was 10-30x slower on the 2-core machine. The defaults take about
6 minutes there at 1 thread (gen-batch 4, 3 training steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from common import csv_list, make_log, reserve_stdout

log = make_log("bench_diffusion")


def _config(args, size: int, precision: str = "fp32"):
    from synthgen.config import Config

    cfg = Config()
    cfg.train.model, cfg.data.image_size, cfg.train.gpu = "diffusion", size, args.gpu
    cfg.diffusion.channels, cfg.diffusion.layers_per_block = args.channels, args.layers_per_block
    cfg.train.precision = precision
    cfg.validate()
    return cfg


def _batch(n: int, size: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
    return {"mask": mask.to(device), "image": (torch.rand(n, 1, size, size, generator=g) * 2 - 1).to(device)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args, device) -> list[dict]:
    from synthgen.steps import build_state, diffusion_step

    rows = []
    for size in args.train_sizes:
        state = build_state(_config(args, size, args.precision), 1, device)
        batch = _batch(args.batch, size, device)
        diffusion_step(state, [batch])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            diffusion_step(state, [batch])
        _sync(device)
        s = (time.perf_counter() - t0) / args.train_steps
        rows.append({"image_size": size, "batch": args.batch, "s_per_step": round(s, 4),
                     "images_per_s": round(args.batch / s, 2)})
        log(f"train {size} px batch {args.batch}: {s:.3f} s/step")
    return rows


def bench_generate(args, device) -> list[dict]:
    from synthgen.models import build_models
    from synthgen.steps import render_seeded

    rows = []
    for size in args.gen_sizes:
        nets = {k: v.to(device) for k, v in build_models(_config(args, size), 1).items()}
        masks = _batch(args.gen_batch, size, device)["mask"]
        seeds = np.arange(args.gen_batch)
        precision = args.precision
        render_seeded(nets, masks, seeds, precision, sample_steps=1)  # warm-up
        for steps in args.sample_steps:
            _sync(device)
            t0 = time.perf_counter()
            render_seeded(nets, masks, seeds, precision, sample_steps=steps)
            _sync(device)
            s = (time.perf_counter() - t0) / args.gen_batch
            rows.append({"image_size": size, "sample_steps": steps, "batch": args.gen_batch,
                         "samples_per_s": round(1 / s, 3), "s_per_sample": round(s, 4)})
            log(f"generate {size} px, {steps} DDIM steps: {1 / s:.3f} samples/s")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=csv_list(str), default=["train", "generate"], help="train,generate (default both)")
    p.add_argument("--train-sizes", type=csv_list(int), default=[64, 128], help="training sizes in px (64,128)")
    p.add_argument("--batch", type=int, default=4, help="training batch (default 4, synthgen's default)")
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps per size (default 5)")
    p.add_argument("--gen-sizes", type=csv_list(int), default=[128, 256], help="generation sizes in px (128,256)")
    p.add_argument("--sample-steps", type=csv_list(int), default=[10, 25, 50], help="DDIM step counts (10,25,50)")
    p.add_argument("--gen-batch", type=int, default=8, help="candidates per render batch (default 8)")
    p.add_argument("--channels", type=int, default=32, help="diffusion.channels (default 32)")
    p.add_argument("--layers-per-block", type=int, default=2, help="diffusion.layers_per_block (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: what a Ray worker "
                   "or actor with 1 CPU gets; 0 = torch's default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="autocast (default fp32)")
    p.add_argument("--gpu", action="store_true", help="run on CUDA")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_out = reserve_stdout()
    import diffusers
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        log("--gpu given but CUDA is not available")
        return 2
    device = torch.device("cuda" if args.gpu else "cpu")
    from synthgen.models import build_models

    params = sum(p.numel() for p in build_models(_config(args, 64), 1)["diffusion"].parameters())
    report = {"benchmark": "diffusion", "device": torch.cuda.get_device_name(device) if args.gpu else "cpu",
              "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "precision": args.precision, "channels": args.channels,
              "layers_per_block": args.layers_per_block, "params": params,
              "train": bench_train(args, device) if "train" in args.parts else [],
              "generate": bench_generate(args, device) if "generate" in args.parts else []}
    json_out.write(json.dumps(report) + "\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
