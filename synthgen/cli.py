"""Command line: `synthgen train | generate | evaluate | tune | submit | demo`.

    synthgen demo                      # train + generate on the shipped ISBI 2012 sample -> runs/demo
    synthgen train --model vae --images imgs/ --masks masks/ --out runs/vae --epochs 50 --workers 2
    synthgen generate --checkpoint runs/vae --num-variations 16 --out runs/vae_synth --variations latent,elastic
    synthgen tune --model pix2pix --images imgs/ --masks masks/ --trials 12 --epochs 6 --out runs/tune
    synthgen submit generate --config gen.yaml --storage s3://bucket/synth --address http://HEAD:8265

Every flag overrides the matching key of `--config run.yaml`, which overrides the defaults in
`synthgen/config.py`. `--dry-run` prints the resolved config and exits; a run saves it as config.yaml.

A run prints a header, one progress display per phase and a summary; Ray's own output goes to the
run's logs/ folder (synthgen/ray_session.py) unless `--verbose`. Errors are one paragraph: known
ones (bad data, config, checkpoint, output) exit 2, anything unexpected exits 1 with its traceback
saved beside the logs.
"""
from __future__ import annotations

import argparse
import ast
import functools
import inspect
import os
import sys
import tempfile
import traceback
from importlib import resources
from typing import Callable

from synthgen.config import Config, ConfigError

# flag -> config key; the flag's help is the config field's documentation (one source of truth)
TRAIN_FLAGS = {
    "--model": "train.model", "--images": "data.images", "--masks": "data.masks", "--out": "train.out",
    "--epochs": "train.epochs", "--image-size": "data.image_size", "--batch-size": "train.batch_size",
    "--lr": "train.lr", "--lambda-l1": "pix2pix.lambda_l1", "--beta": "vae.beta",
    "--latent-dim": "vae.latent_dim", "--workers": "train.workers", "--seed": "train.seed",
    "--precision": "train.precision", "--grad-accum": "train.grad_accum", "--grad-clip": "train.grad_clip",
    "--checkpoint-every": "train.checkpoint_every", "--keep-checkpoints": "train.keep_checkpoints",
    "--cpus-per-worker": "train.cpus_per_worker", "--gan-mode": "pix2pix.gan_mode", "--ngf": "pix2pix.ngf",
    "--repeats": "data.repeats", "--val-pairs": "data.val_pairs", "--generator": "pix2pix.generator",
    "--discriminator": "pix2pix.discriminator", "--resolutions": "train.resolutions",
    "--stage-epochs": "train.stage_epochs", "--fade-in-epochs": "train.fade_in_epochs",
    "--sample-steps": "diffusion.sample_steps",
}
TRAIN_SWITCHES = {"--gpu": "train.gpu", "--invert-mask": "data.invert_mask", "--resume": "train.resume",
                  "--grad-checkpoint": "train.grad_checkpoint", "--channels-last": "train.channels_last",
                  "--compile": "train.compile"}
GENERATE_FLAGS = {
    "--checkpoint": "generate.checkpoint", "--vae-checkpoint": "generate.vae_checkpoint",
    "--masks": "generate.masks", "--images": "generate.images", "--out": "generate.out",
    "--model": "generate.model", "--num-variations": "generate.num_variations",
    "--variations": "generate.variations", "--threshold": "generate.threshold", "--weights": "generate.weights",
    "--batch-size": "generate.batch_size", "--seed": "generate.seed", "--precision": "generate.precision",
    "--cpus-per-actor": "generate.cpus_per_actor", "--shard-rows": "generate.shard_rows",
    "--segmenter": "generate.segmenter", "--segmenter-steps": "generate.segmenter_steps",
    "--max-batch": "generate.max_batch", "--scoring": "generate.scoring", "--sample-steps": "generate.sample_steps",
}
GENERATE_SWITCHES = {"--gpu": "generate.gpu", "--keep-rejected": "generate.keep_rejected",
                     "--channels-last": "generate.channels_last", "--compile": "generate.compile"}
