"""Downstream evaluation: a tiny end-to-end run (32 px, k=2, 1 seed, a few steps) and the split checks."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import write_pairs
from synthgen.config import Config, ConfigError
from synthgen.data import DataError, find_pairs
from synthgen.evaluate import (check_no_leakage, condition_name, curve_summary, generated_conditions, markdown_table,
                               parse_thresholds, plateau_step, run_evaluation, summarise)


def _config(tmp_path, real, test, **evaluate) -> Config:
    cfg = Config()
    e = cfg.evaluate
    e.real_images, e.real_masks = real
    e.test_images, e.test_masks = test
    e.out, e.k, e.seeds, e.image_size = str(tmp_path / "eval"), "2", 1, 32
    e.seg_steps, e.seg_batch, e.seg_width, e.gen_steps, e.gen_ngf = 4, 2, 4, 2, 4
    e.num_variations, e.threshold = 2, 0.0
    for key, value in evaluate.items():
        setattr(e, key, value)
    cfg.validate()
    return cfg


def test_tiny_evaluation_writes_a_well_formed_table(ray_2cpu, tmp_path):
    real = write_pairs(str(tmp_path / "real"), n=3, size=(40, 48), seed=1)
    test = write_pairs(str(tmp_path / "test"), n=2, size=(40, 48), seed=2)
    cfg = _config(tmp_path, real, test, curve_every=2)
    result = run_evaluation(cfg)

    conditions = {"real", "classic", "pix2pix", "vae", "hybrid", "all_real"}
    assert {t["condition"] for t in result["trials"]} == conditions
    assert all(0.0 <= t["dice"] <= 1.0 and 0.0 <= t["iou"] <= 1.0 for t in result["trials"])
    assert set(result["summary"]) == conditions and result["summary"]["real"]["2"]["n"] == 1
    out = cfg.evaluate.out
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["summary"] == result["summary"]
    with open(os.path.join(out, "results.md")) as f:
        table = f.read()
    dice_table = table.split("\n\n")[0]
    assert dice_table.count("\n") == 1 + len(conditions) and "| pix2pix |" in dice_table and "k=2 Dice" in table
    # one plateau line per (condition, k)
    assert table.count("\n- ") == len(conditions) and "- real k=2: Dice" in table
    # Realism of each synthetic set against its k real pairs, from the set's manifest.
    assert set(result["realism"]) == {"pix2pix/k2", "vae/k2", "hybrid/k2"}
    for r in result["realism"].values():
        assert r["real"] == 8 and 0.0 <= r["figures"]["c2st_accuracy"] <= 1.0
    assert "| hybrid/k2 |" in table and "c2st_accuracy" in table
    assert os.path.getsize(os.path.join(out, "results.png")) > 0
    assert os.path.getsize(os.path.join(out, "results_curves.png")) > 0
    # Curves: steps 2 and 4 (= seg_steps) per trial; the last point is the trial's final score.
    assert all([p["step"] for p in t["curve"]] == [2, 4] and t["curve"][-1]["dice"] == t["dice"]
               for t in result["trials"])
    assert set(result["curves"]) == conditions and result["curves"]["real"]["2"]["step"] == [2, 4]
    assert result["config"]["mixing"] == "add"

    # The split: generators and their synthetic sets saw exactly the first k=2 real pairs, no test pair.
    used_dir = os.path.join(out, "k2", "real_pairs", "images")
    assert {os.path.splitext(n)[0] for n in os.listdir(used_dir)} == {p.stem for p in find_pairs(*real)[:2]}
    used_bytes = {open(os.path.join(used_dir, n), "rb").read() for n in os.listdir(used_dir)}
    assert not used_bytes & {open(p.image, "rb").read() for p in find_pairs(*test)}
    for c in ("pix2pix", "vae", "hybrid"):
        with open(os.path.join(out, "k2", f"synthetic_{c}", "manifest.json")) as f:
            manifest = json.load(f)
        assert manifest["counts"]["sources"] == 2 * 4  # 2 pairs of 40x48 -> 4 tiles of 32 px each
    with open(os.path.join(out, "k2", "pix2pix", "model", "config.json")) as f:
        assert json.load(f)["data"]["images"] == os.path.join(out, "k2", "real_pairs", "images")


def test_leakage_and_bad_k_are_refused(tmp_path):
    real = write_pairs(str(tmp_path / "real"), n=3, seed=1)
    test = write_pairs(str(tmp_path / "test"), n=2, seed=2)
    shutil.copy(os.path.join(real[0], "p00.png"), os.path.join(test[0], "p00.png"))  # a training image in test
    with pytest.raises(DataError, match="p00.png"):
        check_no_leakage(find_pairs(*real), find_pairs(*test))
    with pytest.raises(DataError, match="must not be used for training"):
        run_evaluation(_config(tmp_path, real, test))
    clean = write_pairs(str(tmp_path / "clean"), n=2, seed=3)
    with pytest.raises(ConfigError, match="1..3"):
        run_evaluation(_config(tmp_path, real, clean, k="2,5"))


def test_summary_and_markdown_by_hand():
    trials = [{"condition": "real", "k": 3, "seed": s, "dice": d, "iou": d / 2} for s, d in enumerate([0.5, 0.7])]
    summary = summarise(trials)
    assert summary["real"]["3"]["dice_mean"] == pytest.approx(0.6)
    assert summary["real"]["3"]["dice_std"] == pytest.approx(0.1)
    assert "0.600 ± 0.100" in markdown_table(summary, [3])


def test_feedback_optimizer_reports_gain_per_threshold(ray_2cpu, tmp_path):
    from synthgen.api import SyntheticDataGenerator, create_synthetic_dataloader
    from synthgen.feedback import FeedbackOptimizer

    real = write_pairs(str(tmp_path / "real"), n=3, size=(40, 48), seed=1)
    test = write_pairs(str(tmp_path / "test"), n=2, size=(40, 48), seed=2)
    cfg = Config()
    cfg.pix2pix.ngf = cfg.pix2pix.ndf = 4
    gen = SyntheticDataGenerator("pix2pix", "cpu", image_size=32, config=cfg)
    gen.train_pix2pix(create_synthetic_dataloader(*real, batch_size=2, image_size=32, repeats=2), num_epochs=1)
    opt = FeedbackOptimizer({"steps": 3, "batch_size": 2, "width": 4}, gen)
    report = opt.optimize_synthetic_generation(real, test, thresholds=(0.0, 0.99), num_variations=2,
                                               out_dir=str(tmp_path / "fb"))
    assert set(report["by_threshold"]) == {0.0, 0.99} and report["best_threshold"] in (0.0, 0.99)
    low, high = report["by_threshold"][0.0], report["by_threshold"][0.99]
    assert low["n_synthetic"] >= high["n_synthetic"] and low["n_synthetic"] > 0
    assert 0.0 <= report["dice_real"] <= 1.0
    assert low["gain"] == pytest.approx(low["dice"] - report["dice_real"])


def test_filter_ablation_conditions(ray_2cpu, tmp_path):
    """thresholds "0,0.99": one generated set, re-filtered at each threshold, as pix2pix@t0 and @t0.99."""
    real = write_pairs(str(tmp_path / "real"), n=3, size=(40, 48), seed=1)
    test = write_pairs(str(tmp_path / "test"), n=2, size=(40, 48), seed=2)
    cfg = _config(tmp_path, real, test, conditions="pix2pix", thresholds="0.99,0", all_real=False, curve_every=0)
    result = run_evaluation(cfg)
    by_name = {t["condition"]: t for t in result["trials"]}
    assert set(by_name) == {"pix2pix@t0", "pix2pix@t0.99"} and result["curves"] == {}
    with open(os.path.join(cfg.evaluate.out, "k2", "synthetic_pix2pix", "manifest.json")) as f:
        manifest = json.load(f)
    # generated once with every candidate kept (2 variations of 8 tiles), then filtered per condition
    assert manifest["counts"]["accepted"] == 2 * 8
    assert by_name["pix2pix@t0"]["synthetic_items"] >= by_name["pix2pix@t0.99"]["synthetic_items"]
    assert by_name["pix2pix@t0"]["synthetic_items"] <= 16


def test_threshold_parsing_and_condition_names():
    assert parse_thresholds("0.5, 0,,0.5") == [0.0, 0.5] and parse_thresholds("") == []
    with pytest.raises(ConfigError, match="comma list of numbers"):
        parse_thresholds("0,high")
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        parse_thresholds("2")
    assert condition_name("pix2pix", 0.0) == "pix2pix@t0" and condition_name("vae", 0.25) == "vae@t0.25"
    assert generated_conditions(["real", "pix2pix", "hybrid"], []) == [("pix2pix", "pix2pix", None),
                                                                      ("hybrid", "hybrid", None)]
    assert generated_conditions(["classic", "vae"], [0.0, 0.5]) == [("vae@t0", "vae", 0.0), ("vae@t0.5", "vae", 0.5)]


def test_plateau_and_curve_summary_by_hand():
    assert plateau_step([100, 200, 300, 400], [0.5, 0.70, 0.704, 0.70]) == 200
    assert plateau_step([100, 200], [0.6, 0.5]) == 100

    def trial(condition, seed, dice):
        return {"condition": condition, "k": 5, "seed": seed, "dice": dice[-1],
                "curve": [{"step": 100 * (i + 1), "dice": d} for i, d in enumerate(dice)]}

    trials = [trial("real", 0, [0.5, 0.6, 0.7, 0.8, 0.9]), trial("real", 1, [0.5, 0.6, 0.7, 0.8, 0.85]),
              trial("classic", 0, [0.7, 0.8, 0.8, 0.8, 0.8]), {"condition": "all_real", "k": 24, "dice": 0.9}]
    curves = curve_summary(trials, budget=500)
    real, classic = curves["real"]["5"], curves["classic"]["5"]
    assert set(curves) == {"real", "classic"} and real["n"] == 2
    assert real["dice_mean"] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.875]) and real["dice_std"][-1] == pytest.approx(0.025)
    assert real["plateau_step"] == 500 and real["still_rising"]  # 500 > 80% of the 500-step budget
    assert classic["plateau_step"] == 200 and not classic["still_rising"]


def test_generated_sets_take_the_evaluation_variations():
    from synthgen.evaluate import DEFAULT_VARIATIONS, _generation_config

    cfg = Config()
    g = _generation_config(cfg, "hybrid", "ck/p2p", "ck/vae", "out")
    assert g.generate.variations == DEFAULT_VARIATIONS["vae"] and g.variations.affine_degrees == 10.0
    assert (g.generate.checkpoint, g.generate.vae_checkpoint, g.generate.model) == ("ck/p2p", "ck/vae", "hybrid")
    cfg.evaluate.variations = "affine,elastic,flip"
    cfg.set("variations.affine_degrees", "15")
    cfg.set("variations.affine_scale", "0.2")
    g = _generation_config(cfg, "pix2pix", "ck/p2p", "", "out")
    assert g.generate.variations == "affine,elastic,flip"
    assert (g.variations.affine_degrees, g.variations.affine_scale) == (15.0, 0.2)
    cfg.set("variations.affine_degrees", "30")  # a copy: the generated set's config is its own
    assert g.variations.affine_degrees == 15.0
    cfg.evaluate.variations = "affine,twist"
    with pytest.raises(ConfigError, match="evaluate.variations"):
        cfg.validate()


def test_diffusion_is_an_evaluation_condition(ray_2cpu, tmp_path):
    """--conditions diffusion trains the diffusion model on the k pairs (Adam beta1 0.9, width from
    gen_ngf unless gen_set says otherwise), generates its set through the pipeline and trains on it."""
    real = write_pairs(str(tmp_path / "real"), n=3, size=(40, 48), seed=1)
    test = write_pairs(str(tmp_path / "test"), n=2, size=(40, 48), seed=2)
    cfg = _config(tmp_path, real, test, conditions="diffusion", all_real=False, curve_every=0,
                  gen_set="diffusion.timesteps=20,diffusion.sample_steps=2,diffusion.layers_per_block=1")
    result = run_evaluation(cfg)
    assert [t["condition"] for t in result["trials"]] == ["diffusion"]
    assert 0.0 <= result["trials"][0]["dice"] <= 1.0 and result["trials"][0]["synthetic_items"] > 0
    with open(os.path.join(cfg.evaluate.out, "k2", "diffusion", "model", "config.json")) as f:
        saved = json.load(f)
    assert saved["train"]["model"] == "diffusion" and saved["train"]["beta1"] == 0.9
    assert saved["diffusion"]["channels"] == 8 and saved["diffusion"]["sample_steps"] == 2
    with open(os.path.join(cfg.evaluate.out, "k2", "synthetic_diffusion", "manifest.json")) as f:
        assert json.load(f)["counts"]["generated"] == 2 * 8
