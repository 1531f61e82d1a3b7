"""Shared helpers for the benchmarks: machine facts, versions, percentiles, result files."""

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from llmtool.core.bench.runner import environment

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import torch
    import transformers

    cpu = environment()["cpu"]  # one reading of /proc/cpuinfo for bench/ and llmtool bench
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmtool_commit": commit,
    }


def percentiles(values, ps=(50, 90, 95, 99)) -> dict:
    arr = np.asarray(values, dtype=float)
    out = {f"p{p}": float(np.percentile(arr, p)) for p in ps}
    out["mean"] = float(arr.mean())
    return out


def write_results(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
