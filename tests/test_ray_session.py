"""Each synthgen run talks to its own Ray: two trainings started side by side on one machine both
finish, and neither's Ray Train asks the other's Ray (or a missing State API) about its runs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import write_pairs
from test_cli import REPO, assert_clean_console, ray_log_problems


@pytest.mark.slow
def test_two_trainings_side_by_side_both_finish_cleanly(tmp_path):
    """Two 1-epoch 32 px trainings at once, each with its own private Ray (1-2 minutes on 2 CPUs)."""
    images, masks = write_pairs(str(tmp_path / "data"), n=4, size=(40, 48))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    runs = [str(tmp_path / f"run{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "synthgen.cli", "train", "--images", images, "--masks", masks,
                               "--out", out, "--epochs", "1", "--image-size", "32", "--ngf", "4", "--workers", "1",
                               "--batch-size", "2", "--repeats", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
             for out in runs]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out, output in zip(procs, runs, outputs):
        assert proc.returncode == 0, output
        assert_clean_console(output, max_lines=30)
        assert "synthgen pix2pix: 1 epochs" in output
        assert os.path.isfile(os.path.join(out, "model", "state.json"))
        assert ray_log_problems(out) == [], out
