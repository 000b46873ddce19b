"""Benchmark reporting: JSON for machines, markdown for people, each stamped with the commit. The
row schema and its statistics are the package's (cogenesis_device.bench), which `cogenesis bench` uses."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path

from cogenesis_device.bench import machine

ROOT = Path(__file__).resolve().parent.parent
# COGENESIS_BENCH_RESULTS=/tmp/x sends a trial run's files elsewhere, leaving the committed results alone.
RESULTS = Path(os.environ.get("COGENESIS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
WATCHED = ("engine", "csrc", "cogenesis_device", "benchmarks")  # the code a result depends on


def code_stamp() -> dict:
    """The commit the code ran on; dirty if files of the product or the benchmarks (not their results)
    differed from it. Taken once per process, when this module is imported (as the run starts)."""
    return dict(_code_stamp())


@functools.lru_cache(maxsize=None)
def _code_stamp() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    changed = git("status", "--porcelain", "--", *WATCHED, ":(exclude)benchmarks/results").splitlines()
    return {"commit": commit, "dirty": bool(changed) if commit != "unknown" else None,
            "changed_files": [line[3:] for line in changed], **_installed_package()}


def _installed_package() -> dict:
    """Where cogenesis_device is imported from, and whether its Python files are the checkout's (the
    native module is compared by nothing: it is built from engine/ and csrc/ at install time)."""
    spec = importlib.util.find_spec("cogenesis_device")
    if spec is None or spec.origin is None:
        return {"installed_package": None}
    installed, checkout = Path(spec.origin).parent, ROOT / "cogenesis_device"
    if not checkout.is_dir():
        return {"installed_package": str(installed)}
    if installed.resolve() == checkout.resolve():
        return {"installed_package": str(installed), "installed_python_differs": []}

    def digest(path: Path):
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    names = sorted({str(p.relative_to(installed)) for p in installed.rglob("*.py")} |
                   {str(p.relative_to(checkout)) for p in checkout.rglob("*.py")})
    return {"installed_package": str(installed),
            "installed_python_differs": [n for n in names if digest(installed / n) != digest(checkout / n)]}


def stamp_line(stamp: dict | None = None) -> str:
    """The stamp as one markdown line."""
    stamp = stamp or code_stamp()
    text = f"Commit `{stamp['commit']}`"
    if stamp["dirty"] is None:
        text += " (not a git checkout)"
    elif stamp["dirty"]:
        text += ", **dirty** (uncommitted: " + ", ".join(stamp["changed_files"]) + ")"
    else:
        text += ", clean tree"
    differs = stamp.get("installed_python_differs")
    if differs:
        text += "; **the installed package differs from the checkout** in " + ", ".join(differs)
    return text + "."


def write(name: str, data: dict, markdown: str, rows: list[dict]) -> Path:
    """results/NAME.json and results/NAME.md, both stamped with the commit (a line under the title).
    rows: the measurements in the schema every benchmark and `cogenesis bench` share (row()); the
    JSON holds them under "rows", beside the script's own data."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), "code": code_stamp(), **data, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = markdown.rstrip().split("\n")
    at = 1 if lines and lines[0].startswith("#") else 0
    lines[at:at] = (["", stamp_line()] if at else [stamp_line(), ""])
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


_code_stamp()  # at import: the code as the run starts, before anyone commits or edits during it
