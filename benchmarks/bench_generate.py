"""python benchmarks/bench_generate.py [--sizes 128,256] [--variations N] [--actors 1,2,4] [--quick] [--gpu]
                                     [--out-json FILE]

End-to-end throughput of the Ray Data generation pipeline (`synthgen.generate.generate`) against the
bare generator forward pass in a plain torch loop, on the same machine in the same run:

- samples_per_s: generated candidates / pipeline_s, where pipeline_s is generate()'s own clock (the
  `run.seconds` of the manifest): driver checkpoint load, source loading, actor start-up and
  checkpoint load in every actor, variations, generator, scorer and the writer (PNG + Parquet).
  Ray itself is started once, before anything is timed;
- steady_samples_per_s: the generator stage once running, from the actors' own timestamps: candidates
  rendered / (last render end - first render start), i.e. without start-up and pipeline fill (the
  actor class is wrapped for the run to record them; nothing in synthgen is changed);
- bare_forward_samples_per_s: the same generator (loaded from the same checkpoint), batches of
  generate.batch_size x num_variations, torch.inference_mode, in this process, with the thread count
  one actor gets (Ray: floor(cpus_per_actor), at least 1), timed over the same number of samples
  after one untimed warm-up batch;
- efficiency = samples_per_s / bare_forward_samples_per_s (steady_efficiency likewise). With n > 1
  actors the ceiling is min(n, usable cores / threads per actor), not 1.0.

Rows: every --sizes size with 1 actor (the efficiency comparison), and every --actors count at the
--scale-sizes sizes (default 128 px). Actors are fixed (actors_min = actors_max = n) with
cpus_per_actor = min(0.5, (cpus - 0.5) / n), so n actors and the 0.25-CPU variation/scorer tasks fit.

Also measured in-process on one block of real candidates per size: scorer_ms_per_sample (one
synthgen.quality.assess_quality call per candidate, diversity against its 7 siblings) and
stage_ms_per_sample (variations, the actor's __call__, the whole score stage incl. PNG encoding), so
it is visible which stage bounds the pipeline.

Models are untrained but real: pix2pix at the default widths (ngf = ndf = 64), built with
synthgen.steps.build_state and written with synthgen.checkpoint.save_checkpoint, one per size. Sources
are the shipped ISBI 2012 sample pairs (6 x 512x512, membranes inverted as in the demo) recorded as the
checkpoint's training data, so generate.masks = '' tiles them to the model size and the real images
serve as SSIM references, as in real use. generate.threshold defaults to 0 here, so every candidate
is accepted and written (an untrained model would otherwise be rejected wholesale and skip the writer).

Progress goes to stderr; stdout gets exactly one JSON line at the end:
    {"benchmark": "generate", "device", "torch", "ray", "cpus", ...,
     "results": [{"image_size", "actors", "samples", "pipeline_s", "samples_per_s",
                  "bare_forward_samples_per_s", "efficiency", ...}, ...],
     "scorer_ms_per_sample": {"128": ..., "256": ...}, "stage_ms_per_sample": {...}}
A run that cannot happen (not enough GPUs, a pipeline error, ...) is listed with null numbers and an
"error" string instead of aborting the benchmark.

The full default run (128 and 256 px, 8 variations, 1/2/4 actors at 128 px) takes about 7-10 minutes
on 2 CPU cores; --quick (128 px, 2 pairs, 2 variations, 1 and 2 actors) about 1-2 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

from common import SAMPLE_TRAIN, csv_list as _csv, error_text, make_log, reserve_stdout  # noqa: E402

log = make_log("bench_generate")


def subset_pairs(root: str, dest: str, n: int | None) -> tuple[str, str]:
    """The sample's images/ and masks/ folders, or copies of their first n pairs (by stem) under dest."""
    from synthgen.data import find_pairs

    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    pairs = find_pairs(images, masks)
    if n is None or n >= len(pairs):
        return os.path.abspath(images), os.path.abspath(masks)
    out_images, out_masks = os.path.join(dest, "images"), os.path.join(dest, "masks")
    os.makedirs(out_images, exist_ok=True)
    os.makedirs(out_masks, exist_ok=True)
    for p in pairs[:n]:
        shutil.copy(p.image, out_images)
        shutil.copy(p.mask, out_masks)
    return out_images, out_masks


