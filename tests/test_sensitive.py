"""A private request made public: the instruction derived on the device keeps the task, not the facts
the request states about its writer (names, places, numbers, dates, health, money, family)."""
import json

import pytest

import cogenesis_device as cg
from cogenesis_device.collab import derive_instruction
from cogenesis_device.eval.leakscan import simplify
from cogenesis_device.sensitive import RELATION_STANDIN, scrub, sensitive_spans

# Private requests as an attack review wrote them: no profile holds these facts, the request alone does.
# (request, facts that must not be sent, words of the task that must stay)
REQUESTS = [
    ("Write an email to my landlord asking for two more weeks on the rent, since I lost my job last month.",
     ["lost my job"], ["email", "landlord", "rent"]),
    ("Draft a short note to my manager: I'm pregnant and will need time off for appointments.",
     ["pregnant"], ["note", "manager"]),
    ("Write a message to the school saying my son has ADHD and needs extra time in exams.",
     ["adhd", "my son"], ["message", "school", "exams"]),
    ("Help me write a cover letter; I was diagnosed with depression in 2023 and had a gap in my CV.",
     ["depression", "diagnosed", "2023"], ["cover", "letter"]),
    ("Write a reply to Marta Kowalczyk at Brightwell Dental confirming my appointment on March 14th.",
     ["marta", "kowalczyk", "brightwell", "march 14"], ["reply", "confirming", "appointment"]),
    ("Compose a thank-you note to my wife for supporting me through the divorce of my parents.",
     ["my wife", "divorce", "wife"], ["thank", "note"]),
    ("Write an apology to the bank because I owe 4,300 dollars on my credit card, account 5521 0098 7713.",
     ["4 300", "5521", "owe"], ["apology", "bank"]),
    ("Email my coach that I'm 47 years old, live at 12 Elm Street in Dunmore and can't run after my knee surgery.",
     ["47", "elm street", "dunmore", "surgery"], ["email", "coach"]),
]


def _sent(text: str, fact: str) -> bool:
    return f" {simplify(fact)} " in f" {simplify(text)} "


@pytest.mark.parametrize("request_text,facts,task", REQUESTS, ids=[r[1][0] for r in REQUESTS])
def test_the_derived_instruction_keeps_the_task_and_drops_the_requests_own_facts(model, request_text, facts, task):
    """Before, the instruction lost only what the context explained or the guard found of it: with no
    profile holding them, every one of these facts was sent."""
    derived = derive_instruction(model, request_text, "")
    assert not [f for f in facts if _sent(derived.text, f)], derived.text
    assert all(_sent(derived.text, w) for w in task), derived.text
    assert derived.removed and all(piece in request_text for piece in derived.removed)


def test_a_sensitive_clause_goes_whole_and_the_task_clause_keeps_its_other_words():
    text, removed = scrub("Write to my landlord asking for more time, since I lost my job and we are behind on rent.")
    assert text == "Write to my landlord asking for more time"
    assert removed == ["since I lost my job ", "and we are behind on rent."]
    # in the clause that holds the task only the topic's words go
    assert scrub("Write a pregnancy announcement for our friends.")[0] == "Write a announcement for our friends."


def test_a_family_relation_is_replaced_by_a_word_that_names_none():
    for relation in ("my wife", "my husband", "our baby daughter", "my late mother"):
        text, removed = scrub(f"Write a birthday card for {relation}.")
        assert text == f"Write a birthday card for {RELATION_STANDIN}." and removed == [relation]


def test_names_places_numbers_and_identifiers_are_found_by_their_shape():
    text = ("Rachel Zheng at H&R Technology asked me to book the University of Westminster for Johnny Bay. "
            "Rachel will pay. Call +47 912 34 567, mail r.zheng@hrtech.example or see www.hrtech.example/booking "
            "for <PRESIDIO_ANONYMIZED_PERSON>.")
    found = {text[s.start:s.end]: s.kind for s in sensitive_spans(text)}
    assert found["Rachel Zheng"] == "name" and found["Rachel"] == "name"  # a sentence's first word, named elsewhere
    assert found["H&R Technology"] == "name" and found["University of Westminster"] == "name"
    assert found["Johnny Bay"] == "name"
    assert found["+47 912 34 567"] == "number" and found["r.zheng@hrtech.example"] == "email"
    assert found["www.hrtech.example/booking"] == "url" and found["<PRESIDIO_ANONYMIZED_PERSON>"] == "tag"
    # what names nobody stays: the pronoun, a weekday, a small count, a year alone
    kept = scrub("On Sunday I need 3 slides about the 2024 budget, as I said.")[0]
    assert kept == "On Sunday I need 3 slides about the 2024 budget, as I said."


