"""Hyperparameter search on Ray Tune: Optuna (TPE) proposes, ASHA stops trials that fall behind.

    synthgen tune --model pix2pix --images imgs/ --masks masks/ --trials 12 --epochs 6 --out runs/tune

Each trial is a real training run of `train.run_training` (the loop `synthgen train` runs) that reports
its objective (synthgen/objectives.py) after every epoch, so ASHA can stop it early:

- `tune.workers_per_trial` 1 (the default): a Tune *function trainable* trains in its own actor. On a
  cluster the search is parallel over trials, which is cheaper than data parallelism inside small
  trials, and it needs nothing from Ray beyond the trial actor.
- more than 1: the trial is a Ray Train driver that runs a `TorchTrainer` with that many workers and
  forwards its reports to Tune (Ray's documented Train-in-Tune pattern). When ASHA stops such a
  trial, Ray Train frees its workers' placement group through Ray's state API, which needs the
  dashboard; the Ray that synthgen starts has one (synthgen/ray_session.py).

The first trial is the base configuration (the defaults plus --config and flags) whenever it lies
inside the search space, so every search measures its best trial against the untuned setting.
Outputs in `tune.out`: trials.csv / trials.md (every trial: parameters, objective, epochs, time,
status), objective_vs_params.png, best_config.yaml (accepted by `synthgen train --config`; with
--model hybrid also best_pix2pix.yaml and best_vae.yaml), best_model/ (the best trial's final
checkpoint, ready for `synthgen generate --checkpoint`), summary.json. `--resume` continues an
interrupted search with `Tuner.restore`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Iterator

from ray import tune

from synthgen import console, ray_session, storage
from synthgen.config import Config, ConfigError
from synthgen.data import Pair, find_pairs, image_channels, split_pairs
from synthgen.search_space import (Param, SearchError, apply_params, base_point, effective_space, objective_mode,
                                   parse_space, search_model)

TUNE_RUN_NAME = "tune"


# ------------------------------------------------------------------ the trial (runs in a Tune actor)
def _tune_report(metrics: dict, checkpoint_dir: str | None) -> None:
    import ray

    metrics = {**metrics, "node": ray.get_runtime_context().get_node_id()[:12]}  # where the trial ran
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def run_trial(params: dict, loop: dict, root: str) -> None:
    """One trial: `loop` (train.loop_config of the base config, built once by the driver, with the
    pair files already in the object store) with `params` applied, trained while reporting the objective."""
    import torch

    from synthgen.train import run_training, torch_trainer

    cfg = apply_params(Config.from_dict(loop["config"]), params)
    s = cfg.tune
    config = dict(loop, config=cfg.to_dict())
    if s.workers_per_trial == 1:
        device = torch.device("cuda" if s.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
        run_training(config, 0, 1, device, tune.get_checkpoint(), _tune_report)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg.train.workers, cfg.train.gpu = s.workers_per_trial, s.gpus_per_trial > 0
    storage = os.path.join(root, "trials", tune.get_context().get_trial_id())
    torch_trainer(cfg, config, storage, callbacks=[TuneReportCallback()],
                  gpus_per_worker=s.gpus_per_trial / s.workers_per_trial).fit()


# ------------------------------------------------------------------ the driver
@dataclass
class SearchData:
    train: list[Pair]
    val: list[Pair]
    channels: int


def search_data(cfg: Config) -> SearchData:
    """Training pairs and the held-out validation pairs the objective is measured on."""
    from synthgen.evaluate import check_no_leakage

    pairs = find_pairs(cfg.data.images, cfg.data.masks, cfg.data.min_pairs)
    if cfg.tune.val_images:
        train, val = pairs, find_pairs(cfg.tune.val_images, cfg.tune.val_masks, 1)
        check_no_leakage(train, val)
    else:
        if cfg.data.val_pairs < 1:
            raise SearchError("the objective needs validation pairs: pass --val-images/--val-masks or set "
                              "data.val_pairs >= 1")
        train, val = split_pairs(pairs, cfg.data.val_pairs)
    channels = image_channels(train + val)
    if image_channels(val) != image_channels(train):
        raise SearchError(f"{cfg.tune.val_images or cfg.data.images}: validation images have "
                          f"{image_channels(val)} channel(s), training images {image_channels(train)}")
    return SearchData(train, val, channels)


def objective_spec(cfg: Config, data: SearchData, out: str) -> dict:
    """Everything a trial needs for the objective; segmenter / baseline are made once, here."""
    from dataclasses import asdict

    from synthgen.objectives import ObjectiveSpec, load_full_items, pair_rows, segmenter_settings

    spec = ObjectiveSpec(cfg.tune.objective, pair_rows(data.val), pair_rows(data.train))
    if spec.name not in ("label_fidelity", "dice_gain"):
        return asdict(spec)
    from synthgen.feedback import segmenter_dice
    from synthgen.segment import fit_segmenter, save_segmenter

    settings, size = segmenter_settings(cfg), cfg.data.image_size
    real = load_full_items(spec.train_pairs, cfg, data.channels)
    if spec.name == "label_fidelity":
        spec.segmenter = os.path.join(out, "segmenter")
        if not os.path.isfile(os.path.join(spec.segmenter, "segmenter.json")):
            console.line(f"training the label-fidelity segmenter on {len(real)} real pairs ({settings.steps} steps)")
            model = fit_segmenter(real, size, settings.steps, settings.batch_size, seed=cfg.train.seed,
                                  width=settings.width)
            save_segmenter(model, spec.segmenter + ".tmp")
            os.replace(spec.segmenter + ".tmp", spec.segmenter)
    else:
        baseline = os.path.join(out, "baseline_dice.json")
        if os.path.isfile(baseline):
            with open(baseline) as f:
                spec.baseline_dice = json.load(f)["dice"]
        else:
            console.line(f"measuring the real-only segmenter baseline ({settings.steps} steps)")
            spec.baseline_dice = segmenter_dice(real, load_full_items(spec.val_pairs, cfg, data.channels),
                                                None, size, settings)
            with open(baseline, "w") as f:
                json.dump({"dice": spec.baseline_dice}, f)
    return asdict(spec)


def _trial_resources(cfg: Config) -> dict[str, float]:
    s, t = cfg.tune, cfg.train
    if s.workers_per_trial == 1:
        return {"CPU": t.cpus_per_worker, "GPU": s.gpus_per_trial}
    return {"CPU": 0.01}  # the trial only drives its TorchTrainer, whose workers reserve the resources


def max_concurrent(cfg: Config, available: dict[str, float]) -> int:
    """tune.max_concurrent, or as many trials as the free CPUs (and GPUs) hold, at least 1."""
    s, t = cfg.tune, cfg.train
    if s.max_concurrent:
        return s.max_concurrent
    fits = [available.get("CPU", 0) // (t.cpus_per_worker * s.workers_per_trial)]
    if s.gpus_per_trial > 0:
        fits.append(available.get("GPU", 0) // s.gpus_per_trial)
    return max(1, int(min(fits)))


def prepare_search_dir(cfg: Config, overwrite: bool) -> str:
    out = os.path.abspath(cfg.tune.out)
    state = os.path.join(out, TUNE_RUN_NAME)
    if cfg.tune.resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(state):
            raise SearchError(f"{out}: --resume given but there is no search to resume there")
        return out
    if os.path.exists(state):
        if not overwrite:
            raise SearchError(f"{out}: already holds a search; pass --resume to continue it or --overwrite "
                              "to start over")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    return out


_progress: console.Progress | None = None
"""The running search's progress display (module-level: Tune pickles its callbacks with the search)."""


