"""What commands print, without Ray: plain progress lines, muted phases, the logs hand-over and the
one-paragraph error for a failure synthgen did not expect."""
from __future__ import annotations

import logging
import os

import pytest

from synthgen import console, ray_session
from synthgen.cli import main


@pytest.fixture(autouse=True)
def _plain():
    console.configure(interactive=False)
    yield
    console.configure()


def test_plain_progress_prints_a_line_per_quarter_and_at_the_end(capsys):
    with console.progress("training", 10, "epoch") as bar:
        for i in range(10):
            bar.update(1, f"loss {i}")
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("  ")[0] for ln in lines] == [f"training {n}/10 epochs" for n in (3, 6, 9, 10)]
    assert "loss 9" in lines[-1]


def test_a_jump_past_several_milestones_prints_once(capsys):
    with console.progress("generating", 100, "candidate") as bar:
        bar.update(60)
        bar.update(40)
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_verbose_prints_every_step_and_muted_prints_nothing_but_warnings(capsys):
    console.configure(verbose=True)
    with console.progress("trials", 3, "trial") as bar:
        for _ in range(3):
            bar.update(1)
    assert len(capsys.readouterr().out.splitlines()) == 3
    with console.muted():
        console.line("header")
        with console.progress("inner", 2, "set") as bar:
            bar.update(2)
        console.warn("matters")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "warning: matters\n"


def test_close_moves_the_logs_into_the_run_folder_only_when_it_exists(tmp_path):
    ray_session.configure()
    ray_session._session.handler = ray_session._log_file_handler()
    ray_session._route_loggers(ray_session._session.handler)
    logging.getLogger("ray.data").warning("from Ray Data")  # Ray Data's logger does not propagate
    assert ray_session.close(str(tmp_path / "missing" / "logs")) != str(tmp_path / "missing" / "logs")
    assert not (tmp_path / "missing").exists(), "a failed generation's folder is not created for its logs"

    ray_session._session.handler = ray_session._log_file_handler()
    ray_session._route_loggers(ray_session._session.handler)
    logging.getLogger("ray.train").warning("from Ray Train")
    logs = ray_session.close(str(tmp_path / "logs"))
    assert logs == str(tmp_path / "logs")
    assert "from Ray Train" in (tmp_path / "logs" / "driver.log").read_text()
    assert logging.getLogger("ray.train").handlers == [] and not ray_session._session.saved


def test_address_comes_from_the_flag_then_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    ray_session.configure()
    assert ray_session._session.address == "10.0.0.1:6379"
    ray_session.configure(address="10.0.0.2:6379")
    assert ray_session._session.address == "10.0.0.2:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    ray_session.configure()
    assert ray_session._session.address is None


def test_an_unexpected_failure_is_one_paragraph_with_the_traceback_saved(pair_dirs, tmp_path, monkeypatch, capsys):
    import synthgen.train

    def broken(cfg, overwrite=False):
        os.makedirs(cfg.train.out, exist_ok=True)
        raise RuntimeError("worker died\nTraceback (most recent call last):\n  ...\nValueError: bad tensor")

    monkeypatch.setattr(synthgen.train, "fit", broken)
    images, masks = pair_dirs
    assert main(["train", "--images", images, "--masks", masks, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert "RuntimeError: ValueError: bad tensor" in err
    saved = err.strip().split("the traceback is in ")[-1]
    assert "Traceback" in open(saved).read()
