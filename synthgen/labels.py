"""Class tables and label maps: how mask files become class indices, and those become network input.

    from synthgen.labels import table_from_config, mask_to_condition
    table = table_from_config({"background": 0, "membrane": 1, "mitochondrion": 2})
    labels = table.label_map(raw, "m.png")          # HxW uint8 in 0..N-1, or DataError naming m.png
    x = mask_to_condition(labels, table.num_classes)  # CxHxW float32: what the generators take

A **label map** is an HxW uint8 array of class indices 0..N-1, N = `num_classes` >= 2. Three kinds of
table turn a mask file into one:
- `binary` (the default, N = 2): data.py's rules, unchanged: at most two gray values, the brighter is
  foreground, `invert_mask` flips them.
- `indices` (`data.num_classes: N`, or 0 to infer N as the largest index found + 1): a single-channel
  PNG/TIFF whose gray value, or a palette PNG whose palette index, IS the class index.
- `table` (`data.classes`, name -> value, in class order): each class is a gray/palette value
  (`membrane: 1`) or an RGB colour (`road: [128, 64, 128]`) of a colour-coded mask.
A value outside the table is an error naming the file and the values; so is a JPEG label map
(compression blends neighbouring classes into values that are no class).

**Conditioning**: binary masks reach the networks as one foreground channel (exactly as before this
module existed, so binary checkpoints and seeds are unchanged); N > 2 classes as an N-channel one-hot
map. `condition_channels(N)` is that channel count; `condition_to_labels` inverts it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from synthgen.errors import DataError

KINDS = ("binary", "indices", "table")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Distinct colours for previews of index label maps; class i > len uses a seeded colour.
_PREVIEW = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
            (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255)]


@dataclass(frozen=True)
class ClassTable:
    """How to read a mask file as a label map, and what its classes are called."""

    names: tuple[str, ...]
    """One name per class, in class-index order."""
    values: tuple = ()
    """kind 'table': per class its gray/palette value (int) or RGB colour (3-tuple); otherwise ()."""
    kind: str = "binary"
    invert: bool = False
    """Binary only: the darker value is foreground (data.invert_mask)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.names) < 2:
            raise ValueError(f"a class table needs at least 2 classes, got {len(self.names)}")
        if self.kind == "binary" and len(self.names) != 2:
            raise ValueError("a binary table has exactly 2 classes")
        if self.kind == "table" and len(self.values) != len(self.names):
            raise ValueError("a 'table' table needs one value per class")
        if self.invert and self.kind != "binary":
            raise ValueError("invert_mask applies to binary masks only")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def colour_coded(self) -> bool:
        return any(isinstance(v, tuple) for v in self.values)

    def describe(self) -> str:
        """'5 classes: intracellular=0, membrane=1, ...' (one line, for the terminal and the manifest)."""
        if self.kind == "binary":
            return "binary masks (2 classes: background, foreground)"
        shown = [f"{n}={list(v) if isinstance(v, tuple) else v}" for n, v in
                 zip(self.names, self.values or range(self.num_classes))]
        if len(shown) > 12:
            shown = shown[:11] + [f"... ({len(shown) - 11} more)"]
        return f"{self.num_classes} classes: {', '.join(shown)}"

    def to_dict(self) -> dict:
        """JSON-safe; round-trips through from_dict (nets.json, Parquet metadata, manifest)."""
        return {"kind": self.kind, "names": list(self.names), "invert": self.invert,
                "values": [list(v) if isinstance(v, tuple) else v for v in self.values]}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassTable":
        values = tuple(tuple(v) if isinstance(v, list) else v for v in d.get("values", ()))
        return cls(tuple(d["names"]), values, d.get("kind", "table"), bool(d.get("invert", False)))

    def label_map(self, raw: np.ndarray, path: str) -> np.ndarray:
        """raw (from `raw_mask_array`) -> HxW uint8 label map; DataError naming `path` otherwise.
        Binary tables are read by data.binarise_mask, not here."""
        if self.kind == "binary":
            raise ValueError("binary masks are read by synthgen.data.binarise_mask")
        if os.path.splitext(path)[1].lower() in JPEG_EXTENSIONS:
            raise DataError(f"{path}: JPEG-compressed label map: compression blends neighbouring classes "
                            "into values that are no class; save label maps as PNG or TIFF")
        if self.colour_coded:
            return self._from_colours(raw, path)
        if raw.ndim == 3:
            raise DataError(f"{path}: colour-coded mask, but the class table has no colours: give "
                            "data.classes with an [r, g, b] colour per class (e.g. road: [128, 64, 128])")
        values = np.unique(raw)
        if self.kind == "indices":
            bad = values[values >= self.num_classes]
            if len(bad):
                raise DataError(f"{path}: holds class indices {_listed(bad)} ({int(np.isin(raw, bad).sum())} px)"
                                f" but there are {self.num_classes} classes (0..{self.num_classes - 1}); "
                                "raise data.num_classes (0 infers it) or fix the mask")
            return raw.astype(np.uint8)
        lookup = {int(v): i for i, v in enumerate(self.values)}
        bad = [int(v) for v in values if int(v) not in lookup]
        if bad:
            raise DataError(f"{path}: values {_listed(bad)} ({int(np.isin(raw, bad).sum())} px) are not in the "
                            f"class table ({self.describe()})")
        lut = np.zeros(int(values.max()) + 1, np.uint8)
        for v in values:
            lut[int(v)] = lookup[int(v)]
        return lut[raw.astype(np.int64)]

    def _from_colours(self, raw: np.ndarray, path: str) -> np.ndarray:
        rgb = np.repeat(raw[:, :, None], 3, axis=2) if raw.ndim == 2 else raw[:, :, :3]
        key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        codes = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in
                 enumerate(v if isinstance(v, tuple) else (v, v, v) for v in self.values)}
        found, inverse = np.unique(key, return_inverse=True)
        bad = [f for f in found if int(f) not in codes]
        if bad:
            shown = [[int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255] for c in bad[:5]]
            raise DataError(f"{path}: {len(bad)} colours are not in the class table, e.g. {shown} "
                            f"({int(np.isin(key, bad).sum())} px); {self.describe()}")
        return np.array([codes[int(f)] for f in found], np.uint8)[inverse.reshape(key.shape)]

    def check_covers(self, other: "ClassTable", source: str) -> None:
        """DataError unless masks read with `other` fit a model trained with this table."""
        if other.num_classes > self.num_classes:
            raise DataError(f"{source}: masks have {other.num_classes} classes but the checkpoint was trained on "
                            f"{self.num_classes} ({self.describe()})")

    def preview_colours(self) -> np.ndarray:
        """(N, 3) uint8: the table's own colours when colour-coded, else distinct preview colours."""
        if self.colour_coded:
            return np.array([v if isinstance(v, tuple) else (v, v, v) for v in self.values], np.uint8)
        if self.kind == "binary":
            return np.array([(0, 0, 0), (255, 255, 255)], np.uint8)
        rng = np.random.default_rng(0)
        extra = [tuple(rng.integers(0, 256, 3)) for _ in range(max(0, self.num_classes - len(_PREVIEW)))]
        return np.array((_PREVIEW + extra)[: self.num_classes], np.uint8)

    def colourise(self, labels: np.ndarray) -> np.ndarray:
        """HxW label map -> HxWx3 uint8 preview."""
        return self.preview_colours()[labels]


