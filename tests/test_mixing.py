"""Mixing modes of the downstream segmenter: real-item draws per mode, seeding, curves (tiny, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthgen import segment
from synthgen.mixing import fit_segmenter, train_segmenter
from synthgen.segment import SegmentationData

STEPS, BATCH = 5, 4


def _items(n: int = 3, h: int = 48, w: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.kron(rng.integers(0, 2, (h // 8, w // 8)), np.ones((8, 8))).astype(np.uint8)
        out.append(((mask * 200).astype(np.uint8)[:, :, None], mask))
    return out


class _CountingSynthetic(torch.utils.data.Dataset):
    """Synthetic stand-in (random blocks) that counts its reads."""

    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        mask = (torch.rand(1, 4, 4, generator=g) > 0.5).float().repeat_interleave(10, 1).repeat_interleave(10, 2)
        return {"image": mask * 1.6 - 0.8, "mask": mask}


@pytest.fixture
def draws(monkeypatch):
    """Record every SegmentationData draw as real or synthetic: a draw is synthetic when it read the
    synthetic dataset. 'real' holds the (dataset seed, index) of each real draw, in order."""
    log = {"real": [], "synthetic": 0}
    original = SegmentationData.__getitem__

    def counting(self, i):
        before = self.synthetic.reads if self.synthetic is not None else 0
        item = original(self, i)
        if self.synthetic is not None and self.synthetic.reads > before:
            log["synthetic"] += 1
        else:
            log["real"].append((self.seed, i))
        return item

    monkeypatch.setattr(SegmentationData, "__getitem__", counting)
    return log


def _fit(mixing: str = "add", synthetic=None, seed: int = 0, **kw):
    return fit_segmenter(_items(), 32, STEPS, BATCH, "classic", seed, width=4, synthetic=synthetic,
                         synthetic_fraction=0.5, mixing=mixing, **kw)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("mixing, synthetic_draws", [("add", STEPS * 3), ("pretrain", 7 * BATCH)])
def test_fair_modes_draw_the_baselines_real_items(draws, mixing, synthetic_draws):
    _fit(synthetic=None)  # the classic baseline
    baseline = list(draws["real"])
    draws["real"].clear()
    syn = _CountingSynthetic()
    _fit(mixing, syn, synthetic_batch=3, pretrain_steps=7)
    # + 1: train_segmenter reads item 0 once to size the network's input, in every mode alike
    assert len(baseline) == STEPS * BATCH + 1
    assert draws["real"] == baseline  # the same real crops, in the same order, as the baseline
    assert draws["synthetic"] == synthetic_draws


def test_replace_draws_fewer_real_items(draws):
    syn = _CountingSynthetic()
    _fit("replace", syn)
    assert draws["synthetic"] > 0 and len(draws["real"]) + draws["synthetic"] == STEPS * BATCH + 1


def test_replace_is_the_old_single_stream():
    syn = _CountingSynthetic()
    data = SegmentationData(_items(), 32, "classic", syn, 0.5, seed=2, length=STEPS * BATCH)
    old = train_segmenter(data, STEPS, BATCH, seed=2, width=4)
    assert _same(_fit("replace", syn, seed=2), old)


@pytest.mark.parametrize("mixing", ["replace", "add", "pretrain"])
def test_modes_are_seeded(mixing):
    syn = _CountingSynthetic()
    a, b, c = _fit(mixing, syn, seed=1), _fit(mixing, syn, seed=1), _fit(mixing, syn, seed=2)
    assert _same(a, b) and not _same(a, c)
    assert not _same(a, _fit(synthetic=None, seed=1))  # the synthetic items changed the weights


def test_add_weight_scales_the_synthetic_loss():
    syn = _CountingSynthetic()
    assert not _same(_fit("add", syn, synthetic_weight=0.0), _fit("add", syn, synthetic_weight=1.0))


def test_curve_points_and_no_effect_on_weights():
    test = _items(2, 32, 32, seed=5)
    curve = []
    with_curve = _fit("add", _CountingSynthetic(), curve=curve, curve_every=2, test_items=test)
    assert [p["step"] for p in curve] == [2, 4, 5]  # every 2 steps and the last one
    assert all(0.0 <= p["dice"] <= 1.0 and set(p) == {"step", "dice", "dice_mean"} for p in curve)
    assert curve[-1]["dice"] == segment.evaluate_segmenter(with_curve, test, 32)["dice"]
    assert _same(with_curve, _fit("add", _CountingSynthetic()))  # scoring did not touch the training


def test_bad_mixing_input_is_refused():
    with pytest.raises(ValueError, match="unknown mixing"):
        _fit("interleave", _CountingSynthetic())
    with pytest.raises(ValueError, match="curve needs"):
        _fit("add", _CountingSynthetic(), curve=[], curve_every=0)
    with pytest.raises(ValueError, match=">= 0"):
        _fit("add", _CountingSynthetic(), synthetic_weight=-1.0)


def test_names_stay_importable_from_segment():
    from synthgen.segment import MIXING_MODES, fit_segmenter as old_name
    assert old_name is fit_segmenter and MIXING_MODES == ("replace", "add", "pretrain")


def test_search_and_feedback_settings_follow_evaluate_mixing():
    from synthgen.config import Config
    from synthgen.feedback import SegmenterSettings
    from synthgen.objectives import segmenter_settings

    assert SegmenterSettings().mixing == "add" and SegmenterSettings().synthetic_weight == 1.0
    cfg = Config()
    cfg.evaluate.mixing, cfg.evaluate.pretrain_steps, cfg.evaluate.synthetic_weight = "pretrain", 7, 0.5
    kwargs = segmenter_settings(cfg).mixing_kwargs()
    assert kwargs == {"mixing": "pretrain", "synthetic_fraction": 0.5, "synthetic_batch": 0,
                      "synthetic_weight": 0.5, "pretrain_steps": 7}
    cfg.evaluate.mixing = "interleave"
    with pytest.raises(Exception, match="evaluate.mixing must be one of replace, add, pretrain"):
        cfg.validate()
