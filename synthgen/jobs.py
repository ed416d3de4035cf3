"""Ray job entrypoints: train, tune or generate on a running Ray cluster, outputs to a folder or URI.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/generate.py --config gen.yaml --storage s3://bucket/synth/run1
    synthgen submit generate --config gen.yaml --storage s3://bucket/synth/run1 --address http://HEAD:8265

`jobs/<kind>.py` calls `run_job(kind)`: it reads the YAML config (plus `--set key=value` overrides),
joins the cluster with `ray.init(address="auto")` (a submitted job gets RAY_ADDRESS from Ray), and runs
the same `fit` / `run_search` / `generate` as the CLI. Nothing assumes a node count: work is placed by
Ray's resource requests. When the cluster has GPUs, training workers and generator actors ask for one
each (and tune trials for one per trial) unless the config says otherwise.

`--storage` is where the outputs end up. A local path must be on a filesystem every node shares (NFS)
when the cluster has more than one node. A URI (s3://, gs://, abfs://, file://; any pyarrow filesystem)
works anywhere: the job builds its outputs in a local staging folder on the driver, then
`storage.upload_dir` copies them there. Training checkpoints go to the URI directly (Ray Train writes
them from whichever node holds rank 0).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from synthgen import storage
from synthgen.config import Config, ConfigError

KINDS = ("train", "tune", "generate")
OUT_KEYS = {"train": "train.out", "tune": "tune.out", "generate": "generate.out"}


def job_parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jobs/{kind}.py", description=f"synthgen {kind} as a Ray job")
    p.add_argument("--config", required=True, help="YAML config (sections of synthgen/config.py)")
    p.add_argument("--storage", default="", help=f"output folder or URI; default: {OUT_KEYS[kind]} from the config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=50 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--address", default="auto", help="Ray cluster address [default: auto]")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's own output in the job log")
    return p


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set takes KEY=VALUE with a dotted key (e.g. train.epochs=50), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def use_cluster_gpus(cfg: Config, kind: str, overrides: dict[str, str], resources: dict[str, float]) -> None:
    """Ask for GPUs when the cluster has them, unless the config or --set chose explicitly."""
    if resources.get("GPU", 0) <= 0:
        return
    if kind == "train" and "train.gpu" not in overrides and not cfg.train.gpu:
        cfg.train.gpu = True
    if kind == "generate" and "generate.gpu" not in overrides and not cfg.generate.gpu:
        cfg.generate.gpu = True
    if kind == "tune" and "tune.gpus_per_trial" not in overrides and cfg.tune.gpus_per_trial == 0:
        cfg.tune.gpus_per_trial = 1.0
        cfg.train.gpu = True


def run_job(kind: str, argv: list[str] | None = None) -> int:
    """Entry point of jobs/<kind>.py; returns the process exit code (2 for bad input)."""
    import ray

    from synthgen import console, ray_session
    from synthgen.checkpoint import CheckpointError
    from synthgen.data import DataError
    from synthgen.writers import OutputError

    args = job_parser(kind).parse_args(argv)
    try:
        overrides = parse_sets(args.set)
        cfg = Config.from_yaml(args.config, overrides)
        console.configure(verbose=args.verbose)
        ray_session.configure(address=args.address, verbose=args.verbose)
        ray_session.ensure()
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n["Alive"]]
        console.line(f"synthgen job {kind}: {len(nodes)} node(s), {resources.get('CPU', 0):g} CPUs, "
                     f"{resources.get('GPU', 0):g} GPUs")
        use_cluster_gpus(cfg, kind, overrides, resources)
        dest = args.storage or cfg.get(OUT_KEYS[kind])
        staging = _stage(cfg, kind, dest)
        try:
            _run(cfg, kind, args.overwrite)
        finally:  # the driver's Ray log travels with the outputs
            logs = ray_session.close(os.path.join(os.path.abspath(cfg.get(OUT_KEYS[kind])), "logs"))
        if staging:
            storage.upload_dir(cfg.get(OUT_KEYS[kind]), dest, overwrite=args.overwrite,
                               merge=kind == "train")  # train: beside the checkpoints already there
            console.line(f"synthgen job {kind}: outputs uploaded to {dest}")
        elif logs:
            console.line(ray_session.describe_logs(logs))
    except (ConfigError, DataError, CheckpointError, OutputError, storage.StorageError) as e:
        print(f"synthgen job {kind}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _stage(cfg: Config, kind: str, dest: str) -> str | None:
    """Point the config's output at `dest`, or at a local staging folder when `dest` is a URI."""
    if not storage.is_uri(dest):
        cfg.set(OUT_KEYS[kind], dest)
        return None
    staging = tempfile.mkdtemp(prefix=f"synthgen_{kind}_")
    cfg.set(OUT_KEYS[kind], os.path.join(staging, "out"))
    if kind == "train" and not cfg.train.storage:
        cfg.train.storage = dest  # checkpoints straight to the URI, from whichever node holds rank 0
    return staging


