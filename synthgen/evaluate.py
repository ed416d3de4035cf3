"""Downstream proof on Ray: does synthetic data improve a segmenter on held-out real data?

    synthgen evaluate --real-images R/images --real-masks R/masks --test-images T/images \\
        --test-masks T/masks --invert-mask --k 3,5,10 --seeds 3 --out runs/evaluate

For each k (the first k real pairs by stem): pix2pix and a VAE are trained on those k pairs only
(Ray tasks), filtered synthetic sets are generated from the same k pairs (Ray Data), and segmenters
are trained with a fixed step budget for every (condition, k, seed) as parallel Ray tasks:
real (random crops only), classic (+ flips, rot90, elastic, intensity), pix2pix / vae / hybrid /
diffusion (classic real crops mixed with that synthetic set), and all real pairs as the upper reference.
Synthetic items join the real ones as evaluate.mixing says ('add' by default: the baselines' real
batches plus synthetic ones, so every condition sees the real pairs equally often; see synthgen.mixing).
evaluate.thresholds runs each generated condition at several filter thresholds (pix2pix@t0, ...).
Test pairs are never used for training or generation (checked). Output: results.json (every trial,
with its Dice-vs-step curve), results.md (mean ± std Dice/IoU per condition and k, where each curve
plateaued, and the realism of each synthetic set against its k real pairs, from its manifest),
results.png, results_curves.png.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time

import numpy as np
import ray

from synthgen import console, ray_session
from synthgen.config import Config, ConfigError, split_list
from synthgen.data import DataError, Pair, find_pairs

REAL_CONDITIONS = ("real", "classic")
DIFFUSION_BETA1 = 0.9
"""Adam beta1 of the evaluation's diffusion models: DDPM's 0.9, not pix2pix's 0.5 (train.beta1's
default), whose short gradient memory suits an adversarial game, not a regression of the noise."""
GENERATED_CONDITIONS = ("pix2pix", "vae", "hybrid", "diffusion")
DEFAULT_VARIATIONS = {"pix2pix": "noise,elastic,morph,flip", "vae": "latent,elastic,morph,flip"}
"""Variation kinds of the generated sets when evaluate.variations is '' (vae's also serve hybrid and
diffusion: like the VAE, the diffusion model draws a new image for every candidate seed)."""


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
    g.diffusion.channels = max(8, e.gen_ngf // 2)
    g.train.batch_size = 4
    if model == "diffusion":
        g.train.beta1 = DIFFUSION_BETA1
    # After the evaluation's own choices, so that gen_set can override any of them.
    for item in split_list(e.gen_set):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"evaluate.gen_set: '{item}' is not key=value")
        g.set(key.strip(), value.strip(), source="evaluate.gen_set")
    g.train.model, g.train.out = model, out
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
    elif t.model == "diffusion":
        gen.train_diffusion(loader, t.epochs, t.lr)
    else:
        gen.train_vae(loader, t.epochs, t.lr, cfg.vae.beta)
    return gen.save(os.path.join(t.out, "model"))


MIXING_KEYS = ("mixing", "synthetic_fraction", "synthetic_batch", "synthetic_weight", "pretrain_steps")
"""The EvaluateConfig keys that are fit_segmenter's mixing arguments, under the same names."""


@ray.remote(num_cpus=1)
def segmenter_trial_task(condition: str, k: int, seed: int, real_items: list, test_items: list,
                         synthetic_dir: str | None, e: dict, min_score: float | None = None) -> dict:
    """Train one segmenter with a fixed step budget and score it on the test pairs. min_score re-filters
    the synthetic set (the filter ablation); with e["curve_every"] > 0 the result holds the Dice curve."""
    import torch

    from synthgen.data import SyntheticDataset
    from synthgen.mixing import fit_segmenter
    from synthgen.segment import evaluate_segmenter

    torch.set_num_threads(1)
    t0 = time.time()
    synthetic = SyntheticDataset(synthetic_dir, min_score) if synthetic_dir else None
    if synthetic is not None and len(synthetic) == 0:
        synthetic = None  # nothing passed the filter: the condition degenerates to 'classic'
    curve = [] if e["curve_every"] else None
    model = fit_segmenter(real_items, e["image_size"], e["seg_steps"], e["seg_batch"],
                          "crop" if condition == "real" else "classic", seed, e["seg_width"], synthetic,
                          curve=curve, curve_every=e["curve_every"], test_items=test_items,
                          **{key: e[key] for key in MIXING_KEYS})
    scores = evaluate_segmenter(model, test_items, e["image_size"])
    return {"condition": condition, "k": k, "seed": seed, "synthetic_items": len(synthetic) if synthetic else 0,
            "seconds": round(time.time() - t0, 1), **scores, **({"curve": curve} if curve else {})}


def parse_thresholds(text: str) -> list[float]:
    """evaluate.thresholds "0, 0.5" -> [0.0, 0.5] (sorted, unique); '' -> [] (no ablation)."""
    try:
        values = sorted({float(x) for x in split_list(text)})
    except ValueError:
        raise ConfigError(f"evaluate.thresholds takes a comma list of numbers, got {text!r}") from None
    if any(not -1.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"evaluate.thresholds must lie in [-1, 1] (quality scores do), got {text!r}")
    return values


