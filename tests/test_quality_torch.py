"""synthgen.quality_torch must give the numbers synthgen.quality (scikit-image) gives, on CPU batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import draw
from skimage.feature import canny

from synthgen import quality as Q
from synthgen import quality_torch as QT

SIZES = [(64, 64, 1), (96, 80, 3), (128, 128, 1)]
TOL = 1e-3


def _shapes(rng, h, w, channels, noise):
    """Flat background, a few disks and a rectangle, plus Gaussian noise; the mask follows the disks."""
    img = np.full((h, w), rng.uniform(30, 100))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        rr, cc = draw.disk((rng.uniform(0, h), rng.uniform(0, w)), rng.uniform(4, h / 3), shape=(h, w))
        img[rr, cc], mask[rr, cc] = rng.uniform(110, 250), 1
    rr, cc = draw.rectangle((rng.integers(0, h // 2), rng.integers(0, w // 2)), extent=(h // 4, w // 4),
                            shape=(h, w))
    img[rr, cc], mask[rr, cc] = rng.uniform(0, 255), 0  # cuts holes into disks
    if channels == 3:
        img = np.stack([img, 0.7 * img + 30, 255 - img], axis=-1)
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _batch(h, w, channels, n=5, noise=6.0, seed=0):
    rng = np.random.default_rng(seed)
    images, masks = zip(*[_shapes(rng, h, w, channels, noise) for _ in range(n - 1)])
    # One pure-noise row: many weak edges, hysteresis and thresholds all exercised.
    shape = (h, w, 3) if channels == 3 else (h, w)
    images = np.stack(images + (rng.integers(0, 256, shape).astype(np.uint8),))
    return images, np.stack(masks + ((rng.random((h, w)) < 0.5).astype(np.uint8),))


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("h,w,c", SIZES)
def test_ssim_matches_skimage(h, w, c):
    a, _ = _batch(h, w, c, seed=1)
    b, _ = _batch(h, w, c, seed=2)
    b[0] = a[0]  # identical pair
    got = QT.ssim_batch(_t(a), _t(b)).numpy()
    want = np.array([Q.ssim(x, y) for x, y in zip(a, b)])
    assert got.shape == (len(a),)
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[0] == pytest.approx(1.0)
    if c == 1:  # HxWx1 is the same image as HxW
        np.testing.assert_allclose(QT.ssim_batch(_t(a[..., None]), _t(b[..., None])).numpy(), want, atol=1e-9)


def test_mask_iou_matches_including_empty_and_full():
    rng = np.random.default_rng(3)
    a = (rng.random((6, 40, 40)) < 0.5).astype(np.uint8)
    b = (rng.random((6, 40, 40)) < 0.3).astype(np.uint8)
    a[1, 10:20, 10:20] = 0  # a hole
    a[2], b[2] = 0, 0  # empty vs empty -> 1.0
    a[3], b[3] = 1, 0  # full vs empty -> 0.0
    a[4], b[4] = 1, 1
    got = QT.mask_iou_batch(_t(a), _t(b).bool()).numpy()
    want = np.array([Q.mask_iou(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[2] == 1.0 and got[3] == 0.0 and got[4] == 1.0


@pytest.mark.parametrize("h,w,c", SIZES)
@pytest.mark.parametrize("noise", [0.0, 6.0])
def test_canny_matches_skimage(h, w, c, noise):
    images, _ = _batch(h, w, c, noise=noise, seed=4)
    got = QT.canny_batch(_t(images)).numpy()
    want = np.stack([canny(Q._gray(x), sigma=Q._CANNY_SIGMA, mode="nearest") for x in images])
    assert want.any() and not want.all()
    if c == 1 or noise > 0:
        assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} pixels differ"
    else:
        # Flat RGB shapes tie in non-maximum suppression, and rgb2gray's BLAS may round a gray value
        # one bit differently: allow a few pixels (edge_agreement is checked on realistic images).
        assert np.count_nonzero(got != want) <= 0.002 * got.size


@pytest.mark.parametrize("h,w,c", SIZES)
@pytest.mark.parametrize("tolerance", [0, 2, 3])
def test_edge_agreement_matches(h, w, c, tolerance):
    images, masks = _batch(h, w, c, n=7, seed=5)
    masks[1] = 0  # no boundary, edges present -> 0.0
    masks[2] = 1  # full mask: no inner boundary either
    images[3], masks[3] = 128, 0  # no edges, no boundary -> 1.0
    images[4] = 128  # no edges, boundary -> 0.0
    got = QT.edge_agreement_batch(_t(images), _t(masks), tolerance_px=tolerance).numpy()
    want = np.array([Q.edge_agreement(x, m, tolerance) for x, m in zip(images, masks)])
    np.testing.assert_allclose(got, want, atol=TOL)
    assert got[3] == 1.0 and got[1] == 0.0 and got[4] == 0.0


@pytest.mark.parametrize("h,w,c", SIZES)
def test_histograms_and_diversity_match(h, w, c):
    images, _ = _batch(h, w, c, n=8, seed=6)
    images[0] = 255  # white lands in the closed last bin
    images[1] = 0
    hist = QT.histograms_batch(_t(images), bins=32).numpy()
    np.testing.assert_allclose(hist, np.stack([Q._histogram(x, 32) for x in images]), atol=1e-12)
    groups = torch.tensor([5, 5, 5, 9, 9, 2, 7, 7])  # sizes 3, 2, 1 (alone -> 0.0), 2
    got = QT.diversity_batch(_t(images), groups, bins=32).numpy()
    want = (Q.diversity_scores(list(images[:3])) + Q.diversity_scores(list(images[3:5])) + [0.0]
            + Q.diversity_scores(list(images[6:])))
    np.testing.assert_allclose(got, want, atol=TOL)
    assert got[5] == 0.0
    np.testing.assert_allclose(QT.diversity_batch(_t(images), groups, bins=7).numpy()[:3],
                               Q.diversity_scores(list(images[:3]), bins=7), atol=TOL)


def _assess_rows(images, masks, refs, has_ref, sources, groups, weights, extra=None):
    out = []
    for i in range(len(images)):
        others = [images[j] for j in range(len(images)) if j != i and groups[j] == groups[i]]
        out.append(Q.assess_quality(images[i], masks[i], refs[i] if has_ref[i] else None, others, weights,
                                    source_mask=None if sources is None else sources[i],
                                    extra=None if extra is None else {k: float(v[i]) for k, v in extra.items()}))
    return out


@pytest.mark.parametrize("h,w,c", SIZES)
def test_score_batch_matches_assess_quality(h, w, c):
    images, masks = _batch(h, w, c, n=6, seed=7)
    refs, sources = _batch(h, w, c, n=6, seed=8)
    has_ref = np.array([True, False, True, True, False, True])
    groups = np.array([0, 0, 0, 1, 1, 2])
    fidelity = np.linspace(0.1, 0.9, 6)
    weights = {"ssim": 0.3, "iou": 0.2, "edges": 0.2, "diversity": 0.2, "label_fidelity": 0.1}
    got = QT.score_batch(_t(images), _t(masks), _t(refs), has_ref=torch.from_numpy(has_ref),
                         source_masks=_t(sources), groups=torch.from_numpy(groups), weights=weights,
                         extra={"label_fidelity": torch.from_numpy(fidelity)})
    want = _assess_rows(images, masks, refs, has_ref, sources, groups, weights, {"label_fidelity": fidelity})
    for k in ("iou", "edges", "diversity", "label_fidelity", "overall_quality"):
        np.testing.assert_allclose(got[k].numpy(), [r[k] for r in want], atol=TOL, err_msg=k)
    np.testing.assert_allclose(got["ssim"].numpy()[has_ref], [r["ssim"] for r, h_ in zip(want, has_ref) if h_],
                               atol=TOL)
    assert torch.isnan(got["ssim"][~torch.from_numpy(has_ref)]).all()


def test_score_batch_defaults_without_references():
    images, masks = _batch(64, 64, 1, n=4, seed=9)
    got = QT.score_batch(_t(images), _t(masks))  # default weights, no ssim, iou 1, diversity 0
    want = _assess_rows(images, masks, [None] * 4, [False] * 4, None, [0, 1, 2, 3], None)
    assert "ssim" not in got
    np.testing.assert_allclose(got["overall_quality"].numpy(), [r["overall_quality"] for r in want], atol=TOL)
    assert (got["iou"] == 1.0).all() and (got["diversity"] == 0.0).all()


def test_bad_inputs_raise_clear_errors():
    u8 = torch.zeros(2, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        QT.ssim_batch(u8.float(), u8)
    with pytest.raises(ValueError, match="shapes differ"):
        QT.ssim_batch(u8, torch.zeros(2, 16, 15, dtype=torch.uint8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        QT.histograms_batch(torch.zeros(2, 16, 16, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bool or integer"):
        QT.mask_iou_batch(u8, u8.float())
    with pytest.raises(ValueError, match="expected shape"):
        QT.edge_agreement_batch(u8, torch.zeros(2, 16, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="tolerance_px"):
        QT.edge_agreement_batch(u8, u8, tolerance_px=-1)
    with pytest.raises(ValueError, match="bins"):
        QT.histograms_batch(u8, bins=0)
    with pytest.raises(ValueError, match="groups"):
        QT.diversity_batch(u8, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="has_ref given without ref_images"):
        QT.score_batch(u8, u8, has_ref=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="label_fidelity"):
        QT.score_batch(u8, u8, weights={"iou": 1.0, "label_fidelity": 1.0})
    with pytest.raises(ValueError, match="more than 0"):
        QT.score_batch(u8, u8, u8, has_ref=torch.tensor([True, False]), weights={"ssim": 1.0, "iou": 0.0})


def _label_reference(low, high):
    """skimage.feature.canny's hysteresis: keep the 8-connected low components holding a high pixel."""
    from scipy import ndimage

    out = []
    for lo, hi in zip(low, high):
        labels, count = ndimage.label(lo, np.ones((3, 3), bool))
        good = np.zeros(count + 1, bool)
        good[np.unique(labels[hi & lo])] = True
        good[0] = False
        out.append(good[labels])
    return np.stack(out)