def _run(cfg: Config, kind: str, overwrite: bool) -> None:
    if kind == "train":
        from synthgen.train import TrainError, fit

        try:
            fit(cfg, overwrite=overwrite)
        except TrainError as e:
            raise ConfigError(str(e)) from None
    elif kind == "tune":
        from synthgen.search import run_search

        run_search(cfg, overwrite=overwrite)
    else:
        from synthgen.generate import generate

        generate(cfg, overwrite=overwrite)


SUBMIT_EXCLUDES = [".git/", "runs/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/"]
"""Never uploaded with the working directory (outputs and caches can be large)."""


def submit(kind: str, config: str, storage_path: str = "", sets: list[str] | None = None,
           address: str = "http://127.0.0.1:8265", working_dir: str = ".", overwrite: bool = False,
           wait: bool = True, verbose: bool = False) -> int:
    """Submit jobs/<kind>.py through the Ray Jobs API; with `wait`, stream its logs (the job's synthgen
    lines, and Ray's own output only with `verbose`) and return 0 only if it succeeded. The config file travels inside the working directory, so it must lie within it;
    data paths in it are read on the cluster (relative ones inside the uploaded working directory)."""
    import asyncio
    import shlex

    from ray.job_submission import JobStatus, JobSubmissionClient

    if kind not in KINDS:
        raise ConfigError(f"unknown job '{kind}' (known: {', '.join(KINDS)})")
    sets = sets or []
    wd, cfg_path = os.path.abspath(working_dir), os.path.abspath(config)
    if not os.path.isfile(os.path.join(wd, "jobs", f"{kind}.py")):
        raise ConfigError(f"{wd}: no jobs/{kind}.py here; run from the synthgen project root or pass --working-dir")
    if not cfg_path.startswith(wd + os.sep):
        raise ConfigError(f"{config}: the config must lie inside the working directory {wd} (it is uploaded with it)")
    Config.from_yaml(cfg_path, parse_sets(sets))  # bad config fails here, not on the cluster
    if storage_path and not storage.is_uri(storage_path) and not os.path.isabs(storage_path):
        raise ConfigError(f"--storage {storage_path}: give an absolute path (on storage every node shares) or a "
                          "URI; a relative one would land in the job's temporary working directory")
    entry = ["python", f"jobs/{kind}.py", "--config", os.path.relpath(cfg_path, wd)]
    entry += (["--storage", storage_path] if storage_path else []) + [a for s in sets for a in ("--set", s)]
    entry += ["--overwrite"] if overwrite else []
    entry += ["--verbose"] if verbose else []
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"{address}: cannot reach the Ray Jobs API ({e})") from None
    try:
        job_id = client.submit_job(entrypoint=shlex.join(entry),
                                   runtime_env={"working_dir": wd, "excludes": SUBMIT_EXCLUDES})
    except RuntimeError as e:
        hint = (" (the Jobs API takes at most 100 MB: keep checkpoints and large data outside the working "
                "directory, on storage the cluster can read)") if "413" in str(e) else ""
        raise ConfigError(f"{wd}: submitting the job failed{hint}: {str(e).splitlines()[-1]}") from None
    print(f"synthgen submit: {kind} job {job_id} submitted to {address}: {shlex.join(entry)}", flush=True)
    if not wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"synthgen submit: job {job_id} {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
