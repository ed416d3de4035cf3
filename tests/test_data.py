"""Tests for synthgen.data: validation reports, mask rules, sizes, augmentation and determinism."""
from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from synthgen.data import (
    DataError, Pair, PairDataset, find_pairs, fit_to_size, image_channels, image_to_tensor, joint_augment,
    load_image, load_mask, mask_to_tensor, split_pairs, tensor_to_image,
)

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "synthgen", "sample_data", "isbi2012")


def save(path, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return str(path)


def gray(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def binary(h: int = 40, w: int = 48, lo: int = 0, hi: int = 255, seed: int = 0) -> np.ndarray:
    m = np.random.default_rng(seed + 100).random((h, w)) < 0.3
    return np.where(m, hi, lo).astype(np.uint8)


def make_folder(root, stems=("a", "b", "c"), h: int = 40, w: int = 48):
    """Valid images/ + masks/ folders under root; returns (images_dir, masks_dir)."""
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    for i, s in enumerate(stems):
        save(os.path.join(images, f"{s}.png"), gray(h, w, i))
        save(os.path.join(masks, f"{s}.png"), binary(h, w, seed=i))
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    return images, masks


def raises(images: str, masks: str, min_pairs: int = 1) -> DataError:
    with pytest.raises(DataError) as info:
        find_pairs(images, masks, min_pairs)
    return info.value


# ---------------------------------------------------------------- validation: one bad input each

def test_valid_folder_pairs_sorted_by_stem(tmp_path):
    images, masks = make_folder(tmp_path, stems=("c", "a", "b"))
    save(os.path.join(images, ".hidden.png"), gray())  # hidden: ignored
    open(os.path.join(masks, "notes.txt"), "w").write("ignored")  # other extension: ignored
    pairs = find_pairs(images, masks, min_pairs=3)
    assert [p.stem for p in pairs] == ["a", "b", "c"]
    assert pairs[0] == Pair("a", os.path.join(images, "a.png"), os.path.join(masks, "a.png"))


def test_image_without_mask(tmp_path):
    images, masks = make_folder(tmp_path)
    extra = save(os.path.join(images, "x.png"), gray())
    err = raises(images, masks)
    assert err.problems == [f"{extra}: no mask with stem 'x' in {masks}"]


def test_mask_without_image(tmp_path):
    images, masks = make_folder(tmp_path)
    extra = save(os.path.join(masks, "y.png"), binary())
    err = raises(images, masks)
    assert len(err.problems) == 1 and err.problems[0].startswith(extra)
    assert "no image with stem 'y'" in str(err)


def test_corrupt_file(tmp_path):
    images, masks = make_folder(tmp_path)
    bad = os.path.join(images, "x.png")
    open(bad, "wb").write(b"this is not a png at all" * 10)
    save(os.path.join(masks, "x.png"), binary())
    err = raises(images, masks)
    assert len(err.problems) == 1 and err.problems[0].startswith(bad)
    assert "Traceback" not in str(err)


def test_truncated_file(tmp_path):
    images, masks = make_folder(tmp_path)
    good = open(os.path.join(images, "a.png"), "rb").read()
    open(os.path.join(images, "a.png"), "wb").write(good[: len(good) // 2])  # valid header, cut data
    err = raises(images, masks)
    assert len(err.problems) == 1 and err.problems[0].startswith(os.path.join(images, "a.png"))


def test_size_mismatch(tmp_path):
    images, masks = make_folder(tmp_path)
    img = save(os.path.join(images, "x.png"), gray(40, 48))
    msk = save(os.path.join(masks, "x.png"), binary(30, 48))
    err = raises(images, masks)
    assert len(err.problems) == 1
    assert err.problems[0].startswith(img) and msk in err.problems[0]
    assert "48x40" in err.problems[0] and "48x30" in err.problems[0]


def test_mask_with_three_values(tmp_path):
    images, masks = make_folder(tmp_path)
    m = binary()
    m[0, :5] = 128
    bad = save(os.path.join(masks, "b.png"), m)
    err = raises(images, masks)
    assert len(err.problems) == 1 and err.problems[0].startswith(bad)
    assert "3 distinct" in err.problems[0] and "PNG" in err.problems[0]


def test_jpeg_mask_is_rejected(tmp_path):
    images, masks = make_folder(tmp_path)
    save(os.path.join(images, "j.png"), gray())
    Image.fromarray(binary()).save(os.path.join(masks, "j.jpg"), quality=75)
    err = raises(images, masks)
    assert err.problems[0].startswith(os.path.join(masks, "j.jpg")) and "distinct" in err.problems[0]


def test_empty_folder(tmp_path):
    images, masks = make_folder(tmp_path)
    empty = os.path.join(tmp_path, "empty")
    os.makedirs(empty)
    save(os.path.join(empty, ".hidden.png"), gray())  # hidden files do not count
    err = raises(empty, masks)
    # Only the folder problem: no 'mask without image' line for every mask.
    assert len(err.problems) == 1 and err.problems[0].startswith(empty) and "no supported files" in str(err)


def test_missing_folder(tmp_path):
    images, _ = make_folder(tmp_path)
    missing = os.path.join(tmp_path, "nope")
    err = raises(images, missing)
    assert err.problems == [f"{missing}: masks folder does not exist"]
    afile = os.path.join(images, "a.png")
    err = raises(afile, missing)
    assert err.problems[0].startswith(afile) and "not a folder" in err.problems[0] and len(err.problems) == 2


def test_too_few_pairs(tmp_path):
    images, masks = make_folder(tmp_path, stems=("a", "b"))
    err = raises(images, masks, min_pairs=3)
    assert err.problems == [f"{images}: found 2 valid pairs, need at least 3"]


def test_ambiguous_duplicate_stems(tmp_path):
    images, masks = make_folder(tmp_path)
    Image.fromarray(gray()).save(os.path.join(images, "a.tif"))
    err = raises(images, masks)
    assert len(err.problems) == 1  # not also reported as an unpaired mask
    for name in ("a.png", "a.tif"):
        assert os.path.join(images, name) in err.problems[0]
    assert "ambiguous" in err.problems[0]


def test_all_problems_reported_at_once(tmp_path):
    images, masks = make_folder(tmp_path, stems=("a", "b", "c", "d"))
    lonely = save(os.path.join(images, "lonely.png"), gray())
    corrupt = os.path.join(masks, "b.png")
    open(corrupt, "wb").write(b"\x00garbage")
    m = binary()
    m[0, 0] = 77
    grey_mask = save(os.path.join(masks, "c.png"), m)
    small = save(os.path.join(masks, "d.png"), binary(10, 10))
    err = raises(images, masks, min_pairs=3)
    text = str(err)
    assert len(err.problems) == 5 and text.startswith("5 problems")
    for path in (lonely, corrupt, grey_mask, small):
        assert path in text
    assert err.problems[-1] == f"{images}: found 1 valid pairs, need at least 3"
    # The error survives pickling (Ray moves exceptions between processes).
    assert pickle.loads(pickle.dumps(err)).problems == err.problems
    assert isinstance(err, ValueError)


def test_sample_data_passes():
    pairs = find_pairs(os.path.join(SAMPLE, "train", "images"), os.path.join(SAMPLE, "train", "masks"), 6)
    assert [p.stem for p in pairs] == [f"slice0{i}" for i in range(6)]
    test_dir = os.path.join(SAMPLE, "test")
    test_pairs = find_pairs(os.path.join(test_dir, "images"), os.path.join(test_dir, "masks"))
    assert len(test_pairs) == 2
    assert image_channels(pairs) == 1
    m = load_mask(pairs[0].mask, invert=True)  # ISBI: membranes are 0, a minority of pixels
    assert 0.1 < m.mean() < 0.4


# ---------------------------------------------------------------- masks

@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 255), (3, 7)])
def test_two_value_masks_binarise(tmp_path, lo, hi):
    raw = binary(lo=lo, hi=hi)
    m = load_mask(save(tmp_path / "m.png", raw))
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    np.testing.assert_array_equal(m, (raw == hi).astype(np.uint8))
    np.testing.assert_array_equal(load_mask(str(tmp_path / "m.png"), invert=True), 1 - m)


def test_single_value_and_other_mask_modes(tmp_path):
    assert load_mask(save(tmp_path / "z.png", np.zeros((8, 8), np.uint8))).sum() == 0
    assert load_mask(save(tmp_path / "f.png", np.full((8, 8), 5, np.uint8))).min() == 1
    assert load_mask(str(tmp_path / "z.png"), invert=True).min() == 1
    raw = binary()
    Image.fromarray(raw > 0).save(tmp_path / "bit.png")  # mode "1"
    np.testing.assert_array_equal(load_mask(str(tmp_path / "bit.png")), raw > 0)
    Image.fromarray(raw.astype(np.uint16) * 257).save(tmp_path / "wide.png")  # 16-bit 0/65535
    np.testing.assert_array_equal(load_mask(str(tmp_path / "wide.png")), raw > 0)
    with pytest.raises(DataError, match="3 distinct"):
        load_mask(save(tmp_path / "three.png", np.array([[0, 1, 2]], np.uint8)))


# ---------------------------------------------------------------- images and sizes

def test_load_image_channels(tmp_path):
    g = save(tmp_path / "g.png", gray())
    rgba = np.random.default_rng(1).integers(0, 256, (40, 48, 4), dtype=np.uint8)
    c = save(tmp_path / "c.png", rgba)
    assert load_image(g).shape == (40, 48, 1) and load_image(c).shape == (40, 48, 3)
    np.testing.assert_array_equal(load_image(c), rgba[:, :, :3])  # alpha dropped, colour untouched
    three = load_image(g, channels=3)
    assert three.shape == (40, 48, 3) and (three == three[:, :, :1]).all()
    assert load_image(c, channels=1).shape == (40, 48, 1)
    assert image_channels([Pair("g", g, g)]) == 1
    assert image_channels([Pair("g", g, g), Pair("c", c, g)]) == 3


def test_rgb_565x584_gives_rgb_crops(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (584, 565, 3), dtype=np.uint8)
    img = save(tmp_path / "images" / "21_training.png", rgb)
    save(tmp_path / "masks" / "21_training.tif", binary(584, 565))
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert pairs[0].image == img
    ds = PairDataset(pairs, image_size=256)
    item = ds[0]
    assert ds.channels == 3 and item["image"].shape == (3, 256, 256) and item["mask"].shape == (1, 256, 256)


def test_small_image_upscaled_with_warning(tmp_path):
    img = save(tmp_path / "images" / "s.png", gray(20, 30))
    save(tmp_path / "masks" / "s.png", binary(20, 30))
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    with pytest.warns(UserWarning, match=img):
        ds = PairDataset(pairs, image_size=32)
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    with pytest.warns(UserWarning, match="f: 30x20 px"):
        image, mask = fit_to_size(np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8), 32, name="f")
    assert image.shape == (32, 48, 3) and mask.shape == (32, 48)  # short side = size, aspect kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # large enough: untouched, no warning
        big = np.zeros((40, 40, 1), np.uint8)
        assert fit_to_size(big, big[:, :, 0], 32)[0] is big


