"""The search space of `synthgen tune`: parsing, validation and applying a point to a Config.

    params = parse_space({"pix2pix.lambda_l1": "loguniform(10, 300)", "pix2pix.gan_mode": "choice(lsgan, hinge)"}, cfg)
    cfg2 = apply_params(cfg, {"pix2pix.lambda_l1": 42.0})

Plain Python (Ray Tune only to turn a Param into a Tune domain), so it is testable without Ray.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

from synthgen.config import OBJECTIVES, Config, ConfigError

DEFAULT_SPACES = {
    "pix2pix": {"pix2pix.lambda_l1": "loguniform(10, 300)", "train.lr": "loguniform(5e-5, 1e-3)",
                "train.lr_d": "loguniform(5e-5, 1e-3)"},
    "vae": {"vae.beta": "loguniform(0.01, 10)", "train.lr": "loguniform(5e-5, 2e-3)"},
}
"""The space searched when tune.space is empty; hybrid searches the union plus train.model."""

SEARCHABLE = ("data", "pix2pix", "vae", "train")
NOT_SEARCHABLE = {"data.images", "data.masks", "data.val_pairs", "data.min_pairs", "train.out", "train.epochs",
                  "train.workers", "train.gpu", "train.cpus_per_worker", "train.resume", "train.seed",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.max_failures", "train.samples"}
"""Keys that define the run rather than the model (paths, resources, the epoch budget, the seed)."""

_SPEC = re.compile(r"^\s*(loguniform|uniform|int|choice)\s*\((.*)\)\s*$")


class SearchError(ConfigError):
    """The search cannot start or did not finish; the message says why."""


@dataclass
class Param:
    key: str
    kind: str
    values: tuple

    def domain(self):
        from ray import tune

        lo, hi = (self.values + (None, None))[:2]
        return {"loguniform": lambda: tune.loguniform(lo, hi), "uniform": lambda: tune.uniform(lo, hi),
                "int": lambda: tune.randint(lo, hi + 1), "choice": lambda: tune.choice(list(self.values))}[self.kind]()

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.values[0] <= value <= self.values[1]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(str(v) for v in self.values)})"


def parse_space(space: dict[str, str], base: Config) -> list[Param]:
    """Validate 'key: distribution' entries against the config; every bad entry is reported at once."""
    if not space:
        raise SearchError("tune.space is empty: give at least one 'key: distribution'")
    params, errors = [], []
    for key, text in space.items():
        try:
            params.append(_parse_param(key, str(text), base))
        except (SearchError, ConfigError) as e:
            errors.append(f"{key}: {e}")
    if errors:
        raise SearchError("invalid search space (tune.space):\n  " + "\n  ".join(errors))
    return params


def _parse_param(key: str, text: str, base: Config) -> Param:
    section, _, name = key.partition(".")
    if section not in SEARCHABLE or key in NOT_SEARCHABLE:
        raise SearchError(f"not searchable (search keys of {', '.join(SEARCHABLE)} that shape the model or "
                          f"its training; paths, resources, epochs and the seed are fixed)")
    if not hasattr(getattr(base, section), name):
        raise SearchError("unknown config key")
    default = getattr(getattr(base, section), name)
    m = _SPEC.match(text)
    if not m:
        raise SearchError(f"'{text}' is not loguniform(lo, hi), uniform(lo, hi), int(lo, hi) or choice(a, b, ...)")
    kind, args = m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]
    if kind == "choice":
        if not args:
            raise SearchError("choice() needs at least one value")
        values = tuple(_coerced(base, key, a) for a in args)
    else:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise SearchError(f"{kind}() needs a numeric key; '{key}' is {type(default).__name__}: use choice()")
        if kind == "int" and not isinstance(default, int):
            raise SearchError(f"int() needs an integer key; '{key}' is a float: use uniform() or loguniform()")
        if len(args) != 2:
            raise SearchError(f"{kind}() takes two bounds (lo, hi), got {len(args)}")
        try:
            lo, hi = (int(a) if kind == "int" else float(a) for a in args)
        except ValueError:
            raise SearchError(f"bounds {args} are not {'integers' if kind == 'int' else 'numbers'}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise SearchError(f"bounds must be finite with lo < hi, got ({lo}, {hi})")
        if kind == "loguniform" and lo <= 0:
            raise SearchError(f"loguniform needs lo > 0, got {lo}")
        values = (lo, hi)
        for v in values:
            _coerced(base, key, v)
    return Param(key, kind, values)


def _coerced(base: Config, key: str, value):
    """The value as the key's type, checked by Config.validate (e.g. no negative lambda_l1)."""
    cfg = copy.deepcopy(base)
    cfg.set(key, value, "search space")
    try:
        cfg.validate()
    except ConfigError as e:
        raise SearchError(f"value {value!r} makes an invalid config: {str(e).splitlines()[-1].strip()}") from None
    return cfg.get(key)


def search_model(cfg: Config) -> str:
    return cfg.tune.model or cfg.train.model


def effective_space(cfg: Config) -> dict[str, str]:
    model = search_model(cfg)
    if cfg.tune.space:
        space = dict(cfg.tune.space)
    elif model == "hybrid":
        space = {**DEFAULT_SPACES["pix2pix"], **DEFAULT_SPACES["vae"]}
    else:
        space = dict(DEFAULT_SPACES[model])
    if model == "hybrid":
        space["train.model"] = "choice(pix2pix, vae)"
    return space


def apply_params(base: Config, params: dict) -> Config:
    cfg = copy.deepcopy(base)
    for key, value in params.items():
        cfg.set(key, value, "search space")
    cfg.validate()
    return cfg


def base_point(cfg: Config, params: list[Param]) -> dict:
    """The base config as a point of the space (train.lr_d 0 means 'same as train.lr')."""
    point = {p.key: cfg.get(p.key) for p in params}
    if point.get("train.lr_d") == 0.0:
        point["train.lr_d"] = cfg.train.lr
    return point


def objective_mode(cfg: Config) -> tuple[str, str]:
    return cfg.tune.objective, cfg.tune.mode or OBJECTIVES[cfg.tune.objective]
