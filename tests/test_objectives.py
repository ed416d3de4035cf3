"""Search objectives on held-out pairs, without Ray: every objective gives a finite, repeatable value."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import tiny_config, write_pairs
from synthgen.data import find_pairs, split_pairs
from synthgen.objectives import ObjectiveEvaluator, ObjectiveSpec, pair_rows, validation_tiles
from synthgen.segment import SegmentationData, save_segmenter, train_segmenter
from synthgen.steps import build_state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    images, masks = write_pairs(str(root / "pairs"), n=4, size=(48, 48))
    cfg = tiny_config(images, masks, str(root / "run"))
    cfg.generate.num_variations, cfg.tune.seg_steps, cfg.tune.val_tiles = 2, 4, 3
    cfg.evaluate.seg_batch, cfg.evaluate.seg_width = 2, 4
    train, val = split_pairs(find_pairs(images, masks), 1)
    return cfg, train, val, root


def test_validation_tiles_are_spread_over_all_tiles():
    items = [(np.full((48, 48, 1), i, np.uint8), np.zeros((48, 48), np.uint8)) for i in range(3)]
    images, masks = validation_tiles(items, 32, 5, ["a", "b", "c"])
    assert len(images) == 5 and all(im.shape == (32, 32, 1) for im in images)
    assert {int(im[0, 0, 0]) for im in images} == {0, 1, 2}, "every pair contributes"
    assert len(validation_tiles(items, 32, 100, ["a", "b", "c"])[0]) == 12  # 4 tiles each, no more


@pytest.mark.parametrize("name", ["val_ssim", "val_l1", "quality", "label_fidelity", "dice_gain", "realism"])
def test_every_objective_is_finite_and_repeatable(setup, name):
    cfg, train, val, root = setup
    spec = ObjectiveSpec(name, pair_rows(val), pair_rows(train))
    if name == "label_fidelity":
        from synthgen.objectives import load_full_items

        real = load_full_items(pair_rows(train), cfg, 1)
        model = train_segmenter(SegmentationData(real, 32, "classic", length=8), 4, 2, width=4)
        spec.segmenter = save_segmenter(model, str(root / "segmenter"))
    if name == "dice_gain":
        spec.baseline_dice = 0.25
    evaluate = ObjectiveEvaluator(spec, cfg, channels=1)
    assert len(evaluate.masks) == 3
    nets = build_state(cfg, 1).nets
    first, second = evaluate(nets), evaluate(nets)
    assert first == second, "the same weights give the same objective"
    assert {"val_ssim", "val_l1"} <= set(first) and all(math.isfinite(v) for v in first.values())
    assert -1 <= first["val_ssim"] <= 1 and 0 <= first["val_l1"] <= 2
    if name == "quality":
        assert -1 <= first["quality"] <= 1
    if name == "label_fidelity":
        assert 0 <= first["label_fidelity"] <= 1
    if name == "dice_gain":
        assert math.isclose(first["dice_gain"], first["dice"] - 0.25)
    if name == "realism":
        # An untrained generator's output is told apart from real tiles; c2st_std is its binomial error.
        assert 0.5 <= first["realism"] <= 1 and 0 <= first["c2st_std"] < 0.1


def test_dice_gain_generates_variations_of_every_training_tile(setup):
    cfg, train, val, _ = setup
    evaluate = ObjectiveEvaluator(ObjectiveSpec("dice_gain", pair_rows(val), pair_rows(train)), cfg, channels=1)
    items = evaluate.synthetic_items(build_state(cfg, 1).nets)
    assert len(items) == len(train) * 4 * cfg.generate.num_variations  # 48 px pairs -> 4 tiles of 32 px
    assert items[0]["image"].shape == (1, 32, 32) and items[0]["mask"].shape == (1, 32, 32)
    assert set(np.unique(items[0]["mask"].numpy())) <= {0.0, 1.0}


def test_bad_specs_are_refused(setup):
    cfg, train, val, _ = setup
    with pytest.raises(ValueError, match="unknown objective"):
        ObjectiveEvaluator(ObjectiveSpec("accuracy", pair_rows(val)), cfg, 1)
    with pytest.raises(ValueError, match="validation pair"):
        ObjectiveEvaluator(ObjectiveSpec("val_ssim", []), cfg, 1)
    with pytest.raises(ValueError, match="segmenter"):
        ObjectiveEvaluator(ObjectiveSpec("label_fidelity", pair_rows(val), segmenter="/nonexistent"), cfg, 1)
