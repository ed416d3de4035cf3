"""Data-parallel training on Ray Train.

    synthgen train --model pix2pix --images data/images --masks data/masks --out runs/p2p --workers 2

`fit(cfg)` validates the data on the driver, starts a `TorchTrainer` whose workers run
`train_loop_per_worker` (the same `steps.train_epoch` the Python API uses), then turns the final
checkpoint into the run's outputs: `model/` (weights + config + metrics), `loss_curves.png`,
`samples.png`, `summary.json`. All Ray Train calls live in this module.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, prepare_model
from torch.utils.data import DataLoader, DistributedSampler

from synthgen.checkpoint import load_checkpoint, restore_state, save_checkpoint
from synthgen.config import Config
from synthgen.data import Pair, PairDataset, find_pairs, image_channels, split_pairs
from synthgen.steps import build_state, metrics_text, seed_epoch, train_epoch, validate
from synthgen import console, plots, ray_session, storage

RAY_RUN_NAME = "ray_train"


class TrainError(RuntimeError):
    """Training cannot start or did not finish; the message says why."""


def _pairs_from(rows: list[list[str]]) -> list[Pair]:
    return [Pair(*r) for r in rows]


def _val_batch(cfg: Config, val: list[Pair], channels: int) -> dict[str, torch.Tensor] | None:
    if not val:
        return None
    ds = PairDataset(val, cfg.data.image_size, cfg.data.invert_mask, augment=False, channels=channels)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "mask")}


def _all_reduce_mean(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average per-worker epoch metrics so the reported losses describe the whole batch."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist()))


def run_training(loop_config: dict, rank: int, world: int, device: torch.device, checkpoint,
                 report: Callable[[dict, str | None], None], wrap: Callable = lambda net: net) -> None:
    """Build, restore from `checkpoint` (a Ray Checkpoint or None), then per epoch: train, validate,
    measure the search objective (rank 0, when loop_config has one) and `report(metrics, ckpt_dir)`.

    Shared by Ray Train workers and `synthgen tune` trials; only how they report differs."""
    loop_config = localise(loop_config)
    cfg = Config.from_dict(loop_config["config"])
    train_pairs, val_pairs = _pairs_from(loop_config["train_pairs"]), _pairs_from(loop_config["val_pairs"])
    channels = loop_config["channels"]
    state = build_state(cfg, channels, device)
    if checkpoint:
        with checkpoint.as_directory() as d:
            restore_state(state, load_checkpoint(d, device, training_state=True))
    # Only optimised networks are DDP-wrapped: DDP refuses a weight average, which has no gradients.
    state.nets = {name: wrap(net) if name in state.optimizers else net for name, net in state.nets.items()}
    objective = None
    if loop_config.get("objective") and rank == 0:
        from synthgen.objectives import ObjectiveEvaluator

        objective = ObjectiveEvaluator(loop_config["objective"], cfg, channels, device)

    dataset = PairDataset(train_pairs, cfg.data.image_size, cfg.data.invert_mask, cfg.data.augment,
                          repeats=cfg.data.repeats, seed=cfg.train.seed, channels=channels)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                        pin_memory=device.type == "cuda")
    val_batch = _val_batch(cfg, val_pairs, channels)

    while state.epoch < cfg.train.epochs:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        seed_epoch(cfg, epoch, rank)
        metrics = _all_reduce_mean(train_epoch(state, loader), device)
        metrics.update(validate(state, val_batch))
        if objective is not None:
            metrics.update(objective(state.nets))
        metrics["epoch"] = float(epoch + 1)
        state.epoch = epoch + 1
        state.history.append(metrics)
        due = state.epoch % cfg.train.checkpoint_every == 0 or state.epoch == cfg.train.epochs
        if due and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(os.path.join(tmp, "ckpt"), state)
                report(metrics, os.path.join(tmp, "ckpt"))
        else:
            report(metrics, None)


def _train_report(metrics: dict, checkpoint_dir: str | None) -> None:
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def train_loop_per_worker(loop_config: dict) -> None:
    """What every Ray Train worker runs."""
    ctx = ray.train.get_context()
    run_training(loop_config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                 ray.train.get_checkpoint(), _train_report, wrap=lambda net: prepare_model(net, move_to_device=False))


def loop_config(cfg: Config, train_pairs: list[Pair], val_pairs: list[Pair], channels: int,
                objective: dict | None = None) -> dict:
    """The plain-values argument of run_training (it travels to Ray workers).

    With Ray running, the pair files themselves travel too, through the object store (a few MB for
    3-30 pairs): workers on any node train without shared storage or the driver's working directory."""
    rows = [[p.stem, p.image, p.mask] for p in train_pairs + val_pairs]
    objective = objective or {}
    files = None
    if ray.is_initialized():
        pairs = rows + objective.get("val_pairs", []) + objective.get("train_pairs", [])
        segmenter = objective.get("segmenter")
        files = ray.put({"pairs": {path: Path(path).read_bytes() for r in pairs for path in r[1:]},
                         "segmenter": storage.pack_dir(segmenter) if segmenter else None})
    return {"config": cfg.to_dict(), "channels": channels, "objective": objective or None, "files": files,
            "train_pairs": rows[:len(train_pairs)], "val_pairs": rows[len(train_pairs):]}


