"""`synthgen tune`: the search-space parser, bad input, a tiny real search and resuming one."""
from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import write_pairs
from synthgen.checkpoint import load_checkpoint
from synthgen.cli import main
from synthgen.config import Config, ConfigError
from synthgen.search_space import SearchError, apply_params, base_point, effective_space, parse_space

TINY_YAML = {
    "data": {"image_size": 32, "repeats": 4, "val_pairs": 1, "min_pairs": 3},
    "pix2pix": {"ngf": 4, "ndf": 4}, "vae": {"nf": 4, "latent_dim": 16},
    "train": {"batch_size": 2, "epochs": 2, "cpus_per_worker": 0.5, "checkpoint_every": 1, "lr": 1e-3},
    "tune": {"val_tiles": 4},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    images, masks = write_pairs(str(root / "pairs"), n=5, size=(48, 48))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_YAML))
    return images, masks, str(config)


# ------------------------------------------------------------------ the search space
def test_parse_space_reads_every_distribution():
    params = {p.key: p for p in parse_space({
        "pix2pix.lambda_l1": "loguniform(10, 300)", "train.lr": "uniform(1e-5, 1e-3)",
        "pix2pix.ngf": "int(16, 64)", "pix2pix.gan_mode": "choice(lsgan, hinge)",
        "pix2pix.spectral_norm": "choice(true, false)"}, Config())}
    assert params["pix2pix.lambda_l1"].values == (10.0, 300.0) and params["pix2pix.lambda_l1"].kind == "loguniform"
    assert params["pix2pix.ngf"].values == (16, 64)
    assert params["pix2pix.gan_mode"].values == ("lsgan", "hinge")
    assert params["pix2pix.spectral_norm"].values == (True, False)
    assert params["pix2pix.lambda_l1"].contains(100.0) and not params["pix2pix.lambda_l1"].contains(5.0)


@pytest.mark.parametrize("key, spec, message", [
    ("pix2pix.lambda_l1", "loguniform(300, 10)", "lo < hi"),
    ("pix2pix.lambda_l1", "uniform(5, 5)", "lo < hi"),
    ("train.lr", "loguniform(0, 1e-3)", "lo > 0"),
    ("pix2pix.lambda_l1", "uniform(-5, 10)", "lambda_l1 must be >= 0"),
    ("train.lr", "uniform(a, b)", "not numbers"),
    ("train.lr", "uniform(1e-4)", "two bounds"),
    ("train.lr", "loguniform(1e-5, inf)", "finite"),
    ("train.lr", "normal(0, 1)", "is not loguniform"),
    ("pix2pix.ngf", "uniform(16, 64)", None),  # a float range on an int key is rounded: accepted
    ("train.lr", "int(1, 3)", "integer key"),
    ("pix2pix.gan_mode", "uniform(0, 1)", "use choice()"),
    ("pix2pix.gan_mode", "choice(lsgan, bogus)", "gan_mode must be"),
    ("pix2pix.gan_mode", "choice()", "at least one value"),
    ("pix2pix.nope", "choice(1, 2)", "unknown config key"),
    ("data.images", "choice(a, b)", "not searchable"),
    ("train.epochs", "int(1, 5)", "not searchable"),
    ("generate.threshold", "uniform(0, 1)", "not searchable"),
])
def test_parse_space_rejects_bad_entries(key, spec, message):
    if message is None:
        parse_space({key: spec}, Config())
        return
    with pytest.raises(SearchError) as e:
        parse_space({key: spec}, Config())
    assert key in str(e.value) and message in str(e.value)


def test_every_bad_entry_is_reported_at_once():
    with pytest.raises(SearchError) as e:
        parse_space({"train.lr": "loguniform(0, 1)", "vae.beta": "uniform(2, 1)", "vae.nf": "int(8, 16)"}, Config())
    assert "train.lr" in str(e.value) and "vae.beta" in str(e.value) and "vae.nf" not in str(e.value)


