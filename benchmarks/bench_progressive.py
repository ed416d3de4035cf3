"""Progressive training vs training at full size from the start, on the real ISBI 2012 data.

    python benchmarks/bench_progressive.py                               # pix2pix + VAE, 2 seeds, ~15 min on 2 cores
    python benchmarks/bench_progressive.py --models vae --epochs 3 --seeds 1   # smoke

Both runs get the same seeds, data, batch size and number of optimisation steps (epochs x steps per
epoch); the progressive one spends its first epochs at lower resolutions (--resolutions, epochs split
evenly, --fade-in-epochs per new resolution). After every epoch both are validated at the full
resolution on held-out pairs (val SSIM / L1 of centre crops, as `synthgen train` reports), and the
training time so far is recorded. Reported per model: mean final val SSIM and training seconds, the
seconds the progressive run needed to reach the direct run's final SSIM, and the epochs where val SSIM
fell by more than 0.005 (a stability count). In-process (steps.train_epoch), no Ray: the comparison is
of schedules, not of workers. Prints progress to stderr and one JSON line; --plot writes the curves.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import csv_list, make_log  # noqa: E402

from synthgen.config import Config  # noqa: E402
from synthgen.data import PairDataset, find_pairs, image_channels  # noqa: E402
from synthgen.steps import build_state, seed_epoch, train_epoch, validate  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "isbi2012_em"))
SAMPLE = os.path.normpath(os.path.join(HERE, "..", "synthgen", "sample_data", "isbi2012"))
log = make_log("bench_progressive")


def run(cfg: Config, train_pairs, val_batch, channels: int) -> list[dict]:
    """Train per cfg; after each epoch: cumulative training seconds and full-size validation."""
    dataset = PairDataset(train_pairs, cfg.data.image_size, invert_mask=True, augment=True,
                          repeats=cfg.data.repeats, seed=cfg.train.seed, channels=channels)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    state = build_state(cfg, channels)
    seconds, curve = 0.0, []
    for epoch in range(cfg.train.epochs):
        dataset.set_epoch(epoch)
        seed_epoch(cfg, epoch, 0)
        t0 = time.perf_counter()
        metrics = train_epoch(state, loader)
        seconds += time.perf_counter() - t0
        state.epoch += 1
        val = validate(state, val_batch)
        curve.append({"epoch": epoch + 1, "resolution": int(metrics["resolution"]), "alpha": metrics["fade_alpha"],
                      "train_s": round(seconds, 2), "val_ssim": round(val["val/ssim"], 4),
                      "val_l1": round(val["val/l1"], 4), "steps": int(metrics["steps"])})
        log(f"  epoch {epoch + 1} @{curve[-1]['resolution']}px  val_ssim {curve[-1]['val_ssim']:.4f}  "
            f"{seconds:.1f}s")
    return curve


def drops(curve: list[dict], tol: float = 0.005) -> int:
    return sum(b["val_ssim"] < a["val_ssim"] - tol for a, b in zip(curve, curve[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else SAMPLE)
    ap.add_argument("--models", type=csv_list(str), default=["pix2pix", "vae"])
    ap.add_argument("--pairs", type=int, default=5, help="real training pairs")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--resolutions", default="64,128,256")
    ap.add_argument("--fade-in-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--plot", default="", help="write the val-SSIM-vs-seconds curves to this PNG")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train_pairs = find_pairs(os.path.join(args.data, "train", "images"), os.path.join(args.data, "train", "masks"))
    val_pairs = find_pairs(os.path.join(args.data, "test", "images"), os.path.join(args.data, "test", "masks"))
    channels = image_channels(train_pairs)
    val_ds = PairDataset(val_pairs, args.size, invert_mask=True, augment=False, channels=channels)
    val_batch = {k: torch.stack([val_ds[i][k] for i in range(len(val_ds))]) for k in ("image", "mask")}
    log(f"{args.pairs} train pairs, {len(val_pairs)} val pairs from {args.data}, {args.size}px")

    results: dict = {}
    for model in args.models:
        curves: dict[str, list] = {"direct": [], "progressive": []}
        for seed in range(args.seeds):
            for mode in curves:
                cfg = Config()
                cfg.data.image_size, cfg.data.repeats = args.size, args.repeats
                cfg.pix2pix.ngf = args.ngf
                cfg.train.model, cfg.train.epochs, cfg.train.seed = model, args.epochs, seed
                cfg.train.batch_size = args.batch_size
                if mode == "progressive":
                    cfg.train.resolutions, cfg.train.fade_in_epochs = args.resolutions, args.fade_in_epochs
                cfg.validate()
                log(f"{model} {mode} seed {seed}")
                curves[mode].append(run(cfg, train_pairs[: args.pairs], val_batch, channels))
        direct_final = [c[-1]["val_ssim"] for c in curves["direct"]]
        reach = []
        for target, curve in zip(direct_final, curves["progressive"]):
            hit = next((p["train_s"] for p in curve if p["val_ssim"] >= target), None)
            reach.append(hit)
        results[model] = {
            mode: {"final_val_ssim": round(float(np.mean([c[-1]["val_ssim"] for c in cs])), 4),
                   "final_val_ssim_per_seed": [c[-1]["val_ssim"] for c in cs],
                   "best_val_ssim": round(float(np.mean([max(p["val_ssim"] for p in c) for c in cs])), 4),
                   "final_val_l1": round(float(np.mean([c[-1]["val_l1"] for c in cs])), 4),
                   "train_s": round(float(np.mean([c[-1]["train_s"] for c in cs])), 1),
                   "steps": sum(p["steps"] for p in cs[0]),
                   "val_drops": [drops(c) for c in cs]}
            for mode, cs in curves.items()}
        results[model]["progressive"]["s_to_reach_direct_final"] = reach
        results[model]["curves"] = curves
    if args.plot:
        plot(results, args.plot)
    summary = {k: {m: v for m, v in r.items() if m != "curves"} for k, r in results.items()}
    print(json.dumps({"bench": "progressive", "size": args.size, "resolutions": args.resolutions,
                      "epochs": args.epochs, "pairs": args.pairs, "seeds": args.seeds, "ngf": args.ngf,
                      "threads": args.threads, "device": "cpu", "results": summary}))


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, (model, r) in zip(axes[0], results.items()):
        for mode, color in (("direct", "tab:blue"), ("progressive", "tab:orange")):
            for i, curve in enumerate(r["curves"][mode]):
                ax.plot([p["train_s"] for p in curve], [p["val_ssim"] for p in curve], color=color, marker="o",
                        markersize=3, label=mode if i == 0 else None)
        ax.set_title(model)
        ax.set_xlabel("training seconds")
        ax.set_ylabel("val SSIM (full size)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
