"""Latency benchmarks on the user's own machine: `cogenesis bench` runs the standard suite (suite.py),
and the comparisons in the repository's benchmarks/ report in the same row schema (this module).

A row is one measurement, after llama-bench: the model (GGUF file name), its size in bytes, the
threads, the test, the test's parameters, the unit, then mean, sd, n and the samples. Rows are plain
dicts, so a list of them is the JSON output as it is.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import InvalidParameterError
from ..registry import DEFAULT_MODEL

TESTS = ("pp", "tg", "cached", "fusion", "collab")  # suite.py runs them, in this order


@dataclass
class BenchConfig:
    """What `cogenesis bench` runs. model: a registry name or a GGUF path; threads: one suite per
    count; n_prompt, n_gen: tokens of pp/cached and of tg; repetitions: samples per value;
    rtts: the collab test's round-trip times in ms; collab_tokens: tokens per collab generation."""

    model: str = DEFAULT_MODEL
    threads: list[int] = field(default_factory=lambda: [os.cpu_count() or 1])
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    tests: tuple[str, ...] = TESTS
    rtts: list[float] = field(default_factory=lambda: [0.0, 20.0, 50.0, 100.0])
    collab_tokens: int = 32

    def check(self) -> None:
        unknown = [t for t in self.tests if t not in TESTS]
        if unknown or not self.tests:
            raise InvalidParameterError(f"tests must be some of {', '.join(TESTS)}, got {', '.join(self.tests) or 'none'}")
        for name in ("n_prompt", "n_gen", "repetitions", "collab_tokens"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.threads or min(self.threads) < 1:
            raise InvalidParameterError(f"threads must be at least 1, got {self.threads}")
        if "collab" in self.tests and (not self.rtts or min(self.rtts) < 0):
            raise InvalidParameterError(f"RTTs must be 0 ms or more, got {self.rtts}")


def summarize(samples: list[float]) -> dict:
    """mean, sd (n - 1), n and the samples themselves."""
    return {
        "mean": statistics.fmean(samples),
        "sd": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "n": len(samples),
        "samples": samples,
    }


def fmt(stats: dict, digits: int = 1) -> str:
    """'mean ± sd' of summarize()'s result."""
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def row(test: str, stats: dict, *, unit: str, model: str, size: int | None = None, threads: int | None = None,
        **params) -> dict:
    """One measurement: model, size (bytes of the GGUF file), threads, test, its parameters, unit, then
    mean, sd, n and the samples (summarize's result)."""
    return {"model": model, "size": size, "threads": threads, "test": test, **params, "unit": unit, **stats}


def model_info(path: str | os.PathLike) -> dict:
    """model= and size= for row(): the GGUF file's name and size."""
    path = Path(path)
    return {"model": path.name, "size": path.stat().st_size}


def machine() -> dict:
    """Where and when the rows were measured."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cogenesis_device": __version__,
    }


def markdown_table(rows: list[dict]) -> str:
    """The rows as a llama-bench style table: model | size | threads | test | value."""
    lines = ["| model | size | threads | test | value |", "|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['size'] / 2 ** 20:.1f} MiB" if r.get("size") else "-"
        digits = 2 if abs(r["mean"]) < 10 else 1
        lines.append(f"| {r['model']} | {size} | {r['threads']} | {r['test']} | {fmt(r, digits)} {r['unit']} |")
    return "\n".join(lines)