def test_default_spaces_and_the_base_point():
    cfg = Config()
    assert set(effective_space(cfg)) == {"pix2pix.lambda_l1", "train.lr", "train.lr_d"}
    cfg.tune.model = "hybrid"
    space = effective_space(cfg)
    assert space["train.model"] == "choice(pix2pix, vae)" and "vae.beta" in space and "pix2pix.lambda_l1" in space
    cfg.tune.model = "vae"
    params = parse_space(effective_space(cfg), cfg)
    assert base_point(cfg, params) == {"vae.beta": 1.0, "train.lr": 2e-4}
    # lr_d = 0 means 'same as lr', so the default config is the point lr_d = lr
    cfg.tune.model = ""
    assert base_point(cfg, parse_space(effective_space(cfg), cfg))["train.lr_d"] == cfg.train.lr
    tuned = apply_params(cfg, {"pix2pix.lambda_l1": 42.0, "train.lr": 1e-4})
    assert tuned.pix2pix.lambda_l1 == 42.0 and tuned.train.lr == 1e-4 and cfg.pix2pix.lambda_l1 == 100.0


def test_space_from_yaml_and_command_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("tune:\n  space:\n    vae.beta: loguniform(0.1, 10)\n    train.lr: uniform(1e-4, 1e-3)\n")
    assert Config.from_yaml(str(path)).tune.space == {"vae.beta": "loguniform(0.1, 10)", "train.lr": "uniform(1e-4, 1e-3)"}
    cfg = Config.from_yaml(None, {"tune.space": "vae.beta=loguniform(0.1,10); pix2pix.gan_mode=choice(lsgan,hinge)"})
    assert cfg.tune.space == {"vae.beta": "loguniform(0.1,10)", "pix2pix.gan_mode": "choice(lsgan,hinge)"}
    with pytest.raises(ConfigError, match="tune.space"):
        Config.from_yaml(None, {"tune.space": "vae.beta loguniform(1, 2)"})


