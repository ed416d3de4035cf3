"""Downstream proof on Ray: does synthetic data improve a segmenter on held-out real data?

    synthgen evaluate --real-images R/images --real-masks R/masks --test-images T/images \\
        --test-masks T/masks --invert-mask --k 3,5,10 --seeds 3 --out runs/evaluate

For each k (the first k real pairs by stem): pix2pix and a VAE are trained on those k pairs only
(Ray tasks), filtered synthetic sets are generated from the same k pairs (Ray Data), and segmenters
are trained with a fixed step budget for every (condition, k, seed) as parallel Ray tasks:
real (random crops only), classic (+ flips, rot90, elastic, intensity), pix2pix / vae / hybrid
(classic real crops mixed with that synthetic set), and all real pairs as the upper reference.
Test pairs are never used for training or generation (checked). Output: results.json (every trial),
results.md (mean ± std Dice/IoU per condition and k; the realism of each synthetic set against its k
real pairs, from its manifest), results.png.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np
import ray

from synthgen.config import Config, ConfigError, split_list
from synthgen.data import DataError, Pair, find_pairs

REAL_CONDITIONS = ("real", "classic")
GENERATED_CONDITIONS = ("pix2pix", "vae", "hybrid")


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_no_leakage(real: list[Pair], test: list[Pair]) -> None:
    """Refuse a test image that is also a training image (same path or identical bytes)."""
    real_hashes = {_file_hash(p.image): p.image for p in real}
    problems = [f"{t.image}: also in the training set as {real_hashes[h]}"
                for t in test if (h := _file_hash(t.image)) in real_hashes]
    if problems:
        raise DataError(["test images must not be used for training:"] + problems)


def _parse_ks(text: str, n_real: int) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--k takes a comma list of integers, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > n_real:
        raise ConfigError(f"--k values must be in 1..{n_real} (the number of real pairs), got {text!r}")
    return ks


def subset_pairs(pairs: list[Pair], folder: str) -> tuple[str, str]:
    """Copy pairs into folder/images + folder/masks: the exact training set of one k, recorded in the
    generator's checkpoint, so generation from it cannot see any other pair."""
    import shutil

    images, masks = os.path.join(folder, "images"), os.path.join(folder, "masks")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(images)
    os.makedirs(masks)
    for p in pairs:
        shutil.copy(p.image, images)
        shutil.copy(p.mask, masks)
    return images, masks


