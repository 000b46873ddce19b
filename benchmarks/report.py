"""Benchmark reporting: mean +- sd over repeats, JSON for machines, markdown for people."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def summarize(samples: list[float]) -> dict:
    return {
        "mean": statistics.fmean(samples),
        "sd": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "n": len(samples),
        "samples": samples,
    }


def fmt(s: dict, digits: int = 1) -> str:
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def code_stamp() -> dict:
    """The commit the code ran on, and the files of the product or the benchmarks that differed from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    changed = git("status", "--porcelain", "--", "engine", "csrc", "cogenesis_device", "benchmarks").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or "unknown", "changed_files": [line[3:] for line in changed]}


def write(name: str, data: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path