# ------------------------------------------------------------------ bad input through the CLI
@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "tune.trials must be >= 1"),
    (["--objective", "accuracy"], "tune.objective must be one of"),
    (["--mode", "up"], "tune.mode"),
    (["--space", "train.lr=loguniform(1e-3,1e-5)"], "lo < hi"),
    (["--space", "train.lr=loguniform(1e-5,1e-3)", "--model", "gan"], "tune.model"),
    (["--val-images", "x"], "go together"),
])
def test_bad_search_input_exits_2_and_writes_nothing(tmp_path, data, capsys, flags, message):
    images, masks, config = data
    out = tmp_path / "search"
    rc = main(["tune", "--config", config, "--images", images, "--masks", masks, "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_search_without_validation_pairs_is_refused(tmp_path, data, capsys):
    images, masks, config = data
    rc = main(["tune", "--config", config, "--images", images, "--masks", masks, "--out", str(tmp_path / "s"),
               "--val-pairs", "0"])
    assert rc == 2 and "validation pairs" in capsys.readouterr().err


# ------------------------------------------------------------------ a tiny real search
@pytest.fixture(scope="module")
def tiny_search(ray_2cpu, data, tmp_path_factory):
    images, masks, config = data
    out = str(tmp_path_factory.mktemp("tiny_search") / "search")
    rc = main(["tune", "--config", config, "--images", images, "--masks", masks, "--out", out,
               "--trials", "4", "--epochs", "2", "--max-concurrent", "2", "--objective", "quality"])
    assert rc == 0
    return out


def test_tiny_search_writes_the_table_plot_and_summary(tiny_search):
    table = pd.read_csv(os.path.join(tiny_search, "trials.csv"))
    assert len(table) == 4 and table["trial_id"].is_unique
    assert {"status", "epochs", "seconds", "quality", "pix2pix.lambda_l1", "train.lr", "train.lr_d"} <= set(table.columns)
    assert set(table["status"]) <= {"completed", "stopped early"}
    assert table["epochs"].between(1, 2).all() and (table["status"] == "completed").any()
    assert table["quality"].between(-1, 1).all()
    assert table["pix2pix.lambda_l1"].between(10, 300).all() and table["train.lr"].between(5e-5, 1e-3).all()
    completed = table[table["status"] == "completed"]
    assert table.iloc[0]["quality"] == completed["quality"].max(), "best completed trial first"
    md = open(os.path.join(tiny_search, "trials.md")).read()
    assert md.count("\n") == 4 + 2 and table.iloc[0]["trial_id"] in md
    assert os.path.getsize(os.path.join(tiny_search, "objective_vs_params.png")) > 1000
    with open(os.path.join(tiny_search, "summary.json")) as f:
        summary = json.load(f)
    assert summary["objective"] == "quality" and summary["mode"] == "max" and summary["trials"] == 4
    # the base config is the first point evaluated, so the summary can compare best and default
    assert summary["default"]["pix2pix.lambda_l1"] == 100.0 and summary["default"]["train.lr"] == 1e-3
    assert summary["best"]["quality"] >= summary["default"]["quality"] or summary["default"]["status"] != "completed"


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_best_config_trains_and_best_model_loads(ray_2cpu, tiny_search, tmp_path):
    table = pd.read_csv(os.path.join(tiny_search, "trials.csv"))
    best_yaml = os.path.join(tiny_search, "best_config.yaml")
    best = Config.from_yaml(best_yaml)
    assert math.isclose(best.pix2pix.lambda_l1, table.iloc[0]["pix2pix.lambda_l1"], rel_tol=1e-6)
    assert math.isclose(best.train.lr, table.iloc[0]["train.lr"], rel_tol=1e-6)
    ckpt = load_checkpoint(os.path.join(tiny_search, "best_model"))
    assert math.isclose(ckpt.cfg.pix2pix.lambda_l1, best.pix2pix.lambda_l1, rel_tol=1e-6)
    out = str(tmp_path / "retrain")
    assert main(["train", "--config", best_yaml, "--out", out, "--epochs", "1"]) == 0
    assert os.path.isfile(os.path.join(out, "model", "state.json"))


def test_existing_search_is_not_overwritten(tiny_search, data, capsys):
    images, masks, config = data
    rc = main(["tune", "--config", config, "--images", images, "--masks", masks, "--out", tiny_search])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(tiny_search, "trials.csv"))


def test_resume_without_a_search_is_an_error(tmp_path, capsys):
    assert main(["tune", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "no search to resume" in capsys.readouterr().err


# ------------------------------------------------------------------ an interrupted search resumes
def _checkpoints(out: str) -> int:
    return len(glob.glob(os.path.join(out, "tune", "*", "checkpoint_*")))


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_interrupted_search_resumes(data, tmp_path):
    """Ctrl-C part-way through, then --resume: every trial is run once, none twice."""
    images, masks, config = data
    out = str(tmp_path / "search")
    cmd = [sys.executable, "-m", "synthgen.cli", "tune", "--config", config, "--images", images, "--masks", masks,
           "--out", out, "--trials", "3", "--epochs", "3", "--max-concurrent", "1", "--scheduler", "fifo"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while _checkpoints(out) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log[-3000:]
    assert "--resume" in log
    rc = subprocess.run([sys.executable, "-m", "synthgen.cli", "tune", "--resume", "--out", out],
                        capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout[-3000:] + rc.stderr[-3000:]
    table = pd.read_csv(os.path.join(out, "trials.csv"))
    assert len(table) == 3 and table["trial_id"].is_unique and (table["epochs"] == 3).all()
    for trial in glob.glob(os.path.join(out, "tune", "run_trial_*")):
        latest = sorted(glob.glob(os.path.join(trial, "checkpoint_*")))[-1]
        with open(os.path.join(latest, "state.json")) as f:
            history = [h["epoch"] for h in json.load(f)["history"]]
        assert history == [1.0, 2.0, 3.0], f"{trial}: epochs lost or repeated in the model's history: {history}"
        # Tune's log may hold an epoch twice when the interrupt came between a report and the experiment
        # snapshot; the replay restarts from that epoch's checkpoint and must give the same numbers.
        progress = pd.read_csv(os.path.join(trial, "progress.csv"))
        for _, rows in progress.groupby("epoch"):
            assert rows["val_ssim"].nunique() == 1, f"{trial}: a replayed epoch gave different results"