def _generator_config(cfg: Config, model: str, k: int, pairs_dir: tuple[str, str], out: str) -> Config:
    e = cfg.evaluate
    g = Config()
    g.data.images, g.data.masks = pairs_dir
    g.data.image_size, g.data.invert_mask, g.data.repeats, g.data.min_pairs, g.data.val_pairs = \
        e.image_size, e.invert_mask, 8, 1, 0
    g.pix2pix.ngf = g.pix2pix.ndf = e.gen_ngf
    g.pix2pix.generator = e.gen_generator
    g.vae.nf = max(4, e.gen_ngf // 2)
    g.train.model, g.train.out, g.train.batch_size = model, out, 4
    g.train.epochs = max(1, math.ceil(e.gen_steps / math.ceil(k * g.data.repeats / g.train.batch_size)))
    return g


@ray.remote(num_cpus=1)
def train_generator_task(cfg_dict: dict) -> str:
    """Train one generator in-process on the pairs in cfg.data; returns its checkpoint directory."""
    import torch

    from synthgen.api import SyntheticDataGenerator, create_synthetic_dataloader

    torch.set_num_threads(1)
    cfg = Config.from_dict(cfg_dict)
    d = cfg.data
    loader = create_synthetic_dataloader(d.images, d.masks, cfg.train.batch_size, d.image_size, d.invert_mask,
                                         d.repeats, cfg.train.seed, min_pairs=1)
    gen = SyntheticDataGenerator(cfg.train.model, "cpu", config=cfg)
    t = cfg.train
    if t.model == "pix2pix":
        gen.train_pix2pix(loader, t.epochs, t.lr, cfg.pix2pix.lambda_l1)
    else:
        gen.train_vae(loader, t.epochs, t.lr, cfg.vae.beta)
    return gen.save(os.path.join(t.out, "model"))


@ray.remote(num_cpus=1)
def segmenter_trial_task(condition: str, k: int, seed: int, real_items: list, test_items: list,
                         synthetic_dir: str | None, e: dict) -> dict:
    """Train one segmenter with a fixed step budget and score it on the test pairs."""
    import torch

    from synthgen.data import SyntheticDataset
    from synthgen.segment import evaluate_segmenter, fit_segmenter

    torch.set_num_threads(1)
    t0 = time.time()
    synthetic = SyntheticDataset(synthetic_dir) if synthetic_dir else None
    if synthetic is not None and len(synthetic) == 0:
        synthetic = None  # nothing passed the filter: the condition degenerates to 'classic'
    model = fit_segmenter(real_items, e["image_size"], e["seg_steps"], e["seg_batch"],
                          "crop" if condition == "real" else "classic", seed, e["seg_width"],
                          synthetic, e["synthetic_fraction"])
    scores = evaluate_segmenter(model, test_items, e["image_size"])
    return {"condition": condition, "k": k, "seed": seed, "synthetic_items": len(synthetic) if synthetic else 0,
            "seconds": round(time.time() - t0, 1), **scores}


def _synthetic_sets(cfg: Config, ks: list[int], real: list[Pair], conditions: list[str]) -> dict[tuple[str, int], str]:
    """Train generators per (k, model) in parallel, then generate each synthetic set from the k pairs."""
    from synthgen.generate import generate

    e = cfg.evaluate
    models = sorted({m for c in conditions if c in GENERATED_CONDITIONS for m in (["pix2pix", "vae"] if c == "hybrid" else [c])})
    pairs_dirs = {k: subset_pairs(real[:k], os.path.join(e.out, f"k{k}", "real_pairs")) for k in ks}
    jobs = {(m, k): train_generator_task.remote(
                _generator_config(cfg, m, k, pairs_dirs[k], os.path.join(e.out, f"k{k}", m)).to_dict())
            for k in ks for m in models}
    checkpoints = dict(zip(jobs, ray.get(list(jobs.values()))))
    sets = {}
    for k in ks:
        for c in (c for c in conditions if c in GENERATED_CONDITIONS):
            g = Config()
            g.generate.checkpoint = checkpoints[("pix2pix" if c == "hybrid" else c, k)]
            g.generate.vae_checkpoint = checkpoints[("vae", k)] if c == "hybrid" else ""
            g.generate.model = c
            g.generate.variations = "latent,elastic,morph,flip" if c != "pix2pix" else "noise,elastic,morph,flip"
            g.generate.num_variations, g.generate.threshold = e.num_variations, e.threshold
            g.generate.out, g.generate.png = os.path.join(e.out, f"k{k}", f"synthetic_{c}"), False
            g.generate.actors_max = 1
            sets[(c, k)] = generate(g, overwrite=True).out
    return sets


def summarise(trials: list[dict]) -> dict:
    """{condition: {k: {"dice_mean", "dice_std", "iou_mean", "iou_std", "n"}}}."""
    table: dict = {}
    for t in trials:
        table.setdefault(t["condition"], {}).setdefault(str(t["k"]), []).append(t)
    return {c: {k: {"dice_mean": float(np.mean([t["dice"] for t in ts])), "dice_std": float(np.std([t["dice"] for t in ts])),
                    "iou_mean": float(np.mean([t["iou"] for t in ts])), "iou_std": float(np.std([t["iou"] for t in ts])),
                    "n": len(ts)} for k, ts in by_k.items()} for c, by_k in table.items()}


def markdown_table(summary: dict, ks: list[int]) -> str:
    cols = [str(k) for k in ks] + sorted({k for v in summary.values() for k in v} - {str(k) for k in ks})
    lines = ["| condition | " + " | ".join(f"k={k} Dice" for k in cols) + " | " + " | ".join(f"k={k} IoU" for k in cols) + " |",
             "|---" * (1 + 2 * len(cols)) + "|"]
    for cond, by_k in summary.items():
        def cell(k, m):
            return f"{by_k[k][m + '_mean']:.3f} ± {by_k[k][m + '_std']:.3f}" if k in by_k else ""
        lines.append(f"| {cond} | " + " | ".join(cell(k, "dice") for k in cols) + " | "
                     + " | ".join(cell(k, "iou") for k in cols) + " |")
    return "\n".join(lines)


def set_realism(sets: dict[tuple[str, int], str]) -> dict[str, dict]:
    """{'<condition>/k<k>': the 'realism' section of each synthetic set's manifest}: generate measures
    it against its sources, here the k real pairs the generator was trained on (None where absent)."""
    out = {}
    for (c, k), path in sorted(sets.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                out[f"{c}/k{k}"] = json.load(f).get("realism")
        except (OSError, ValueError):
            out[f"{c}/k{k}"] = None
    return out


def realism_table(realism: dict[str, dict]) -> str:
    """Markdown: one row per synthetic set, the realism figures against its k real pairs."""
    keys = ("c2st_accuracy", "fg/std_ratio", "fg/hf_ratio", "bg/std_ratio", "bg/hf_ratio", "spectrum_distance")
    lines = ["| set | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
    for name, r in realism.items():
        figures = (r or {}).get("figures") or {}
        cells = [f"{figures[k]:.3f}" if figures.get(k) is not None else "n/a" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_evaluation(cfg: Config) -> dict:
    """The whole experiment; writes results.json / results.md / results.png under evaluate.out."""
    from synthgen.segment import load_items
    from synthgen import plots

    t0 = time.time()
    e = cfg.evaluate
    real = find_pairs(e.real_images, e.real_masks)
    test = find_pairs(e.test_images, e.test_masks)
    check_no_leakage(real, test)
    ks = _parse_ks(e.k, len(real))
    conditions = split_list(e.conditions)
    unknown = set(conditions) - set(REAL_CONDITIONS + GENERATED_CONDITIONS)
    if unknown or e.seeds < 1:
        raise ConfigError(f"evaluate: unknown condition(s) {sorted(unknown)} or seeds < 1")
    os.makedirs(e.out, exist_ok=True)
    cfg.save(e.out)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    print(f"synthgen evaluate: k={ks}, {e.seeds} seeds, conditions {conditions}"
          f"{' + all_real' if e.all_real else ''}; {len(test)} test pairs", flush=True)
    sets = _synthetic_sets(cfg, ks, real, conditions)
    if e.synthetic:
        conditions.append("given")
        sets.update({("given", k): e.synthetic for k in ks})
    items = load_items(e.real_images, e.real_masks, e.invert_mask)
    all_items = ray.put(items)
    real_items = {k: ray.put(items[:k]) for k in ks}
    test_items = ray.put(load_items(e.test_images, e.test_masks, e.invert_mask))
    edict = {k: getattr(e, k) for k in ("image_size", "seg_steps", "seg_batch", "seg_width", "synthetic_fraction")}
    futures = [segmenter_trial_task.remote(c, k, s, real_items[k], test_items, sets.get((c, k)), edict)
               for k in ks for c in conditions for s in range(e.seeds)]
    if e.all_real:
        futures += [segmenter_trial_task.remote("all_real", len(real), s, all_items, test_items, None,
                                                edict) for s in range(e.seeds)]
    trials = []
    for i, ref in enumerate(futures):
        trials.append(ray.get(ref))
        t = trials[-1]
        print(f"[{i + 1}/{len(futures)}] {t['condition']:<9} k={t['k']:<3} seed={t['seed']}  "
              f"dice {t['dice']:.4f}  iou {t['iou']:.4f}  ({t['seconds']:.0f}s)", flush=True)
    summary = summarise(trials)
    realism = set_realism(sets)
    result = {"config": cfg.evaluate.__dict__, "ks": ks, "trials": trials, "summary": summary,
              "realism": realism, "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(e.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown_table(summary, ks)
    if realism:
        table += "\n\nRealism of each synthetic set against its k real pairs (C2ST 0.5 = indistinguishable; " \
                 "ratios synthetic/real, 1 = same):\n\n" + realism_table(realism)
    with open(os.path.join(e.out, "results.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_downstream(summary, ks, os.path.join(e.out, "results.png"))
    print("\n" + table + f"\n\nresults: {e.out}/results.json, results.md, results.png "
          f"({result['seconds']:.0f}s)", flush=True)
    return result
