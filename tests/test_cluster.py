"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), jobs
submitted through the Jobs API, and fault tolerance: a killed training worker, a killed generator actor.

Each node has 1 CPU and its own custom resource (head_node / worker_node); generator actors ask for one
`synthgen_slot`, of which each node has one, so two actors must run on different nodes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import tiny_config, write_pairs
from synthgen.checkpoint import save_checkpoint
from synthgen.local_cluster import LocalCluster
from synthgen.steps import build_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster([{"CPU": 1, "head_node": 1, "synthgen_slot": 1},
                      {"CPU": 1, "worker_node": 1, "synthgen_slot": 1}])
    with c:
        yield c
    leftovers = subprocess.run(["pgrep", "-f", c.temp_dir], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"cluster processes still running after stop: {leftovers}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """What a user submits: the project (synthgen/, jobs/), data, a checkpoint and job configs."""
    wd = tmp_path_factory.mktemp("submit")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(REPO, "synthgen"), wd / "synthgen", ignore=ignore)
    shutil.copytree(os.path.join(REPO, "jobs"), wd / "jobs", ignore=ignore)
    write_pairs(str(wd / "data"), n=4, size=(64, 64))
    write_pairs(str(wd / "big"), n=8, size=(128, 128), seed=1)
    cfg = tiny_config("data/images", "data/masks", "unused")
    save_checkpoint(str(wd / "ckpt"), build_state(cfg, 1))
    generate = {"checkpoint": "ckpt", "masks": "data/masks", "images": "data/images", "num_variations": 4,
                "threshold": 0.0, "actors_min": 2, "actors_max": 2, "cpus_per_actor": 0.5, "batch_size": 2,
                "actor_resources": "synthgen_slot=1"}
    (wd / "generate.yaml").write_text(yaml.safe_dump({"generate": generate}))
    big = {**generate, "masks": "big/masks", "images": "big/images", "num_variations": 8}
    (wd / "generate_big.yaml").write_text(yaml.safe_dump({"generate": big}))
    train = yaml.safe_load(cfg.to_yaml())
    train["data"].update({"image_size": 64, "repeats": 48})
    train["pix2pix"].update({"ngf": 8, "ndf": 8})
    train["train"].update({"epochs": 8, "workers": 2, "cpus_per_worker": 1.0, "checkpoint_every": 1,
                           "keep_checkpoints": 3, "max_failures": 2, "samples": 1})
    (wd / "train.yaml").write_text(yaml.safe_dump(train))
    search = yaml.safe_load(cfg.to_yaml())
    search["train"].update({"epochs": 2, "cpus_per_worker": 1.0})
    search["tune"].update({"trials": 2, "val_tiles": 4, "scheduler": "fifo"})
    (wd / "tune.yaml").write_text(yaml.safe_dump(search))
    return wd


def submit(cluster, workdir, kind: str, config: str, storage: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "synthgen.cli", "submit", kind, "--config", str(workdir / config),
           "--storage", storage, "--address", cluster.dashboard_url, "--working-dir", str(workdir)]
    if wait:
        return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=400)
    return subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cluster_processes(cluster, title: str) -> list[int]:
    """PIDs of this cluster's Ray worker processes whose title contains `title`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().decode(errors="replace")
        except OSError:
            continue
        if title in cmdline and f"RAY_ADDRESS={cluster.address}" in environ:
            pids.append(int(pid))
    return pids


def registered_checkpoints(out: str) -> int:
    """Checkpoints Ray Train has registered (not merely written): what a restart resumes from."""
    try:
        with open(os.path.join(out, "ray_train", "checkpoint_manager_snapshot.json")) as f:
            return len(json.load(f)["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def check_dataset(out: str, expected: int) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["counts"]["generated"] == expected
    table = pq.read_table(os.path.join(out, "data"))
    ids = table.column("id").to_pylist()
    assert len(ids) == manifest["counts"]["accepted"] and len(set(ids)) == len(ids), "duplicate ids"
    assert len(os.listdir(os.path.join(out, "images"))) == len(ids)
    return manifest


def test_two_nodes_with_their_own_resources(cluster):
    nodes = cluster.alive_nodes()
    assert len(nodes) == 2
    custom = sorted(k for n in nodes for k in n["resources_total"] if k in ("head_node", "worker_node"))
    assert custom == ["head_node", "worker_node"]


def test_generate_job_runs_on_both_nodes(cluster, workdir, tmp_path):
    out = str(tmp_path / "generated")
    proc = submit(cluster, workdir, "generate", "generate.yaml", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 node(s)" in proc.stdout
    manifest = check_dataset(out, expected=4 * 4 * 4)  # 4 pairs x 4 tiles of 32 px x 4 variations
    per_node = manifest["run"]["candidates_per_node"]
    assert set(per_node) == {n["node_id"] for n in cluster.alive_nodes()}, "work landed on both nodes"
    assert sum(per_node.values()) == 64 and manifest["run"]["duplicates_dropped"] == 0


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_generate_job_writes_to_a_uri(cluster, workdir, tmp_path):
    uri = f"file://{tmp_path}/bucket/generated"
    proc = submit(cluster, workdir, "generate", "generate.yaml", uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    check_dataset(str(tmp_path / "bucket" / "generated"), expected=64)
    assert os.listdir(tmp_path / "bucket") == ["generated"], "only the finished dataset lands in the bucket"


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_generation_survives_a_killed_actor(cluster, workdir, tmp_path):
    out = str(tmp_path / "generated")
    proc = submit(cluster, workdir, "generate", "generate_big.yaml", out, wait=False)
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        actors = cluster_processes(cluster, "GeneratorActor")
        if len(actors) == 2:
            time.sleep(2.0)  # let both render a few blocks first
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.2)
    log = proc.communicate(timeout=400)[0]
    assert killed is not None, "no generator actor was seen running: " + log[-2000:]
    assert proc.returncode == 0, log[-3000:]
    check_dataset(out, expected=8 * 16 * 8)  # 8 pairs x 16 tiles of 32 px x 8 variations


@pytest.mark.slow  # > 1 min on 2 cores; run with -m slow
def test_training_resumes_after_a_killed_worker(cluster, workdir, tmp_path):
    out = str(tmp_path / "run")
    proc = submit(cluster, workdir, "train", "train.yaml", out, wait=False)
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        if registered_checkpoints(out) >= 2:
            workers = cluster_processes(cluster, "RayTrainWorker")
            if workers:
                os.kill(workers[-1], signal.SIGKILL)
                killed = workers[-1]
        time.sleep(0.2)
    log = proc.communicate(timeout=400)[0]
    assert killed is not None, "the run ended before a worker could be killed: " + log[-2000:]
    assert proc.returncode == 0, log[-4000:]
    with open(os.path.join(out, "model", "state.json")) as f:
        history = json.load(f)["history"]
    assert [h["epoch"] for h in history] == [float(e) for e in range(1, 9)], "no epoch lost or repeated"
    # resumed from a checkpoint, not from scratch: the driver says where the restart picked up
    assert "warning: a training worker failed" in log, log[-3000:]
    resumed = [line for line in log.splitlines() if "training resumed at epoch " in line]
    assert len(resumed) == 1, log[-3000:]
    assert int(resumed[0].split("epoch ")[1].split("/")[0]) > 1, "after the kill, training restarted from scratch"
    assert "training 8/8 epochs" in log
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["epochs"] == 8


def test_tune_job_runs_trials_on_both_nodes(cluster, workdir, tmp_path):
    """Two 1-CPU trials at once can only fit one per node; results land in a URI."""
    out = tmp_path / "bucket" / "search"
    proc = submit(cluster, workdir, "tune", "tune.yaml", f"file://{out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 2 and (table["status"] == "completed").all()
    assert table["node"].nunique() == 2, "one trial per node"
    assert (out / "best_config.yaml").is_file() and (out / "best_model" / "state.json").is_file()
    with open(out / "summary.json") as f:
        assert json.load(f)["completed"] == 2


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_launcher_configs_follow_rays_schema(name):
    import jsonschema
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    with open(os.path.join(REPO, name)) as f:
        config = yaml.safe_load(f)
    jsonschema.validate(config, schema)
    assert any("pip install" in c and "/synthgen" in c for c in config["setup_commands"])
    assert "--object-spilling-directory" in " ".join(config["head_start_ray_commands"])
