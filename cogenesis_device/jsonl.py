"""Append-only JSONL files: what resumable runs (eval, data build) keep their results in."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Hashable


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a line that does not parse (a run killed mid-write) is skipped."""
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def append_private(path, line: str) -> None:
    """Appends one line to a file created readable by its owner only (0600): the logs of a run hold
    personalized text and audit records."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class KeyedLog:
    """Records keyed by key(record), loaded from path and appended to it (flushed) as they are added."""

    def __init__(self, path: Path, key: Callable[[dict], Hashable]):
        self.path, self.key = path, key
        self.records: dict = {}
        for record in read_jsonl(path):
            try:
                self.records[key(record)] = record
            except KeyError:
                continue

    def __contains__(self, key) -> bool:
        return key in self.records

    def add(self, record: dict) -> None:
        self.records[self.key(record)] = record
        append_private(self.path, json.dumps(record, ensure_ascii=False))