def make_checkpoint(directory: str, size: int, images: str, masks: str, channels: int) -> str:
    """An untrained default-width pix2pix checkpoint whose config records the sample pairs (inverted)."""
    from synthgen.checkpoint import save_checkpoint
    from synthgen.config import Config
    from synthgen.steps import build_state

    cfg = Config()
    cfg.train.model = "pix2pix"
    cfg.data.image_size, cfg.data.images, cfg.data.masks, cfg.data.invert_mask = size, images, masks, True
    cfg.validate()
    state = build_state(cfg, channels, "cpu")
    return save_checkpoint(directory, state, include_training_state=False)


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores from /proc/stat (Linux), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_between(a, b) -> float | None:
    """Fraction of all cores busy between two machine_cpu() samples."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 3)


def process_ticks() -> dict[int, tuple[int, int]] | None:
    """pid -> (parent pid, user + system clock ticks) of every process (Linux /proc), or None."""
    if not os.path.isdir("/proc/self"):
        return None
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
            out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def foreign_cpu_s(before, after) -> float | None:
    """CPU seconds that processes outside this benchmark's process tree (the driver, and Ray's
    gcs_server/raylet/workers it started) used between two process_ticks() snapshots. Processes
    that started and ended in between are not seen."""
    if before is None or after is None:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in after.items():
        children.setdefault(ppid, []).append(pid)
    ours, stack = set(), [os.getpid()]
    while stack:
        pid = stack.pop()
        if pid not in ours:
            ours.add(pid)
            stack += children.get(pid, [])
    ticks = sum(t - (before[pid][1] if pid in before else 0) for pid, (_, t) in after.items() if pid not in ours)
    return round(max(ticks, 0) / os.sysconf("SC_CLK_TCK"), 2)


def self_cpu_s() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def actor_cpus(args, actors: int) -> float:
    return min(0.5, (args.cpus - 0.5) / actors)


def threads_for(cpus_per_actor: float) -> int:
    """What Ray sets OMP_NUM_THREADS (and so torch's intra-op threads) to in an actor."""
    return max(math.floor(cpus_per_actor), 1)


def generate_config(args, checkpoint: str, out: str, actors: int, **extra):
    from synthgen.config import Config

    cfg = Config()
    g = cfg.generate
    g.checkpoint, g.masks, g.images, g.out = checkpoint, "", "", out
    g.num_variations, g.batch_size, g.threshold, g.seed, g.png = args.variations, args.batch_size, args.threshold, 0, True
    g.actors_min = g.actors_max = actors
    g.cpus_per_actor = actor_cpus(args, actors)
    g.gpu = args.gpu
    g.precision, g.channels_last, g.compile = args.precision, args.channels_last, args.compile
    g.max_batch, g.scoring = args.max_batch, args.scoring
    for k, v in extra.items():
        setattr(g, k, v)
    cfg.validate()
    return cfg


def actor_options(g) -> dict:
    """The GeneratorActor keyword arguments build_pipeline passes for generate config `g`."""
    from synthgen.generate import torch_scoring
    from synthgen.quality import parse_weights

    return {"max_batch": g.max_batch, "channels_last": g.channels_last, "compile": g.compile,
            "score_weights": parse_weights(g.weights) if torch_scoring(g) else None}


def source_inputs(cfg) -> tuple[list, int]:
    """The pipeline's sources for a generate config (tiles of the checkpoint's training pairs)."""
    from synthgen.checkpoint import load_checkpoint
    from synthgen.generate import load_sources, resolve_checkpoint

    main = load_checkpoint(resolve_checkpoint(cfg.generate.checkpoint))
    return load_sources(cfg.generate, main.cfg, main.channels), main.channels


def bare_forward(checkpoint: str, sources, variations: int, batch: int, threads: int, device: str,
                 precision: str = "fp32", channels_last: bool = False) -> dict:
    """Samples/s of the checkpoint's generator in a plain inference_mode loop over len(sources) x
    variations samples in batches of `batch`, after one untimed warm-up batch; `precision` (autocast)
    and `channels_last` as generate.precision / generate.channels_last (main measures fp32, NCHW)."""
    import torch

    from synthgen.checkpoint import load_checkpoint
    from synthgen.device import prepare_module, to_device

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        gen = prepare_module(load_checkpoint(checkpoint, dev).nets["generator"].eval(), channels_last)
        masks = np.repeat(np.stack([s.mask for s in sources]).astype(np.float32), variations, axis=0)
        inputs = torch.from_numpy(masks).unsqueeze(1)
        n = len(inputs)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            gen(to_device(inputs[:batch], dev, channels_last))
            sync()
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                gen(to_device(inputs[i:i + batch], dev, channels_last))
            sync()
            elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    return {"samples": n, "seconds": elapsed, "samples_per_s": n / elapsed}


def source_block(sources, channels: int) -> dict:
    """`sources` as the one batch Ray Data hands the variation stage (the columns build_pipeline makes)."""
    size = sources[0].mask.shape[0]
    blank = np.zeros((size, size, channels), np.uint8)
    return {"source_index": np.arange(len(sources)), "source_id": np.array([s.id for s in sources]),
            "mask": np.stack([s.mask for s in sources]),
            "has_image": np.array([s.image is not None for s in sources]),
            "image": np.stack([s.image if s.image is not None else blank for s in sources])}


def render_block(cfg, sources, channels: int, threads: int) -> dict:
    """One block (generate.batch_size sources) through the pipeline's variation stage and a
    GeneratorActor built as build_pipeline builds it, in this process, after one untimed 1-group
    call: {"groups" (the actor's output), "actor", "models", "variations_s", "actor_call_s"}."""
    import torch

    from synthgen.generate import GeneratorActor, _checkpoints, make_variation_groups

    g = cfg.generate
    batch = source_block(sources[:g.batch_size], channels)
    kinds = [k.strip() for k in g.variations.split(",")]
    checkpoints, _ = _checkpoints(g)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        groups = make_variation_groups(batch, g.num_variations, kinds, g.seed, cfg.variations)
        t_var = time.perf_counter() - t0
        actor = GeneratorActor(checkpoints, g.gpu, g.precision, **actor_options(g))
        warm = {k: v[:1] for k, v in groups.items()}
        actor(dict(warm))                                   # first call: allocator, kernels
        t0 = time.perf_counter()
        groups = actor(groups)                              # returns numpy arrays: synchronised
        t_gen = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    return {"groups": groups, "actor": actor, "models": list(checkpoints), "variations_s": t_var,
            "actor_call_s": t_gen}


def skimage_scores(groups: dict, name: str, weights: dict[str, float]) -> list[list[dict]]:
    """synthgen.quality.assess_quality of every candidate of model `name` in a rendered block, as
    score_groups calls it ([group][variation] -> scores; diversity against the group's siblings)."""
    from synthgen.quality import assess_quality

    out = []
    for gi in range(len(groups["source_id"])):
        images = list(groups[f"generated_{name}"][gi])
        has_image = bool(groups["has_image"][gi])
        w = weights if has_image else {k: v for k, v in weights.items() if k != "ssim"}
        out.append([assess_quality(img, groups["var_mask"][gi][v], groups["ref_image"][gi][v] if has_image else None,
                                   images[:v] + images[v + 1:], w, source_mask=groups["ref_mask"][gi][v])
                    for v, img in enumerate(images)])
    return out


def stage_profile(cfg, sources, channels: int, threads: int) -> dict:
    """ms per candidate of each pipeline stage on one block (generate.batch_size sources) of real
    candidates, in this process: the pipeline's own stage functions, called directly."""
    from synthgen.generate import score_groups
    from synthgen.quality import parse_weights

    g = cfg.generate
    weights = parse_weights(g.weights)
    block = render_block(cfg, sources, channels, threads)
    groups = block["groups"]
    t0 = time.perf_counter()
    score_groups(groups, weights, g.threshold, block["models"])
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(row) for row in skimage_scores(groups, block["models"][0], weights))
    t_assess = time.perf_counter() - t0
    per = 1000.0 / n
    return {"candidates": n, "assess_quality": round(t_assess * per, 2), "variations": round(block["variations_s"] * per, 2),
            "generator_actor_call": round(block["actor_call_s"] * per, 2), "score_stage": round(t_score * per, 2)}


