"""Command line: `synthgen train | demo`.

    synthgen demo                      # train on the shipped ISBI 2012 sample, write runs/demo
    synthgen train --model vae --images imgs/ --masks masks/ --out runs/vae --epochs 50 --workers 2

Every flag overrides the matching key of `--config run.yaml`, which overrides the defaults in
`synthgen/config.py`. `--dry-run` prints the resolved config and exits.
"""
from __future__ import annotations

import argparse
import ast
import functools
import inspect
import os
import sys
from importlib import resources

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
    "--repeats": "data.repeats", "--val-pairs": "data.val_pairs",
}
SWITCHES = {"--gpu": "train.gpu", "--invert-mask": "data.invert_mask", "--resume": "train.resume"}


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


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of the sections data, pix2pix, vae, train")
    for flag, key in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=key, default=None, metavar=key.split(".")[1].upper(), help=_field_doc(key))
    for flag, key in SWITCHES.items():
        p.add_argument(flag, dest=key, action="store_const", const=True, default=None, help=_field_doc(key))
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_flags(sub.add_parser("train", help="train pix2pix or the conditional VAE on Ray Train"))
    demo = sub.add_parser("demo", help="train on the shipped ISBI 2012 sample (about 5-10 min on 2 CPUs)")
    _add_run_flags(demo)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def resolve_config(args: argparse.Namespace) -> Config:
    if args.command == "demo":
        sample = sample_data_dir()
        base = {"data.images": os.path.join(sample, "train", "images"),
                "data.masks": os.path.join(sample, "train", "masks")}
        config_path = args.config or str(resources.files("synthgen") / "configs" / "demo.yaml")
        return Config.from_yaml(config_path, {**base, **_overrides(args)})
    cfg = Config.from_yaml(args.config, _overrides(args))
    if not cfg.data.images or not cfg.data.masks:
        raise ConfigError("train needs --images DIR and --masks DIR (or data.images / data.masks in --config)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from synthgen.checkpoint import CheckpointError
    from synthgen.data import DataError

    try:
        cfg = resolve_config(args)
        if args.dry_run:
            print(cfg.to_yaml())
            return 0
        from synthgen.train import TrainError, fit

        try:
            fit(cfg, overwrite=args.overwrite or args.command == "demo")
        except TrainError as e:
            raise ConfigError(str(e)) from None
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"synthgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthgen {args.command}: interrupted; completed checkpoints are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