def test_hysteresis_matches_connected_components_on_long_paths():
    rng = np.random.default_rng(10)
    low = rng.random((4, 60, 70)) < 0.45  # near the percolation threshold: long, branching components
    high = low & (rng.random(low.shape) < 0.01)
    serpentine = np.zeros((60, 70), bool)  # one 1900-px path, seeded at one end only
    serpentine[1:-1:2, 1:-1] = True
    for k, r in enumerate(range(2, 59, 2)):
        serpentine[r, 68 if k % 2 == 0 else 1] = True
    low[3], high[3] = serpentine, False
    high[3, 1, 1] = True
    low[:, [0, -1]], low[:, :, [0, -1]] = False, False  # canny never marks the border
    got = QT._hysteresis(torch.from_numpy(low), torch.from_numpy(high & low)).numpy()
    assert np.array_equal(got, _label_reference(low, high))
    assert got[3].sum() == serpentine[1:-1, 1:-1].sum()


def test_score_batch_chunks_do_not_change_scores():
    images, masks = _batch(64, 64, 3, n=5, seed=11)
    args = (_t(images), _t(masks), _t(images[::-1]))
    kw = dict(groups=torch.tensor([0, 0, 1, 1, 1]))
    a, b = QT.score_batch(*args, chunk_size=1, **kw), QT.score_batch(*args, chunk_size=5, **kw)
    for k in a:
        assert torch.equal(a[k], b[k]), k