class TimedGeneratorActor:
    """synthgen.generate.GeneratorActor, unchanged, plus wall-clock timestamps of its construction
    (checkpoint load) and of every __call__, appended to a JSON-lines file per actor under log_dir.
    The real class is imported inside the actor process (the driver's module attribute is patched)."""

    log_dir = ""

    def __init__(self, checkpoints: dict, gpu: bool, precision: str, **options):
        t0 = time.time()
        import synthgen.generate as generate_module  # the real actor's class is unpickled before its __init__

        t_import = time.time()
        self.inner = generate_module.GeneratorActor(checkpoints, gpu, precision, **options)
        self.path = os.path.join(self.log_dir, f"actor-{os.getpid()}-{id(self)}.jsonl")
        self._log({"event": "init", "t0": t0, "t_import": t_import, "t1": time.time(), "threads": _torch_threads()})

    def _log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def __call__(self, batch: dict) -> dict:
        t0 = time.time()
        out = self.inner(batch)
        n = int(np.prod(batch["var_mask"].shape[:2]))
        self._log({"event": "call", "t0": t0, "t1": time.time(), "n": n, "peak_gpu_mb": _peak_gpu_mb(self.inner.device)})
        return out


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _peak_gpu_mb(device) -> float | None:
    """torch.cuda.max_memory_allocated of this process on `device` in MB, None off CUDA."""
    import torch
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_pipeline(cfg, log_dir: str) -> dict:
    """generate(cfg) with the generator actors timed (TimedGeneratorActor) and the arrival of every
    scored block at the driver's writer recorded; the Ray Data dataset is kept for its stats()."""
    import synthgen.generate as generate_module

    os.makedirs(log_dir, exist_ok=True)
    arrivals: list[tuple[float, int]] = []
    datasets = []
    base_writer, base_actor, base_build = (generate_module.DatasetWriter, generate_module.GeneratorActor,
                                           generate_module.build_pipeline)

    class TimedWriter(base_writer):
        def add(self, batch):
            super().add(batch)
            arrivals.append((time.time(), len(batch["id"])))

    def build(*a, **kw):
        ds = base_build(*a, **kw)
        datasets.append(ds)
        return ds

    # A class made for this run carries log_dir into the actor processes: cloudpickle sends a class
    # it cannot import by name by value, attributes included. An attribute set on the module's own
    # class would reach them only while this file runs as __main__ (gpu_check.py imports it).
    timed = type("TimedGeneratorActor", (TimedGeneratorActor,),
                 {"log_dir": log_dir, "__qualname__": "run_pipeline.<locals>.TimedGeneratorActor"})
    generate_module.DatasetWriter, generate_module.GeneratorActor = TimedWriter, timed
    generate_module.build_pipeline = build
    try:
        cpu0, self0, procs0 = machine_cpu(), self_cpu_s(), process_ticks()
        t0 = time.time()
        result = generate_module.generate(cfg)
        call_s = time.time() - t0
        cpu1, self1, procs1 = machine_cpu(), self_cpu_s(), process_ticks()
    finally:
        generate_module.DatasetWriter, generate_module.GeneratorActor = base_writer, base_actor
        generate_module.build_pipeline = base_build
    events = []
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name)) as f:
            events += [dict(json.loads(line), actor=name) for line in f if line.strip()]
    stats = None
    if datasets:
        try:
            stats = datasets[0].stats()
        except Exception as e:  # noqa: BLE001 - stats are a diagnostic only
            stats = f"(no stats: {e})"
    return {"result": result, "call_s": call_s, "start": t0, "arrivals": arrivals, "events": events,
            "stats": stats, "machine_cpu_busy": busy_between(cpu0, cpu1), "driver_cpu_s": round(self1 - self0, 2),
            "other_processes_cpu_s": foreign_cpu_s(procs0, procs1)}