def localise(loop_config: dict) -> dict:
    """loop_config with its paths pointing at local copies of the shipped files (if any)."""
    if loop_config.get("files") is None:
        return loop_config
    files = ray.get(loop_config["files"])
    local_dir = tempfile.mkdtemp(prefix="synthgen_pairs_")
    local = {}
    for i, (path, data) in enumerate(sorted(files["pairs"].items())):
        local[path] = os.path.join(local_dir, f"{i:05d}_{os.path.basename(path)}")
        Path(local[path]).write_bytes(data)

    def relocated(rows: list) -> list:
        return [[stem, local[image], local[mask]] for stem, image, mask in rows]

    out = dict(loop_config, files=None, train_pairs=relocated(loop_config["train_pairs"]),
               val_pairs=relocated(loop_config["val_pairs"]))
    if loop_config.get("objective"):
        objective = dict(loop_config["objective"])
        for key in ("train_pairs", "val_pairs"):
            objective[key] = relocated(objective.get(key, []))
        if files["segmenter"]:
            objective["segmenter"] = storage.unpack_dir(files["segmenter"], os.path.join(local_dir, "segmenter"))
        out["objective"] = objective
    return out


def torch_trainer(cfg: Config, config: dict, storage_path: str, callbacks: list | None = None,
                  gpus_per_worker: float = 1.0) -> TorchTrainer:
    """A TorchTrainer running train_loop_per_worker on train.workers workers (with train.gpu,
    `gpus_per_worker` GPUs each: fractions let small search trials share a GPU)."""
    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if t.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker,
                                                           **({"GPU": gpus_per_worker} if t.gpu else {})}),
        run_config=RunConfig(name=RAY_RUN_NAME, storage_path=storage_path, callbacks=callbacks,
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )


@dataclass
class TrainResult:
    out: str
    model_dir: str
    history: list[dict[str, float]]
    seconds: float


class EpochForwarder(ray.train.UserCallback):
    """Runs in Ray Train's controller: hands rank 0's metrics of every report, and word of a failed
    worker, to the driver, which prints them (workers print nothing, so each epoch is shown once
    whatever the worker count)."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if metrics:
            self.queue.put(metrics[0])

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        rank, error = min(worker_exceptions.items())
        self.queue.put({"failure": f"rank {rank}: {console.last_line(error)}"})


@contextlib.contextmanager
def epoch_progress(epochs: int) -> Iterator[EpochForwarder]:
    """A training progress display fed by the EpochForwarder it yields (pass it to the trainer).
    After a worker failure it warns, and says at which epoch Ray Train's restart resumed."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})  # a CPU-less actor: training workers hold the CPUs
    stop = threading.Event()
    bar = console.progress("training", epochs, "epoch")

    def pump() -> None:
        failed = False
        while True:
            try:
                item = queue.get(timeout=0.5)
            except Empty:
                if stop.is_set():
                    return
                continue
            except ray.exceptions.RayError:
                return  # Ray is going down (Ctrl-C): the driver reports that
            if "failure" in item:
                if not failed:
                    console.warn(f"a training worker failed ({item['failure']}); Ray Train restarts the "
                                 "workers from the last checkpoint (train.max_failures)")
                failed = True
                continue
            epoch = int(item["epoch"])
            if failed or epoch <= bar.done:  # an epoch again: the workers were restarted
                console.line(f"training resumed at epoch {epoch}/{epochs}")
                failed = False
            bar.update(max(0, epoch - bar.done), metrics_text(item))

    thread = threading.Thread(target=pump, name="synthgen-epochs", daemon=True)
    thread.start()
    try:
        yield EpochForwarder(queue)
    finally:
        stop.set()  # the pump drains what is queued, then stops
        thread.join()
        bar.close()
        queue.shutdown()


def _check_resources(cfg: Config) -> None:
    t = cfg.train
    available = ray.available_resources()
    need_cpu = t.workers * t.cpus_per_worker
    if need_cpu > available.get("CPU", 0) + 1e-9:
        raise TrainError(f"{t.workers} workers x {t.cpus_per_worker} CPUs need {need_cpu:g} CPUs but Ray has "
                         f"{available.get('CPU', 0):g} free: lower --workers or train.cpus_per_worker")
    if t.gpu and t.workers > available.get("GPU", 0):
        raise TrainError(f"--gpu with {t.workers} workers needs {t.workers} GPUs; Ray has "
                         f"{available.get('GPU', 0):g} (omit --gpu to train on CPU)")


