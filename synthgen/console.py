"""What a synthgen command prints: a short header, one progress display per phase, the warnings that
matter and the one-screen summary (no Ray, no torch).

    from synthgen import console
    console.line("synthgen train: pix2pix on 5 pairs -> runs/p2p")
    with console.progress("training", total=24, unit="epoch") as bar:
        bar.update(1, "G_l1 0.41  val_ssim 0.32")
    console.warn("no candidate passed the threshold")

On a terminal (stderr is a TTY) a phase is a tqdm bar on stderr that redraws in place. Anywhere else
(CI, a pipe, a Ray job's log) a phase prints a few plain lines instead, at every quarter of the way
and at the end, so a log stays short however long the run; the full per-step record is in the run's
files (summary.json, the checkpoint's history, manifest.json, results.json). With `--verbose` Ray's
own output interleaves with synthgen's, so a phase prints one plain line per step: a bar would be torn
apart by it. Headers, progress lines and summaries go to stdout; bars, warnings and errors to stderr.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

MILESTONES = 4
"""Plain (non-TTY) progress: one line at every 1/MILESTONES of a phase, and at its end."""


@dataclass
class _Settings:
    verbose: bool = False
    interactive: bool | None = None
    """None: decide from stderr being a terminal, when a phase starts."""
    muted: int = 0
    """Depth of `muted()` blocks: nested phases (evaluate's generations) print nothing but warnings."""


_settings = _Settings()
_lock = threading.Lock()


def configure(verbose: bool = False, interactive: bool | None = None) -> None:
    """The command's settings: `verbose` (Ray's output is on too), `interactive` (bars; None: when
    stderr is a terminal)."""
    _settings.verbose, _settings.interactive = verbose, interactive


def _interactive() -> bool:
    if _settings.verbose:
        return False
    if _settings.interactive is not None:
        return _settings.interactive
    return sys.stderr.isatty()


def line(text: str = "") -> None:
    """A line of synthgen's own output (header, summary) on stdout."""
    if _settings.muted:
        return
    with _lock:
        print(text, flush=True)


def warn(text: str) -> None:
    """A warning that matters, on stderr (also inside muted phases)."""
    with _lock:
        print(f"warning: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Silence headers, progress and summaries of the phases run inside (warnings still show)."""
    _settings.muted += 1
    try:
        yield
    finally:
        _settings.muted -= 1


class Progress:
    """One phase: `update(n, status)` advances it by n steps (of `total`) and shows `status`."""

    def __init__(self, label: str, total: int, unit: str, initial: int = 0):
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.done, self.status = initial, ""
        self.t0 = time.time()
        self.start = initial
        self.quiet = bool(_settings.muted) or self.total == 0  # nothing to show
        self.bar = None
        self.next_milestone = self._milestone_after(initial)
        if not self.quiet and _interactive():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=label, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, leave=True)

    def _milestone_after(self, done: int) -> int:
        step = max(1, -(-self.total // MILESTONES))
        return min(self.total, (done // step + 1) * step)

    def rate(self) -> float:
        """Steps per second since the phase started (steps done before a resume not counted)."""
        elapsed = time.time() - self.t0
        return (self.done - self.start) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, status: str | None = None) -> None:
        """Advance by n steps; `status` (losses, counts, ...) replaces the shown status when given."""
        with _lock:
            self.done += n
            if status is not None:
                self.status = status
            if self.quiet:
                return
            if self.bar is not None:
                self.bar.set_postfix_str(self.status, refresh=False)
                self.bar.update(n)
            elif _settings.verbose or self.done >= self.next_milestone:
                self.next_milestone = self._milestone_after(self.done)
                print(self._plain_line(), flush=True)

    def _plain_line(self) -> str:
        elapsed = time.time() - self.t0
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        status = f"  {self.status}" if self.status else ""
        return f"{self.label} {self.done}/{self.total} {units}{status}  ({elapsed:.0f}s)"

    def close(self) -> None:
        with _lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(label: str, total: int, unit: str, initial: int = 0) -> Progress:
    """A phase of `total` steps (e.g. epochs, candidates, trials); use as a context manager."""
    return Progress(label, total, unit, initial)


def is_verbose() -> bool:
    return _settings.verbose


def last_line(error: BaseException) -> str:
    """An exception's message without what comes before its last line (e.g. a worker's traceback,
    which Ray puts into the message; it stays in the logs)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
