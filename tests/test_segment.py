"""Downstream segmenter: metrics by hand, shapes, augmentation, training, tiled prediction (tiny, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthgen.segment import (AUGMENTATIONS, SegmentationData, SegmentationUNet, dice_iou, evaluate_segmenter,
                              label_fidelity, load_items, predict, train_segmenter)
from conftest import write_pairs


def test_dice_iou_by_hand():
    a = np.array([[1, 1], [0, 0]])
    assert dice_iou(a, a) == (1.0, 1.0)
    assert dice_iou(a, 1 - a) == (0.0, 0.0)
    # pred {0, 1}, target {1, 2}: intersection 1, sizes 2 + 2 -> Dice 2/4, IoU 1/3
    assert dice_iou(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])) == pytest.approx((0.5, 1 / 3), abs=1e-12)
    # pred covers everything, target half: Dice 2*2/(4+2), IoU 2/4
    assert dice_iou(np.ones(4), np.array([1, 1, 0, 0])) == pytest.approx((2 / 3, 0.5), abs=1e-12)
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    assert dice_iou(torch.tensor([1.0, 0.0]), np.array([1, 0])) == (1.0, 1.0)


def test_dice_iou_refuses_bad_input():
    with pytest.raises(ValueError, match="0 and 1"):
        dice_iou(np.array([0.3, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        dice_iou(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("size", [32, 64, 128])
def test_unet_output_shape(size):
    model = SegmentationUNet(in_channels=3, width=16, depth=4).eval()
    assert model.config == {"in_channels": 3, "width": 16, "depth": 4}
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size + 16)).shape == (2, 1, size, size + 16)


def test_unet_refuses_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="multiples of 2\\*\\*depth = 16"):
        SegmentationUNet()(torch.zeros(1, 1, 40, 32))


def _items(n: int = 3, h: int = 48, w: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Block masks, image = mask * 200: any misalignment between the two shows directly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.kron(rng.integers(0, 2, (h // 8, w // 8)), np.ones((8, 8))).astype(np.uint8)
        out.append(((mask * 200).astype(np.uint8)[:, :, None], mask))
    return out


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_data_items_shapes_ranges_and_determinism(augment):
    data = SegmentationData(_items(), size=32, augment=augment, seed=3, length=20)
    assert len(data) == 20
    for i in range(20):
        item = data[i]
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    again = SegmentationData(_items(), size=32, augment=augment, seed=3, length=20)
    for i in (0, 7, 19):
        assert torch.equal(data[i]["image"], again[i]["image"]) and torch.equal(data[i]["mask"], again[i]["mask"])
    with pytest.raises(IndexError):
        data[20]


def test_crop_is_a_plain_crop_and_seeds_differ():
    items = _items(n=1)
    data = SegmentationData(items, size=32, augment="crop", length=30)
    image, mask = items[0]
    for i in range(30):
        crop = data[i]["mask"][0].numpy().astype(np.uint8)
        windows = np.lib.stride_tricks.sliding_window_view(mask, (32, 32))
        assert (windows == crop).all(axis=(2, 3)).any()  # some window of the original mask, unrotated
    other = SegmentationData(items, size=32, augment="crop", seed=1, length=30)
    assert any(not torch.equal(data[i]["mask"], other[i]["mask"]) for i in range(30))


def test_classic_keeps_image_and_mask_aligned():
    data = SegmentationData(_items(), size=32, augment="classic", length=40)
    agreement = []
    for i in range(40):
        item = data[i]
        image, mask = item["image"][0], item["mask"][0]
        if mask.min() == mask.max():
            continue
        # Intensity jitter moves both levels, so split them halfway between the observed extremes.
        agreement.append(((image > (image.min() + image.max()) / 2).float() == mask).float().mean().item())
    assert len(agreement) > 20 and np.mean(agreement) > 0.97
    plain = SegmentationData(_items(), size=32, augment="crop", length=40)
    # The classic items really are deformed/jittered: the images are not plain crops.
    assert any(not torch.equal(data[i]["image"], plain[i]["image"]) for i in range(5))


class _Constant(torch.utils.data.Dataset):
    """Synthetic stand-in: a constant image (0.5) with an all-foreground mask."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 32, 32), 0.5), "mask": torch.ones(1, 32, 32), "id": str(i)}