def _listed(values) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values[:8])) + (f", ... ({len(values)} values)" if len(values) > 8 else "")


def binary_table(invert: bool = False) -> ClassTable:
    return ClassTable(("background", "foreground"), (), "binary", invert)


def _parse_value(name: str, v, source: str):
    if isinstance(v, bool) or not isinstance(v, (int, list, tuple)):
        raise DataError(f"{source}: class '{name}' must map to a gray/palette value (int) or an [r, g, b] "
                        f"colour, got {v!r}")
    if isinstance(v, int):
        if not 0 <= v <= 65535:
            raise DataError(f"{source}: class '{name}' value {v} is outside 0..65535")
        return v
    if len(v) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in v):
        raise DataError(f"{source}: class '{name}' colour must be three ints 0..255, got {list(v)}")
    return tuple(v)


def table_from_config(classes: dict | None = None, num_classes: int = 2, invert: bool = False,
                      source: str = "data.classes") -> ClassTable | None:
    """The table data.classes / data.num_classes / data.invert_mask describe; None when
    num_classes is 0 and there is no table: N must be inferred from the masks (`infer_indices_table`)."""
    if classes:
        values = tuple(_parse_value(str(n), v, source) for n, v in classes.items())
        if len(set(values)) != len(values):
            raise DataError(f"{source}: two classes share one value; each value must name one class")
        if invert:
            raise DataError(f"{source}: invert_mask applies to binary masks only; list the classes in order")
        if num_classes not in (0, 2, len(values)) and num_classes != len(values):
            raise DataError(f"{source}: lists {len(values)} classes but data.num_classes is {num_classes}")
        return ClassTable(tuple(str(n) for n in classes), values, "table")
    if num_classes == 2:
        return binary_table(invert)
    if invert:
        raise DataError("data.invert_mask applies to binary masks only (data.num_classes is "
                        f"{num_classes or 'inferred'})")
    if num_classes == 0:
        return None
    return indices_table(num_classes)