def condition_name(model: str, threshold: float) -> str:
    """('pix2pix', 0.5) -> 'pix2pix@t0.5': a generated condition filtered at one ablation threshold."""
    return f"{model}@t{threshold:g}"


def generated_conditions(conditions: list[str], thresholds: list[float]) -> list[tuple[str, str, float | None]]:
    """(condition name, generating model, min_score) per generated condition; min_score None = the set
    as generated (filtered at evaluate.threshold), else re-filtered from the keep-everything set."""
    models = [c for c in conditions if c in GENERATED_CONDITIONS]
    if not thresholds:
        return [(m, m, None) for m in models]
    return [(condition_name(m, t), m, t) for m in models for t in thresholds]


def _synthetic_sets(cfg: Config, ks: list[int], real: list[Pair], conditions: list[str]) -> dict[tuple[str, int], str]:
    """Train generators per (k, model) in parallel, then generate each synthetic set from the k pairs."""
    from synthgen.generate import generate

    e = cfg.evaluate
    models = sorted({m for c in conditions if c in GENERATED_CONDITIONS for m in (["pix2pix", "vae"] if c == "hybrid" else [c])})
    pairs_dirs = {k: subset_pairs(real[:k], os.path.join(e.out, f"k{k}", "real_pairs")) for k in ks}
    keys = [(m, k) for k in ks for m in models]
    refs = [train_generator_task.remote(
                _generator_config(cfg, m, k, pairs_dirs[k], os.path.join(e.out, f"k{k}", m)).to_dict())
            for m, k in keys]
    checkpoints = dict(zip(keys, gather(refs, "generators", "model", lambda i, _: f"{keys[i][0]} k={keys[i][1]}")))
    todo = [(c, k) for k in ks for c in conditions if c in GENERATED_CONDITIONS]
    sets = {}
    with console.progress("generation", len(todo), "set") as bar:
        for c, k in todo:
            vae = checkpoints[("vae", k)] if c == "hybrid" else ""
            g = _generation_config(cfg, c, checkpoints[("pix2pix" if c == "hybrid" else c, k)], vae,
                                   os.path.join(e.out, f"k{k}", f"synthetic_{c}"))
            with console.muted():  # one line per set here, not each generation's header and summary
                result = generate(g, overwrite=True)
            sets[(c, k)] = result.out
            bar.update(1, f"{c} k={k}: {result.accepted}/{result.generated} accepted")
    return sets


