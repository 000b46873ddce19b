"""Loaders for the paper's formats and JSONL."""
import json
import os

import pytest

from cogenesis_device.eval import datasets
from cogenesis_device.errors import InvalidParameterError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _need(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: the paper's data is not on this machine")
    return path


def test_context_aware_split_follows_the_paper():
    samples = datasets.load(_need(os.path.join(SHARED, "context-aware")))
    assert len(samples) == 150 and len({s.tid for s in samples}) == 150
    raw = json.load(open(os.path.join(SHARED, "context-aware", "dev.json")))[0]
    s = samples[0]
    turn = raw["conversations"][0]["value"]
    assert s.task == turn and s.instruction == turn.split(": ")[0]
    assert s.gold == raw["conversations"][1]["value"]
    assert s.profile["Name"] == "Isabel Martinez" and "Privacy_info" in s.profile
    assert len(s.writings) == 4 and raw["profile"][0]["text"][:80] in s.context
    # the private part of the request stays in the (local) context, not in the public instruction
    rest = turn.split(": ", 1)[1]
    assert rest in s.context and rest not in s.instruction
    assert "Maldives" in " ".join(s.facts())


def test_abstracts_pair_with_and_without_context():
    samples = datasets.load(_need(os.path.join(SHARED, "abstracts", "dev_with_context.json")))
    assert len(samples) == 161
    s = samples[0]
    assert s.instruction.startswith("Compose an abstract for the title")
    assert s.writings and s.writings[0].startswith("Title:")
    assert "## Task" not in s.context and "You are now a helpful" not in s.context
    assert "Compose an abstract for the title" not in s.context


def test_jsonl_and_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"tid": "a", "instruction": "Write a toast", "context": "Name: Ana\nLoves sailing", "gold": "Cheers!"},
            {"instruction": "Write a poem", "profile": {"Name": "Bo"}, "writings": ["old poem"], "gold": "Roses"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = datasets.load(path)
    assert (a.tid, a.instruction, a.gold) == ("a", "Write a toast", "Cheers!") and "Loves sailing" in a.context
    assert b.tid == "1" and b.profile == {"Name": "Bo"} and b.writings == ("old poem",)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        datasets.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(InvalidParameterError, match="not valid JSON"):
        datasets.load(bad)
    bad.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(InvalidParameterError, match="lacks gold"):
        datasets.load(bad)
    bad.write_text(json.dumps([{"tid": 1, "instruction": "x", "gold": "y"}, {"tid": 1, "instruction": "z", "gold": "w"}]))
    with pytest.raises(InvalidParameterError, match="duplicate tids"):
        datasets.load(bad)


def test_public_part_and_profile_parsing():
    assert datasets.public_part("Draft an email: mention my trip to Oslo") == "Draft an email"
    assert datasets.public_part("No colon here") == "No colon here"
    assert datasets.parse_profile("Name: Ana\nHobbies: sailing;\n  chess\nAge: 30") == {
        "Name": "Ana", "Hobbies": "sailing; chess", "Age": "30"}