# ---------------------------------------------------------------- tensors, dataset, augmentation

def test_tensor_round_trip_exact():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = np.stack([values, values[::-1], values.T], axis=2)  # every uint8 value in every channel
    t = image_to_tensor(img)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    np.testing.assert_array_equal(tensor_to_image(t), img)
    clamped = tensor_to_image(torch.tensor([[[-3.0, 3.0]]]))
    np.testing.assert_array_equal(clamped[:, :, 0], [[0, 255]])
    m = mask_to_tensor(np.array([[0, 1]], np.uint8))
    assert m.shape == (1, 1, 2) and m.dtype == torch.float32


def test_dataset_items(tmp_path):
    images, masks = make_folder(tmp_path, stems=("a", "b", "c"), h=40, w=48)
    ds = PairDataset(find_pairs(images, masks), image_size=32, repeats=4, seed=3)
    assert len(ds) == 12 and ds.channels == 1
    for i in range(len(ds)):
        item = ds[i]
        assert item["index"] == i % 3
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        ds[12]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["index"].tolist() == [0, 1, 2, 0]


def test_determinism_and_epochs(tmp_path):
    images, masks = make_folder(tmp_path, h=64, w=80)
    pairs = find_pairs(images, masks)
    a, b = PairDataset(pairs, 32, seed=7, repeats=2), PairDataset(pairs, 32, seed=7, repeats=2)
    b[5], b[1]  # read order must not matter
    for i in (0, 3, 5):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    first = a[0]["image"]
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["image"])
    a.set_epoch(0)
    assert torch.equal(first, a[0]["image"])
    assert not torch.equal(first, PairDataset(pairs, 32, seed=8)[0]["image"])
    # augment=False: centre crop, identical in every epoch
    val = PairDataset(pairs, 32, augment=False)
    v0 = val[0]["image"]
    val.set_epoch(5)
    assert torch.equal(v0, val[0]["image"])
    centre = load_image(pairs[0].image)[16:48, 24:56]
    np.testing.assert_array_equal(tensor_to_image(v0), centre)


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = (image[:, :, 0] > 127).astype(np.uint8)
    seen = set()
    for s in range(40):
        img, msk = joint_augment(image, mask, 32, np.random.default_rng(s))
        assert img.shape == (32, 32, 3) and msk.shape == (32, 32) and img.flags.c_contiguous
        np.testing.assert_array_equal(msk, (img[:, :, 0] > 127).astype(np.uint8))
        seen.add(img.tobytes())
    assert len(seen) > 30  # crops, flips and rotations do vary


def test_split_pairs():
    pairs = [Pair(s, f"{s}.png", f"{s}.png") for s in ("c", "a", "d", "b")]
    train, val = split_pairs(pairs, 1)
    assert [p.stem for p in train] == ["a", "b", "c"] and [p.stem for p in val] == ["d"]
    train, val = split_pairs(pairs, 0)
    assert len(train) == 4 and val == []
    with pytest.raises(DataError):
        split_pairs(pairs, 4)