class TrialProgress(tune.Callback):
    """Runs in this driver: advances `_progress` as trials end, showing the best objective so far."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode, self.best = metric, mode, None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if value is not None and (self.best is None or
                                  (value > self.best if self.mode == "max" else value < self.best)):
            self.best = float(value)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._advance(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._advance(trials, trial)

    def _advance(self, trials, ended) -> None:
        if _progress is None:
            return
        running = sum(t.status == "RUNNING" and t is not ended for t in trials)
        best = f"best {self.metric} {self.best:.4f}  " if self.best is not None else ""
        _progress.update(1, f"{best}{running} running")


def build_tuner(cfg: Config, params: list[Param], data: SearchData, spec: dict, out: str,
                available: dict[str, float]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray_session.route_logger("optuna")  # "A new study created ..." and the like go to driver.log

    s, metric_mode = cfg.tune, objective_mode(cfg)
    metric, mode = metric_mode
    from synthgen.train import loop_config

    # Validation happens in the objective (on tiles of the validation pairs), not in run_training.
    loop = loop_config(cfg, data.train, [], data.channels, spec)
    trainable = tune.with_resources(tune.with_parameters(run_trial, loop=loop, root=out), _trial_resources(cfg))
    path = os.path.join(out, TUNE_RUN_NAME)
    if s.resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    default = base_point(cfg, params)
    start = [default] if all(p.contains(default[p.key]) for p in params) else None
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs, grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor)
                 if s.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space={p.key: p.domain() for p in params},
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=s.trials, scheduler=scheduler,
                                    search_alg=OptunaSearch(points_to_evaluate=start, seed=s.seed),
                                    max_concurrent_trials=max_concurrent(cfg, available)),
        # verbose=0: no trial tables from Tune; synthgen shows one progress display (TrialProgress)
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=out, verbose=int(console.is_verbose()),
                                  callbacks=[TrialProgress(metric, mode)],
                                  failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


@dataclass
class SearchResult:
    out: str
    rows: list[dict]
    """One per trial, best first: trial_id, status, epochs, seconds, objective, then the parameters."""
    best: dict
    best_configs: dict[str, str]
    seconds: float


def trial_rows(grid, params: list[str], metric: str, mode: str, epochs: int) -> list[dict]:
    """The table of all trials, best first (trials without an objective value last)."""
    rows = []
    for r in grid:
        if r.config is None:  # never started (an interrupted search)
            continue
        m = r.metrics or {}
        done = int(m.get("epoch", 0))
        status = "error" if r.error else ("completed" if done >= epochs else "stopped early")
        value = m.get(metric)
        rows.append({"trial_id": m.get("trial_id", os.path.basename(r.path)), "status": status, "epochs": done,
                     "seconds": round(float(m.get("time_total_s", 0.0)), 1), "node": m.get("node", ""),
                     metric: float(value) if value is not None else float("nan"),
                     **{k: r.config.get(k) for k in params},
                     "checkpoint": r.checkpoint.path if r.checkpoint else m.get("checkpoint_path", "")})
    # Completed trials rank first: ASHA stopped the others because they were behind at the same epoch,
    # and an early epoch's value is not comparable with a finished run's.
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda row: (math.isnan(row[metric]), row["status"] != "completed",
                                         sign * row[metric] if not math.isnan(row[metric]) else 0.0))


def write_tables(rows: list[dict], out: str) -> tuple[str, str]:
    import pandas as pd

    table = pd.DataFrame([{k: v for k, v in r.items() if k != "checkpoint"} for r in rows])
    csv, md = os.path.join(out, "trials.csv"), os.path.join(out, "trials.md")
    table.to_csv(csv + ".tmp", index=False)
    os.replace(csv + ".tmp", csv)
    with open(md + ".tmp", "w") as f:
        f.write(_markdown(table) + "\n")
    os.replace(md + ".tmp", md)
    return csv, md


def _markdown(table) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_best(cfg: Config, rows: list[dict], params: list[str], metric: str, out: str) -> dict[str, str]:
    """best_config.yaml (and best_<model>.yaml per model with --model hybrid) + best_model/."""
    scored = [r for r in rows if not math.isnan(r[metric])]
    if not scored:
        return {}
    written = {}
    groups = {"config": scored[0]}
    if search_model(cfg) == "hybrid":
        for model in ("pix2pix", "vae"):
            best = next((r for r in scored if r.get("train.model") == model), None)
            if best:
                groups[model] = best
    for name, row in groups.items():
        best_cfg = apply_params(cfg, {k: row[k] for k in params})
        best_cfg.train.out = os.path.join(out, f"best_{name}_train")
        written[name] = best_cfg.save(out, f"best_{name}.yaml")
    best_ckpt = scored[0]["checkpoint"]
    if best_ckpt and os.path.isdir(best_ckpt):
        storage.upload_dir(best_ckpt, os.path.join(out, "best_model"), overwrite=True)
    return written


@contextlib.contextmanager
def _silent_tune() -> Iterator[None]:
    """Tune's newer output engine prints an experiment header and result paths even at verbose=0;
    its legacy engine prints nothing at 0. RAY_AIR_NEW_OUTPUT picks the engine when fit() starts."""
    if console.is_verbose():
        yield
        return
    with ray_session.env_var("RAY_AIR_NEW_OUTPUT", "0"):
        yield


def run_search(cfg: Config, overwrite: bool = False) -> SearchResult:
    """Validate, prepare the objective, run (or resume) the Tuner, write the tables, plot and best config."""
    import ray

    from synthgen import plots

    t0 = time.time()
    if cfg.tune.resume:  # the search's own config, as it started
        out = prepare_search_dir(cfg, overwrite)
        cfg = Config.from_yaml(os.path.join(out, "config.yaml"), {"tune.resume": True})
    model = search_model(cfg)
    if model == "diffusion":
        raise ConfigError("synthgen tune does not search the diffusion model yet (train.model diffusion): "
                          "set tune.model to pix2pix, vae or hybrid, or tune diffusion.* keys by hand")
    if model != "hybrid":
        cfg.train.model = model
    metric, mode = objective_mode(cfg)
    params = parse_space(effective_space(cfg), cfg)  # bad bounds fail before anything is written
    for key in ("data.images", "data.masks", "tune.val_images", "tune.val_masks"):
        if cfg.get(key):  # so config.yaml, --resume and best_config.yaml work from any directory
            cfg.set(key, os.path.abspath(cfg.get(key)))
    data = search_data(cfg)
    if not cfg.tune.resume:
        out = prepare_search_dir(cfg, overwrite)
        cfg.save(out)
    console.line(f"synthgen tune: {model}, {cfg.tune.trials} trials x {cfg.train.epochs} epochs, objective "
                 f"{metric} ({mode}), {len(data.train)} train + {len(data.val)} validation pairs from "
                 f"{cfg.data.images} -> {out}")
    console.line("search     " + "; ".join(f"{p.key} {p}" for p in params))
    console.line(f"config     {os.path.join(out, 'config.yaml')}")
    ray_session.ensure()
    spec = objective_spec(cfg, data, out)
    tuner = build_tuner(cfg, params, data, spec, out, ray.available_resources())
    global _progress
    with console.progress("search", cfg.tune.trials, "trial") as _progress, _silent_tune():
        try:
            grid = tuner.fit()
        finally:
            _progress = None
    unfinished = cfg.tune.trials - grid.num_terminated - grid.num_errors
    keys = [p.key for p in params]
    rows = trial_rows(grid, keys, metric, mode, cfg.train.epochs)
    write_tables(rows, out)
    plots.plot_search(rows, params, metric, os.path.join(out, "objective_vs_params.png"))
    best_configs = write_best(cfg, rows, keys, metric, out)
    default = base_point(cfg, params)
    default_row = next((r for r in rows if all(_same(r[k], default[k]) for k in keys)), None)
    summary = {"objective": metric, "mode": mode, "trials": cfg.tune.trials - unfinished, "requested": cfg.tune.trials,
               "completed": sum(r["status"] == "completed" for r in rows),
               "stopped_early": sum(r["status"] == "stopped early" for r in rows),
               "errors": sum(r["status"] == "error" for r in rows),
               "best": {k: v for k, v in rows[0].items() if k != "checkpoint"} if rows else {},
               "default": {k: v for k, v in default_row.items() if k != "checkpoint"} if default_row else None,
               "best_configs": best_configs, "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    console.line(plots.search_summary_text(summary, out))
    if unfinished > 0:  # Tune stops on Ctrl-C and returns what it has; its state stays in out/tune
        raise KeyboardInterrupt
    if rows and summary["errors"] == len(rows):
        first = next(r for r in grid if r.error)
        raise SearchError(f"all {len(rows)} trials failed; the first error was: {console.last_line(first.error)} "
                          f"(each trial's traceback is in error.txt under {os.path.join(out, TUNE_RUN_NAME)})")
    return SearchResult(out, rows, summary["best"], best_configs, time.time() - t0)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b
