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
