"""Find and validate image/mask pairs, augment them jointly, and serve them as a torch Dataset.

    from synthgen.data import find_pairs, split_pairs, PairDataset
    pairs = find_pairs("data/images", "data/masks", min_pairs=3)
    train, val = split_pairs(pairs, val_pairs=1)
    ds = PairDataset(train, image_size=256, invert_mask=True, repeats=8, seed=0)

Rules:
- Pairing: an image and a mask belong together when their file stems match (`a.png` + `a.tif`).
  Supported extensions: .png .jpg .jpeg .tif .tiff (any case). Hidden files (starting with '.') and
  files with other extensions are ignored. Two files with the same stem in one folder (`a.png` and
  `a.jpg`) are an error: which one was meant is ambiguous. Pairs are sorted by stem.
- Images: gray images give 1 channel; RGB, RGBA and palette images give 3 (alpha is dropped). Mixed
  gray and colour folders are allowed: then every image is used with 3 channels (gray is repeated).
  16-bit and float images are stretched from their own min..max to 0..255.
- Masks: converted to 8-bit gray, they must hold at most two distinct values (0/255, 0/1 or any two).
  With two values the brighter is foreground (1) and the darker background (0); a mask with a single
  value v is all foreground if v > 0, else all background. `invert_mask` flips foreground and
  background (ISBI 2012 marks membranes with 0). A mask with more than two values is an error: JPEG
  compression and anti-aliased drawing create in-between values, so save masks as PNG.
- Sizes: images may have any size and aspect ratio; the mask must have the image's size. Training
  draws a random `size x size` crop each time an item is read. An image smaller than `size` on either
  side is upscaled (image bilinear, mask nearest) so its short side equals `size`, aspect kept, with a
  warning naming the file: resized rather than refused, because a few small pairs are still usable.
- Augmentation (`augment=True`): random crop position, horizontal flip, vertical flip and a rotation
  by k*90 degrees (k in 0..3), applied identically to image and mask. `augment=False` takes the
  deterministic centre crop without flips (validation).
- Determinism: item i of epoch e draws its randomness from `np.random.default_rng([seed, e, i])`, so
  the same (seed, epoch, index) gives the same sample whatever the worker count or read order.
- Validation: `find_pairs` collects every problem (missing or empty folder, unpaired file, ambiguous
  stem, unreadable or corrupt file, size mismatch, non-binary mask, too few pairs) and raises one
  `DataError` listing them all, each line starting with the file or folder it concerns.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from synthgen.errors import DataError  # noqa: F401 - re-exported: callers import it from here
from synthgen.labels import ClassTable, infer_indices_table, mask_to_condition, raw_mask_array, table_from_config

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# PIL modes decoded as one gray channel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) is colour.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# High-bit-depth gray modes: PIL's convert("L") clips them at 255 instead of scaling, so we scale.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class Pair:
    stem: str
    image: str
    """Path of the image file."""
    mask: str
    """Path of the mask file."""


def _open(path: str) -> Image.Image:
    """Open and fully decode one file: Image.open only reads the header, so truncation shows at load()."""
    with Image.open(path) as im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            # A multi-page TIFF (e.g. ISBI's train-volume.tif) would silently train on its first page only.
            raise DataError(f"{path}: multi-page file ({frames} pages); save one image per file")
        im.load()
        return im.copy()


def _gray_array(im: Image.Image) -> np.ndarray:
    """HxW array of a gray image; wide modes keep their own dtype so no values are clipped."""
    if im.mode in _WIDE_MODES:
        return np.asarray(im)
    return np.asarray(im.convert("L"))


def _stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_image(im: Image.Image, channels: int | None) -> np.ndarray:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}")
    if im.mode in _GRAY_MODES:
        gray = _gray_array(im)
        out = (gray if gray.dtype == np.uint8 else _stretch_to_uint8(gray))[:, :, None]
        return np.repeat(out, 3, axis=2) if channels == 3 else out
    if channels == 1:
        return np.asarray(im.convert("RGB").convert("L"))[:, :, None].copy()
    return np.asarray(im.convert("RGB")).copy()  # RGBA/palette/CMYK -> RGB drops alpha


def binarise_mask(gray: np.ndarray, path: str, invert: bool) -> np.ndarray:
    """HxW gray -> {0,1} by the rules above; DataError naming `path` if it holds more than two values."""
    values = np.unique(gray)
    if len(values) > 2:
        raise DataError(
            f"{path}: mask has {len(values)} distinct gray values, at most 2 are allowed "
            "(background and foreground). JPEG-compressed or anti-aliased masks are not binary: "
            "threshold them and save masks as PNG; for label maps of more than two classes set "
            "data.num_classes (0 infers it) or data.classes")
    if len(values) == 2:
        fg = gray == values[1]
    else:
        fg = np.full(gray.shape, bool(values[0] > 0))
    return (fg != invert).astype(np.uint8)


def load_image(path: str, channels: int | None = None) -> np.ndarray:
    """HxWxC uint8. Gray -> C=1, colour -> C=3 (alpha dropped); channels=3/1 forces the count."""
    return _decode_image(_open(path), channels)


def decode_mask(im: Image.Image, path: str, invert: bool = False, table: ClassTable | None = None) -> np.ndarray:
    """An opened mask -> HxW uint8 label map: binary rules without a table (or with a binary one),
    else the table's (synthgen/labels.py)."""
    if table is None or table.kind == "binary":
        return binarise_mask(_gray_array(im), path, table.invert if table is not None else invert)
    return table.label_map(raw_mask_array(im, table.colour_coded), path)