EVALUATE_FLAGS = {
    "--real-images": "evaluate.real_images", "--real-masks": "evaluate.real_masks",
    "--test-images": "evaluate.test_images", "--test-masks": "evaluate.test_masks",
    "--synthetic": "evaluate.synthetic", "--k": "evaluate.k", "--seeds": "evaluate.seeds",
    "--conditions": "evaluate.conditions", "--image-size": "evaluate.image_size",
    "--seg-steps": "evaluate.seg_steps", "--gen-steps": "evaluate.gen_steps", "--out": "evaluate.out",
    "--num-variations": "evaluate.num_variations", "--threshold": "evaluate.threshold",
    "--generator": "evaluate.gen_generator", "--mixing": "evaluate.mixing",
    "--synthetic-fraction": "evaluate.synthetic_fraction", "--synthetic-batch": "evaluate.synthetic_batch",
    "--synthetic-weight": "evaluate.synthetic_weight", "--pretrain-steps": "evaluate.pretrain_steps",
    "--curve-every": "evaluate.curve_every", "--thresholds": "evaluate.thresholds",
    "--label-fidelity": "evaluate.label_fidelity", "--gen-set": "evaluate.gen_set",
    "--variations": "evaluate.variations",
}
EVALUATE_SWITCHES = {"--invert-mask": "evaluate.invert_mask"}
TUNE_FLAGS = {
    "--model": "tune.model", "--images": "data.images", "--masks": "data.masks",
    "--val-images": "tune.val_images", "--val-masks": "tune.val_masks", "--trials": "tune.trials",
    "--max-concurrent": "tune.max_concurrent", "--workers-per-trial": "tune.workers_per_trial",
    "--gpus-per-trial": "tune.gpus_per_trial", "--objective": "tune.objective", "--mode": "tune.mode",
    "--out": "tune.out", "--space": "tune.space", "--scheduler": "tune.scheduler",
    "--grace-period": "tune.grace_period", "--epochs": "train.epochs", "--image-size": "data.image_size",
    "--batch-size": "train.batch_size", "--cpus-per-worker": "train.cpus_per_worker", "--seed": "tune.seed",
    "--repeats": "data.repeats", "--val-pairs": "data.val_pairs", "--seg-steps": "tune.seg_steps",
}
TUNE_SWITCHES = {"--invert-mask": "data.invert_mask", "--resume": "tune.resume"}


def sample_data_dir() -> str:
    """The ISBI 2012 sample shipped inside the package (see its SOURCE.md for terms and citation)."""
    return str(resources.files("synthgen") / "sample_data" / "isbi2012")


@functools.lru_cache(maxsize=None)
def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (parsed from its source)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _field_doc(dotted: str) -> str:
    section, key = dotted.split(".")
    obj = getattr(Config(), section)
    return f"{_field_docs(type(obj)).get(key, '')} [default: {getattr(obj, key)!r}]".replace("%", "%%")


def _add_flags(p: argparse.ArgumentParser, flags: dict[str, str], switches: dict[str, str]) -> None:
    p.add_argument("--config", help="YAML file with any of the sections of synthgen/config.py")
    for flag, key in flags.items():
        p.add_argument(flag, dest=key, default=None, metavar=key.split(".")[1].upper(), help=_field_doc(key))
    for flag, key in switches.items():
        p.add_argument(flag, dest=key, action="store_const", const=True, default=None, help=_field_doc(key))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output in --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--address", default=None, help="Ray cluster to run on (HOST:PORT or ray://HOST:PORT) "
                   "[default: $RAY_ADDRESS, else a private local Ray for this run alone]")
    _add_verbose(p)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's own output live (by default it goes to the run's logs/ folder)")


def _parse_actors(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(",")
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--actors takes MIN,MAX (e.g. 1,4), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_flags(sub.add_parser("train", help="train pix2pix, the conditional VAE or the diffusion model on Ray Train"),
               TRAIN_FLAGS, TRAIN_SWITCHES)
    gen = sub.add_parser("generate", help="generate a filtered synthetic dataset on Ray Data")
    _add_flags(gen, GENERATE_FLAGS, GENERATE_SWITCHES)
    gen.add_argument("--actors", type=_parse_actors, default=None, metavar="MIN,MAX",
                     help="generator actor pool size range [default: 1,2]")
    gen.add_argument("--png", dest="generate.png", action=argparse.BooleanOptionalAction, default=None,
                     help=_field_doc("generate.png"))
    _add_flags(sub.add_parser("evaluate", help="downstream proof: segmenters trained with and without "
                              "synthetic data, scored on held-out real pairs"), EVALUATE_FLAGS, EVALUATE_SWITCHES)
    _add_flags(sub.add_parser("tune", help="hyperparameter search on Ray Tune (Optuna TPE + ASHA)"),
               TUNE_FLAGS, TUNE_SWITCHES)
    sub_job = sub.add_parser("submit", help="submit train / tune / generate to a Ray cluster (Jobs API)")
    sub_job.add_argument("job", choices=("train", "tune", "generate"))
    sub_job.add_argument("--config", required=True, help="YAML config inside the working directory")
    sub_job.add_argument("--storage", default="", help="output folder (shared by all nodes) or URI (s3://, gs://, ...)")
    sub_job.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sub_job.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                         help="Ray dashboard / Jobs API address [default: $RAY_API_SERVER_ADDRESS or "
                              "http://127.0.0.1:8265]")
    sub_job.add_argument("--working-dir", default=".", help="uploaded with the job [default: .]")
    sub_job.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sub_job.add_argument("--no-wait", action="store_true", help="return once submitted")
    _add_verbose(sub_job)
    demo = sub.add_parser("demo", help="train + generate on the shipped ISBI 2012 sample (~5 min on 2 CPUs)")
    _add_flags(demo, TRAIN_FLAGS, TRAIN_SWITCHES)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    out = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    if getattr(args, "actors", None):
        out["generate.actors_min"], out["generate.actors_max"] = args.actors
    return out