def prepare_run_dir(cfg: Config, overwrite: bool) -> str:
    """Refuse to mix a new run into an old one: Ray Train resumes any run it finds under its name."""
    out = os.path.abspath(cfg.train.out)
    ray_dir = storage.join(checkpoint_storage(cfg), RAY_RUN_NAME)
    if storage.exists(ray_dir) and not cfg.train.resume:
        if not overwrite:
            raise TrainError(f"{out}: already holds a training run; pass --resume to continue it "
                             "or --overwrite to start over")
        fs, inner = storage.filesystem(ray_dir)
        fs.delete_dir(inner)
        shutil.rmtree(os.path.join(out, "model"), ignore_errors=True)
    if cfg.train.resume and not storage.exists(ray_dir):
        raise TrainError(f"{ray_dir}: --resume given but there is no run to resume there")
    os.makedirs(out, exist_ok=True)
    return out


def checkpoint_storage(cfg: Config) -> str:
    """train.storage, or the run directory itself."""
    return cfg.train.storage or os.path.abspath(cfg.train.out)


def fit(cfg: Config, overwrite: bool = False, pairs: list[Pair] | None = None) -> TrainResult:
    """Validate data, train on Ray, write outputs. Starts a local Ray if none is running."""
    t0 = time.time()
    pairs = pairs if pairs is not None else find_pairs(cfg.data.images, cfg.data.masks, cfg.data.min_pairs)
    train_pairs, val_pairs = split_pairs(pairs, cfg.data.val_pairs)
    channels = image_channels(pairs)
    out = prepare_run_dir(cfg, overwrite)
    config_path = cfg.save(out)
    console.line(f"synthgen train: {cfg.train.model} on {len(train_pairs)} train + {len(val_pairs)} validation "
                 f"pairs from {os.path.abspath(cfg.data.images)} ({channels} channel(s), {cfg.data.image_size} px), "
                 f"{cfg.train.workers} worker(s) -> {out}")
    console.line(f"config     {config_path}")

    ray_session.ensure()
    _check_resources(cfg)
    with epoch_progress(cfg.train.epochs) as forwarder:
        trainer = torch_trainer(cfg, loop_config(cfg, train_pairs, val_pairs, channels), checkpoint_storage(cfg),
                                callbacks=[forwarder])
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise TrainError(f"training failed after {cfg.train.max_failures} restart(s): "
                             f"{console.last_line(e)}") from None
    if result.checkpoint is None:
        raise TrainError(f"{out}: training finished without a checkpoint")
    model_dir = os.path.join(out, "model")
    with result.checkpoint.as_directory() as d:
        ckpt = load_checkpoint(d)
        storage.upload_dir(d, model_dir, overwrite=True)
    write_run_report(out, ckpt, val_pairs + train_pairs, time.time() - t0)  # held-out rows first
    return TrainResult(out, model_dir, ckpt.history, time.time() - t0)


def write_run_report(out: str, ckpt, sample_pairs: list[Pair], seconds: float) -> None:
    """Loss curves, sample grid, summary.json and a one-screen summary on stdout."""
    cfg = ckpt.cfg
    plots.plot_loss_curves(ckpt.history, os.path.join(out, "loss_curves.png"))
    ds = PairDataset(sample_pairs[: cfg.train.samples], cfg.data.image_size, cfg.data.invert_mask,
                     augment=False, channels=ckpt.channels)
    masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    reals = torch.stack([ds[i]["image"] for i in range(len(ds))])
    n_samples = 1 if cfg.train.model == "pix2pix" else 3  # the VAE's and the diffusion model's samples differ
    plots.save_sample_grid(ckpt.nets, masks, reals, os.path.join(out, "samples.png"), n_samples, cfg.train.seed)
    last = ckpt.history[-1] if ckpt.history else {}
    first = ckpt.history[0] if ckpt.history else {}
    summary = {"model": cfg.train.model, "epochs": ckpt.epoch, "seconds": round(seconds, 1),
               "first_epoch": first, "last_epoch": last,
               "images_per_s": (last.get("images", 0) * cfg.train.workers / last["time_s"]) if last else 0.0,
               "outputs": {"model": os.path.join(out, "model"), "loss_curves": os.path.join(out, "loss_curves.png"),
                           "samples": os.path.join(out, "samples.png"), "config": os.path.join(out, "config.yaml")}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    console.line(plots.summary_text(summary))

