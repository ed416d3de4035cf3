"""A real multi-node Ray cluster on one machine: `ray start --head` plus workers joined with
`ray start --address`, each with its own CPUs and custom resources. For tests, benchmarks and trying
`synthgen submit` before a real cluster:

    with LocalCluster(nodes=[{"CPU": 1, "head_node": 1}, {"CPU": 1, "worker_node": 1}]) as cluster:
        subprocess.run(["synthgen", "submit", "generate", "--config", "gen.yaml",
                        "--address", cluster.dashboard_url, "--storage", "/abs/out"], env=cluster.env)

Every node runs `ray start --block` as a child process, so stopping the cluster (SIGTERM, then the
node drains and exits) touches only this cluster's processes, unlike `ray stop`, which stops every Ray
on the machine. Token authentication is off (RAY_AUTH_MODE=disabled) on this throwaway cluster, so
nodes and clients need no shared token; the cluster listens on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, nodes: list[dict[str, float]], object_store_mb: int = 256, start_timeout_s: float = 90.0):
        """nodes: one resource dict per node, the head first; 'CPU' and 'GPU' are the node's CPUs/GPUs,
        every other key a custom resource."""
        if not nodes:
            raise ValueError("a cluster needs at least a head node")
        self.nodes, self.object_store_mb, self.start_timeout_s = nodes, object_store_mb, start_timeout_s
        # Unix socket paths live under the temp dir and must stay short (< 108 characters).
        self.temp_dir = tempfile.mkdtemp(prefix="sgray_", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        # RAY_DEDUP_LOGS=0: with --verbose, every worker's lines reach the job log undeduplicated.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": self.address,
                    "RAY_API_SERVER_ADDRESS": self.dashboard_url, "RAY_DEDUP_LOGS": "0"}
        self.processes: list[subprocess.Popen] = []

    def _args(self, resources: dict[str, float]) -> list[str]:
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        args = ["--block", "--num-cpus", str(resources.get("CPU", 1)), "--num-gpus", str(resources.get("GPU", 0)),
                "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
                "--object-spilling-directory", os.path.join(self.temp_dir, "spill"),
                "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        return args + (["--resources", json.dumps(custom)] if custom else [])

    def start(self) -> "LocalCluster":
        head = ["ray", "start", "--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port())]
        self._spawn(head + self._args(self.nodes[0]), "head")
        self.wait_for_nodes(1)
        for i, resources in enumerate(self.nodes[1:], 1):
            # Each node its own temp dir: nodes sharing one would share runtime_resources/, and one node
            # unpacking a job's working_dir there deletes the directory a job on another node runs in.
            self._spawn(["ray", "start", "--address", self.address, "--temp-dir", os.path.join(self.temp_dir, f"w{i}")]
                        + self._args(resources), f"worker{i}")
        self.wait_for_nodes(len(self.nodes))
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(os.path.join(self.temp_dir, f"{name}.log"), "w")
        self.processes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes, from the dashboard's state API (no ray.init in this process)."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=1", timeout=10) as r:
            result = json.load(r)["data"]["result"]["result"]
        return [n for n in result if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, n: int) -> None:
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            for p in self.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"a Ray node exited during start-up; see the logs in {self.temp_dir}")
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except OSError:
                pass  # the dashboard is not up yet
            time.sleep(1)
        raise TimeoutError(f"{n} Ray node(s) did not come up within {self.start_timeout_s:.0f}s; logs in {self.temp_dir}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM every node, workers first (each drains, then stops its own processes)."""
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.processes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