def load_mask(path: str, invert: bool = False, table: ClassTable | None = None) -> np.ndarray:
    """HxW uint8 label map. Binary (no table): {0, 1}, brighter of the (at most two) values is 1,
    unless `invert`. With a multi-class `table`: class indices 0..N-1."""
    return decode_mask(_open(path), path, invert, table)


def resolve_class_table(mask_paths: list[str], num_classes: int = 2, classes: dict | None = None,
                        invert: bool = False) -> ClassTable:
    """The class table of data.num_classes / data.classes, inferring N from `mask_paths` when
    num_classes is 0 (every file is read)."""
    table = table_from_config(classes, num_classes, invert)
    if table is not None:
        return table
    raws, problems = [], []
    for path in mask_paths:
        try:
            raws.append((path, raw_mask_array(_open(path))))
        except (OSError, UnidentifiedImageError, DataError) as e:
            problems.append(f"{path}: cannot read ({e})")
    if problems:
        raise DataError(problems)
    return infer_indices_table(raws)


def _is_colour(path: str) -> bool:
    with Image.open(path) as im:  # header only: cheap
        return im.mode not in _GRAY_MODES


def image_channels(pairs: list[Pair]) -> int:
    """3 if any image is colour, else 1."""
    return 3 if any(_is_colour(p.image) for p in pairs) else 1


def _scan(folder: str, kind: str, problems: list[str]) -> tuple[dict[str, str], set[str]] | None:
    """stem -> path of the supported files in `folder`, plus the ambiguous stems; None if unusable."""
    if not os.path.exists(folder):
        problems.append(f"{folder}: {kind} folder does not exist")
        return None
    if not os.path.isdir(folder):
        problems.append(f"{folder}: not a folder (expected the {kind} folder)")
        return None
    by_stem: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(folder, name)
        if name.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
            continue
        by_stem.setdefault(stem, []).append(path)
    if not by_stem:
        problems.append(f"{folder}: {kind} folder holds no supported files ({', '.join(IMAGE_EXTENSIONS)})")
        return None
    ambiguous = {s for s, paths in by_stem.items() if len(paths) > 1}
    for stem in sorted(ambiguous):
        problems.append(f"{by_stem[stem][0]}: ambiguous, {len(by_stem[stem])} {kind} files share the "
                        f"stem '{stem}' ({', '.join(by_stem[stem])}); keep one")
    return {s: paths[0] for s, paths in by_stem.items() if s not in ambiguous}, ambiguous


