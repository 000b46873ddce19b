"""Evaluation samples: (public instruction, private context, gold answer) from the paper's files or JSONL.

Formats read (detected from the content):
- context-aware (the paper's synthetic set): a JSON list of {tid, conversations: [user, assistant],
  profile: [{title, text}], additional_profile: "Key: value" lines, ...}. The public instruction is the
  user turn before its first ": " (REFERENCE §8); the whole turn, the profile and the writings are private.
- abstracts: dev_with_context.json + dev_without_context.json (same tids). The public instruction is
  the user turn without context; the private context is the author's past abstracts.
- JSONL (or a JSON list) of {"instruction", "context", "gold"} with optional "tid", "task",
  "writings" and "profile" — what `cogenesis data build` writes.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError

_HISTORY_HEADER = re.compile(r"^##\s*History[^\n]*\n", re.MULTILINE)
_TASK_HEADER = re.compile(r"^##\s*Task\s*\n", re.MULTILINE)


@dataclass(frozen=True)
class Sample:
    """One evaluation item.

    instruction: what may be sent to the remote (context-free).
    task: the user's full request (may mention private facts; local only).
    profile: structured facts about the user ("Key" -> "value"), private.
    writings: the user's past texts, private.
    gold: the reference answer.
    """

    tid: str
    instruction: str
    task: str
    gold: str
    profile: dict[str, str] = field(default_factory=dict)
    writings: tuple[str, ...] = ()

    @property
    def background(self) -> str:
        """The user's profile lines, then the past writings."""
        parts = ["\n".join(f"{k}: {v}" for k, v in self.profile.items())] if self.profile else []
        parts += [f"Past writing {i + 1}:\n{w}" for i, w in enumerate(self.writings)]
        return "\n\n".join(parts)

    @property
    def context(self) -> str:
        """Everything private, as the local model reads it: the background, then the full request."""
        if self.task == self.instruction:
            return self.background
        return "\n\n".join(p for p in (self.background, f"The user's full request: {self.task}") if p)

    def past_tasks(self) -> list["Sample"]:
        """Each past writing as a task of its own, leave one out: its title the request (the public
        instruction its part before ": "), its text the answer, the profile and the other writings the
        context. The same user's history, in the sample's own format: more training data that holds
        nothing of any other user's."""
        out = []
        for i, writing in enumerate(self.writings):
            title, _, text = writing.partition("\n")
            if title.strip() and text.strip():
                rest = self.writings[:i] + self.writings[i + 1:]
                out.append(Sample(f"{self.tid}/past{i + 1}", public_part(title), title.strip(), text.strip(),
                                  self.profile, rest))
        return out

    def facts(self) -> list[str]:
        """Profile facts, one per item ("Privacy_info: a; b" gives "a" and "b"), for the fact-use proxy."""
        out = []
        for key, value in self.profile.items():
            if key.lower() in ("age",):
                continue
            out += [part.strip() for part in value.split(";") if len(part.strip()) >= 3]
        return out


def public_part(user_turn: str) -> str:
    """The paper's context-free instruction: the user turn before its first ': ' (all of it if none)."""
    head, sep, _ = user_turn.partition(": ")
    return head.strip() if sep and head.strip() else user_turn.strip()


def parse_profile(text: str) -> dict[str, str]:
    """'Key: value' lines -> dict (lines without a key are appended to the previous value)."""
    profile: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and len(key) <= 40 and not key.strip().startswith("-"):
            last = key.strip()
            profile[last] = value.strip()
        elif last and line.strip():
            profile[last] += " " + line.strip()
    return profile


def _turns(item: dict, path: Path) -> tuple[str, str]:
    conv = item.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise InvalidParameterError(f"{path}: sample {item.get('tid')!r} needs 'conversations' [user, assistant]")
    values = [t.get("value", "") if isinstance(t, dict) else str(t) for t in conv[:2]]
    if not values[0].strip() or not values[1].strip():
        raise InvalidParameterError(f"{path}: sample {item.get('tid')!r} has an empty user turn or answer")
    return values[0], values[1]


def _context_aware(items: list, path: Path) -> list[Sample]:
    out = []
    for item in items:
        task, gold = _turns(item, path)
        writings = tuple(f"{w.get('title', '').strip()}\n{w.get('text', '').strip()}".strip()
                         for w in item.get("profile") or [])
        profile = parse_profile(item.get("additional_profile") or "")
        out.append(Sample(str(item["tid"]), public_part(task), task, gold, profile, writings))
    return out


def _abstracts(with_context: list, without_context: list, path: Path) -> list[Sample]:
    public = {str(item["tid"]): _turns(item, path)[0] for item in without_context}
    out = []
    for item in with_context:
        tid = str(item["tid"])
        turn, gold = _turns(item, path)
        if tid not in public:
            raise InvalidParameterError(f"{path}: tid {tid!r} is missing from the without-context file")
        history = _HISTORY_HEADER.split(turn, maxsplit=1)[-1]
        history = _TASK_HEADER.split(history, maxsplit=1)[0].strip()
        writings = tuple(w.strip() for w in re.split(r"\n\s*\n", history) if w.strip())
        out.append(Sample(tid, public[tid].strip(), public[tid].strip(), gold, {}, writings))
    return out


def _generic(items: list, path: Path) -> list[Sample]:
    out = []
    for n, item in enumerate(items):
        missing = [k for k in ("instruction", "gold") if not str(item.get(k, "")).strip()]
        if missing:
            raise InvalidParameterError(f"{path}: record {n + 1} lacks {', '.join(missing)}")
        profile = item.get("profile") or {}
        if isinstance(profile, str):
            profile = parse_profile(profile)
        writings = tuple(item.get("writings") or ())
        if item.get("context") and not profile and not writings:
            writings = (str(item["context"]),)
        out.append(Sample(str(item.get("tid", n)), item["instruction"].strip(), str(item.get("task") or item["instruction"]),
                          item["gold"], dict(profile), writings))
    return out


def _read(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InvalidParameterError(f"{path}: expected a list of samples, got {type(data).__name__}")
    return data


def load(path: str | os.PathLike, *, limit: int | None = None) -> list[Sample]:
    """Samples from a data file (or a directory holding dev.json or the two abstracts files)."""
    path = Path(path)
    if path.is_dir():
        for name in ("dev.json", "dev_with_context.json"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise InvalidParameterError(f"{path} holds neither dev.json nor dev_with_context.json")
    if not path.exists():
        raise InvalidParameterError(f"data file {path} does not exist")
    items = _read(path)
    if not items:
        raise InvalidParameterError(f"{path} holds no samples")
    first = items[0]
    if "conversations" in first and "profile" in first:
        samples = _context_aware(items, path)
    elif "conversations" in first:
        partner = path.with_name(path.name.replace("with_context", "without_context"))
        if partner == path or not partner.exists():
            raise InvalidParameterError(f"{path}: a conversations-only file needs its *_without_context twin next to it")
        samples = _abstracts(items, _read(partner), path)
    else:
        samples = _generic(items, path)
    tids = [s.tid for s in samples]
    if len(set(tids)) != len(tids):
        raise InvalidParameterError(f"{path}: duplicate tids")
    return samples[:limit] if limit else samples