def test_synthetic_fraction():
    real = [(np.zeros((40, 40, 1), np.uint8), np.zeros((40, 40), np.uint8))]
    only = SegmentationData(real, 32, augment="crop", synthetic=_Constant(), synthetic_fraction=1.0, length=50)
    for i in range(50):
        assert only[i]["mask"].min() == 1 and torch.allclose(only[i]["image"], torch.tensor(0.5), atol=1 / 127.5)
    half = SegmentationData(real, 32, augment="classic", synthetic=_Constant(), synthetic_fraction=0.5, length=200)
    share = np.mean([half[i]["mask"].max().item() for i in range(200)])
    assert 0.35 < share < 0.65
    with pytest.raises(ValueError, match="channel"):
        SegmentationData([(np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8))], 32,
                         synthetic=_Constant())


def test_data_refuses_bad_input():
    with pytest.raises(ValueError, match="smaller than the crop size"):
        SegmentationData(_items(h=24, w=64), size=32)
    with pytest.raises(ValueError, match="unknown augment"):
        SegmentationData(_items(), size=32, augment="flip")
    with pytest.raises(ValueError, match="0, 1"):
        SegmentationData([(np.zeros((40, 40, 1), np.uint8), np.full((40, 40), 255, np.uint8))], size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 32 px segmenter trained for 60 steps on learnable blob pairs, plus held-out pairs."""
    root = tmp_path_factory.mktemp("seg")
    train = load_items(*write_pairs(str(root / "train"), n=4, size=(48, 64), seed=0), invert_mask=False)
    test = load_items(*write_pairs(str(root / "test"), n=3, seed=1), invert_mask=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is function-scoped: it runs after this one
    try:
        # fp32 pinned so the numbers below do not depend on whether this CPU picks bf16 ('auto').
        model = train_segmenter(SegmentationData(train, 32, augment="crop", length=480), steps=60, width=8,
                                lr=3e-3, precision="fp32")
    finally:
        torch.set_num_threads(threads)
    return model, train, test


def test_load_items(tmp_path):
    images, masks = write_pairs(str(tmp_path), n=3, size=(40, 56), channels=3)
    items = load_items(images, masks, invert_mask=False)
    inverted = load_items(images, masks, invert_mask=True, channels=1)
    assert len(items) == 3 and items[0][0].shape == (40, 56, 3) and items[0][1].shape == (40, 56)
    assert inverted[0][0].shape == (40, 56, 1) and np.array_equal(inverted[0][1], 1 - items[0][1])


def test_training_beats_an_untrained_model(trained):
    model, _, test = trained
    torch.manual_seed(0)
    untrained = evaluate_segmenter(SegmentationUNet(width=8), test, 32)
    scores = evaluate_segmenter(model, test, 32)
    assert set(scores) == {"dice", "iou", "dice_mean"}
    assert scores["dice"] > 0.8 and scores["dice"] > untrained["dice"] + 0.3


def test_training_is_seeded():
    data = SegmentationData(_items(), 32, augment="classic", length=64)
    a, b = (train_segmenter(data, steps=3, batch_size=4, width=4, seed=1) for _ in range(2))
    c = train_segmenter(data, steps=3, batch_size=4, width=4, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(ValueError, match="unknown precision"):
        train_segmenter(data, steps=1, precision="fp16")


def test_predict_any_size(trained):
    model, train, _ = trained
    image = train[0][0][:40, :56]
    pred = predict(model, image, 32)
    assert pred.shape == (40, 56) and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
    assert predict(model, image[:20, :24], 32).shape == (20, 24)  # smaller than one window
    # Tiles agree with a prediction of the window alone where only one window covers the pixels.
    assert np.array_equal(predict(model, image[:32, :32], 32)[:8, :24], pred[:8, :24])


def test_label_fidelity_is_high_for_matching_masks(trained):
    model, train, _ = trained
    images, masks = [im for im, _ in train], [m for _, m in train]
    matching = label_fidelity(model, images, masks, 32)
    shuffled = label_fidelity(model, images, masks[1:] + masks[:1], 32)
    assert len(matching) == 4 and np.mean(matching) > 0.7 and np.mean(matching) > np.mean(shuffled) + 0.4
