"""synthgen.quality_torch must give the numbers synthgen.quality (scikit-image) gives, on CPU batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import draw

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
@pytest.mark.parametrize("band", [1, 3, 5])
def test_edge_agreement_matches(h, w, c, band):
    images, masks = _batch(h, w, c, n=7, seed=5)
    masks[1] = 0  # empty mask: no boundary -> 1.0
    masks[2] = 1  # full mask: no boundary either
    images[3] = 128  # flat image, boundary -> 0.0
    images[4] = np.where((masks[4] == 1)[..., None] if c == 3 else masks[4] == 1, 200, 40)  # painted -> 1.0
    got = QT.edge_agreement_batch(_t(images), _t(masks), band_px=band).numpy()
    want = np.array([Q.edge_agreement(x, m, band) for x, m in zip(images, masks)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[1] == got[2] == got[4] == 1.0 and got[3] == 0.0
    assert got[0] > 0.5 and got[6] < 0.1  # noisy shapes; a noise image against a random mask
    inner, outer = QT.boundary_bands_batch(_t(masks).bool(), band)
    for i in range(len(masks)):
        want_in, want_out = Q.boundary_bands(masks[i], band)
        assert np.array_equal(inner[i].numpy(), want_in) and np.array_equal(outer[i].numpy(), want_out)


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
    with pytest.raises(ValueError, match="band_px"):
        QT.edge_agreement_batch(u8, u8, band_px=0)
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


def test_score_batch_chunks_do_not_change_scores():
    images, masks = _batch(64, 64, 3, n=5, seed=11)
    args = (_t(images), _t(masks), _t(images[::-1]))
    kw = dict(groups=torch.tensor([0, 0, 1, 1, 1]))
    a, b = QT.score_batch(*args, chunk_size=1, **kw), QT.score_batch(*args, chunk_size=5, **kw)
    for k in a:
        assert torch.equal(a[k], b[k]), k