def indices_table(num_classes: int) -> ClassTable:
    return ClassTable(tuple(f"class{i}" for i in range(num_classes)), (), "indices")


def raw_mask_array(im: Image.Image, colour: bool = False) -> np.ndarray:
    """The array a table reads: palette images give their indices (unless `colour`), gray images their
    values (16-bit kept), colour images HxWx3 RGB (HxW when every pixel is gray)."""
    if colour:
        return np.asarray(im.convert("RGB"))
    if im.mode == "P":
        return np.asarray(im)
    if im.mode in _GRAY_MODES:
        return np.asarray(im.convert("L") if im.mode in {"1", "LA", "La"} else im)
    rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].copy()
    return rgb


def infer_indices_table(raws: list[tuple[str, np.ndarray]]) -> ClassTable:
    """data.num_classes 0: N = the largest class index in any mask + 1 (at least 2)."""
    problems, largest = [], 1
    for path, raw in raws:
        if raw.ndim == 3:
            problems.append(f"{path}: colour-coded mask; inferring classes needs index masks: give "
                            "data.classes with an [r, g, b] colour per class")
        elif os.path.splitext(path)[1].lower() in JPEG_EXTENSIONS:
            problems.append(f"{path}: JPEG-compressed label map; save label maps as PNG or TIFF")
        else:
            largest = max(largest, int(raw.max()))
    if problems:
        raise DataError(problems)
    if largest > 255:
        raise DataError(f"inferred {largest + 1} classes from the masks: values look like gray levels, not "
                        "class indices; give data.classes (name: value per class)")
    return indices_table(largest + 1)


def condition_channels(num_classes: int) -> int:
    """Channels of the mask input of every generator and discriminator."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def mask_to_condition(mask: np.ndarray | torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """HxW (or BxHxW) label map -> CxHxW (BxCxHxW) float32: the foreground channel for binary masks,
    one-hot for N > 2. Values must already be in 0..N-1."""
    t = torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask)
    if condition_channels(num_classes) == 1:
        return t.float().unsqueeze(-3)
    return torch.nn.functional.one_hot(t.long(), num_classes).movedim(-1, -3).float()


def condition_to_labels(cond: torch.Tensor) -> torch.Tensor:
    """Inverse of mask_to_condition: (..., C, H, W) -> (..., H, W) int64 class indices."""
    if cond.shape[-3] == 1:
        return (cond[..., 0, :, :] > 0.5).long()
    return cond.argmax(dim=-3)