def actor_timing(events: list[dict], start: float, end: float) -> dict:
    """From the actors' timestamps: when the first render began (start-up: actor process, imports,
    checkpoint load), the checkpoint load itself, the generator stage's steady rate (candidates over
    the span from its first render start to its last render end) and how busy the actors were."""
    inits = [e for e in events if e["event"] == "init"]
    calls = [e for e in events if e["event"] == "call"]
    out = {"actor_start_s": None, "actor_import_s": None, "actor_load_s": None, "steady_samples_per_s": None,
           "actor_busy": None, "actor_threads": sorted({e["threads"] for e in inits}) or None}
    if inits:
        out["actor_import_s"] = round(max(e["t_import"] - e["t0"] for e in inits), 2)
        out["actor_load_s"] = round(max(e["t1"] - e["t_import"] for e in inits), 2)
    if calls:
        first, last = min(e["t0"] for e in calls), max(e["t1"] for e in calls)
        out["actor_start_s"] = round(first - start, 2)
        n = sum(e["n"] for e in calls)
        if last > first:
            out["steady_samples_per_s"] = n / (last - first)
        actors = {e["actor"] for e in calls}
        busy = sum(e["t1"] - e["t0"] for e in calls)
        out["actor_busy"] = round(busy / (len(actors) * (end - start)), 3) if end > start else None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked, with --batch-size resolved (also how benchmarks/gpu_check.py gets
    its generate settings); --cpus stays None for 'all cores'."""
    from synthgen.config import GenerateConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_csv(int), default=[128, 256], help="model sizes in px (default 128,256)")
    p.add_argument("--variations", type=int, default=8, help="generate.num_variations (default 8)")
    p.add_argument("--actors", type=_csv(int), default=[1, 2, 4], help="actor counts to scale over (default 1,2,4)")
    p.add_argument("--scale-sizes", type=_csv(int), default=[128],
                   help="sizes at which every --actors count runs; other sizes run 1 actor (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="generate.batch_size (default: synthgen's, 4)")
    p.add_argument("--pairs", type=int, default=None, help="use only the first N sample pairs (default: all 6)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="generate.threshold (default 0: accept and write every candidate)")
    p.add_argument("--quick", action="store_true", help="smoke test: 128 px, 2 pairs, 2 variations, 1 and 2 actors")
    p.add_argument("--gpu", action="store_true", help="generate.gpu (one GPU per actor) and the baseline on CUDA")
    p.add_argument("--precision", default="fp32", help="generate.precision: fp32, bf16 or fp16 (GPU)")
    p.add_argument("--channels-last", action="store_true", help="generate.channels_last")
    p.add_argument("--compile", action="store_true", help="generate.compile (torch.compile in every actor)")
    p.add_argument("--max-batch", type=int, default=0, help="generate.max_batch (default 0: sized to the device)")
    p.add_argument("--scoring", default="auto", help="generate.scoring: auto, skimage or torch")
    p.add_argument("--cpus", type=int, default=None, help="CPUs given to the local Ray (default: all cores)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the small untimed generate() that first starts Ray's worker processes")
    p.add_argument("--data", default=None, help="folder with images/ and masks/ (default: the ISBI sample)")
    p.add_argument("--out-json", default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.scale_sizes, args.variations, args.actors = [128], [128], 2, [1, 2]
        args.pairs = args.pairs or 2
    if args.variations < 1 or any(a < 1 for a in args.actors) or (args.pairs is not None and args.pairs < 1):
        p.error("--variations, --actors and --pairs must be >= 1")
    if any(s < 16 or s % 16 for s in args.sizes):
        p.error("--sizes must be multiples of 16")
    if args.batch_size is None:
        args.batch_size = GenerateConfig().batch_size
    return args


def prepare_data(args, tmp_dir: str) -> tuple[str, str, str, list, int]:
    """(root, images, masks, pairs, channels) of --data or the ISBI sample, the first --pairs of it
    copied under tmp_dir when --pairs is given."""
    from synthgen.data import find_pairs, image_channels

    root = args.data or SAMPLE_TRAIN
    images, masks = subset_pairs(root, os.path.join(tmp_dir, "data"), args.pairs)
    pairs = find_pairs(images, masks)
    channels = image_channels(pairs)
    log(f"data: {len(pairs)} pairs from {os.path.dirname(images)}, {channels} channel(s), masks inverted")
    return root, images, masks, pairs, channels


def warm_up(args, root: str, checkpoint: str, tmp_dir: str) -> None:
    """A small untimed generate() (1 pair, 2 variations, 1 actor), with Ray already started."""
    # Task workers (variations, scorer) are reused across runs and import torch/scipy/skimage on
    # their first task; pay that once here so the first timed run is not penalised. Realism is off:
    # its C2ST needs sources from 2 or more images, and it runs in this process, warming nothing.
    w_images, w_masks = subset_pairs(root, os.path.join(tmp_dir, "warm"), 1)
    cfg = generate_config(args, checkpoint, os.path.join(tmp_dir, "out_warmup"), 1,
                          masks=w_masks, images=w_images, num_variations=2, realism=False)
    t0 = time.time()
    try:
        run_pipeline(cfg, os.path.join(tmp_dir, "actors_warmup"))
        log(f"warm-up generate() done in {time.time() - t0:.0f}s (untimed)")
    except Exception as e:  # noqa: BLE001 - the timed runs report their own errors
        log(f"warm-up generate() failed: {type(e).__name__}: {e}")
    shutil.rmtree(os.path.join(tmp_dir, "out_warmup"), ignore_errors=True)


def measure_run(args, size: int, actors: int, checkpoint: str, tmp_dir: str, baseline: float,
                tag: str = "") -> tuple[dict, dict | None]:
    """One timed generate() of `checkpoint` with `actors` fixed actors, Ray already started: (the
    result row, run_pipeline's record or None when it did not run). `baseline`: bare-forward
    samples/s for the efficiencies; `tag` prefixes the log lines."""
    import ray

    out = os.path.join(tmp_dir, f"out_{size}_{actors}")
    cfg = generate_config(args, checkpoint, out, actors)
    g = cfg.generate
    row = {"image_size": size, "actors": actors, "cpus_per_actor": None if args.gpu else round(g.cpus_per_actor, 4),
           "threads_per_actor": None if args.gpu else threads_for(g.cpus_per_actor),
           "samples": None, "pipeline_s": None, "samples_per_s": None,
           "bare_forward_samples_per_s": round(baseline, 3), "efficiency": None,
           "steady_samples_per_s": None, "steady_efficiency": None, "actor_start_s": None,
           "actor_import_s": None, "actor_load_s": None, "first_output_s": None, "actor_busy": None, "generate_call_s": None}
    total_gpus = ray.cluster_resources().get("GPU", 0)
    if args.gpu and actors > total_gpus:
        row["error"] = f"needs {actors} GPUs, Ray has {total_gpus:g}"
        log(f"{tag} {size}px x {actors} actor(s): skipped ({row['error']})")
        return row, None
    log(f"{tag} {size}px x {actors} actor(s) ({g.cpus_per_actor:.3g} CPU each), "
        f"{args.variations} variations, batch {g.batch_size} ...")
    try:
        r = run_pipeline(cfg, os.path.join(tmp_dir, f"actors_{size}_{actors}"))
    except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
        row["error"] = error_text(e)
        log(f"{tag}   FAILED: {row['error']}")
        shutil.rmtree(out, ignore_errors=True)
        return row, None
    res, arrivals = r["result"], r["arrivals"]
    timing = actor_timing(r["events"], r["start"], r["start"] + res.seconds)
    steady = timing.pop("steady_samples_per_s")
    threads_seen = timing.pop("actor_threads")
    row.update({
        "samples": res.generated, "accepted": res.accepted, "pipeline_s": round(res.seconds, 2),
        "samples_per_s": round(res.samples_per_s, 3),
        "efficiency": round(res.samples_per_s / baseline, 3),
        "steady_samples_per_s": round(steady, 3) if steady else None,
        "steady_efficiency": round(steady / baseline, 3) if steady else None,
        **timing,
        "first_output_s": round(arrivals[0][0] - r["start"], 2) if arrivals else None,
        "generate_call_s": round(r["call_s"], 2),
        "machine_cpu_busy": r["machine_cpu_busy"], "driver_cpu_s": r["driver_cpu_s"],
        "other_processes_cpu_s": r["other_processes_cpu_s"],
    })
    if threads_seen and not args.gpu and threads_seen != [row["threads_per_actor"]]:
        row["threads_per_actor"] = threads_seen if len(threads_seen) > 1 else threads_seen[0]
    log(f"{tag}   {res.generated} samples in {res.seconds:.1f}s: {res.samples_per_s:.2f} samples/s, "
        f"efficiency {row['efficiency']:.2f} (bare {baseline:.2f}); steady {steady or float('nan'):.2f} "
        f"samples/s; first render at {row['actor_start_s']}s (in the actor: imports {row['actor_import_s']}s, "
        f"checkpoint load {row['actor_load_s']}s), "
        f"first block written at {row['first_output_s']}s, actors busy {row['actor_busy']}; machine CPU busy "
        f"{row['machine_cpu_busy']}, driver CPU {row['driver_cpu_s']}s, other processes' CPU "
        f"{row['other_processes_cpu_s']}s")
    if r["stats"]:
        log(f"{tag}   Ray Data stats:\n{r['stats']}")
    shutil.rmtree(out, ignore_errors=True)
    return row, r


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_out = reserve_stdout()
    started = time.time()
    warnings.filterwarnings("ignore", category=UserWarning)

    import ray
    import torch

    if args.gpu and not torch.cuda.is_available():
        log("--gpu given but CUDA is not available here; running on CPU")
        args.gpu = False
    device = torch.cuda.get_device_name(0) if args.gpu else "cpu"
    args.cpus = args.cpus or os.cpu_count()

    tmp = tempfile.TemporaryDirectory(prefix="bench_generate_")
    root, images, masks, pairs, channels = prepare_data(args, tmp.name)

    checkpoints = {}
    for size in args.sizes:
        checkpoints[size] = make_checkpoint(os.path.join(tmp.name, f"model_{size}"), size, images, masks, channels)
    log(f"untrained pix2pix checkpoints (ngf=ndf=64) at {', '.join(map(str, args.sizes))} px")

    before = machine_cpu()
    time.sleep(2.0)
    idle_busy = busy_between(before, machine_cpu())  # before ray.init: all of it is other processes
    if idle_busy is not None and idle_busy > 0.1:
        log(f"WARNING: {100 * idle_busy:.0f}% of the CPUs are busy before the benchmark starts (other "
            "processes?); the numbers will be skewed")

    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    log(f"ray {ray.__version__} up with {args.cpus} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs; "
        f"device {device}")

    if not args.no_warmup:
        warm_up(args, root, checkpoints[args.sizes[0]], tmp.name)

    # Baselines and stage profiles: one per size, at the thread count of a 1-actor run.
    baseline, baseline_other, scorer_ms, stage_ms = {}, {}, {}, {}
    for size in args.sizes:
        cfg = generate_config(args, checkpoints[size], os.path.join(tmp.name, "unused"), 1)
        sources, _ = source_inputs(cfg)
        threads = threads_for(cfg.generate.cpus_per_actor)
        batch = args.batch_size * args.variations
        log(f"{size}px bare forward: {len(sources)} sources x {args.variations} = {len(sources) * args.variations} "
            f"samples, batch {batch}, {threads} thread(s), {'cuda' if args.gpu else 'cpu'} ...")
        procs0 = process_ticks()
        b = bare_forward(checkpoints[size], sources, args.variations, batch, threads, "cuda" if args.gpu else "cpu")
        baseline[size] = b["samples_per_s"]
        baseline_other[str(size)] = foreign_cpu_s(procs0, process_ticks())
        log(f"{size}px bare forward: {b['samples_per_s']:.2f} samples/s ({b['seconds']:.1f}s; other processes' "
            f"CPU meanwhile {baseline_other[str(size)]}s)")
        prof = stage_profile(cfg, sources, channels, threads)
        scorer_ms[str(size)] = prof["assess_quality"]
        stage_ms[str(size)] = prof
        log(f"{size}px per candidate (ms): assess_quality {prof['assess_quality']}, score stage "
            f"{prof['score_stage']}, variations {prof['variations']}, actor call {prof['generator_actor_call']}")

    runs = [(size, 1) for size in args.sizes]
    for size in args.scale_sizes:
        if size in args.sizes:
            runs += [(size, n) for n in args.actors if (size, n) not in runs]
    runs.sort()
    results = []
    for i, (size, actors) in enumerate(runs, 1):
        row, _ = measure_run(args, size, actors, checkpoints[size], tmp.name, baseline[size], f"[{i}/{len(runs)}]")
        results.append(row)

    ray.shutdown()
    tmp.cleanup()
    report = {"benchmark": "generate", "device": device, "torch": torch.__version__, "ray": ray.__version__,
              "cpus": args.cpus, "python": platform.python_version(), "model": "pix2pix ngf=ndf=64 (untrained)",
              "data": args.data or "isbi2012 sample", "pairs": len(pairs), "num_variations": args.variations,
              "batch_size": args.batch_size, "threshold": args.threshold, "idle_cpu_busy_before": idle_busy,
              "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
              "max_batch": args.max_batch, "scoring": args.scoring,
              "wall_s": round(time.time() - started, 1), "baseline_other_processes_cpu_s": baseline_other,
              "results": results,
              "scorer_ms_per_sample": scorer_ms, "stage_ms_per_sample": stage_ms}
    line = json.dumps(report)
    json_out.write(line + "\n")
    json_out.flush()
    if args.out_json:
        with open(args.out_json, "w") as f:
            f.write(line + "\n")
    log(f"done in {time.time() - started:.0f}s")
    return 1 if all(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