def test_a_short_sentence_full_of_names_is_no_heading():
    # The names' own capitals made it a title-case line, whose capitals name nobody: "Harbour Bank" stayed.
    assert scrub("Write to Ingrid Solheim at Harbour Bank")[1] == ["Ingrid Solheim", "Harbour Bank"]
    assert scrub("How To Write A Cover Letter For A Job")[1] == []  # a heading's capitals still name nobody


def test_a_first_name_at_the_start_of_a_sentence_is_a_name_and_a_common_word_is_not():
    assert scrub("Emma twirled in her dress. Will you write about it?")[0] == "twirled in her dress. Will you write about it?"


# Found on PUPA's queries (bench_request_privacy.py): facts with no capital letter to give them away,
# and public words taken for names. (request, facts that must not be sent, words that must stay)
NO_CAPITALS = [
    ("Write guidelines for responsible AI usage, my country is belarus and I work at cloudflare.",
     ["belarus", "cloudflare"], ["guidelines", "ai", "usage", "country"]),
    ("GHF HAS BEEN DOING MANY HERITAGE PROJECTS IN CHINA AND HONG KONG", ["china", "hong kong"], ["heritage", "projects"]),
    ("Write an unformal email to Ms. yoyo, tell her the amount remaining.", ["yoyo"], ["email", "amount", "remaining"]),
    ("Summarize: Song et al. reported the results, as Gupta, P., & Zhang, Y. found.", ["song", "zhang"],
     ["summarize", "reported", "results"]),
    ("I'm a graphic designer, my name is amer, give me a zoom intro", ["amer"], ["graphic", "designer", "zoom"]),
    ("Write a commercial for a company called tech stop, that is located in madera.", ["tech stop", "madera"],
     ["commercial", "company"]),
    ("Fix the error in /home/fxu80pep/public_html/pro/login.php and C:\\Users\\ana\\Documents\\data.txt",
     ["fxu80pep", "ana"], ["fix", "error"]),
    ("Connect to wss://yuntian-deng-chatgpt.hf.space/queue/join from the page", ["yuntian"], ["connect", "page"]),
]
PUBLIC_WORDS = [
    ("In the code, self.password and train_data hold the values; call random.randint(1, 6).",
     ["self password", "train data", "random randint"]),
    ("The subtitle runs from 00:01:22.020 to 00:01:33.210 and the mean was 124.3 in 2023-2032.",
     ["00 01 22 020", "124 3", "2023 2032"]),
    ("Explain the AI model to the IT team.\nArtificial Intelligence In Medicine Analysis\nIn this study we used it.",
     ["ai", "it team", "in this study"]),
    ("Пожалуйста, перепишите на русском языке предоставленный текст", ["перепишите на русском языке предоставленный текст"]),
    ("Merci de m'écrire une lettre de motivation pour le poste, avec les résultats de l'élection",
     ["lettre de motivation", "résultats de l élection"]),
]


@pytest.mark.parametrize("request_text,facts,task", NO_CAPITALS, ids=[r[1][0] for r in NO_CAPITALS])
def test_a_fact_without_a_capital_letter_is_still_found(request_text, facts, task):
    """Before: lower-case places and companies, all-capital text, a name after a title or before
    'et al.', a name a cue introduces, home-folder paths and wss:// URLs were all sent."""
    sent, _ = scrub(request_text)
    assert not [f for f in facts if _sent(sent, f)], sent
    assert all(_sent(sent, w) for w in task), sent


@pytest.mark.parametrize("request_text,kept", PUBLIC_WORDS, ids=[r[1][0] for r in PUBLIC_WORDS])
def test_code_measures_common_acronyms_and_other_languages_are_no_names(request_text, kept):
    """Before: a program's identifiers, time codes and decimals, 'AI', a sentence's 'In' after a title
    that capitalized it, and the common words of Russian and French were removed as names."""
    sent, _ = scrub(request_text)
    assert all(_sent(sent, w) for w in kept), sent


def test_a_name_cue_takes_no_common_word():
    sent, removed = scrub("I called the police, worked at home and said hello everyone.")
    assert removed == [], removed
    sent, removed = scrub("Hi May, we will pass this on. Hello everyone, hi Will Turner")
    assert removed == ["May", "Will Turner"] and "everyone" in sent, (sent, removed)


def test_a_private_request_never_sends_the_facts_it_states(model, remote, proxy):
    """End to end, logits mode: the request's own facts reach neither the instruction nor any body sent,
    and the guard treats what was removed as private in the generated text too."""
    remote.connect()
    proxy.clear()
    request = "Write a note to my boss Dana Whitfield: I'm pregnant and need Friday off for an ultrasound."
    result = cg.CoGenerator(model, remote, lookahead=4).generate(request=request, context="", max_tokens=8)
    bodies = [json.dumps(json.loads(r.body)) for r in proxy.records if r.body]
    assert bodies and result.instruction
    for fact in ("Dana", "Whitfield", "pregnant", "ultrasound"):
        assert not _sent(result.instruction, fact) and not any(_sent(b, fact) for b in bodies), fact
