"""python benchmarks/gpu_check.py [--cpu-smoke] [--parts quality,train,generate] [--budget-s S]
                                 [--cpus-per-worker N] [--out-json FILE]

One call that checks synthgen on a GPU machine and measures what the README's GPU settings give, in
about 4-6 minutes. A part, or a training configuration, that would start after its share of
--budget-s (default 400 s) is skipped, and one already started runs on for at most about a minute,
so the whole check ends within about 8 minutes. Three parts, each timed and wrapped so that one
failing part does not lose the others:

- quality: one block of real candidates (24 ISBI tiles x 8 variations at 256 px, rendered by an
  untrained default-width pix2pix in a GeneratorActor built as the pipeline builds it) scored by
  synthgen.quality_torch on the GPU (the actor's own scoring path) and by scikit-image
  (synthgen.quality.assess_quality, as the CPU score tasks call it): the largest absolute difference
  per metric, on the generated images and on real images, and ms per candidate of each;
- train: pix2pix and VAE (default widths) images/s at 256 px, batch 16, one Ray Train worker with one
  GPU, 3 warm-up + 20 timed steps, for fp32, bf16 and bf16+channels_last (benchmarks/bench_train.py);
- generate: the Ray Data pipeline end to end at 256 px with the README's GPU settings (bf16,
  channels_last, scoring on the GPU in the actor), 24 tiles x 64 variations, one actor, after an
  untimed warm-up run (benchmarks/bench_generate.py), against the bare generator forward pass with
  the same precision and layout; with the card's utilisation sampled during the run.

Every part reports its peak GPU memory (torch.cuda.max_memory_allocated in the process that did the
work: this one for the scoring, the Ray Train worker, the generator actor) and its wall time; the
header the card's name, torch, CUDA, cuDNN and driver versions. GPU utilisation comes from torch.cuda.utilization
(needs pynvml, i.e. nvidia-ml-py) or else `nvidia-smi`, sampled every 0.5 s over a part (start-up
included), the busiest card per sample; null with a reason when neither can be read.

Without a GPU it prints one line saying why to stderr and {"gpu": false, "reason": ...} to stdout,
and exits 0. --cpu-smoke runs the same code on CPU at 64 px with 1-2 steps and a handful of
candidates, to test the script itself (5-9 minutes on 2 shared cores; the figures mean nothing).

Progress goes to stderr; stdout gets exactly one JSON line:
    {"benchmark": "gpu_check", "gpu": true, "cpu_smoke": false, "device": "<card>", "torch", "cuda",
     "cudnn", "driver", "ray", "cpus", "gpus", "image_size": 256, "wall_s",
     "quality": {"max_abs_diff": ..., "max_abs_diff_by_metric": {...}, "torch_ms_per_sample",
                 "skimage_ms_per_sample", "peak_gpu_mem_mb", ...},
     "train": {"images_per_s": {"pix2pix": {"fp32", "bf16", "bf16+channels_last"}, "vae": {...}},
               "peak_gpu_mem_mb": {...}, "results": [bench_train rows], "gpu_util", ...},
     "generate": {"samples_per_s", "steady_samples_per_s", "bare_forward_samples_per_s",
                  "peak_gpu_mem_mb", "gpu_util", "run": bench_generate row, ...},
     "errors": {part: message}}
Exit status: 0, or 1 when a part failed or was skipped for time (its "error" says which).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

import bench_generate
import bench_train
from common import csv_list, error_text, make_log, reserve_stdout

log = make_log("gpu_check")

PARTS = ("quality", "train", "generate")
TRAIN_VARIANTS = ("fp32", "bf16", "bf16+channels_last")
BUDGET_SHARE = {"quality": 0.15, "train": 0.5, "generate": 0.35}
"""Each part's share of --budget-s. A train configuration or the timed generate run that would
start after its part's share is spent is skipped (reported as an error), so a slow machine ends
in time with what it measured instead of running on."""
SCORE_TOLERANCE = 1e-3
"""The agreement generate.scoring 'torch' promises with scikit-image (config.py, tests)."""

# A fixed amount of work per part, not a time limit inside it: figures from a run that stopped
# early would not compare with the next run's. The GPU sizes fit the budget on one H100-class card
# (train: 6 Ray Train start-ups of ~15-25 s dominate; generate: 1536 candidates plus two actor
# start-ups); the smoke sizes only exercise the code. Generation and scoring use the 6 ISBI sample
# pairs (24 tiles at 256 px), or with synthetic_pairs that many blob pairs of the model's size (one
# tile each; realism needs 2 or more source images).
SETTINGS = {
    "gpu": {"size": 256, "train_batch": 16, "train_warmup": 3, "train_steps": 20, "synthetic_pairs": 0,
            "gen_variations": 64, "gen_batch": 4, "quality_sources": 24, "quality_variations": 8,
            "budget_s": 400},
    "cpu-smoke": {"size": 64, "train_batch": 1, "train_warmup": 1, "train_steps": 1, "synthetic_pairs": 2,
                  "gen_variations": 2, "gen_batch": 2, "quality_sources": 2, "quality_variations": 2,
                  "budget_s": 1200},
}


def no_gpu_reason() -> str | None:
    """Why this torch cannot use a CUDA GPU here, or None when it can."""
    import torch

    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build: install the CUDA wheel (README, "
                "'GPU install')")
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no GPU "
                f"(no driver, or CUDA_VISIBLE_DEVICES hides the cards; device_count "
                f"{torch.cuda.device_count()})")
    return None


def nvidia_smi(field: str) -> list[str]:
    """One value per card of `nvidia-smi --query-gpu=<field>`; raises when it cannot be read."""
    out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    values = [v.strip() for v in out.splitlines() if v.strip()]
    if not values:
        raise RuntimeError(f"nvidia-smi printed no {field}")
    return values


class GpuUtilSampler:
    """The busiest card's utilisation (%), sampled every `interval` s in a thread while in the
    with-block. The work runs in other processes (Ray Train workers, generator actors) on whichever
    card Ray gives them, so this reads the device-wide figure of every visible card."""

    def __init__(self, enabled: bool, interval: float = 0.5):
        self.enabled, self.interval = enabled, interval
        self.values: list[float] = []
        self.source: str | None = None  # which reader worked; later samples use only that one
        self._torch_error = ""
        self.reason = None if enabled else "no GPU"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float:
        import torch

        if self.source != "nvidia-smi":
            try:
                value = max(float(torch.cuda.utilization(i)) for i in range(torch.cuda.device_count()))
                self.source = "torch.cuda.utilization"
                return value
            except Exception as e:  # noqa: BLE001 - pynvml missing or NVML unusable: try nvidia-smi
                if self.source is not None:
                    raise
                self._torch_error = error_text(e)
        try:
            value = max(float(v) for v in nvidia_smi("utilization.gpu"))
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"torch.cuda.utilization: {self._torch_error}; nvidia-smi: {error_text(e)}") from None
        self.source = "nvidia-smi"
        return value

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.values.append(self._read())
            except Exception as e:  # noqa: BLE001 - utilisation is optional: report why, stop sampling
                self.reason = str(e)[:300]
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="gpu-util", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def summary(self) -> dict:
        if not self.values:
            return {"mean_pct": None, "max_pct": None, "samples": 0, "source": self.source,
                    "reason": self.reason or "no sample taken"}
        return {"mean_pct": round(float(np.mean(self.values)), 1), "max_pct": max(self.values),
                "samples": len(self.values), "source": self.source}


def versions(gpu: bool) -> dict:
    """What the results were measured with: the card, torch, CUDA, cuDNN, driver, Ray, Python."""
    import ray
    import torch

    out = {"device": torch.cuda.get_device_name(0) if gpu else "cpu",
           "gpus": torch.cuda.device_count() if gpu else 0, "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if gpu else None, "driver": None, "ray": ray.__version__,
           "python": platform.python_version(), "cpus": os.cpu_count()}
    if gpu:
        try:
            out["driver"] = nvidia_smi("driver_version")[0]
        except Exception:  # noqa: BLE001 - informational only
            pass
    return out


def reset_peak(gpu: bool) -> None:
    if gpu:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(gpu: bool) -> float | None:
    if not gpu:
        return None
    import torch
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


# ---------------------------------------------------------------- quality_torch against scikit-image
def score_parity(actor, groups: dict, name: str, weights: dict[str, float], gpu: bool) -> dict:
    """Score the images in groups[f"generated_{name}"] both ways: the actor's batched torch scoring
    on its device (GeneratorActor._score, what generate.scoring 'torch' runs) and scikit-image
    (bench_generate.skimage_scores, what the CPU score tasks run); max |difference| per metric."""
    images = groups[f"generated_{name}"]
    b, n = images.shape[:2]
    reset_peak(gpu)
    t0 = time.perf_counter()
    actor._score(groups, name, images.reshape(b * n, *images.shape[2:]))  # returns numpy: synchronised
    t_torch = time.perf_counter() - t0
    gpu_mb = peak_mb(gpu)
    t0 = time.perf_counter()
    reference = bench_generate.skimage_scores(groups, name, weights)
    t_skimage = time.perf_counter() - t0
    diffs: dict[str, float] = {}
    for gi, row in enumerate(reference):
        for v, scores in enumerate(row):
            for metric, want in scores.items():  # no ssim where a source has no real image
                got = float(groups[f"q_{metric}_{name}"][gi][v])
                diffs[metric] = max(diffs.get(metric, 0.0), abs(got - want))
    return {"candidates": b * n, "max_abs_diff_by_metric": diffs, "torch_s": t_torch, "skimage_s": t_skimage,
            "peak_gpu_mem_mb": gpu_mb}


def quality_part(gen_args, checkpoint: str, channels: int, s: dict, gpu: bool, tmp_dir: str) -> dict:
    """quality_torch on the device against scikit-image on one rendered block: the untrained
    generator's candidates, and real images (each variation scored with its sibling's aligned real
    image, so ssim is not trivially 1)."""
    from synthgen.quality import parse_weights

    cfg = bench_generate.generate_config(gen_args, checkpoint, os.path.join(tmp_dir, "unused"), 1,
                                         num_variations=s["quality_variations"], batch_size=s["quality_sources"])
    sources, _ = bench_generate.source_inputs(cfg)
    block = bench_generate.render_block(cfg, sources, channels, threads=max(1, (os.cpu_count() or 2) - 1))
    groups, actor, name = block["groups"], block["actor"], block["models"][0]
    weights = parse_weights(cfg.generate.weights)
    sets = {"generated": score_parity(actor, groups, name, weights, gpu)}
    real = dict(groups, **{f"generated_{name}": np.ascontiguousarray(np.roll(groups["ref_image"], 1, axis=1))})
    sets["real"] = score_parity(actor, real, name, weights, gpu)
    by_metric = {m: max(r["max_abs_diff_by_metric"].get(m, 0.0) for r in sets.values())
                 for m in sets["generated"]["max_abs_diff_by_metric"]}
    worst = max(by_metric.values())
    candidates = sum(r["candidates"] for r in sets.values())
    mems = [r["peak_gpu_mem_mb"] for r in sets.values() if r["peak_gpu_mem_mb"] is not None]
    out = {"device": str(actor.device), "image_size": s["size"], "candidates": candidates,
           "max_abs_diff": worst, "max_abs_diff_by_metric": by_metric, "tolerance": SCORE_TOLERANCE,
           "agree": worst <= SCORE_TOLERANCE,
           "torch_ms_per_sample": round(1000 * sum(r["torch_s"] for r in sets.values()) / candidates, 3),
           "skimage_ms_per_sample": round(1000 * sum(r["skimage_s"] for r in sets.values()) / candidates, 3),
           "peak_gpu_mem_mb": max(mems) if mems else None,
           "sets": {k: {"candidates": r["candidates"], "max_abs_diff_by_metric": r["max_abs_diff_by_metric"]}
                    for k, r in sets.items()}}
    log(f"quality: {candidates} candidates, max |torch - skimage| {worst:.2e} "
        f"({'within' if out['agree'] else 'OUTSIDE'} {SCORE_TOLERANCE:g}); torch on {actor.device} "
        f"{out['torch_ms_per_sample']} ms/candidate, scikit-image {out['skimage_ms_per_sample']} ms/candidate")
    return out


# ---------------------------------------------------------------- training throughput
def train_part(args, s: dict, gpu: bool, tmp_dir: str, deadline: float) -> dict:
    """bench_train's grid for pix2pix and VAE at one size, batch and worker, over TRAIN_VARIANTS."""
    targs = bench_train.parse_args(
        ["--models", "pix2pix,vae", "--sizes", str(s["size"]), "--batches", str(s["train_batch"]), "--workers", "1",
         "--steps", str(s["train_steps"]), "--warmup", str(s["train_warmup"]), "--variants", ",".join(TRAIN_VARIANTS),
         "--cpus-per-worker", str(args.cpus_per_worker)] + (["--gpu"] if gpu else []))
    pairs, channels = bench_train.load_pairs(targs, tmp_dir)
    with GpuUtilSampler(gpu) as util:
        rows, threads = bench_train.run_grid(targs, pairs, channels, os.path.join(tmp_dir, "train_runs"), deadline)
    table = {m: {r["variant"]: r["images_per_s"] for r in rows if r["model"] == m} for m in targs.models}
    out = {"image_size": s["size"], "batch": s["train_batch"], "workers": 1, "warmup_steps": s["train_warmup"],
           "timed_steps": s["train_steps"], "cpus_per_worker": args.cpus_per_worker,
           "torch_threads_per_worker": sorted(threads),
           "images_per_s": table,
           "speedup_vs_fp32": {m: {v: round(x / t["fp32"], 3) for v, x in t.items() if x and t.get("fp32")}
                               for m, t in table.items()},
           "peak_gpu_mem_mb": {m: {r["variant"]: r.get("peak_gpu_mem_mb") for r in rows if r["model"] == m}
                               for m in targs.models},
           "gpu_util": util.summary(), "results": rows}
    failed = [f"{r['model']} {r['variant']}: {r['error']}" for r in rows if r.get("error")]
    if failed:
        out["error"] = "; ".join(failed)[:1000]
    return out


