"""Search benchmark on the real ISBI 2012 data: does the tuned config beat the default on fresh seeds?

    python benchmarks/bench_search.py                         # 12 trials at 64 px, ~15-25 min on 2 CPU cores
    python benchmarks/bench_search.py --trials 4 --epochs 2   # smoke

Runs `synthgen.search.run_search` (Optuna TPE + ASHA) with k real training pairs (the first
--pairs of ../shared/data/isbi2012_em/train, or the shipped sample) and the objective measured on
held-out pairs (the first --val of test/). The best trial of a search is its luckiest one too, so the
script then retrains the best and the default config with --reseeds other seeds, without ASHA, and
reports the objective of both: the honest comparison. Prints progress to stderr and one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import make_log  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "isbi2012_em"))
SAMPLE = os.path.normpath(os.path.join(HERE, "..", "synthgen", "sample_data", "isbi2012"))
log = make_log("bench_search")


def subset(src: str, n: int, dst: str) -> tuple[str, str]:
    """Copy the first n pairs (by name) of src/{images,masks} into dst."""
    for kind in ("images", "masks"):
        os.makedirs(os.path.join(dst, kind), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(src, kind)))[:n]:
            shutil.copy(os.path.join(src, kind, name), os.path.join(dst, kind, name))
    return os.path.join(dst, "images"), os.path.join(dst, "masks")


def retrain(cfg, data, spec: dict) -> float:
    """Train `cfg` in this process (the trial loop, no Ray) and return the last epoch's objective."""
    import torch

    from synthgen.train import loop_config, run_training

    history: list[dict] = []
    config = loop_config(cfg, data.train, [], data.channels, spec)
    run_training(config, 0, 1, torch.device("cpu"), None, lambda metrics, _ckpt: history.append(metrics))
    return float(history[-1][cfg.tune.objective])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else SAMPLE,
                   help="ISBI folder with train/ and test/ (images, masks)")
    p.add_argument("--out", default="runs/bench_search")
    p.add_argument("--model", default="pix2pix", choices=["pix2pix", "vae", "hybrid"])
    p.add_argument("--objective", default="val_ssim")
    p.add_argument("--pairs", type=int, default=5, help="real training pairs")
    p.add_argument("--val", type=int, default=2, help="held-out validation pairs")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--reseeds", type=int, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    args = p.parse_args()

    import ray

    from synthgen.config import Config
    from synthgen.search import apply_params, objective_spec, run_search, search_data

    t0 = time.time()
    work = tempfile.mkdtemp(prefix="bench_search_")
    images, masks = subset(os.path.join(args.data, "train"), args.pairs, os.path.join(work, "train"))
    val_images, val_masks = subset(os.path.join(args.data, "test"), args.val, os.path.join(work, "val"))
    cfg = Config.from_dict({
        "data": {"images": images, "masks": masks, "image_size": args.image_size, "invert_mask": True,
                 "repeats": args.repeats, "val_pairs": 0, "min_pairs": 1},
        "pix2pix": {"ngf": args.ngf, "ndf": args.ngf}, "vae": {"nf": max(4, args.ngf // 2)},
        "train": {"epochs": args.epochs, "batch_size": 4, "cpus_per_worker": 1, "checkpoint_every": args.epochs},
        "tune": {"model": args.model, "out": args.out, "trials": args.trials, "objective": args.objective,
                 "val_images": val_images, "val_masks": val_masks}})
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        result = run_search(cfg, overwrite=True)
    ray.shutdown()

    base = Config.from_yaml(os.path.join(result.out, "config.yaml"))
    if base.tune.model != "hybrid":
        base.train.model = base.tune.model or base.train.model
    best = Config.from_yaml(result.best_configs["config"])
    data = search_data(base)
    spec = objective_spec(base, data, result.out)
    reseeded = {"best": [], "default": []}
    for seed in range(1, args.reseeds + 1):
        for name, c in (("default", base), ("best", best)):
            c = apply_params(c, {"train.seed": seed})
            with contextlib.redirect_stdout(sys.stderr):
                reseeded[name].append(retrain(c, data, spec))
            log(f"seed {seed} {name}: {args.objective} {reseeded[name][-1]:.4f}")
    with open(os.path.join(result.out, "summary.json")) as f:
        summary = json.load(f)
    print(json.dumps({"benchmark": "search", "data": args.data, "model": args.model, "objective": args.objective,
                      "pairs": args.pairs, "val_pairs": args.val, "image_size": args.image_size,
                      "trials": args.trials, "epochs": args.epochs, "search": summary, "reseeded": reseeded,
                      "wall_s": round(time.time() - t0, 1)}, default=str))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
