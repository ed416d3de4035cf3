"""CLI behaviour without training: config resolution, dry runs and clear errors for bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from synthgen.cli import main, sample_data_dir


def test_dry_run_prints_resolved_config(pair_dirs, capsys):
    images, masks = pair_dirs
    assert main(["train", "--images", images, "--masks", masks, "--epochs", "7", "--model", "vae",
                 "--beta", "0.5", "--invert-mask", "--dry-run"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["model"] == "vae"
    assert cfg["vae"]["beta"] == 0.5 and cfg["data"]["invert_mask"] is True


def test_demo_uses_the_shipped_sample(capsys):
    assert main(["demo", "--dry-run"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["images"] == os.path.join(sample_data_dir(), "train", "images")
    assert cfg["data"]["invert_mask"] is True
    assert len(os.listdir(cfg["data"]["images"])) == 6


def test_bad_data_exits_nonzero_naming_every_file(tmp_path, pair_dirs, capsys):
    images, masks = pair_dirs
    os.remove(os.path.join(masks, "p01.png"))
    with open(os.path.join(images, "p02.png"), "wb") as f:
        f.write(b"not a png")
    out = tmp_path / "run"
    rc = main(["train", "--images", images, "--masks", masks, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "p01" in err and os.path.join(images, "p02.png") in err
    assert "Traceback" not in err
    assert not out.exists(), "nothing is written when validation fails"


def test_missing_folders_and_bad_values_are_errors(tmp_path, pair_dirs, capsys):
    images, masks = pair_dirs
    assert main(["train", "--images", str(tmp_path / "nope"), "--masks", masks]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert main(["train", "--images", images, "--masks", masks, "--image-size", "30", "--dry-run"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert main(["train", "--masks", masks, "--dry-run"]) == 2
    assert "--images" in capsys.readouterr().err


def test_bad_config_file_is_named(tmp_path, pair_dirs, capsys):
    images, masks = pair_dirs
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    assert main(["train", "--images", images, "--masks", masks, "--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.epoch" in err


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "synthgen.cli", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--lambda-l1" in proc.stdout and "--workers" in proc.stdout
