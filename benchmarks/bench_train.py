"""python benchmarks/bench_train.py [--models pix2pix,vae] [--sizes 128,256] [--batches 1,4] [--workers 1,2]
                                  [--steps N] [--quick] [--gpu] [--synthetic]

Training throughput of the default-width models (pix2pix ngf=ndf=64; VAE latent 512, nf 32) on Ray
Train data-parallel workers, for every combination of model x image size x batch per worker x workers:

- s_per_step: seconds per optimisation step (data loading included, as in training), the slowest
  worker's wall time over the timed steps divided by their number;
- images_per_s: images per second summed over the workers (steps x batch x workers / that time);
- peak_mem_mb: the largest peak RSS (getrusage ru_maxrss) of the worker processes, in MB. It includes
  the Ray worker runtime and the decoded dataset, i.e. what a training worker really holds.

Every configuration runs in its own TorchTrainer (fresh worker processes, so peak RSS is per
configuration) with the same per-worker set-up as `synthgen.train.train_loop_per_worker`:
`steps.build_state`, `ray.train.torch.prepare_model` (DDP over gloo, or NCCL with --gpu), a
`DistributedSampler` + `DataLoader` over `data.PairDataset`, and `steps.STEPS[model]`. Ray start-up,
worker start-up, model construction, data decoding and the first (warm-up) step are excluded from
the timing. Workers get `--cpus-per-worker` CPUs each (default 1, synthgen's default); torch uses
the thread count Ray gives them (reported as torch_threads_per_worker).

Data: the shipped ISBI 2012 sample (`synthgen/sample_data/isbi2012/train`, 6 real 512x512 gray
pairs, membranes inverted as in the demo), or 6 synthetic 512x512 blob pairs with --synthetic.

Progress goes to stderr; stdout gets exactly one JSON line at the end:
    {"benchmark": "train", "device": "cpu" | "<cuda name>", "torch": ..., "cpus": n, ...,
     "results": [{"model", "image_size", "batch", "workers", "s_per_step", "images_per_s",
                  "peak_mem_mb"}, ...]}
A configuration that cannot run (not enough CPUs/GPUs, out of memory, ...) is listed with null
numbers and an "error" string instead of aborting the run.

Defaults time 20 steps per configuration at <= 128 px and 6 above (--steps overrides both); the
full default grid (16 configurations) takes about 10-15 minutes on 2 CPU cores. --quick is a smoke
test: 128 px, batch 1, 2 timed steps.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
import warnings

import numpy as np

from common import SAMPLE_TRAIN, csv_list as _csv, error_text, make_log, reserve_stdout  # noqa: E402

log = make_log("bench_train")


def default_steps(image_size: int) -> int:
    """Timed steps per configuration when --steps is not given: fewer at large sizes."""
    return 20 if image_size <= 128 else 6


def write_synthetic_pairs(root: str, n: int = 6, size: int = 512, seed: int = 0) -> tuple[str, str]:
    """n gray size x size pairs: blob masks (0/255) and a noisy image that is a smooth function of the mask."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(12):
            # radii 16-64 px at 512 px, scaled with the size so small images keep background
            cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(size // 32, size // 8)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img = np.clip(np.where(mask, 200.0, 60.0) + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(images, f"p{i:02d}.png"))
        Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(masks, f"p{i:02d}.png"))
    return images, masks


def bench_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: build like synthgen.train, warm up, time `steps` steps, report."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from synthgen.config import Config
    from synthgen.data import Pair, PairDataset
    from synthgen.device import to_device
    from synthgen.steps import STEPS, build_state, seed_epoch

    warnings.filterwarnings("ignore", category=UserWarning)
    cfg = Config.from_dict(loop_config["config"])
    pairs = [Pair(*p) for p in loop_config["pairs"]]
    warmup, steps = loop_config["warmup"], loop_config["steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    distributed = dist.is_available() and dist.is_initialized() and world > 1

    state = build_state(cfg, loop_config["channels"], device)
    state.nets = {name: ray.train.torch.prepare_model(net, move_to_device=False) for name, net in state.nets.items()}
    for net in state.nets.values():
        net.train()
    needed = (warmup + steps) * cfg.train.batch_size * world
    repeats = max(1, math.ceil(needed / len(pairs)))
    dataset = PairDataset(pairs, cfg.data.image_size, cfg.data.invert_mask, cfg.data.augment,
                          repeats=repeats, seed=cfg.train.seed, channels=loop_config["channels"])
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        pin_memory=device.type == "cuda")
    sampler.set_epoch(0)
    dataset.set_epoch(0)
    seed_epoch(cfg, 0, rank)
    step_fn = STEPS[cfg.train.model]
    batches = iter(loader)

    def one_step() -> None:
        b = next(batches)
        step_fn(state, [{k: to_device(b[k], device, cfg.train.channels_last) for k in ("image", "mask")}])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if distributed:
            dist.barrier()

    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    values = torch.tensor([elapsed, rss_mb, gpu_mb], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    elapsed, rss_mb, gpu_mb = values.tolist()
    metrics = {"elapsed_s": elapsed, "steps": float(steps), "peak_rss_mb": rss_mb,
               "peak_gpu_mb": gpu_mb, "torch_threads": float(torch.get_num_threads())}
    # Ray Train v2 (the default since 2.5x) keeps only metrics reported with a checkpoint in
    # Result.metrics, so rank 0 attaches a tiny one; every rank must call report.
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(d, "bench.json"), "w") as f:
                json.dump(metrics, f)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


