"""`cogenesis data build`: synthesize a context-aware dataset with any OpenAI-compatible model.

The paper's four steps, each a chat call with our own prompts; the first three answer in JSON, held to a
schema by the server where it supports one (response_format; json_format picks the dialect):
  1. group portraits     {"groups": [...]}                  -> portraits.jsonl
  2. user profiles       {"Name": ..., "Privacy_info": ...}  -> profiles.jsonl
  3. writing tasks       {"tasks": [{title, description}]}   -> tasks.jsonl
  4. personalized texts  plain text, one per task             -> texts.jsonl
Each step appends validated records to its file in the output directory, keyed, so a rerun resumes and
repeats nothing; near-duplicates (same normalized key) are dropped; replies that fail validation are
retried up to `attempts` times and then counted as rejected. The result, dataset.json, is in the paper's
context-aware format (one sample per task; the user's other texts are the writing history) and is
checked by loading it with datasets.load before it is written.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError, RemoteError
from ..jsonl import KeyedLog
from ..privacy import EgressGuard
from ..remote import RemoteModel
from . import datasets

PROFILE_KEYS = ("Name", "Age", "Occupation", "Location", "Personal_traits", "Writing_style", "Privacy_info",
                "Smart_device_usage", "Ai_assistant_usage")

PORTRAITS = ("List {n} different groups of people who often write texts at work or at home, each as "
             "'occupation, age range, life situation'. Answer in JSON: {{\"groups\": [...]}}.")
PROFILE = ("Invent one specific person from this group: {portrait}\n"
           "Answer in JSON with the keys " + ", ".join(PROFILE_KEYS) + ". Lists go in one string, separated by "
           "semicolons. Privacy_info holds personal details they would not share publicly.")
TASKS = ("Here is a person:\n{profile}\n\nList {n} pieces of writing this person might ask an assistant to help "
         "with. Answer in JSON: {{\"tasks\": [{{\"title\": ..., \"description\": one sentence}}, ...]}}.")
TEXT = ("You are this person:\n{profile}\n\nWrite the following in your own style, using your own details where "
        "they fit:\n{task}\n\nWrite only the text itself.")

_TEXT_FIELD = {"type": "string", "minLength": 3, "maxLength": 300}
SCHEMAS = {
    "portraits": {"type": "object", "properties": {"groups": {"type": "array", "items": _TEXT_FIELD, "minItems": 1}},
                  "required": ["groups"]},
    "profiles": {"type": "object", "properties": {k: _TEXT_FIELD for k in PROFILE_KEYS}, "required": list(PROFILE_KEYS)},
    "tasks": {"type": "object", "properties": {"tasks": {"type": "array", "minItems": 1, "items": {
        "type": "object", "properties": {"title": _TEXT_FIELD, "description": _TEXT_FIELD},
        "required": ["title", "description"]}}}, "required": ["tasks"]},
}
JSON_FORMATS = ("json_schema", "json_object", "none")


def response_format(step: str, style: str) -> dict | None:
    """The step's schema in the server's dialect: 'json_schema' (OpenAI, vLLM), 'json_object' (llama_cpp.server)."""
    if style == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": step, "schema": SCHEMAS[step]}}
    if style == "json_object":
        return {"type": "json_object", "schema": SCHEMAS[step]}
    return None


def _key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _json(reply: str):
    """The first JSON object in a reply (models sometimes wrap it in prose or a code fence)."""
    start = reply.find("{")
    try:
        return json.JSONDecoder().raw_decode(reply[start:])[0] if start >= 0 else None
    except ValueError:
        return None


def _clean(value) -> str:
    return " ".join(str(value).split()).strip(" .;")


def valid_portraits(reply: str) -> list[str]:
    data = _json(reply)
    groups = data.get("groups") if isinstance(data, dict) else None
    return [_clean(g) for g in groups if len(_clean(g)) >= 3] if isinstance(groups, list) else []


def valid_profile(reply: str) -> dict[str, str] | None:
    """The profile if every key has a real value (not the placeholder '...'), else None."""
    data = _json(reply)
    if not isinstance(data, dict):
        return None
    profile = {k: _clean(data.get(k, "")) for k in PROFILE_KEYS}
    return profile if all(len(v) >= 2 and v != "..." for v in profile.values()) else None


def valid_tasks(reply: str) -> list[str]:
    """'Title: description' for each task with a 2-15 word title and a description of 3+ words."""
    data = _json(reply)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    out = []
    for task in tasks if isinstance(tasks, list) else []:
        if isinstance(task, dict):
            title, description = _clean(task.get("title", "")), _clean(task.get("description", ""))
            if 2 <= len(title.split()) <= 15 and len(description.split()) >= 3:
                out.append(f"{title}: {description}")
    return out


@dataclass
class BuildReport:
    requests: int = 0
    rejected: dict = field(default_factory=lambda: {"portraits": 0, "profiles": 0, "tasks": 0, "texts": 0})
    duplicates: int = 0
    counts: dict = field(default_factory=dict)
    samples: int = 0


class DataBuilder:
    """Builds a dataset into out_dir with a RemoteModel. portraits: groups; users: profiles per group;
    tasks: tasks per user (each becomes a sample, the others its history); attempts: tries per reply."""

    def __init__(self, remote: RemoteModel, out_dir: str | os.PathLike, *, portraits: int = 4, users: int = 2,
                 tasks: int = 3, attempts: int = 3, temperature: float = 0.8, max_tokens: int = 400, seed: int = 0,
                 json_format: str = "json_schema"):
        if json_format not in JSON_FORMATS:
            raise InvalidParameterError(f"json_format must be one of {', '.join(JSON_FORMATS)}, got {json_format!r}")
        self.remote, self.out = remote, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.n_portraits, self.n_users, self.n_tasks, self.attempts = portraits, users, tasks, attempts
        self.temperature, self.max_tokens, self.seed, self.json_format = temperature, max_tokens, seed, json_format
        self.report = BuildReport()
        # Only synthetic text goes out; the guard records each request.
        self.guard = EgressGuard(policy="audit", audit_path=str(self.out / "requests.jsonl"))

    def _ask(self, step: str, prompt: str, attempt: int) -> Future:
        self.report.requests += 1
        fmt = response_format(step, self.json_format) if step in SCHEMAS else None
        return self.remote.submit_chat([{"role": "user", "content": prompt}], max_tokens=self.max_tokens,
                                       temperature=self.temperature, seed=self.seed + attempt, response_format=fmt,
                                       guard=self.guard)

    def _collect(self, step: str, jobs: dict[str, str], parse) -> dict[str, object]:
        """Ask every prompt concurrently; retry the replies parse() rejects. key -> parsed value."""
        done: dict[str, object] = {}
        pending = dict(jobs)
        for attempt in range(self.attempts):
            futures = {key: self._ask(step, prompt, attempt) for key, prompt in pending.items()}
            pending = {}
            for key, future in futures.items():
                try:
                    value = parse(future.result().text)
                except RemoteError:
                    value = None
                if value:
                    done[key] = value
                else:
                    pending[key] = jobs[key]
        self.report.rejected[step] += len(pending)
        return done

    def build(self) -> Path:
        portraits, profiles, tasks, texts = (KeyedLog(self.out / f"{name}.jsonl", lambda rec: rec["key"])
                                             for name in ("portraits", "profiles", "tasks", "texts"))
        if len(portraits.records) < self.n_portraits:
            got = self._collect("portraits", {"all": PORTRAITS.format(n=self.n_portraits)}, valid_portraits)
            for line in got.get("all", []):
                self._add_unique(portraits, {"key": _key(line), "portrait": line}, self.n_portraits)
        wanted = {f"{p['key']}#{u}": PROFILE.format(portrait=p["portrait"])
                  for p in portraits.records.values() for u in range(self.n_users)}
        for key, profile in self._collect("profiles", {k: v for k, v in wanted.items() if k not in
                                                       {r["slot"] for r in profiles.records.values()}},
                                          valid_profile).items():
            self._add_unique(profiles, {"key": _key(profile["Name"] + " " + profile["Occupation"]), "slot": key,
                                        "profile": profile})
        wanted = {p["key"]: TASKS.format(profile=_lines(p["profile"]), n=self.n_tasks)
                  for p in profiles.records.values() if p["key"] not in {t["user"] for t in tasks.records.values()}}
        for user, found in self._collect("tasks", wanted, valid_tasks).items():
            for task in found[:self.n_tasks]:
                self._add_unique(tasks, {"key": user + "|" + _key(task.partition(":")[0]), "user": user, "task": task})
        users = {p["key"]: p["profile"] for p in profiles.records.values()}
        wanted = {t["key"]: TEXT.format(profile=_lines(users[t["user"]]), task=t["task"])
                  for t in tasks.records.values() if t["key"] not in texts.records and t["user"] in users}
        for key, text in self._collect("texts", wanted, lambda r: r.strip() if len(r.split()) >= 40 else None).items():
            texts.add({"key": key, "text": text})
        return self._write(users, tasks, texts)

    def _add_unique(self, step: KeyedLog, record: dict, limit: int | None = None) -> None:
        if record["key"] in step.records or not record["key"]:
            self.report.duplicates += 1
        elif limit is None or len(step.records) < limit:
            step.add(record)

    def _write(self, users: dict, tasks: KeyedLog, texts: KeyedLog) -> Path:
        by_user: dict[str, list[tuple[str, str]]] = {}
        for t in tasks.records.values():
            if t["key"] in texts.records:
                by_user.setdefault(t["user"], []).append((t["task"], texts.records[t["key"]]["text"]))
        samples = []
        for u, (user, written) in enumerate(sorted(by_user.items())):
            for i, (task, text) in enumerate(written):
                history = [{"title": other_task, "text": other_text}
                           for j, (other_task, other_text) in enumerate(written) if j != i][:4]
                samples.append({"tid": f"{u}_{i}", "conversations": [{"from": "user", "value": task},
                                                                     {"from": "assistant", "value": text}],
                                "profile": history, "additional_profile": _lines(users[user]), "additional_tasks": []})
        path = self.out / "dataset.json"
        self.report.counts = {"users": len(users), "tasks": len(tasks.records), "texts": len(texts.records)}
        self.report.samples = len(samples)
        if samples:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            datasets.load(tmp)  # the loaders must read what we write
            os.replace(tmp, path)
        return path


def _lines(profile: dict[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in profile.items())