def resolve_config(args: argparse.Namespace) -> Config:
    if args.command == "demo":
        sample = sample_data_dir()
        base = {"data.images": os.path.join(sample, "train", "images"),
                "data.masks": os.path.join(sample, "train", "masks")}
        config_path = args.config or str(resources.files("synthgen") / "configs" / "demo.yaml")
        cfg = Config.from_yaml(config_path, {**base, **_overrides(args)})
        cfg.generate.checkpoint = cfg.train.out
        cfg.generate.out = os.path.join(cfg.train.out, "synthetic")
        return cfg
    cfg = Config.from_yaml(args.config, _overrides(args))
    if args.command in ("generate", "evaluate"):
        return cfg
    if not cfg.data.images or not cfg.data.masks:
        if args.command == "tune" and cfg.tune.resume:
            return cfg  # the search's own config.yaml holds the data
        raise ConfigError(f"{args.command} needs --images DIR and --masks DIR (or data.images / data.masks in --config)")
    return cfg


LOG_DIR_KEYS = {"train": "train.out", "demo": "train.out", "generate": "generate.out", "evaluate": "evaluate.out",
                "tune": "tune.out"}
"""Whose output folder gets the run's logs/ (Ray's output and driver.log)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from synthgen import console, ray_session

    console.configure(verbose=args.verbose)
    ray_session.configure(address=None if args.command == "submit" else args.address, verbose=args.verbose)
    if args.command == "submit":
        from synthgen.jobs import submit

        return _guarded(args, lambda: submit(args.job, args.config, args.storage, args.set, args.address,
                                             args.working_dir, args.overwrite, wait=not args.no_wait,
                                             verbose=args.verbose))
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        print(f"synthgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(cfg.to_yaml())
        return 0
    log_dir = os.path.join(os.path.abspath(cfg.get(LOG_DIR_KEYS[args.command])), "logs")
    return _guarded(args, lambda: _execute(args, cfg), log_dir)


def _guarded(args: argparse.Namespace, action: Callable[[], int], log_dir: str | None = None) -> int:
    """Run `action`; whatever happens, Ray's logs end up in `log_dir` and a failure is one paragraph:
    known errors (exit 2) say what to fix, anything else (exit 1) points at its saved traceback."""
    from synthgen import console, ray_session
    from synthgen.checkpoint import CheckpointError
    from synthgen.data import DataError
    from synthgen.writers import OutputError

    trace = None
    try:
        rc = action()
    except (ConfigError, DataError, CheckpointError, OutputError) as e:
        print(f"synthgen {args.command}: error: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        resume = " (run the same command with --resume to continue)" if args.command in ("train", "tune") else ""
        print(f"synthgen {args.command}: interrupted; completed checkpoints are kept{resume}, no partial "
              "dataset is left behind", file=sys.stderr)
        rc = 130
    except Exception as e:  # noqa: BLE001 - a bug or an environment problem: one paragraph, not a traceback
        if args.verbose:
            raise
        rc, trace = 1, (f"{type(e).__name__}: {console.last_line(e)}", traceback.format_exc())
    finally:
        logs = ray_session.close(log_dir)
    if trace is not None:
        if logs and os.path.isdir(logs):
            path = os.path.join(logs, "error.log")
        else:
            fd, path = tempfile.mkstemp(prefix="synthgen-error-", suffix=".log")
            os.close(fd)
        with open(path, "w") as f:
            f.write(trace[1])
        print(f"synthgen {args.command}: error: {trace[0]}\nThis is unexpected (a bug, or a problem with "
              f"Ray or the machine); the traceback is in {path}", file=sys.stderr)
    if logs:
        console.line(ray_session.describe_logs(logs))
    return rc


def _execute(args: argparse.Namespace, cfg: Config) -> int:
    """train / generate / evaluate / tune / demo with a resolved config."""
    if args.command in ("train", "demo"):
        from synthgen.train import TrainError, fit

        try:
            fit(cfg, overwrite=args.overwrite or args.command == "demo")
        except TrainError as e:
            raise ConfigError(str(e)) from None
    if args.command in ("generate", "demo"):
        from synthgen.generate import generate

        generate(cfg, overwrite=args.overwrite or args.command == "demo")
    if args.command == "evaluate":
        from synthgen.evaluate import run_evaluation

        run_evaluation(cfg)
    if args.command == "tune":
        from synthgen.search import run_search

        run_search(cfg, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