VARIANTS = {
    "fp32": {}, "bf16": {"train.precision": "bf16"}, "fp16": {"train.precision": "fp16"},
    "ckpt": {"train.grad_checkpoint": True}, "bf16+ckpt": {"train.precision": "bf16", "train.grad_checkpoint": True},
    "attention": {"pix2pix.generator": "attention_unet"},
    "channels_last": {"train.channels_last": True},
    "bf16+channels_last": {"train.precision": "bf16", "train.channels_last": True},
    "compile": {"train.compile": True}, "bf16+compile": {"train.precision": "bf16", "train.compile": True},
}
"""--variants: named config changes measured against each other (memory, speed)."""


def empty_row(model: str, size: int, batch: int, workers: int, variant: str) -> dict:
    """A result row with its configuration and no numbers yet."""
    return {"model": model, "image_size": size, "batch": batch, "workers": workers, "variant": variant,
            "s_per_step": None, "images_per_s": None, "peak_mem_mb": None}


def run_config(args, model: str, size: int, batch: int, workers: int, steps: int, pairs, channels: int,
               storage: str, index: int, variant: str = "fp32") -> dict:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from synthgen.config import Config

    row = empty_row(model, size, batch, workers, variant)
    total = ray.cluster_resources()
    if workers * args.cpus_per_worker > total.get("CPU", 0) + 1e-9:
        row["error"] = (f"needs {workers * args.cpus_per_worker:g} CPUs, Ray has {total.get('CPU', 0):g}")
        return row
    if args.gpu and workers > total.get("GPU", 0):
        row["error"] = f"needs {workers} GPUs, Ray has {total.get('GPU', 0):g}"
        return row

    cfg = Config()
    cfg.train.model, cfg.train.batch_size, cfg.train.workers, cfg.train.gpu = model, batch, workers, args.gpu
    cfg.train.cpus_per_worker = args.cpus_per_worker
    cfg.data.image_size, cfg.data.invert_mask = size, not args.synthetic
    for key, value in VARIANTS[variant].items():
        cfg.set(key, value, f"variant {variant}")
    try:
        cfg.validate()
    except ValueError as e:
        row["error"] = str(e).splitlines()[-1].strip()
        return row
    trainer = TorchTrainer(
        bench_worker,
        train_loop_config={"config": cfg.to_dict(), "channels": channels, "warmup": args.warmup, "steps": steps,
                           "pairs": [[p.stem, p.image, p.mask] for p in pairs]},
        torch_config=TorchConfig(backend="nccl" if args.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=args.gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker,
                                                           **({"GPU": 1} if args.gpu else {})}),
        run_config=RunConfig(name=f"cfg{index:02d}_{model}_{size}_b{batch}_w{workers}_{variant.replace('+', '_')}",
                             storage_path=storage,
                             failure_config=FailureConfig(max_failures=0)),
    )
    try:
        result = trainer.fit()
        m = result.metrics
        if not m and result.checkpoint is not None:
            with result.checkpoint.as_directory() as d, open(os.path.join(d, "bench.json")) as f:
                m = json.load(f)
        if not m:
            raise RuntimeError("the workers reported no metrics")
    except Exception as e:  # noqa: BLE001 - one failing configuration (e.g. OOM) must not lose the others
        row["error"] = error_text(e)
        return row
    elapsed = m["elapsed_s"]
    row["s_per_step"] = round(elapsed / steps, 4)
    row["images_per_s"] = round(steps * batch * workers / elapsed, 3)
    row["peak_mem_mb"] = round(m["peak_rss_mb"], 1)
    if args.gpu:
        row["peak_gpu_mem_mb"] = round(m["peak_gpu_mb"], 1)
    row["_threads"] = int(m["torch_threads"])
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (also how benchmarks/gpu_check.py gets its train settings)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv(str), default=["pix2pix", "vae"], help="comma list (default pix2pix,vae)")
    p.add_argument("--sizes", type=_csv(int), default=[128, 256], help="image sizes in px (default 128,256)")
    p.add_argument("--batches", type=_csv(int), default=[1, 4], help="batch per worker (default 1,4)")
    p.add_argument("--workers", type=_csv(int), default=[1, 2], help="Ray Train workers (default 1,2)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per configuration (default 20 at <=128 px, 6 above)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 128 px, batch 1, 2 timed steps")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU, gloo)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs given to the local Ray (default: all cores)")
    p.add_argument("--synthetic", action="store_true", help="synthetic blob pairs instead of the ISBI sample")
    p.add_argument("--data", default=None, help="folder with images/ and masks/ (default: the ISBI sample)")
    p.add_argument("--variants", type=_csv(str), default=["fp32"],
                   help=f"comma list of {', '.join(VARIANTS)} (default fp32): precision, gradient checkpointing, "
                        "the attention U-Net")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.steps = [128], [1], 2
    if args.steps is not None and args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    for m in args.models:
        if m not in ("pix2pix", "vae"):
            p.error(f"unknown model {m!r} (pix2pix, vae)")
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} ({', '.join(VARIANTS)})")
    return args


