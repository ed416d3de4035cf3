"""Job entrypoints, submission checks and storage, without a cluster (tests/test_cluster.py has one)."""
from __future__ import annotations

import os

import pytest

from synthgen import storage
from synthgen.config import Config, ConfigError
from synthgen.jobs import parse_sets, run_job, submit, use_cluster_gpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(root, files: dict[str, bytes]):
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return str(root)


def _read_tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out


FILES = {"manifest.json": b"{}", "data/part-00000.parquet": b"PAR1", "images/a.png": b"\x89PNG"}


@pytest.mark.parametrize("as_uri", [False, True])
def test_upload_dir_round_trips_and_refuses_to_clobber(tmp_path, as_uri):
    src = _tree(tmp_path / "stage", FILES)
    dest_path = str(tmp_path / "bucket" / "out")
    dest = f"file://{dest_path}" if as_uri else dest_path
    storage.upload_dir(src, dest)
    assert _read_tree(dest_path) == FILES and storage.exists(dest)
    with pytest.raises(storage.StorageError, match="already exists"):
        storage.upload_dir(src, dest)
    _tree(tmp_path / "stage2", {"manifest.json": b"{\"v\": 2}"})
    storage.upload_dir(str(tmp_path / "stage2"), dest, overwrite=True)
    assert _read_tree(dest_path) == {"manifest.json": b"{\"v\": 2}"}
    storage.upload_dir(src, dest, merge=True)  # e.g. run outputs beside Ray Train's checkpoints
    assert _read_tree(dest_path) == FILES
    assert os.listdir(tmp_path / "bucket") == ["out"], "no temporary folder left behind"
    back = storage.download_dir(dest, str(tmp_path / "back"))
    assert _read_tree(back) == FILES


def test_pack_and_unpack_a_directory(tmp_path):
    src = _tree(tmp_path / "ckpt", {"a.safetensors": b"123", "state.json": b"{}"})
    packed = storage.pack_dir(src)
    assert packed == {"a.safetensors": b"123", "state.json": b"{}"}
    assert _read_tree(storage.unpack_dir(packed, str(tmp_path / "copy"))) == packed


def test_bad_storage_uris_are_named(tmp_path):
    with pytest.raises(storage.StorageError, match="nosuch://x"):
        storage.exists("nosuch://x")
    with pytest.raises(storage.StorageError, match="not found"):
        storage.download_dir(f"file://{tmp_path}/missing", str(tmp_path / "d"))


def test_parse_sets():
    assert parse_sets(["train.epochs=5", "generate.weights=ssim=1,iou=1"]) == {
        "train.epochs": "5", "generate.weights": "ssim=1,iou=1"}
    for bad in (["epochs=5"], ["train.epochs"]):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_sets(bad)


def test_gpus_are_requested_only_when_the_cluster_has_them():
    cfg = Config()
    use_cluster_gpus(cfg, "train", {}, {"CPU": 8})
    assert not cfg.train.gpu
    use_cluster_gpus(cfg, "train", {}, {"CPU": 8, "GPU": 2})
    assert cfg.train.gpu
    cfg = Config()
    use_cluster_gpus(cfg, "generate", {"generate.gpu": "false"}, {"GPU": 2})
    assert not cfg.generate.gpu, "an explicit --set wins"
    use_cluster_gpus(cfg, "tune", {}, {"GPU": 1})
    assert cfg.tune.gpus_per_trial == 1.0 and cfg.train.gpu


def test_job_with_a_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    assert run_job("train", ["--config", str(bad)]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert run_job("train", ["--config", str(bad), "--set", "nodot=1"]) == 2


def test_submit_checks_its_input_before_contacting_a_cluster(tmp_path):
    inside = os.path.join(REPO, "synthgen", "configs", "demo.yaml")
    outside = tmp_path / "x.yaml"
    outside.write_text("{}\n")
    with pytest.raises(ConfigError, match="inside the working directory"):
        submit("generate", str(outside), working_dir=REPO)
    with pytest.raises(ConfigError, match="no jobs/generate.py"):
        submit("generate", str(outside), working_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="absolute path"):
        submit("generate", inside, storage_path="rel/out", working_dir=REPO)
    with pytest.raises(ConfigError, match="unknown job"):
        submit("evaluate", inside, working_dir=REPO)
    with pytest.raises(ConfigError, match="cannot reach"):
        submit("generate", inside, storage_path=str(tmp_path / "o"), working_dir=REPO,
               address="http://127.0.0.1:9")