# ---------------------------------------------------------------- generate pipeline end to end
def generate_part(gen_args, root: str, checkpoint: str, sources, s: dict, gpu: bool, tmp_dir: str,
                  deadline: float) -> dict:
    """bench_generate's warm-up and one timed 1-actor run, with the card's utilisation sampled."""
    bench_generate.warm_up(gen_args, root, checkpoint, tmp_dir)
    batch = gen_args.batch_size * gen_args.variations
    bare = bench_generate.bare_forward(checkpoint, sources, gen_args.variations, batch, 1, "cuda" if gpu else "cpu",
                                       gen_args.precision, gen_args.channels_last)
    log(f"generate: bare forward ({gen_args.precision}, channels_last {gen_args.channels_last}) "
        f"{bare['samples_per_s']:.1f} samples/s")
    out = {"image_size": s["size"], "actors": 1, "num_variations": gen_args.variations,
           "batch_size": gen_args.batch_size, "precision": gen_args.precision,
           "channels_last": gen_args.channels_last, "scoring": gen_args.scoring,
           "bare_forward_samples_per_s": round(bare["samples_per_s"], 3)}
    if time.time() > deadline:
        return {**out, "error": "skipped: time budget spent before the timed run"}
    with GpuUtilSampler(gpu) as util:
        row, record = bench_generate.measure_run(gen_args, s["size"], 1, checkpoint, tmp_dir, bare["samples_per_s"],
                                                 "[generate]")
    peaks = [e["peak_gpu_mb"] for e in (record or {}).get("events", [])
             if e["event"] == "call" and e.get("peak_gpu_mb") is not None]
    out.update({"samples": row["samples"], "pipeline_s": row["pipeline_s"], "samples_per_s": row["samples_per_s"],
                "steady_samples_per_s": row["steady_samples_per_s"], "efficiency": row["efficiency"],
                "peak_gpu_mem_mb": round(max(peaks), 1) if peaks else None, "gpu_util": util.summary(), "run": row})
    if row.get("error"):
        out["error"] = row["error"]
    return out