def load_pairs(args, tmp_dir: str) -> tuple[list, int]:
    """(pairs, channels): synthetic pairs written under tmp_dir (--synthetic), --data, or the ISBI sample."""
    from synthgen.data import find_pairs, image_channels

    if args.synthetic:
        images, masks = write_synthetic_pairs(os.path.join(tmp_dir, "data"))
    else:
        root = args.data or SAMPLE_TRAIN
        images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    pairs = find_pairs(images, masks, min_pairs=1)
    channels = image_channels(pairs)
    log(f"data: {len(pairs)} pairs from {os.path.dirname(os.path.abspath(images))}, {channels} channel(s)")
    return pairs, channels


def run_grid(args, pairs, channels: int, storage: str, deadline: float | None = None) -> tuple[list[dict], set]:
    """run_config for every --models x --sizes x --batches x --workers x --variants combination, in
    that order, with Ray already started. Returns (rows, torch thread counts the workers reported).
    Configurations not started by `deadline` (time.time()) are listed with an "error" instead."""
    grid = [(m, s, b, w, v) for m in args.models for s in args.sizes for b in args.batches for w in args.workers
            for v in args.variants]
    results, threads = [], set()
    for i, (model, size, batch, workers, variant) in enumerate(grid, 1):
        steps = args.steps or default_steps(size)
        t0 = time.time()
        if deadline is not None and t0 > deadline:
            results.append({**empty_row(model, size, batch, workers, variant), "error": "skipped: time budget spent"})
            log(f"[{i}/{len(grid)}] {model} {size}px {variant}: skipped, time budget spent")
            continue
        log(f"[{i}/{len(grid)}] {model} {size}px batch {batch} x {workers} worker(s) {variant}: "
            f"{args.warmup} warm-up + {steps} timed steps ...")
        row = run_config(args, model, size, batch, workers, steps, pairs, channels, storage, i, variant)
        if "_threads" in row:
            threads.add(row.pop("_threads"))
        results.append(row)
        if row.get("error"):
            log(f"[{i}/{len(grid)}]   FAILED: {row['error']}  ({time.time() - t0:.0f}s)")
        else:
            log(f"[{i}/{len(grid)}]   {row['s_per_step']:.3f} s/step, {row['images_per_s']:.2f} img/s, "
                f"peak RSS {row['peak_mem_mb']:.0f} MB  ({time.time() - t0:.0f}s incl. start-up)")
    return results, threads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_out = reserve_stdout()
    started = time.time()

    import ray
    import torch

    if args.gpu and not torch.cuda.is_available():
        log("--gpu given but CUDA is not available here; running on CPU")
        args.gpu = False
    device = torch.cuda.get_device_name(0) if args.gpu else "cpu"

    tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
    pairs, channels = load_pairs(args, tmp.name)

    cpus = args.cpus or os.cpu_count()
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    log(f"ray {ray.__version__} up with {cpus} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs; device {device}")

    results, threads = run_grid(args, pairs, channels, tmp.name)

    ray.shutdown()
    tmp.cleanup()
    report = {"benchmark": "train", "device": device, "torch": torch.__version__, "cpus": os.cpu_count(),
              "ray": ray.__version__, "python": platform.python_version(),
              "cpus_per_worker": args.cpus_per_worker,
              "torch_threads_per_worker": sorted(threads)[0] if len(threads) == 1 else sorted(threads),
              "warmup_steps": args.warmup, "data": "synthetic" if args.synthetic else (args.data or "isbi2012 sample"),
              "wall_s": round(time.time() - started, 1), "results": results}
    json_out.write(json.dumps(report) + "\n")
    json_out.flush()
    log(f"done in {time.time() - started:.0f}s")
    return 1 if all(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
