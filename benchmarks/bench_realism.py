"""Realism of today's default generators against real ISBI 2012 test images (no downloaded weights).

    python benchmarks/bench_realism.py                    # pix2pix + VAE, 3 seeds, ~10 min on 2 cores
    python benchmarks/bench_realism.py --seeds 1 --steps 40   # smoke

Per seed, pix2pix (ngf/ndf --ngf) and the conditional VAE (nf --ngf) train in-process (steps.train_epoch,
no Ray) for --steps optimisation steps of batch --batch-size on the first --pairs ISBI train pairs at
--size px, then render every --size px tile of the ISBI test masks (VAE: one seeded z per tile). The
tiles are compared with the real test tiles by synthgen.realism.realism_report (texture figures per
region, spectrum distance, C2ST accuracy; tiles of one test slice on one side of the C2ST split).
Two references come with it: real vs real (train tiles vs test tiles) and real vs flat (each test
tile's regions painted with their means). Reports mean and std over seeds; one JSON line on stdout.
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
from synthgen.data import PairDataset, find_pairs, image_channels, load_image, load_mask, tiles  # noqa: E402
from synthgen.realism import realism_report  # noqa: E402
from synthgen.steps import build_state, render_seeded, seed_epoch, train_epoch  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "isbi2012_em"))
SAMPLE = os.path.normpath(os.path.join(HERE, "..", "synthgen", "sample_data", "isbi2012"))
log = make_log("bench_realism")


def tile_set(pairs, size: int, channels: int):
    """All size x size (image, mask, slice index) tiles of the pairs (membranes = foreground)."""
    out = []
    for n, p in enumerate(pairs):
        image, mask = load_image(p.image, channels), load_mask(p.mask, invert=True)
        out += [(t.image, t.mask, n) for t in tiles(p.stem, mask, image, size, p.image)]
    return out


def train(cfg: Config, pairs, channels: int, steps: int) -> dict:
    dataset = PairDataset(pairs, cfg.data.image_size, invert_mask=True, augment=True, repeats=cfg.data.repeats,
                          seed=cfg.train.seed, channels=channels)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    state, done, epoch = build_state(cfg, channels), 0, 0
    while done < steps:
        dataset.set_epoch(epoch)
        seed_epoch(cfg, epoch, 0)
        done += int(train_epoch(state, loader)["steps"])
        state.epoch = epoch = epoch + 1
    return state.nets


def report(reals, fakes, seed: int) -> dict:
    return realism_report([r[0] for r in reals], [r[1] for r in reals], [f[0] for f in fakes], [f[1] for f in fakes],
                          seed=seed, real_groups=[r[2] for r in reals], synth_groups=[f[2] for f in fakes])


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if k not in ("c2st_n_test",)]
    return {k: {"mean": round(float(np.nanmean([r[k] for r in runs])), 4),
                "std": round(float(np.nanstd([r[k] for r in runs])), 4)} for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else SAMPLE)
    ap.add_argument("--models", type=csv_list(str), default=["pix2pix", "vae"])
    ap.add_argument("--pairs", type=int, default=5, help="real training pairs")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the generators, e.g. pix2pix.noise_channels=4 (repeatable)")
    ap.add_argument("--no-references", action="store_true", help="skip the real/real and real/flat references")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train_pairs = find_pairs(os.path.join(args.data, "train", "images"), os.path.join(args.data, "train", "masks"))
    test_pairs = find_pairs(os.path.join(args.data, "test", "images"), os.path.join(args.data, "test", "masks"))
    channels = image_channels(train_pairs)
    real = tile_set(test_pairs, args.size, channels)
    log(f"{args.pairs} train pairs, {len(test_pairs)} test slices -> {len(real)} tiles of {args.size}px")

    other = tile_set(train_pairs[: args.pairs], args.size, channels)
    flat = [(np.where(m[:, :, None] == 1, im[m == 1].mean() if m.any() else 0, im[m == 0].mean() if (m == 0).any() else 0)
             .astype(np.uint8), m, n) for im, m, n in real]
    t0 = time.time()
    references = {} if args.no_references else {
        "real_vs_real": [report(real, other, s) for s in range(args.seeds)],
        "real_vs_flat": [report(real, flat, s) for s in range(args.seeds)]}
    if references:
            log(f"references in {time.time() - t0:.0f}s: c2st real/real "
            f"{np.mean([r['c2st_accuracy'] for r in references['real_vs_real']]):.3f}, real/flat "
            f"{np.mean([r['c2st_accuracy'] for r in references['real_vs_flat']]):.3f}")
    results = {name: summarise(runs) for name, runs in references.items()}

    masks = torch.from_numpy(np.stack([m for _, m, _ in real]).astype(np.float32)).unsqueeze(1)
    for model in args.models:
        runs = []
        for seed in range(args.seeds):
            cfg = Config()
            cfg.data.image_size = args.size
            cfg.data.repeats = max(1, -(-args.steps * args.batch_size // args.pairs))  # one epoch ~ the budget
            cfg.pix2pix.ngf = cfg.pix2pix.ndf = args.ngf
            cfg.vae.nf = args.ngf
            cfg.train.model, cfg.train.seed, cfg.train.batch_size = model, seed, args.batch_size
            for override in args.set:
                key, _, value = override.partition("=")
                cfg.set(key, value, source="--set")
            cfg.validate()
            t0 = time.time()
            nets = train(cfg, train_pairs[: args.pairs], channels, args.steps)
            fakes = np.concatenate([render_seeded(nets, masks[i:i + 16], np.arange(i, min(i + 16, len(masks))))
                                    for i in range(0, len(masks), 16)])
            runs.append(report(real, [(f, m, n) for f, (_, m, n) in zip(fakes, real)], seed))
            log(f"{model} seed {seed}: {time.time() - t0:.0f}s  c2st {runs[-1]['c2st_accuracy']:.3f}  "
                f"fg hf x{runs[-1]['fg/hf_ratio']:.3f}  spectrum {runs[-1]['spectrum_distance']:.3f}")
        results[model] = summarise(runs)
    print(json.dumps({"bench": "realism", "size": args.size, "steps": args.steps, "batch_size": args.batch_size,
                      "pairs": args.pairs, "ngf": args.ngf, "seeds": args.seeds, "test_tiles": len(real),
                      "threads": args.threads, "device": "cpu", "set": args.set, "results": results}))


if __name__ == "__main__":
    main()
