"""The `cogenesis` command: `main.py` (demo, run, generate, models) and `research.py` (eval,
train-gate, data build)."""
from .main import main

__all__ = ["main"]
