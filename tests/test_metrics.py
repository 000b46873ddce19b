"""Metric code against values computed by hand."""
import json
import math

import numpy as np
import pytest

from cogenesis_device.attribution import PLACEHOLDER
from cogenesis_device.eval import leakscan
from cogenesis_device.collab import parse_outline
from cogenesis_device.eval.judge import parse_scores
from cogenesis_device.privacy import PLACEHOLDER_RE
from cogenesis_device.eval.metrics import (bits_per_byte, distinct_n, facts_used, lcs_length, repeated_ngram_rate,
                                      rouge_l)


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


def test_leak_scan_finds_profile_facts_in_the_bodies_sent():
    profile = ("Name: Isabel Martinez\nAge: 47\nPersonal_traits: Outgoing; Detail-oriented\n"
               "Privacy_info: Recently celebrated 20th wedding anniversary with a trip to the Maldives; "
               "Volunteers at the local animal shelter on weekends")
    facts = leakscan.profile_facts(profile, public="Write a note about our local animal shelter")
    by_value = {f.value: f for f in facts}
    assert {"Isabel Martinez", "isabel", "martinez", "47", "Detail-oriented"} <= set(by_value)
    assert "Outgoing" not in by_value  # a one-word trait alone is an ordinary word
    assert "wedding anniversary" in by_value[
        "Recently celebrated 20th wedding anniversary with a trip to the Maldives"].pairs
    shelter = by_value["Volunteers at the local animal shelter on weekends"]
    assert "animal shelter" not in shelter.pairs and "shelter weekends" in shelter.pairs  # the instruction's own words
    clean = json.dumps({"prompt": "Dear friends, a note about the local animal shelter, our wedding and a trip."})
    assert leakscan.leaked(facts, [clean]) == []
    # Escapes undone, case and accents ignored; stopwords between two content words do not hide them.
    body = json.dumps({"prompt": "Hi, I am ISABEL Mart\u00ednez, 47; our Wedding Anniversary trip to the Maldives"})
    assert sorted(f.value for f in leakscan.leaked(facts, [body])) == [
        "47", "Isabel Martinez", "Recently celebrated 20th wedding anniversary with a trip to the Maldives",
        "isabel", "martinez"]
    assert [f.value for f in leakscan.leaked(facts, [json.dumps({"prompt": "a shelter on the weekends"})])] == [
        shelter.value]


def test_leak_scan_reads_a_placeholder_as_a_break_not_as_a_word():
    """Dev sample 7_17_2 (Gemma 3 remote, redact) was counted as leaking "a private family gathering"
    because "[PRIVATE] of my family" was read as the words "private family"."""
    profile = "Privacy_info: Celebrated 25th wedding anniversary last month with a private family gathering"
    facts = leakscan.profile_facts(profile, public="Reflective Journal Entry")
    assert PLACEHOLDER_RE.fullmatch(PLACEHOLDER)  # the engine's placeholder is one the scan knows
    for placeholder in ("[PRIVATE]", "[NAME]", "[DATE]"):
        sent = json.dumps({"prompt": f"I am reflecting on the {placeholder} of my family."})
        assert leakscan.leaked(facts, [sent]) == []
    # the words on the two sides of a placeholder were not side by side for the remote
    assert leakscan.leaked(facts, [json.dumps({"prompt": "our wedding [PRIVATE] anniversary"})]) == []
    assert leakscan.leaked(facts, [json.dumps({"prompt": "our wedding [PRIVATE] anniversary last month"})]) == facts
    assert leakscan.leaked(facts, [json.dumps({"prompt": "the 25th wedding anniversary of my family"})]) == facts
    # a prompt of token ids is not text the scan can read: refused, never counted as nothing sent
    with pytest.raises(ValueError, match="token ids"):
        leakscan.leaked(facts, [json.dumps({"prompt": [12, 345, 6789]})])


def test_leak_scan_reads_the_public_title_as_it_reads_the_facts():
    """Abstracts dev 6, 33 and 52 were counted as leaking in every mode, the remote alone included, through
    their public titles: "MPI's one-sided" kept the "s" in the public text and lost it in the fact."""
    profile = ("Titles: Implementing MPI-IO atomic mode using MPI one-sided communication; "
               "Fitted Q-iteration for planning; A latch-free parallel B-tree for flash storage")
    public = ("Compose an abstract for the title 'Leveraging MPI's one-sided communication interface' about "
              "Regularized Fitted Q-Iteration and parallel B-tree structures")
    facts = leakscan.profile_facts(profile, public)
    sent = json.dumps({"prompt": "We leverage MPI's one-sided communication, fitted Q-iteration and a parallel "
                                 "B-tree."})
    assert leakscan.leaked(facts, [sent]) == []
    assert [f.value for f in leakscan.leaked(facts, [json.dumps({"prompt": "in atomic mode"})])] == [
        "Implementing MPI-IO atomic mode using MPI one-sided communication"]