def _check(path: str, is_mask: bool, problems: list[str], table: ClassTable | None = None) -> tuple[int, int] | None:
    """Decode one file completely; report why it is unusable. Returns its (width, height)."""
    try:
        im = _open(path)
        if is_mask:
            decode_mask(im, path, table=table)
        return im.size
    except DataError as e:
        problems.extend(e.problems)
    except UnidentifiedImageError:
        problems.append(f"{path}: not a readable image (corrupt, or not really a "
                        f"{os.path.splitext(path)[1]} file)")
    except Exception as e:  # noqa: BLE001 - any decoder failure must become a report line, not a traceback
        problems.append(f"{path}: cannot read ({type(e).__name__}: {e})")
    return None


def find_pairs(images_dir: str, masks_dir: str, min_pairs: int = 1, table: ClassTable | None = None) -> list[Pair]:
    """Discover pairs by file stem (sorted by stem) and validate every file (masks against `table`;
    None = binary).

    Raises one DataError listing ALL problems found, rather than stopping at the first.
    """
    problems: list[str] = []
    images = _scan(images_dir, "images", problems)
    masks = _scan(masks_dir, "masks", problems)
    if images is None or masks is None:
        # Without both folders every file would also be 'unpaired': that noise would bury the cause.
        raise DataError(problems)
    (img_files, img_ambiguous), (mask_files, mask_ambiguous) = images, masks
    pairs: list[Pair] = []
    for stem in sorted(img_files.keys() | mask_files.keys()):
        img, mask = img_files.get(stem), mask_files.get(stem)
        if img is None or mask is None:
            if stem in img_ambiguous or stem in mask_ambiguous:
                continue  # already reported as ambiguous
            if mask is None:
                problems.append(f"{img}: no mask with stem '{stem}' in {masks_dir}")
            else:
                problems.append(f"{mask}: no image with stem '{stem}' in {images_dir}")
            continue
        img_size, mask_size = _check(img, False, problems), _check(mask, True, problems, table)
        if img_size is None or mask_size is None:
            continue
        if img_size != mask_size:
            problems.append(f"{img}: image is {img_size[0]}x{img_size[1]} px but its mask {mask} is "
                            f"{mask_size[0]}x{mask_size[1]} px (width x height)")
            continue
        pairs.append(Pair(stem, img, mask))
    if len(pairs) < min_pairs:
        problems.append(f"{images_dir}: found {len(pairs)} valid pairs, need at least {min_pairs}")
    if problems:
        raise DataError(problems)
    return pairs


def find_masks(masks_dir: str, min_masks: int = 1, table: ClassTable | None = None) -> list[tuple[str, str]]:
    """(stem, path) of every mask in a folder, sorted by stem; one DataError lists all problems."""
    problems: list[str] = []
    scanned = _scan(masks_dir, "masks", problems)
    if scanned is None:
        raise DataError(problems)
    found = [(stem, path) for stem, path in sorted(scanned[0].items()) if _check(path, True, problems, table)]
    if len(found) < min_masks:
        problems.append(f"{masks_dir}: found {len(found)} valid masks, need at least {min_masks}")
    if problems:
        raise DataError(problems)
    return found


def split_pairs(pairs: list[Pair], val_pairs: int) -> tuple[list[Pair], list[Pair]]:
    """(train, val): the last `val_pairs` pairs by sorted stem are validation."""
    ordered = sorted(pairs, key=lambda p: p.stem)
    if val_pairs < 0:
        raise ValueError(f"val_pairs must be >= 0, got {val_pairs}")
    if val_pairs >= len(ordered):
        raise DataError(f"{len(ordered)} pairs with val_pairs={val_pairs} leave no pair for training")
    cut = len(ordered) - val_pairs
    return ordered[:cut], ordered[cut:]


