"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_*.py`, so importable)."""
from __future__ import annotations

import argparse
import os
import sys
import time

SAMPLE_TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "synthgen", "sample_data",
                            "isbi2012", "train")


def make_log(name: str):
    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return log


def csv_list(kind):
    """argparse type: a comma list of `kind` values."""
    def parse(s: str):
        try:
            values = [kind(v.strip()) for v in s.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {kind.__name__}, got {s!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return parse


def reserve_stdout():
    """A file on the real stdout for the one JSON line; file descriptor 1 itself then points at stderr.

    Ray, Ray Train and Ray Data print to stdout (also from C++ and child processes, hence the file
    descriptor and not just sys.stdout), which would break `> result.json`."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def error_text(e: BaseException) -> str:
    """'Type: last line of the message', at most 500 characters: what a result row's "error" holds."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"[:500]
