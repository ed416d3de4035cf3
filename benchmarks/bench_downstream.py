"""Downstream benchmark on the real ISBI 2012 data: does synthetic data improve a segmenter?

    python benchmarks/bench_downstream.py                      # full table, ~40-60 min on 2 CPU cores
    python benchmarks/bench_downstream.py --k 3 --seeds 1 --seg-steps 100 --gen-steps 100   # smoke

Trains segmenters on k = 3, 5, 10 real pairs from ../shared/data/isbi2012_em/train (membranes as
foreground) under the conditions real / classic / pix2pix / vae / hybrid (and diffusion when asked
for), plus all 24 real pairs as the upper reference, and scores them on the 6 held-out pairs in test/ (see synthgen/evaluate.py).
Budgets (per segmenter 400 steps of batch 8 at 128 px; per generator 400 steps of batch 4) were
sized so the whole table ran within an hour on 2 CPU cores under --mixing replace; the default 'add'
doubles the batch of the synthetic conditions (about 1.5x the segmenter time in all). Every segmenter is
scored every --curve-every steps: the JSON line's "plateau" says per condition whether it still rose at
the end (measured: real-only k=5 plateaus near step 500 of a 1500-step run, README).
    python benchmarks/bench_downstream.py --k 5 --conditions real,classic,pix2pix --thresholds 0,0.5   # filter ablation
    python benchmarks/bench_downstream.py --k 5 --conditions pix2pix --variations affine,elastic,flip \
        --set variations.affine_degrees=15 --set variations.affine_scale=0.2   # mild geometry only

Prints progress to stderr and one JSON line (the summary table and timings) to stdout; results.md/json/png land in --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from synthgen.config import MIXING_MODES, EvaluateConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "isbi2012_em"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="ISBI folder with train/ and test/ (images, masks)")
    p.add_argument("--out", default="runs/bench_downstream")
    p.add_argument("--k", default="3,5,10")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seg-steps", type=int, default=400)
    p.add_argument("--gen-steps", type=int, default=400)
    p.add_argument("--num-variations", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--gen-set", default="", help='evaluate.gen_set, e.g. "pix2pix.noise_channels=4,pix2pix.lambda_l1=10"')
    p.add_argument("--mixing", default=EvaluateConfig.mixing, choices=MIXING_MODES, help="evaluate.mixing")
    p.add_argument("--synthetic-fraction", type=float, default=0.5, help="evaluate.synthetic_fraction (replace)")
    p.add_argument("--synthetic-weight", type=float, default=EvaluateConfig.synthetic_weight,
                   help="evaluate.synthetic_weight (add)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="evaluate.pretrain_steps (pretrain; 0 = seg steps)")
    p.add_argument("--curve-every", type=int, default=EvaluateConfig.curve_every, help="evaluate.curve_every")
    p.add_argument("--thresholds", default="", help='evaluate.thresholds: filter ablation, e.g. "0,0.5"')
    p.add_argument("--label-fidelity", type=float, default=0.0, help="evaluate.label_fidelity (score weight)")
    p.add_argument("--variations", default="", help='evaluate.variations, e.g. "affine,elastic,flip" ("" = per model)')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, e.g. variations.affine_degrees=15 (repeatable)")
    p.add_argument("--conditions", default="real,classic,pix2pix,vae,hybrid")
    p.add_argument("--generator", default="unet", choices=["unet", "attention_unet"], help="pix2pix generator")
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    args = p.parse_args()

    import ray
    from synthgen.config import Config
    from synthgen.evaluate import run_evaluation

    cfg = Config()
    e = cfg.evaluate
    e.real_images, e.real_masks = (os.path.join(args.data, "train", d) for d in ("images", "masks"))
    e.test_images, e.test_masks = (os.path.join(args.data, "test", d) for d in ("images", "masks"))
    e.invert_mask = True  # ISBI marks membranes 0: score the membranes
    e.out, e.k, e.seeds, e.image_size = args.out, args.k, args.seeds, args.image_size
    e.seg_steps, e.gen_steps, e.num_variations, e.threshold = args.seg_steps, args.gen_steps, args.num_variations, args.threshold
    e.conditions, e.gen_generator, e.gen_set = args.conditions, args.generator, args.gen_set
    e.mixing, e.synthetic_fraction, e.synthetic_weight = args.mixing, args.synthetic_fraction, args.synthetic_weight
    e.pretrain_steps, e.curve_every, e.thresholds = args.pretrain_steps, args.curve_every, args.thresholds
    e.label_fidelity, e.variations = args.label_fidelity, args.variations
    for item in args.set:
        key, _, value = item.partition("=")
        cfg.set(key.strip(), value.strip(), source="--set")
    cfg.validate()

    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON line
        ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
        result = run_evaluation(cfg)
        ray.shutdown()
    s = result["summary"]
    ks = [str(k) for k in result["ks"]]
    baselines = {k: [s[c][k]["dice_mean"] for c in ("real", "classic") if c in s and k in s[c]] for k in ks}
    # Without a baseline condition in this run (e.g. --conditions pix2pix) there is no gain to report.
    gains = {c: {k: round(s[c][k]["dice_mean"] - max(baselines[k]), 4) for k in ks if k in s[c] and baselines[k]}
             for c in s if c not in ("real", "classic", "all_real")}  # pix2pix, vae, hybrid, pix2pix@t0.5, ...
    print(json.dumps({"benchmark": "downstream", "data": "isbi2012_em", "cpus": args.cpus,
                      "image_size": args.image_size, "seg_steps": args.seg_steps, "gen_steps": args.gen_steps,
                      "seeds": args.seeds, "generator": args.generator, "mixing": args.mixing,
                      "synthetic_fraction": args.synthetic_fraction, "synthetic_weight": args.synthetic_weight,
                      "pretrain_steps": args.pretrain_steps, "thresholds": args.thresholds,
                      "label_fidelity": args.label_fidelity, "gen_set": args.gen_set,
                      "variations": args.variations, "set": args.set, "wall_s": round(time.time() - t0, 1), "summary": s,
                      "gain_over_best_baseline_dice": gains,
                      "plateau": {c: {k: {"step": v["plateau_step"], "still_rising": v["still_rising"]}
                                      for k, v in by_k.items()} for c, by_k in result["curves"].items()}}))


if __name__ == "__main__":
    main()
