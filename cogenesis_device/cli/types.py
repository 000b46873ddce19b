"""Argument types of the command line: a value out of range is refused by argparse, naming the flag
and the range (`--temp -1` was accepted and sampled greedily)."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _bounded(kind: type, accepts: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: text read as kind (int or a finite float) and kept if accepts(value)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value:g}")
        return value
    return convert


positive_int = _bounded(int, lambda v: v >= 1, "at least 1")             # token counts, threads, windows
non_negative_int = _bounded(int, lambda v: v >= 0, "0 or more")          # 0 turns the option off
non_negative = _bounded(float, lambda v: v >= 0, "0 or more")            # temperatures (0 is greedy), thresholds
positive = _bounded(float, lambda v: v > 0, "more than 0")               # seconds, penalties, rates
unit_interval = _bounded(float, lambda v: 0 <= v <= 1, "between 0 and 1")  # probabilities, weights
