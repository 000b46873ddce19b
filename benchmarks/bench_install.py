"""How long the first install takes: building llama-cpp-python's wheel from source, as a fresh
`pip install .` does before pip has a cached wheel, and building our own package.

    python benchmarks/bench_install.py

Writes results/install.json and results/install.md.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cogenesis_device.bench import row, summarize
from report import write

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def timed(command: list[str]) -> float:
    print("$", shlex.join(command), file=sys.stderr)
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as wheels:
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", wheels]
        for what, target in ((f"{LLAMA_CPP_PYTHON}, from source", ["--no-binary", "llama-cpp-python", LLAMA_CPP_PYTHON]),
                             ("cogenesis-device (engine and bindings)", [str(ROOT)])):
            command = pip_wheel + target
            rows.append({"build": what, "seconds": round(timed(command), 1), "command": shlex.join(command)})
    lines = ["# First install: wheels built from source", "",
             "`python benchmarks/bench_install.py`. Each wheel is built by pip in a fresh build environment, "
             "without pip's cache.", "", "| build | seconds |", "|---|---|"]
    lines += [f"| {r['build']} | {r['seconds']:.0f} |" for r in rows]
    common = [row(f"wheel from source: {r['build']}", summarize([r["seconds"]]), unit="s", model="-")
              for r in rows]
    print(write("install", {"builds": rows}, "\n".join(lines), common), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