def gather(refs: list, label: str, unit: str, describe) -> list:
    """ray.get of `refs` in their order, with a progress display advanced as each one finishes;
    describe(index, result) is the status shown after it."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, object] = {}
    pending = list(refs)
    with console.progress(label, len(refs), unit) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            results[i] = ray.get(done[0])
            bar.update(1, describe(i, results[i]))
    return [results[i] for i in range(len(refs))]


def _generation_config(cfg: Config, condition: str, checkpoint: str, vae_checkpoint: str, out: str) -> Config:
    """The `synthgen generate` config of one synthetic set: evaluate's variation kinds, count, threshold
    and score weights, with the evaluation config's own `variations` section (so --set
    variations.affine_degrees=15 reaches the generated sets)."""
    e = cfg.evaluate
    g = Config()
    g.variations = copy.deepcopy(cfg.variations)
    g.generate.checkpoint, g.generate.vae_checkpoint, g.generate.model = checkpoint, vae_checkpoint, condition
    g.generate.variations = e.variations or DEFAULT_VARIATIONS["pix2pix" if condition == "pix2pix" else "vae"]
    # With a threshold ablation, keep every candidate (scores are >= -1): each condition re-filters.
    g.generate.num_variations = e.num_variations
    g.generate.threshold = -1.0 if parse_thresholds(e.thresholds) else e.threshold
    g.generate.weights = Config().generate.weights + (f",label_fidelity={e.label_fidelity}" if e.label_fidelity else "")
    g.generate.segmenter = "auto" if e.label_fidelity else ""
    g.generate.out, g.generate.png, g.generate.actors_max = out, False, 1
    return g


def summarise(trials: list[dict]) -> dict:
    """{condition: {k: {"dice_mean", "dice_std", "iou_mean", "iou_std", "n"}}}."""
    table: dict = {}
    for t in trials:
        table.setdefault(t["condition"], {}).setdefault(str(t["k"]), []).append(t)
    return {c: {k: {"dice_mean": float(np.mean([t["dice"] for t in ts])), "dice_std": float(np.std([t["dice"] for t in ts])),
                    "iou_mean": float(np.mean([t["iou"] for t in ts])), "iou_std": float(np.std([t["iou"] for t in ts])),
                    "n": len(ts)} for k, ts in by_k.items()} for c, by_k in table.items()}


PLATEAU_TOLERANCE = 0.005
"""A mean curve has plateaued at the first step where it comes within this much Dice of its maximum."""
RISING_TAIL = 0.2
"""A plateau within the last 20% of the budget means the curve was still rising at the end."""


def plateau_step(steps: list[int], dice: list[float], tol: float = PLATEAU_TOLERANCE) -> int:
    """The first step whose Dice is within `tol` of the curve's maximum.

    >>> plateau_step([100, 200, 300], [0.5, 0.698, 0.70])
    200
    """
    best = max(dice)
    return next(s for s, d in zip(steps, dice) if d >= best - tol)


def curve_summary(trials: list[dict], budget: int) -> dict:
    """{condition: {k: {"step", "dice_mean", "dice_std", "plateau_step", "still_rising", "n"}}}: the mean ±
    std over seeds of the Dice-vs-step curves, and whether the mean curve was still rising at the end
    (its plateau step in the last RISING_TAIL of the budget)."""
    table: dict = {}
    for t in trials:
        if t.get("curve"):
            table.setdefault(t["condition"], {}).setdefault(str(t["k"]), []).append(t["curve"])
    out: dict = {}
    for cond, by_k in table.items():
        for k, curves in by_k.items():
            steps = [p["step"] for p in curves[0]]
            dice = np.array([[p["dice"] for p in c] for c in curves])  # seeds x points
            mean = [float(x) for x in dice.mean(axis=0)]
            plateau = plateau_step(steps, mean)
            out.setdefault(cond, {})[k] = {"step": steps, "dice_mean": mean, "dice_std": [float(x) for x in dice.std(axis=0)],
                                           "plateau_step": plateau, "still_rising": plateau > (1 - RISING_TAIL) * budget,
                                           "n": len(curves)}
    return out


def curve_report(curves: dict) -> str:
    """One line per (condition, k): where the mean curve plateaued, flagged when still rising."""
    return "\n".join(f"- {cond} k={k}: Dice {v['dice_mean'][-1]:.3f} at step {v['step'][-1]}, within "
                     f"{PLATEAU_TOLERANCE} of its best from step {v['plateau_step']}"
                     f"{' (still rising: the budget is too short)' if v['still_rising'] else ''}"
                     for cond, by_k in curves.items() for k, v in by_k.items())


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
    config_path = cfg.save(e.out)
    console.line(f"synthgen evaluate: k={ks}, {e.seeds} seed(s), conditions {conditions}"
                 f"{' + all_real' if e.all_real else ''}; {len(real)} real pairs from "
                 f"{os.path.abspath(e.real_images)}, {len(test)} test pairs -> {os.path.abspath(e.out)}")
    console.line(f"config     {config_path}")
    ray_session.ensure()
    sets = _synthetic_sets(cfg, ks, real, conditions)
    if e.synthetic:
        conditions.append("given")
        sets.update({("given", k): e.synthetic for k in ks})
    items = load_items(e.real_images, e.real_masks, e.invert_mask)
    all_items = ray.put(items)
    real_items = {k: ray.put(items[:k]) for k in ks}
    test_items = ray.put(load_items(e.test_images, e.test_masks, e.invert_mask))
    edict = {k: getattr(e, k) for k in ("image_size", "seg_steps", "seg_batch", "seg_width", "curve_every") + MIXING_KEYS}
    thresholds = parse_thresholds(e.thresholds)
    runs = [r for c in conditions for r in (generated_conditions([c], thresholds) if c in GENERATED_CONDITIONS
                                            else [(c, c, None)])]
    futures = [segmenter_trial_task.remote(name, k, s, real_items[k], test_items, sets.get((source, k)), edict, t)
               for k in ks for name, source, t in runs for s in range(e.seeds)]
    if e.all_real:
        futures += [segmenter_trial_task.remote("all_real", len(real), s, all_items, test_items, None,
                                                edict) for s in range(e.seeds)]
    trials = gather(futures, "segmenters", "trial",
                    lambda _, t: f"last: {t['condition']} k={t['k']} seed={t['seed']} dice {t['dice']:.4f}")
    summary = summarise(trials)
    realism = set_realism(sets)
    curves = curve_summary(trials, e.seg_steps)
    result = {"config": cfg.evaluate.__dict__, "ks": ks, "trials": trials, "summary": summary, "curves": curves,
              "realism": realism, "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(e.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown_table(summary, ks)
    if curves:
        table += "\n\nDice against segmenter steps (results_curves.png):\n" + curve_report(curves)
        plots.plot_curves(curves, os.path.join(e.out, "results_curves.png"))
    if realism:
        table += "\n\nRealism of each synthetic set against its k real pairs (C2ST 0.5 = indistinguishable; " \
                 "ratios synthetic/real, 1 = same):\n\n" + realism_table(realism)
    with open(os.path.join(e.out, "results.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_downstream(summary, ks, os.path.join(e.out, "results.png"))
    console.line("\n" + table + f"\n\nresults: {e.out}/results.json, results.md, results.png "
                 f"({result['seconds']:.0f}s)")
    return result