@dataclass
class Source:
    id: str
    mask: np.ndarray                # SxS uint8 {0,1}
    image: np.ndarray | None        # SxSxC uint8, the real image when known (SSIM reference)


def tiles(source_id: str, mask: np.ndarray, image: np.ndarray | None, size: int, origin: str) -> list[Source]:
    """Cut a mask (and its image) into size x size tiles covering it; the last row/column of tiles is
    aligned to the far edge, so nothing is dropped. A source smaller than `size` is an error."""
    h, w = mask.shape
    if h < size or w < size:
        raise DataError(f"{origin}: mask is {w}x{h} px, smaller than the checkpoint's {size}x{size} training "
                        "size (checkpoint/mask size mismatch)")
    ys = sorted(set(list(range(0, h - size + 1, size)) + [h - size]))
    xs = sorted(set(list(range(0, w - size + 1, size)) + [w - size]))
    out = []
    for y in ys:
        for x in xs:
            tid = source_id if len(ys) * len(xs) == 1 else f"{source_id}_y{y}x{x}"
            crop = None if image is None else image[y:y + size, x:x + size]
            out.append(Source(tid, mask[y:y + size, x:x + size], crop))
    return out


def fit_to_size(image: np.ndarray, mask: np.ndarray, size: int,
                name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Upscale so the short side equals `size` when either side is smaller (image bilinear, mask nearest)."""
    h, w = mask.shape
    if h >= size and w >= size:
        return image, mask
    scale = size / min(h, w)
    # max() guards against float rounding putting a side one pixel below `size`.
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    warnings.warn(f"{name}: {w}x{h} px is smaller than image_size {size}; upscaled to {nw}x{nh} px",
                  stacklevel=2)
    channels = [np.asarray(Image.fromarray(image[:, :, c]).resize((nw, nh), Image.BILINEAR))
                for c in range(image.shape[2])]
    new_mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    return np.stack(channels, axis=2), new_mask.copy()


def joint_augment(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator,
                  augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One size x size crop of (HxWxC image, HxW mask), with identical flips/rotation when augmenting."""
    h, w = mask.shape
    if image.shape[:2] != (h, w) or h < size or w < size:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} must match and be >= {size} "
                         "(call fit_to_size first)")
    if augment:
        # Always draw every number in the same order, so one sample's randomness never shifts another's.
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        hflip, vflip, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(0, 4))
    else:
        top, left, hflip, vflip, k = (h - size) // 2, (w - size) // 2, False, False, 0
    img, msk = image[top:top + size, left:left + size], mask[top:top + size, left:left + size]
    if hflip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    if vflip:
        img, msk = img[::-1], msk[::-1]
    img, msk = np.rot90(img, k, axes=(0, 1)), np.rot90(msk, k, axes=(0, 1))
    # Flips and rot90 are views with negative strides, which torch.from_numpy rejects.
    return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32 in [-1, 1] (the generator's tanh range)."""
    if image.dtype != np.uint8:
        raise TypeError(f"image_to_tensor expects uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1.0


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """CxHxW in [-1, 1] -> HxWxC uint8 (clamped, rounded): exact inverse of image_to_tensor on uint8."""
    x = ((t.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def mask_to_tensor(mask: np.ndarray, num_classes: int = 2) -> torch.Tensor:
    """HxW label map -> the networks' condition: 1xHxW float32 {0, 1} for binary masks, NxHxW one-hot
    for N > 2 classes (labels.mask_to_condition)."""
    return mask_to_condition(mask, num_classes)


class PairDataset(torch.utils.data.Dataset):
    """`repeats` random crops of each pair per epoch; pairs are decoded once, in __init__.

    Each item is {"image": CxSxS float32 in [-1, 1], "mask": 1xSxS float32 in {0, 1}, "index": pair
    index}. Call `set_epoch(e)` before iterating an epoch so crops differ between epochs; DataLoader
    workers get a copy of the dataset when they start, so use persistent_workers=False (the default)
    for the new epoch to reach them.
    """

    def __init__(self, pairs: list[Pair], image_size: int, invert_mask: bool = False, augment: bool = True,
                 repeats: int = 1, seed: int = 0, channels: int | None = None,
                 table: ClassTable | None = None) -> None:
        """`table`: how masks are read (None = binary, by invert_mask); items' "mask" is then the
        networks' condition for its num_classes (see mask_to_tensor)."""
        if not pairs:
            raise ValueError("PairDataset needs at least one pair")
        if repeats < 1 or seed < 0 or image_size < 1:
            raise ValueError(f"need repeats >= 1, seed >= 0 and image_size >= 1, "
                             f"got {repeats}, {seed}, {image_size}")
        self.pairs = list(pairs)
        self.image_size, self.augment, self.repeats, self.seed = image_size, augment, repeats, seed
        self.epoch = 0
        self.num_classes = table.num_classes if table is not None else 2
        # A 3-30 pair dataset fits in memory; decoding once keeps PNG/JPEG decoding out of every step.
        self._channels = channels if channels is not None else image_channels(self.pairs)
        self._images: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        for p in self.pairs:
            image, mask = load_image(p.image, self._channels), load_mask(p.mask, invert_mask, table)
            if image.shape[:2] != mask.shape:
                raise DataError(f"{p.image}: image is {image.shape[1]}x{image.shape[0]} px but its mask "
                                f"{p.mask} is {mask.shape[1]}x{mask.shape[0]} px (width x height)")
            image, mask = fit_to_size(image, mask, image_size, name=p.image)
            self._images.append(image)
            self._masks.append(mask)

    @property
    def channels(self) -> int:
        return self._channels

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i = int(i) % n
        k = i % len(self.pairs)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, mask = joint_augment(self._images[k], self._masks[k], self.image_size, rng, self.augment)
        return {"image": image_to_tensor(image), "mask": mask_to_tensor(mask, self.num_classes), "index": k}


class SyntheticDataset(torch.utils.data.Dataset):
    """A dataset written by `synthgen generate`, read back as (image, mask) tensors.

    `path` is the dataset directory (its data/*.parquet shards are read in order) or one .parquet
    file. Items are {"image": CxHxW float32 in [-1, 1], "mask": 1xHxW float32 {0, 1}, "id": str},
    the same layout as PairDataset, so real and synthetic sets concatenate directly.
    """

    def __init__(self, path: str, min_score: float | None = None) -> None:
        """`min_score`: keep only rows whose overall_quality is at least this (re-filter a dataset
        generated with a low threshold without generating it again)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        files = [path] if path.endswith(".parquet") else sorted(
            os.path.join(path, "data", f) for f in os.listdir(os.path.join(path, "data")) if f.endswith(".parquet"))
        if not files:
            raise DataError(f"{path}: no Parquet shards (not a synthgen generated dataset?)")
        tables = [pq.read_table(f, columns=["id", "image", "mask", "overall_quality"]) for f in files]
        if min_score is not None:
            tables = [t.filter(pc.greater_equal(t.column("overall_quality"), min_score)) for t in tables]
        self.ids = [i for t in tables for i in t.column("id").to_pylist()]
        self._images = [b for t in tables for b in t.column("image").to_pylist()]
        self._masks = [b for t in tables for b in t.column("mask").to_pylist()]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        image = np.asarray(Image.open(io.BytesIO(self._images[i])))
        mask = np.asarray(Image.open(io.BytesIO(self._masks[i])))
        image = image[:, :, None] if image.ndim == 2 else image
        return {"image": image_to_tensor(image), "mask": mask_to_tensor((mask > 0).astype(np.uint8)), "id": self.ids[i]}


def load_synthetic_dataset(path: str, min_score: float | None = None) -> SyntheticDataset:
    """`synthgen generate` output -> torch Dataset of (image, mask); see SyntheticDataset."""
    if not os.path.exists(path):
        raise DataError(f"{path}: does not exist")
    return SyntheticDataset(path, min_score)
