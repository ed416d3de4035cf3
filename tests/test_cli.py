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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_INTERNALS = ("pid=", ".cc:", "PlacementGroup", "logging_progress", "Token authentication", "TrainingReport",
                 "Traceback", " INFO ", " WARNING ", "(raylet)", "Dataset ", "Ray Data", "ray.")
"""Marks of Ray's own output: actor prefixes, C++ log sites, Ray Data's progress log, Python log records."""


def run_cli(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m synthgen.cli ARGS` on this tree, as a user runs it (no terminal: plain progress lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "synthgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def assert_clean_console(output: str, max_lines: int = 60) -> list[str]:
    """No line of Ray's internals, each line once, a screenful at most; returns the lines."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) < max_lines, output
    internals = [ln for ln in lines if any(mark in ln for mark in RAY_INTERNALS)]
    assert not internals, internals
    rules = {"=" * 64, "-" * 64, "=" * 72, "-" * 72}
    repeated = {ln for ln in lines if lines.count(ln) > 1 and ln not in rules}
    assert not repeated, repeated
    return lines


def ray_log_problems(run_dir: str) -> list[str]:
    """Lines in a run's Ray logs that show Train's placement-group cleaner without its State API, or
    asking the wrong Ray."""
    problems = []
    for root, _, files in os.walk(os.path.join(run_dir, "logs")):
        for name in files:
            with open(os.path.join(root, name), errors="replace") as f:
                problems += [ln for ln in f if "Failed to query Ray Train Controller" in ln
                             or "multiple active Ray instances" in ln]
    return problems


def test_reduced_demo_prints_one_screen_and_keeps_ray_in_its_logs(tmp_path):
    """The whole demo on a small budget: header, a few progress lines, both summaries, where the
    logs are, and nothing else (about 2-4 minutes on 2 loaded CPU cores)."""
    out = tmp_path / "demo"
    small = tmp_path / "demo.yaml"
    small.write_text(
        "data:\n  image_size: 128\n  invert_mask: true\n  val_pairs: 1\n  repeats: 1\n"
        "pix2pix:\n  ngf: 8\n  ndf: 8\n"
        f"train:\n  model: pix2pix\n  out: {out}\n  epochs: 2\n  batch_size: 4\n  workers: 2\n"
        "generate:\n  num_variations: 1\n  variations: noise\n  threshold: 0.5\n")
    proc = run_cli(["demo", "--config", str(small), "--epochs", "1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = assert_clean_console(proc.stdout + proc.stderr)
    text = "\n".join(lines)
    assert "synthgen train: pix2pix on 5 train + 1 validation pairs" in text
    assert f"config     {out}/config.yaml" in text
    assert "synthgen pix2pix: 1 epochs" in text, "the training summary"
    assert "synthgen generate: 96 candidates from 96 source masks" in text, "the generation summary"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"Ray logs   {out}/logs"), "says where Ray's output went"
    assert os.path.getsize(out / "logs" / "driver.log") > 0 and (out / "logs" / "ray").is_dir()
    assert (out / "synthetic" / "config.yaml").is_file()
    assert ray_log_problems(str(out)) == []