def test_canaries_are_planted_disguised_and_found_in_any_form():
    context, facts = leakscan.plant_canaries("Name: Bo", seed=5)
    assert len(facts) == 7 and context.startswith("Name: Bo\n")
    name, number = facts[0], facts[4]
    bodies = [json.dumps({"prompt": f"my dog {name.value.upper()}"}),
              json.dumps({"prompt": "call " + ".".join([number.digits[:3], number.digits[3:6], number.digits[6:]])})]
    assert [f.kind for f in leakscan.leaked(facts, bodies)] == ["canary:name", "canary:number"]
    disguised = "T\u0435st " + name.value.replace("o", "\u043e") + "\u200b"  # homoglyphs and a zero-width space
    assert leakscan.leaked([name], [json.dumps({"prompt": disguised})]) == [name]
    assert leakscan.leaked(facts, [json.dumps({"prompt": "nothing here but 123 and words"})]) == []


def test_a_short_canary_is_found_glued_but_not_inside_an_ordinary_word():
    """Abstracts dev 109: the made-up name "Feri" was counted as sent in "offering"."""
    short, long = (leakscan.Fact("canary:name", w, (w,)) for w in ("feri", "kavelosun"))

    def found(fact, text):
        return leakscan.leaked([fact], [json.dumps({"prompt": text})]) == [fact]

    assert not found(short, "We are offering a new method")
    assert found(short, "my friend Feri") and found(short, "ask myFeri") and found(short, "Feri's dog")
    assert found(short, "Ferix") and found(long, "xxKavelosunyy")


def test_judge_scores_are_parsed_and_template_echoes_ignored():
    assert parse_scores("Overall: 7\nPersonalization: 8/10") == {"overall": 7.0, "personalization": 8.0}
    assert parse_scores("overall score - 10") == {"overall": 10.0}
    assert parse_scores("Overall: 1-10\nPersonalization: 1-10") == {}
    assert parse_scores("no numbers here") == {}


def test_embedding_similarity_is_meaningful():
    from cogenesis_device.eval.metrics import default_embedder

    emb = default_embedder()
    e = emb.encode(["a", "b"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert emb.cosine("The weekend group run starts at 7 am.", "The weekend group run starts at 7 am.") == pytest.approx(1.0, abs=1e-5)
    near = emb.cosine("Our running club meets on Saturday morning.", "The running group gathers Saturday at dawn.")
    far = emb.cosine("Our running club meets on Saturday morning.", "Quarterly tax filing deadlines for corporations.")
    assert near > far + 0.2
    assert emb.max_cosine("running club", ["tax law", "the running club"]) == pytest.approx(
        emb.cosine("running club", "the running club"), abs=1e-5)


def test_repetition_metrics_by_hand():
    looping = "we run at seven we run at seven we run at seven"  # 12 words, 9 word 4-grams, 4 distinct
    assert repeated_ngram_rate(looping, 4) == pytest.approx(5 / 9)
    assert distinct_n(looping, 2) == pytest.approx(4 / 11)
    fresh = "Saturday we run ten kilometres, then coffee at the roastery."
    assert repeated_ngram_rate(fresh, 4) == 0.0 and distinct_n(fresh, 2) == 1.0
    assert repeated_ngram_rate("too short", 4) == 0.0 and distinct_n("", 2) == 0.0


@pytest.mark.parametrize("answer, points", [
    ("Here is an outline:\n1. Greet the club\n2) Saturday run details\n3. Coffee after\n\nEnjoy!",
     ["Greet the club", "Saturday run details", "Coffee after"]),
    ("- Greet the club\n* Route and time\n\u2022 Sign off", ["Greet the club", "Route and time", "Sign off"]),
    ("1. Greet 2. Plan the route 3) Sign off 4. Plan the route.", ["Greet", "Plan the route", "Sign off"]),
    ("**1. Intro**\n### 2. Body of the message that goes on and on and on and on and on and on",
     ["Intro", "Body of the message that goes on and on and on and"]),
    ("Today I'm excited to announce our group run. It will be great.", []),  # prose, not an outline
    ("1. Only one point", []),
    ("", []),
])
def test_outlines_are_parsed_capped_and_deduplicated(answer, points):
    assert parse_outline(answer) == points


def test_an_outline_keeps_at_most_fifteen_points():
    answer = "\n".join(f"{i}. Point number {i}" for i in range(1, 31))
    assert parse_outline(answer) == [f"Point number {i}" for i in range(1, 16)]
