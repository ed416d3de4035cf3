"""Multi-node overhead: generation throughput on 1 node vs 2 local nodes with the same total CPUs.

    python benchmarks/bench_cluster.py                  # 2 CPUs: 1 node x 2 vs 2 nodes x 1, ~3 min
    python benchmarks/bench_cluster.py --cpus 4 --size 256

Both clusters are real Ray clusters started with `ray start` on this machine (synthgen.local_cluster),
and the same generate job is submitted to each through the Jobs API (`synthgen submit`). The job
generates from the shipped ISBI sample with an untrained default-width pix2pix (speed does not depend
on training), one generator actor per CPU (`generate.actor_resources` pins one actor per slot, so
on two nodes the actors are split between them). Reports generate()'s own throughput (manifest
run.samples_per_s: no job or actor start-up counted in the wall clock of the job), the job's wall
time, and the candidates each node rendered. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import SAMPLE_TRAIN, make_log  # noqa: E402

log = make_log("bench_cluster")


def workdir(root: str, size: int, variations: int, cpus: int) -> str:
    from synthgen.checkpoint import save_checkpoint
    from synthgen.config import Config
    from synthgen.steps import build_state

    wd = os.path.join(root, "wd")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(REPO, "synthgen"), os.path.join(wd, "synthgen"), ignore=ignore)
    shutil.copytree(os.path.join(REPO, "jobs"), os.path.join(wd, "jobs"), ignore=ignore)
    shutil.copytree(SAMPLE_TRAIN, os.path.join(wd, "data"))
    cfg = Config()
    cfg.data.image_size, cfg.data.invert_mask = size, True
    # Outside the working directory (the Jobs API uploads at most 100 MB); the driver ships the weights
    # to the actors through the object store, so only the head needs to see this path.
    ckpt = save_checkpoint(os.path.join(root, "ckpt"), build_state(cfg, 1))
    generate = {"checkpoint": ckpt, "masks": "data/masks", "images": "data/images", "num_variations": variations,
                "threshold": 0.0, "actors_min": cpus, "actors_max": cpus, "cpus_per_actor": 0.5, "png": False,
                "actor_resources": "synthgen_slot=1"}
    with open(os.path.join(wd, "generate.yaml"), "w") as f:
        yaml.safe_dump({"generate": generate}, f)
    return wd


def run(nodes: list[dict], wd: str, out: str) -> dict:
    from synthgen.local_cluster import LocalCluster

    with LocalCluster(nodes) as cluster:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "synthgen.cli", "submit", "generate", "--config",
                               os.path.join(wd, "generate.yaml"), "--storage", out, "--address", cluster.dashboard_url,
                               "--working-dir", wd], env=cluster.env, capture_output=True, text=True)
        wall = time.time() - t0
    if proc.returncode != 0:
        return {"error": proc.stdout[-2000:] + proc.stderr[-1000:]}
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    return {"nodes": len(nodes), "cpus_per_node": [n["CPU"] for n in nodes], "samples": manifest["counts"]["generated"],
            "samples_per_s": manifest["run"]["samples_per_s"], "pipeline_s": manifest["run"]["seconds"],
            "job_wall_s": round(wall, 1), "candidates_per_node": sorted(manifest["run"]["candidates_per_node"].values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", type=int, default=2, help="total CPUs of each cluster (even)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--variations", type=int, default=8)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench_cluster_")
    wd = workdir(root, args.size, args.variations, args.cpus)
    half = args.cpus // 2
    layouts = {"1_node": [{"CPU": args.cpus, "synthgen_slot": args.cpus}],
               "2_nodes": [{"CPU": half, "synthgen_slot": half}, {"CPU": half, "synthgen_slot": half}]}
    results = {}
    for name, nodes in layouts.items():
        log(f"{name}: {nodes}")
        results[name] = run(nodes, wd, os.path.join(root, name))
        log(f"{name}: {results[name]}")
    one, two = results["1_node"], results["2_nodes"]
    overhead = None
    if "error" not in one and "error" not in two:
        overhead = round(1 - two["samples_per_s"] / one["samples_per_s"], 3)
    print(json.dumps({"benchmark": "cluster", "cpus": args.cpus, "image_size": args.size,
                      "num_variations": args.variations, "results": results,
                      "multi_node_throughput_loss": overhead}))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
