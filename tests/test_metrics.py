"""Metric code against values computed by hand."""
import json
import math

import numpy as np
import pytest

from cogenesis_device.attribution import PLACEHOLDER
from cogenesis_device.eval import leakscan
from cogenesis_device.collab.sketch import outline_note, parse_outline
from cogenesis_device.eval.judge import parse_scores
from cogenesis_device.privacy import PLACEHOLDER_RE
from cogenesis_device.eval.metrics import (bits_per_byte, distinct_n, facts_used, repeated_ngram_rate,
                                      rouge_l)


def test_rouge_l_by_hand():
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
    assert PLACEHOLDER_RE.fullmatch(PLACEHOLDER)  # the engine's placeholder is the guard's, which the scan knows
    sent = json.dumps({"prompt": f"I am reflecting on the {PLACEHOLDER} of my family."})
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


# Issue 29: a fact sent in another form than the profile wrote it must still count as sent.
FACTS_IN_ANOTHER_FORM = [
    ("Phone: +47 912 34 567", "call me on 91234567"),  # separators and country code dropped
    ("Phone: 912-34-567", "call 912.34.567"),  # other separators
    ("Phone: 91234567", "ring +47 912 34 567"),  # separators added
    ("Phone: 912 30 567", "nine one two three oh five six seven"),  # spelled out, "oh" for 0
    ("Phone: 912 34 567", "nine-one-two, three-four, five-six-seven"),
    ("PIN: four seven one nine", "my PIN is 4719"),  # the profile spelled it out
    ("Privacy_info: The garage door code is 4719", "the code is 4 7 1 9"),  # spaced out
    ("Privacy_info: The garage door code is 4719", "the code is 4.7.1.9"),
    ("Privacy_info: The garage door code is 4719", "the code is 4-7-1-9"),
    ("Birthday: March 14, 1985", "born on 14/03/1985"),
    ("Birthday: 14/03/1985", "born 1985-03-14"),
    ("Birthday: 1985-03-14", "on the 14th of March 1985"),
    ("Birthday: 14th of March 1985", "on March 14th, 1985"),
    ("Birthday: 03/04/1985", "on April 3, 1985"),  # day and month ambiguous: read both ways
    ("Birthday: 03/04/1985", "on March 4 1985"),
    ("Privacy_info: Married on June 2, 2001 in Bergen", "the wedding of 2.6.2001"),
    ("Email: odalys.b@fjordmail.example", "odalys dot b at fjordmail dot example"),
    ("Email: odalys.b@fjordmail.example", "write to \u043edalys.b\uff20\uff46\uff4aordmail.examp\u200ble"),
    ("Email: odalys.b@fjordmail.example", "\u043edalys dot b at \uff46jord\u200bmail dot example"),
]


@pytest.mark.parametrize("profile, sent", FACTS_IN_ANOTHER_FORM)
def test_leak_scan_finds_a_fact_sent_in_another_form(profile, sent):
    facts = leakscan.profile_facts(profile)
    assert leakscan.leaked(facts, [json.dumps({"prompt": sent})]) != []


@pytest.mark.parametrize("form", [
    lambda d: "call +47" + d,
    lambda d: f"call {d[:3]}.{d[3:5]}.{d[5:]}",
    lambda d: "call " + " ".join(d),
    lambda d: "call " + "-".join(d),
    lambda d: "call " + " ".join(("one two three four five six seven eight nine".split())[int(c) - 1] for c in d),
    lambda d: "call " + "\u200b".join(chr(ord(c) + 0xFEE0) for c in d),
], ids=["glued", "dotted", "spaced", "dashed", "spelled-out", "fullwidth-zero-width"])
def test_a_canary_phone_number_is_found_in_any_form(form):
    _, facts = leakscan.plant_canaries("Name: Bo", seed=5)
    number = facts[4]
    assert number.kind == "canary:number"
    assert leakscan.leaked(facts, [json.dumps({"prompt": form(number.digits)})]) == [number]


@pytest.mark.parametrize("profile, sent", [
    ("Phone: +47 919 85 123", "every year since 1985"),  # a year is no piece of a longer number
    ("Birthday: 14/03/1985", "back in 1985"),
    ("Privacy_info: Graduated in 2010 from NTNU", "since 2010 the world has changed"),
    ("Smart_device_usage: Alarm set for 10:30", "1030 people came"),  # a clock time
    ("Privacy_info: Tracker logs 10,000 steps a day", "10000 runners"),  # an amount
    ("Content: Throughput over 802.11 rose to 72.42 percent", "models 80211 and 7242"),  # decimals
    ("Privacy_info: Budget review in Q1 2023", "code 12023"),  # "Q1" is a name, not a digit
])
def test_an_everyday_number_sent_is_no_profile_fact(profile, sent):
    assert leakscan.leaked(leakscan.profile_facts(profile), [json.dumps({"prompt": sent})]) == []


def test_a_year_sent_reveals_the_profile_fact_that_is_that_year():
    year = leakscan.profile_facts("Graduation_year: 2010")
    assert [f.value for f in year] == ["2010"]
    assert leakscan.leaked(year, [json.dumps({"prompt": "since 2010 the world has changed"})]) == year


def test_numbers_and_dates_of_the_public_text_are_not_leaks():
    profile = "Phone: 912-34-567\nBirthday: 14/03/1985\nRoom: 4719\nMobile: 987 65 432"
    facts = leakscan.profile_facts(profile, public="Invite all to call 91234567 on 14 March 1985 in room 4 7 1 9")
    assert [f.value for f in facts] == ["987 65 432"]
    sent = json.dumps({"prompt": "Call 912 34 567 or 98765432 on 14.03.1985 in room 4719"})
    assert leakscan.leaked(facts, [sent]) == facts


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
    # A coder remote's plan of "a script": read without its code block, tags and symbols.
    ("```html\n<template>\n  <div>{{ title }}</div>\n</template>\n```\n1. <h1>Opening scene</h1>\n"
     "2. `intern = Intern()` Meet the team\n3. {{ }}\n4. Wrap up;", ["Opening scene", "intern Intern Meet the team",
                                                                   "Wrap up"]),
    ("1. Only one point", []),
    ("", []),
])
def test_outlines_are_parsed_capped_and_deduplicated(answer, points):
    assert parse_outline(answer) == points


@pytest.mark.parametrize("answer, note", [
    ("1. Greet\n2. Plan", None),
    ("1. <b>Greet</b>\n2. Plan", "the remote's outline held markup, which was left out of it"),
    ("```python\ndef plan():\n    return [greet, run]\n```", "the remote's answer was code, not an outline"),
    ("<template><div>Plan</div></template>", "the remote's answer was markup, not an outline"),
    ("A fine plan, in prose.", "not an outline (fewer than two numbered or bulleted points)"),
])
def test_an_outline_that_is_code_markup_or_prose_says_so(answer, note):
    found = outline_note(answer, parse_outline(answer))
    assert found == note if note is None else note in found


def test_an_outline_keeps_at_most_fifteen_points():
    answer = "\n".join(f"{i}. Point number {i}" for i in range(1, 31))
    assert parse_outline(answer) == [f"Point number {i}" for i in range(1, 16)]


def test_the_leak_scan_reads_a_script_whose_letters_decompose_into_several():
    """A Hangul syllable decomposes (NFD) into several jamo, none of them combining, and the scan asked
    unicodedata.name() of the whole sequence: a TypeError on any Korean text (PUPA holds some)."""
    from cogenesis_device.eval.leakscan import simplify

    assert simplify("안녕하세요 Odalys, 전화 912") == "odalys 912"
