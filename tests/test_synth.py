"""`cogenesis data build`: validators by hand, and a resumable build through the loopback server."""
import json

from cogenesis_device.eval import datasets
from cogenesis_device.eval.data_build import (PROFILE_KEYS, SCHEMAS, DataBuilder, response_format, valid_portraits,
                                    valid_profile, valid_tasks)


def test_validators():
    assert valid_portraits('Sure! {"groups": ["nurses, 30-50, night shifts", "x", "teachers, 25-60, two kids"]}') == [
        "nurses, 30-50, night shifts", "teachers, 25-60, two kids"]
    assert valid_portraits("no json") == [] and valid_portraits('{"groups": "one"}') == []
    full = {k: f"{k} value" for k in PROFILE_KEYS}
    assert valid_profile(json.dumps(full)) == {k: f"{k} value" for k in PROFILE_KEYS}
    assert valid_profile(json.dumps({**full, "Privacy_info": "..."})) is None  # the template's placeholder
    assert valid_profile(json.dumps({k: v for k, v in full.items() if k != "Name"})) is None
    tasks = {"tasks": [{"title": "Club newsletter", "description": "A monthly update for the running club"},
                       {"title": "Hi", "description": "too short a title"},
                       {"title": "Thank-you note to the coach", "description": "short"}]}
    assert valid_tasks(json.dumps(tasks)) == ["Club newsletter: A monthly update for the running club"]
    assert response_format("tasks", "json_schema")["json_schema"]["schema"] == SCHEMAS["tasks"]
    assert response_format("tasks", "json_object") == {"type": "json_object", "schema": SCHEMAS["tasks"]}
    assert response_format("tasks", "none") is None


def _build(remote, out):
    builder = DataBuilder(remote, out, portraits=2, users=1, tasks=2, attempts=2, max_tokens=300,
                          json_format="json_object")
    return builder.build(), builder.report


def test_build_is_validated_and_resumable(patient_remote, proxy, tmp_path):
    remote = patient_remote
    out = tmp_path / "data"
    path, report = _build(remote, out)
    chats = [json.loads(r.body) for r in proxy.records if r.path.endswith("/chat/completions")]
    assert 0 < report.requests <= len(chats)  # more on the wire only if a transient fault was retried
    # the structured steps carried their schema, so the server constrained the reply
    structured = [c for c in chats if "response_format" in c]
    assert structured and all(c["response_format"]["type"] == "json_object" for c in structured)
    assert len(structured) < len(chats) or report.rejected["tasks"] + report.counts["tasks"] == 0
    steps = {name: [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
             for name in ("portraits", "profiles", "tasks") if (out / f"{name}.jsonl").exists()}
    assert 1 <= len(steps["portraits"]) <= 2
    for rec in steps.get("profiles", []):
        assert set(rec["profile"]) == set(PROFILE_KEYS)
    for recs in steps.values():  # each step's records are deduplicated by key (steps may share a key)
        keys = [rec["key"] for rec in recs]
        assert len(keys) == len(set(keys))
    if report.samples:
        samples = datasets.load(path)
        assert len(samples) == report.samples and all(s.profile["Name"] for s in samples)
    # A rerun asks only for what is still missing: nothing accepted is requested again.
    saved = {name: (out / f"{name}.jsonl").read_text() for name in steps}
    written = {json.loads(line)["key"] for line in (out / "texts.jsonl").read_text().splitlines()} \
        if (out / "texts.jsonl").exists() else set()
    tasks_done = [t["task"] for t in steps.get("tasks", []) if t["key"] in written]
    profiled = {rec["slot"].split("#")[0] for rec in steps.get("profiles", [])}
    portraits_done = [p["portrait"] for p in steps["portraits"] if p["key"] in profiled]
    proxy.clear()
    _, again = _build(remote, out)
    prompts = [json.loads(r.body)["messages"][0]["content"] for r in proxy.records if r.path.endswith("/chat/completions")]
    assert not any(p.startswith("List 2 different groups") for p in prompts) or len(steps["portraits"]) < 2
    assert not any(f"from this group: {portrait}\n" in p for p in prompts for portrait in portraits_done)
    assert not any(f"\n{task}\n" in p for p in prompts for task in tasks_done)
    for name, text in saved.items():
        assert (out / f"{name}.jsonl").read_text().startswith(text)
    if sum(report.rejected.values()) == 0:
        assert again.requests == 0
