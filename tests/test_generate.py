"""Generation on Ray Data end to end: tiny 32 px checkpoints, a 2-CPU Ray, real files on disk."""
from __future__ import annotations

import copy
import filecmp
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import write_pairs
from synthgen.api import SyntheticDataGenerator, create_synthetic_dataloader
from synthgen.checkpoint import CheckpointError
from synthgen.cli import main
from synthgen.config import Config, ConfigError
from synthgen.data import DataError, load_synthetic_dataset
from synthgen.generate import generate
from synthgen.writers import SCHEMA, DatasetWriter, OutputError, decode_png


def _train(model: str, images: str, masks: str, out: str) -> str:
    cfg = Config()
    cfg.pix2pix.ngf = cfg.pix2pix.ndf = 4
    cfg.vae.nf, cfg.vae.latent_dim = 4, 8
    loader = create_synthetic_dataloader(images, masks, batch_size=2, image_size=32, repeats=2)
    gen = SyntheticDataGenerator(model, "cpu", image_size=32, config=cfg)
    (gen.train_pix2pix if model == "pix2pix" else gen.train_vae)(loader, num_epochs=1)
    return gen.save(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    images, masks = write_pairs(str(root / "pairs"), n=3, size=(48, 64))
    return {"root": root, "images": images, "masks": masks,
            "pix2pix": _train("pix2pix", images, masks, str(root / "p2p")),
            "vae": _train("vae", images, masks, str(root / "vae"))}


def _cfg(setup, out: str, **generate) -> Config:
    cfg = Config()
    g = cfg.generate
    g.checkpoint, g.masks, g.images, g.out = setup["pix2pix"], setup["masks"], setup["images"], out
    g.num_variations, g.variations, g.batch_size, g.actors_max, g.shard_rows = 3, "noise,elastic,morph", 4, 1, 16
    for key, value in generate.items():
        setattr(g, key, value)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def runs(ray_2cpu, setup):
    """Run A accepts everything; B filters at A's median score; C repeats B (determinism)."""
    root = setup["root"]
    a = generate(_cfg(setup, str(root / "a"), threshold=0.0))
    scores = pq.read_table(os.path.join(a.out, "data")).column("overall_quality").to_numpy()
    median = float(np.median(scores))
    b = generate(_cfg(setup, str(root / "b"), threshold=median, keep_rejected=True))
    c = generate(_cfg(setup, str(root / "c"), threshold=median, keep_rejected=True))
    return {"a": a, "b": b, "c": c, "median": median}


def _manifest(out: str) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:  # strict JSON: NaN/Infinity are not JSON
        return json.load(f, parse_constant=lambda c: pytest.fail(f"manifest.json holds {c}"))


def test_counts_schema_and_png_round_trip(runs):
    a = runs["a"]
    # 3 sources of 48x64 cut into 4 tiles of 32 px each, 3 variations per tile
    assert a.generated == 3 * 4 * 3
    m = _manifest(a.out)
    c = m["counts"]
    assert c["generated"] == c["accepted"] + c["rejected"] == 36
    assert sum(c["rejected_by_reason"].values()) == c["rejected"]
    table = pq.read_table(os.path.join(a.out, "data"))
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == c["accepted"] == len(os.listdir(os.path.join(a.out, "images")))
    assert len(m["parquet_shards"]) == -(-c["accepted"] // 16)
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    row = table.slice(0, 1).to_pylist()[0]
    assert decode_png(row["image"]).shape[:2] == (32, 32) == (row["height"], row["width"])
    on_disk = np.asarray(Image.open(os.path.join(a.out, "images", row["id"] + ".png")))
    assert np.array_equal(on_disk, decode_png(row["image"]))
    assert set(np.unique(decode_png(row["mask"]))) <= {0, 255}
    assert row["variation"] in ("noise", "elastic", "morph") and isinstance(json.loads(row["params"]), dict)
    assert m["checkpoint_sha256"] and os.path.getsize(os.path.join(a.out, "quality.png")) > 0


def test_realism_of_the_accepted_images_against_the_real_sources(runs):
    a = runs["a"]
    realism = _manifest(a.out)["realism"]
    assert realism["reason"] == "" and realism["real"] == 12  # 3 sources x 4 tiles of 32 px
    assert realism["synthetic"] == min(64, a.accepted)
    figures = realism["figures"]
    assert 0.0 <= figures["c2st_accuracy"] <= 1.0 and figures["c2st_n_test"] == 512
    assert figures["fg/hf_ratio"] > 0 and figures["spectrum_distance"] >= 0
    assert os.path.getsize(os.path.join(a.out, "realism.png")) > 0


def test_threshold_filters(runs):
    a, b = pq.read_table(os.path.join(runs["a"].out, "data")), pq.read_table(os.path.join(runs["b"].out, "data"))
    kept = {i for i, s in zip(a.column("id").to_pylist(), a.column("overall_quality").to_pylist()) if s >= runs["median"]}
    assert set(b.column("id").to_pylist()) == kept
    assert 0 < runs["b"].accepted < runs["b"].generated
    rejected = os.listdir(os.path.join(runs["b"].out, "rejected", "images"))
    assert len(rejected) == runs["b"].generated - runs["b"].accepted


def test_same_seed_gives_byte_identical_files(runs):
    b, c = runs["b"].out, runs["c"].out
    cmp = filecmp.dircmp(b, c)
    assert not cmp.left_only and not cmp.right_only
    for sub in ("data", "images", "masks", "rejected/images"):
        names = sorted(os.listdir(os.path.join(b, sub)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(b, sub), os.path.join(c, sub), names, shallow=False)
        assert not mismatch and not errors and len(match) == len(names)
    mb, mc = _manifest(b), _manifest(c)
    mb.pop("run"), mc.pop("run")
    mb["config"]["generate"].pop("out"), mc["config"]["generate"].pop("out")
    assert mb == mc


def test_synthetic_dataset_reads_back(runs):
    ds = load_synthetic_dataset(runs["a"].out)
    assert len(ds) == runs["a"].accepted
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_hybrid_keeps_the_better_model_per_candidate(ray_2cpu, setup, tmp_path):
    cfg = _cfg(setup, str(tmp_path / "h"), threshold=0.0, model="hybrid", vae_checkpoint=setup["vae"],
               variations="latent,elastic")
    result = generate(cfg)
    models = set(pq.read_table(os.path.join(result.out, "data")).column("model").to_pylist())
    assert models <= {"pix2pix", "vae"} and models


def test_parquet_masks_and_python_api(ray_2cpu, setup, runs, tmp_path):
    gen = SyntheticDataGenerator.load(setup["vae"])
    parquet = os.path.join(runs["a"].out, "data", "part-00000.parquet")
    manifest = gen.generate_synthetic_data(parquet, num_variations=2, output_dir=str(tmp_path / "api"),
                                           model_path=setup["vae"], threshold=0.0, variations="latent")
    assert manifest["counts"]["generated"] == 2 * pq.read_metadata(parquet).num_rows
    assert manifest["realism"]["figures"] is None and "no real images" in manifest["realism"]["reason"]
    scores = gen.assess_batch_quality([decode_png(r) for r in pq.read_table(parquet).column("image").to_pylist()[:3]],
                                      [decode_png(r) // 255 for r in pq.read_table(parquet).column("mask").to_pylist()[:3]])
    assert all(0 <= s["overall_quality"] <= 1 and s["iou"] == 1.0 for s in scores)


def test_a_crash_leaves_no_dataset(ray_2cpu, setup, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DatasetWriter.add

    def failing_add(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-run
        original(self, batch)

    monkeypatch.setattr(DatasetWriter, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        generate(_cfg(setup, str(tmp_path / "killed")))
    assert calls["n"] == 2
    assert os.listdir(tmp_path) == [], "neither the output nor its temporary directory remains"


def test_bad_inputs_are_clear_errors(ray_2cpu, setup, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="nope"):
        generate(_cfg(setup, str(tmp_path / "o"), checkpoint=str(tmp_path / "nope")))
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(setup["pix2pix"], broken)
    (broken / "generator.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="generator.safetensors"):
        generate(_cfg(setup, str(tmp_path / "o"), checkpoint=str(broken)))
    with pytest.raises(CheckpointError, match="pix2pix"):
        generate(_cfg(setup, str(tmp_path / "o"), model="vae"))

    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(small / "s.png")
    with pytest.raises(DataError, match="smaller than"):
        generate(_cfg(setup, str(tmp_path / "o"), masks=str(small), images=""))
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(grey / "g.png")
    with pytest.raises(DataError, match=str(grey / "g.png")):
        generate(_cfg(setup, str(tmp_path / "o"), masks=str(grey), images=""))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no supported files"):
        generate(_cfg(setup, str(tmp_path / "o"), masks=str(empty), images=""))

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        generate(_cfg(setup, str(blocker / "out")))
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(OutputError, match="--overwrite"):
        generate(_cfg(setup, str(existing)))
    assert not any(n.startswith(".") for n in os.listdir(tmp_path)), "no temporary directory left behind"

    rc = main(["generate", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nope" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="weights"):
        generate(_cfg(setup, str(tmp_path / "o"), weights="ssim=2,bogus=1"))


def test_label_fidelity_from_an_auto_segmenter(ray_2cpu, setup, tmp_path):
    weights = "ssim=0.3,iou=0.2,edges=0.2,diversity=0.1,label_fidelity=0.2"
    with pytest.raises(ConfigError, match="segmenter"):
        generate(_cfg(setup, str(tmp_path / "no"), weights=weights))
    result = generate(_cfg(setup, str(tmp_path / "lf"), threshold=0.0, weights=weights, segmenter="auto",
                           segmenter_steps=3))
    fidelity = pq.read_table(os.path.join(result.out, "data")).column("label_fidelity").to_numpy()
    assert len(fidelity) and np.all((fidelity >= 0) & (fidelity <= 1))
    assert 0 <= _manifest(result.out)["score_means"]["label_fidelity"] <= 1
    assert sorted(os.listdir(os.path.join(result.out, "segmenter"))) == ["segmenter.json", "segmenter.safetensors"]
    # a saved segmenter can be reused by path
    again = generate(_cfg(setup, str(tmp_path / "lf2"), threshold=0.0, weights=weights,
                          segmenter=os.path.join(result.out, "segmenter")))
    assert again.generated == result.generated


@pytest.mark.parametrize("model", ["pix2pix", pytest.param("hybrid", marks=pytest.mark.slow)])
def test_torch_scoring_in_the_actors_matches_skimage(ray_2cpu, setup, runs, model):
    """generate.scoring torch (what --gpu uses) gives the same scores and the same accepted set."""
    root = setup["root"]
    extra = {"model": "hybrid", "vae_checkpoint": setup["vae"]} if model == "hybrid" else {}
    ref = runs["b"] if model == "pix2pix" else generate(
        _cfg(setup, str(root / "hyb_sk"), threshold=runs["median"], scoring="skimage", **extra))
    out = generate(_cfg(setup, str(root / f"torch_{model}"), threshold=runs["median"], scoring="torch", **extra))
    a = pq.read_table(os.path.join(ref.out, "data")).to_pandas().set_index("id").sort_index()
    b = pq.read_table(os.path.join(out.out, "data")).to_pandas().set_index("id").sort_index()
    assert list(a.index) == list(b.index) and len(a) > 0
    for metric in ("ssim", "iou", "edges", "diversity", "overall_quality"):
        assert np.allclose(a[metric], b[metric], atol=1e-6, equal_nan=True), metric
    assert (a["model"] == b["model"]).all()  # the data holds the accepted rows: same ids, same filter
    assert _manifest(out.out)["counts"] == _manifest(ref.out)["counts"]
    assert _manifest(out.out)["run"]["scoring"] == "torch" and _manifest(ref.out)["run"]["scoring"] == "skimage"


def test_relative_threshold_end_to_end(ray_2cpu, setup, runs, tmp_path, capsys):
    """threshold real:0.9 = 0.9 x the real tiles' median score, recorded in the manifest and summary,
    and it filters exactly like that absolute threshold (run A holds every candidate's score)."""
    from synthgen.generate import load_sources
    from synthgen.checkpoint import load_checkpoint
    from synthgen.quality import DEFAULT_WEIGHTS, real_reference_score

    result = generate(_cfg(setup, str(tmp_path / "rel"), threshold="real:0.9"))
    t = _manifest(result.out)["threshold"]
    main_ckpt = load_checkpoint(setup["pix2pix"])
    sources = load_sources(_cfg(setup, "unused").generate, main_ckpt.cfg, main_ckpt.channels)
    reference = real_reference_score([(s.image, s.mask) for s in sources], DEFAULT_WEIGHTS)
    assert t["spec"] == "real:0.9" and t["real_reference"] == pytest.approx(reference)
    assert t["resolved"] == pytest.approx(0.9 * reference) and 0.5 < reference <= 1.0
    a = pq.read_table(os.path.join(runs["a"].out, "data"))
    kept = {i for i, s in zip(a.column("id").to_pylist(), a.column("overall_quality").to_pylist())
            if s >= t["resolved"]}
    assert set(pq.read_table(os.path.join(result.out, "data")).column("id").to_pylist()) == kept
    assert f"threshold  {t['resolved']:>8.4f}  (real:0.9 x real reference {reference:.4f})" in capsys.readouterr().out
    assert _manifest(runs["a"].out)["threshold"] == {"spec": "0.0", "resolved": 0.0, "real_reference": None}
    with pytest.raises(ConfigError, match="real images"):  # masks without images: no reference
        generate(_cfg(setup, str(tmp_path / "none"), threshold="real:0.9", images=""))