# ---------------------------------------------------------------- driver
def synthetic_data(tmp_dir: str, s: dict) -> str:
    """A folder of s["synthetic_pairs"] blob pairs at the model's size (bench_train's), for the smoke run."""
    root = os.path.join(tmp_dir, "synthetic")
    bench_train.write_synthetic_pairs(root, n=s["synthetic_pairs"], size=s["size"])
    return root


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every part on CPU at 64 px, 1-2 steps: tests the script, the figures mean nothing")
    p.add_argument("--parts", type=csv_list(str), default=list(PARTS), help=f"comma list of {', '.join(PARTS)} (default all)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all parts together, shared out by BUDGET_SHARE (default 400; 1200 with --cpu-smoke)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs per Ray Train worker, i.e. its torch threads and data loading (default 1, synthgen's)")
    p.add_argument("--out-json", default=None, help="also write the JSON line to this file")
    args = p.parse_args(argv)
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)} ({', '.join(PARTS)})")
    return args


def emit(json_out, report: dict, out_json: str | None) -> None:
    line = json.dumps(report)
    json_out.write(line + "\n")
    json_out.flush()
    if out_json:
        with open(out_json, "w") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_out = reserve_stdout()
    started = time.time()
    warnings.filterwarnings("ignore", category=UserWarning)

    import torch

    reason = no_gpu_reason()
    if reason and not args.cpu_smoke:
        log(f"no GPU: {reason}. Nothing measured; --cpu-smoke runs the check on CPU at toy sizes.")
        emit(json_out, {"benchmark": "gpu_check", "gpu": False, "reason": reason, "torch": torch.__version__,
                        "cuda": torch.version.cuda}, args.out_json)
        return 0
    gpu = not args.cpu_smoke
    s = SETTINGS["cpu-smoke" if args.cpu_smoke else "gpu"]
    budget = args.budget_s or s["budget_s"]
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count() if gpu else 0
    report = {"benchmark": "gpu_check", "gpu": gpu, "cpu_smoke": args.cpu_smoke, **versions(gpu),
              "image_size": s["size"], "budget_s": budget, "parts": args.parts}
    log(f"{report['device']}, torch {report['torch']} (CUDA {report['cuda']}), {cpus} CPUs; parts "
        f"{', '.join(args.parts)} in at most ~{budget:.0f}s")

    import ray

    tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
    errors: dict[str, str] = {}
    # Explicit resources: Ray then schedules the Train worker and the generator actor onto the real
    # card(s), and the 0.5-CPU actor leaves CPUs for the variation and score tasks (an actor pool
    # that reserves every CPU starves them). The quality part runs in this process: no Ray for it.
    if {"train", "generate"} & set(args.parts):
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        gen_args = bench_generate.parse_args(
            ["--sizes", str(s["size"]), "--actors", "1", "--scale-sizes", str(s["size"]),
             "--variations", str(s["gen_variations"]), "--batch-size", str(s["gen_batch"]),
             "--precision", "bf16", "--channels-last", "--scoring", "torch"]
            + (["--data", synthetic_data(tmp.name, s)] if s["synthetic_pairs"] else []) + (["--gpu"] if gpu else []))
        gen_args.cpus = cpus
        root, images, masks, _, channels = bench_generate.prepare_data(gen_args, tmp.name)
        checkpoint = bench_generate.make_checkpoint(os.path.join(tmp.name, "model"), s["size"], images, masks, channels)
        sources, _ = bench_generate.source_inputs(
            bench_generate.generate_config(gen_args, checkpoint, os.path.join(tmp.name, "unused"), 1))
        parts = {
            "quality": lambda deadline: quality_part(gen_args, checkpoint, channels, s, gpu, tmp.name),
            "train": lambda deadline: train_part(args, s, gpu, tmp.name, deadline),
            "generate": lambda deadline: generate_part(gen_args, root, checkpoint, sources, s, gpu, tmp.name, deadline),
        }
        end = started + budget
        for name in [p for p in PARTS if p in args.parts]:
            t0 = time.time()
            if t0 > end:
                report[name], errors[name] = None, "skipped: time budget spent"
                log(f"{name}: skipped, the time budget is spent")
                continue
            log(f"{name} ...")
            try:
                report[name] = parts[name](min(end, t0 + BUDGET_SHARE[name] * budget))
                report[name]["wall_s"] = round(time.time() - t0, 1)
                if report[name].get("error"):
                    errors[name] = report[name]["error"]
            except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
                report[name], errors[name] = {"error": error_text(e)}, error_text(e)
                log(f"{name}: FAILED: {errors[name]}")
            log(f"{name} done in {time.time() - t0:.0f}s")
            if gpu:
                torch.cuda.empty_cache()  # the next part's processes size their batches from free memory
    finally:
        ray.shutdown()
        tmp.cleanup()
    report["errors"] = errors
    report["wall_s"] = round(time.time() - started, 1)
    emit(json_out, report, args.out_json)
    log(f"done in {report['wall_s']:.0f}s" + (f"; problems in: {', '.join(errors)}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
