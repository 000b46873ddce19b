"""Metric code against values computed by hand."""
import json
import math

import numpy as np
import pytest

from cogenesis_device.judge import parse_scores
from cogenesis_device.metrics import (bits_per_byte, facts_used, lcs_length, leakage, private_items, rouge_l,
                                      would_leak)
from cogenesis_device.privacy import AuditRecord


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (BCBA)
    assert lcs_length([], [1, 2]) == 0
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is "the cat on the mat": 5 of 6 words each side.
    assert rouge_l("The cat sat on the mat", "the cat is on the mat.") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F1 = 2 * 1 * 0.5 / 1.5
    assert rouge_l("quick fox", "the quick brown fox") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0


def test_bits_per_byte_by_hand():
    assert bits_per_byte(4 * math.log(2), 2) == pytest.approx(2.0)  # 4 bits over 2 bytes
    assert bits_per_byte(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_facts_used_by_hand():
    facts = ["Volunteers at local animal shelter", "Keeps a dream journal", "avid golfer"]
    text = "After my shift at the animal shelter I wrote in my journal about dreams."
    # fact 1: content words volunteers/local/animal/shelter -> 2 of 4 = 0.5 (counts);
    # fact 2: keeps/dream/journal -> journal only, 1/3 (no); fact 3: avid/golfer -> 0 (no).
    assert facts_used(text, facts) == pytest.approx(1 / 3)
    assert math.isnan(facts_used(text, []))


def _record(body: dict, action: str = "sent", findings=()) -> AuditRecord:
    return AuditRecord(time=0.0, method="POST", endpoint="/v1/completions", bytes_sent=0, action=action,
                       findings=list(findings), body=json.dumps(body))


def test_leakage_counts_entities_and_windows_in_sent_bodies():
    context = "Name: Isabel Martinez\nShe keeps a dream journal every morning."
    items = private_items(context, public="Write a note about journaling")
    assert "Isabel Martinez" in items["entities"]
    assert "keeps a drea" in items["windows"] and all(len(w) == 12 for w in items["windows"])
    clean = leakage(items, [_record({"prompt": "Dear friends, a note about journaling."})])
    assert clean["any"] is False and clean["entities_leaked"] == 0 and clean["windows_leaked"] == 0
    # JSON escapes are undone before matching ("\u00e9" and "\n" in the body).
    leaked = leakage(items, [_record({"prompt": "Hi, I am Isabel Martinez.\nShe keeps a dream journal"})])
    assert leaked["any"] and leaked["entities_leaked"] >= 1
    assert leaked["windows_leaked"] >= 3 and 0 < leaked["window_share"] < 1
    blocked = leakage(items, [_record({"prompt": "Isabel Martinez"}, action="blocked")])
    assert blocked["any"] is False  # a blocked body never left
    assert would_leak([_record({}, "redacted", [{"kind": "name", "chars": 6}, {"kind": "verbatim", "chars": 20}])]) == 2


def test_leakage_matches_whole_words_within_one_sent_string():
    """The false alarms the first full dev run raised: an entity inside a longer word, a window starting
    mid-word, and a window bridging the prompt and the next JSON string."""
    items = {"entities": {"Art", "Inc"}, "windows": {"a marketing ", "lesson plan "}}
    body = {"model": "m.gguf <|im_start|>", "prompt": "Start including social media marketing", "stop": ["x"],
            "suffix": "it's a lesson plan"}
    assert leakage(items, [_record(body)])["any"] is False
    hit = leakage(items, [_record({"prompt": "Art, Inc. runs a marketing team; a lesson plan follows"})])
    assert hit["entities_leaked"] == 2 and hit["windows_leaked"] == 2


def test_public_text_is_not_private():
    items = private_items("Task: Compose a Monthly Newsletter for clients", public="Compose a Monthly Newsletter")
    assert not any(w in "compose a monthly newsletter" for w in items["windows"])


def test_judge_scores_are_parsed_and_template_echoes_ignored():
    assert parse_scores("Overall: 7\nPersonalization: 8/10") == {"overall": 7.0, "personalization": 8.0}
    assert parse_scores("overall score - 10") == {"overall": 10.0}
    assert parse_scores("Overall: 1-10\nPersonalization: 1-10") == {}
    assert parse_scores("no numbers here") == {}


def test_embedding_similarity_is_meaningful():
    from cogenesis_device.metrics import default_embedder

    emb = default_embedder()
    e = emb.encode(["a", "b"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert emb.cosine("The weekend group run starts at 7 am.", "The weekend group run starts at 7 am.") == pytest.approx(1.0, abs=1e-5)
    near = emb.cosine("Our running club meets on Saturday morning.", "The running group gathers Saturday at dawn.")
    far = emb.cosine("Our running club meets on Saturday morning.", "Quarterly tax filing deadlines for corporations.")
    assert near > far + 0.2
    assert emb.max_cosine("running club", ["tax law", "the running club"]) == pytest.approx(
        emb.cosine("running club", "the running club"), abs=1e-5)
