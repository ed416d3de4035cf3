"""Write a generated dataset atomically: Parquet shards, PNG folders, manifest (no Ray, no torch).

Layout of a finished dataset directory:
    data/part-00000.parquet ...   accepted samples (schema: SCHEMA below)
    images/<id>.png, masks/<id>.png   the same samples as PNG (unless png=False)
    rejected/images, rejected/masks   rejected candidates (only with keep_rejected)
    manifest.json                 config, checkpoint hash, counts, score means, run time/throughput
    quality.png                   score histograms with the threshold, accepted vs rejected examples
    realism.png                   real vs synthetic crops and spectra (generate.realism)
Everything is written under a hidden temporary sibling (`.<name>.partial-<pid>`) and renamed into
place by `finish()`: a crash or Ctrl-C never leaves a directory that looks like a complete dataset.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

METRICS = ("ssim", "iou", "edges", "diversity", "label_fidelity", "overall_quality")
SCHEMA = pa.schema([
    ("id", pa.string()), ("source_id", pa.string()),
    ("image", pa.binary()), ("mask", pa.binary()),          # PNG bytes; masks hold 0 and 255
    ("height", pa.int32()), ("width", pa.int32()),
    ("model", pa.string()), ("variation", pa.string()), ("params", pa.string()),  # params: JSON
    ("seed", pa.int64()),
    *[(m, pa.float64()) for m in METRICS],
])


class OutputError(OSError):
    """The output location cannot be used; the message names it."""


def encode_png(array: np.ndarray) -> bytes:
    """uint8 HxW or HxWxC (C = 1 or 3) -> PNG bytes (deterministic: no timestamps)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 array (HxW for gray, HxWx3 for RGB)."""
    return np.asarray(Image.open(io.BytesIO(data)))


class DatasetWriter:
    """Streams scored rows into a temporary directory; `finish()` renames it into place."""

    def __init__(self, out: str, overwrite: bool = False, png: bool = True, keep_rejected: bool = False,
                 shard_rows: int = 512, sample_size: int = 0, sample_seed: int = 0):
        """sample_size: keep a uniform random sample of this many accepted rows (`self.sample`, for the
        realism figures), drawn by reservoir sampling seeded by sample_seed; 0 = none."""
        self.out = os.path.abspath(out)
        if os.path.exists(self.out) and not overwrite:
            raise OutputError(f"{self.out}: already exists; pass --overwrite to replace it")
        parent = os.path.dirname(self.out)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.partial-", dir=parent)
        except OSError as e:
            raise OutputError(f"{parent}: cannot write the output there ({e.strerror})") from None
        self.png, self.keep_rejected, self.shard_rows = png, keep_rejected, shard_rows
        self.pending: list[dict] = []
        self.shards: list[str] = []
        self.accepted = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.scores: dict[str, list[float]] = {m: [] for m in METRICS}
        self.accepted_flags: list[bool] = []
        self.ids: set[str] = set()
        self.duplicates = 0
        self.nodes: dict[str, int] = {}
        self.examples: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {"accepted": [], "rejected": []}
        self.sample_size, self.sample_rng = sample_size, np.random.default_rng(sample_seed)
        self.sample: list[dict] = []  # {"source_id", "image", "mask"} (PNG bytes) of sampled accepted rows
        for sub in (["images", "masks"] if png else []) + (["rejected/images", "rejected/masks"] if keep_rejected else []):
            os.makedirs(os.path.join(self.tmp, sub))
        os.makedirs(os.path.join(self.tmp, "data"))

    def _write_png_pair(self, folder: str, row: dict) -> None:
        for kind in ("image", "mask"):
            with open(os.path.join(self.tmp, folder, kind + "s", row["id"] + ".png"), "wb") as f:
                f.write(row[kind])

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Add a batch of scored candidates (columns of SCHEMA plus 'accepted', 'reject_reason')."""
        for i in range(len(batch["id"])):
            row = {k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in batch.items()}
            if row["id"] in self.ids:  # a block delivered twice (it never should be): keep the first copy
                self.duplicates += 1
                continue
            self.ids.add(row["id"])
            node = str(row.get("node_id", ""))
            if node:
                self.nodes[node] = self.nodes.get(node, 0) + 1
            ok = bool(row["accepted"])
            for m in METRICS:
                self.scores[m].append(float(row[m]))
            self.accepted_flags.append(ok)
            examples = self.examples["accepted" if ok else "rejected"]
            if len(examples) < 4:
                examples.append((decode_png(row["image"]), decode_png(row["mask"]), float(row["overall_quality"])))
            if ok:
                self.accepted += 1
                self._keep_sample(row)
                self.pending.append({k: row[k] for k in SCHEMA.names})
                if self.png:
                    self._write_png_pair("", row)
                if len(self.pending) >= self.shard_rows:
                    self._flush()
            else:
                reason = str(row["reject_reason"])
                self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
                if self.keep_rejected:
                    self._write_png_pair("rejected", row)

    def _keep_sample(self, row: dict) -> None:
        # Reservoir sampling (algorithm R): uniform over all accepted rows without holding them; rows
        # arrive in a fixed order, so the sample is the same for a seed.
        item = {k: row[k] for k in ("source_id", "image", "mask")}
        if len(self.sample) < self.sample_size:
            self.sample.append(item)
        elif self.sample_size:
            j = int(self.sample_rng.integers(0, self.accepted))
            if j < self.sample_size:
                self.sample[j] = item

    def _flush(self, final: bool = False) -> None:
        # An empty dataset still gets one (empty) shard so that every reader sees the schema.
        if not self.pending and not (final and not self.shards):
            return
        name = f"part-{len(self.shards):05d}.parquet"
        table = pa.Table.from_pylist(self.pending, schema=SCHEMA)
        pq.write_table(table, os.path.join(self.tmp, "data", name))
        self.shards.append(os.path.join("data", name))
        self.pending = []

    @property
    def generated(self) -> int:
        return len(self.accepted_flags)

    def quality_report(self, threshold: float) -> dict:
        """What `plots.plot_quality_metrics` draws."""
        return {"scores": self.scores, "accepted": self.accepted_flags, "threshold": threshold,
                "examples": self.examples}

    def finish(self, manifest: dict, extra_files: dict[str, str] | None = None) -> str:
        """Flush, write manifest.json (+ files already written into `self.tmp`), rename into place."""
        self._flush(final=True)
        manifest = {**manifest, "parquet_shards": self.shards}
        with open(os.path.join(self.tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        aside = None
        if os.path.exists(self.out):  # --overwrite: keep the old dataset until the new one is in place
            aside = self.tmp + ".old"
            os.replace(self.out, aside)
        os.replace(self.tmp, self.out)
        if aside:
            shutil.rmtree(aside, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
