"""benchmarks/gpu_check.py: its no-GPU answer, and its --cpu-smoke run, which takes the GPU code paths
on CPU at toy sizes (the figures are not checked, only that every part produced them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "gpu_check.py")


def run_check(*args: str, timeout: float = 540) -> tuple[dict, str]:
    """Run the script as a user does, with this checkout's synthgen first on the path; (JSON, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(lines[0]), proc.stderr


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def check_quality(q: dict) -> None:
    assert q["candidates"] > 0 and q["agree"] is True
    assert set(q["max_abs_diff_by_metric"]) >= {"ssim", "iou", "edges", "diversity", "overall_quality"}
    assert 0 <= q["max_abs_diff"] <= q["tolerance"]
    assert set(q["sets"]) == {"generated", "real"}
    assert _positive(q["torch_ms_per_sample"]) and _positive(q["skimage_ms_per_sample"])
    assert "peak_gpu_mem_mb" in q


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_without_gpu_it_says_why_and_exits_0():
    report, err = run_check(timeout=120)
    assert report["benchmark"] == "gpu_check" and report["gpu"] is False
    assert report["reason"] and report["torch"] == torch.__version__
    assert "no GPU" in err and "--cpu-smoke" in err


def test_util_sampler_degrades_without_nvml():
    sys.path.insert(0, BENCHMARKS)
    try:
        import gpu_check
    finally:
        sys.path.remove(BENCHMARKS)
    with gpu_check.GpuUtilSampler(enabled=True, interval=0.05) as s:
        pass
    summary = s.summary()
    assert set(summary) >= {"mean_pct", "max_pct", "samples", "source"}
    if summary["samples"] == 0:  # no NVML and no nvidia-smi here: a reason instead of an exception
        assert summary["mean_pct"] is None and summary["reason"]
    off = gpu_check.GpuUtilSampler(enabled=False)
    with off:
        pass
    assert off.summary() == {"mean_pct": None, "max_pct": None, "samples": 0, "source": None, "reason": "no GPU"}


def test_cpu_smoke_quality_part():
    report, _ = run_check("--cpu-smoke", "--parts", "quality", timeout=240)
    assert report["cpu_smoke"] is True and report["parts"] == ["quality"] and report["errors"] == {}
    check_quality(report["quality"])
    assert "train" not in report and "generate" not in report


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_cpu_smoke_all_parts():
    """5-9 minutes on 2 shared cores: six Ray Train start-ups dominate."""
    report, _ = run_check("--cpu-smoke", timeout=1400)
    for key in ("gpu", "device", "torch", "cuda", "ray", "cpus", "image_size", "wall_s", "errors"):
        assert key in report
    assert report["errors"] == {} and report["gpu"] is False and report["device"] == "cpu"
    check_quality(report["quality"])
    train = report["train"]
    for model in ("pix2pix", "vae"):
        assert set(train["images_per_s"][model]) == {"fp32", "bf16", "bf16+channels_last"}
        assert all(_positive(x) for x in train["images_per_s"][model].values())
        assert set(train["peak_gpu_mem_mb"][model]) == set(train["images_per_s"][model])
    assert len(train["results"]) == 6 and "gpu_util" in train
    gen = report["generate"]
    for key in ("samples_per_s", "steady_samples_per_s", "bare_forward_samples_per_s", "samples"):
        assert _positive(gen[key]), key
    assert gen["scoring"] == "torch" and gen["precision"] == "bf16" and gen["channels_last"] is True
    assert "peak_gpu_mem_mb" in gen and "gpu_util" in gen
    assert all(_positive(report[p]["wall_s"]) for p in ("quality", "train", "generate"))
