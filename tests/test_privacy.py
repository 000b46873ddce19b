"""The egress guard on its own: what it finds, how it redacts, blocks and records."""
import json
import os

import pytest

from cogenesis_device.errors import InvalidParameterError, PrivacyBlockedError
from cogenesis_device.privacy import EgressGuard, normalize

PROFILE = (
    "Name: Odalys Brennecke\n"
    "Location: Tromsø, Norway\n"
    "Email: odalys.b@fjordmail.example, phone +47 912 34 567.\n"
    "I moved to 42 Harbour Lane last spring and I walk my dog Pelle along the quay every morning.\n"
    "Last week I met Ingrid Solheim at the market and we talked about the new waterfront library.\n"
)


def test_facts_found_in_a_profile_however_they_are_written():
    guard = EgressGuard(PROFILE + "Born 1985-03-14.\nAge: 41\nDiagnosis: celiac disease\n"
                                  '{"sister": "Ann", "partner": "Tom"}')
    forms = {
        "name in prose": "my dog Pelle", "sister from JSON": "Ann", "partner from JSON": "Tom",
        "no diacritics": "Tromso", "Cyrillic homoglyphs": "Tr\u043em\u0455\u00f8", "fullwidth": "\uff34\uff52\uff4f\uff4d\uff53\uff4f",
        "zero-width space": "Trom\u200bs\u00f8", "upper case": "INGRID", "phone, dots": "912.34.567",
        "phone, no separators": "4791234567", "e-mail spelled out": "odalys dot b at fjordmail dot example",
        "date, reformatted": "14/03/1985", "date, in words": "March 14th, 1985", "age": "I am 41",
        "diagnosis": "my celiac disease", "rare word": "the quay", "abbreviated address": "42 Harbour Ln",
    }
    for form, text in forms.items():
        assert guard.find(text), form
    redacted, _ = guard.redact("Walking Pelle with Ingrid, call 912-34-567 or write odalys.b@fjordmail.example")
    assert redacted == "Walking [PRIVATE] with [PRIVATE], call [PRIVATE] or write [PRIVATE]"


def test_a_private_word_glued_to_other_letters_is_found():
    guard = EgressGuard(PROFILE + "Locker code: Qv7x93kd2m\n")
    for text in ("my codeQv7x93kd2m", "Qv7x93kd2mplease", "dearOdalys", "#BrenneckeFamily", "fjordmailbox"):
        assert guard.find(text), text
    redacted, _ = guard.redact("the lockerQv7x93kd2m is free")
    assert "qv7x93kd2m" not in redacted.lower() and redacted.endswith(" is free")
    assert guard.find("a propeller") == []  # words under GLUED_MIN characters ('pelle') stay whole-word matches
    # A public word that holds a private one is public: the instruction is not cut.
    assert EgressGuard("My neighbour Solheim", public="Write about Solheimsviken").find("about Solheimsviken") == []


def test_common_words_of_the_context_are_not_private():
    guard = EgressGuard(PROFILE)
    text = "We strolled to a market one day and chatted about books and the sea."
    assert guard.find(text) == []


def test_public_text_allows_private_items_by_whole_words_only():
    guard = EgressGuard('{"name": "Ann", "brother": "Tom"}', public="Write an announcement for tomorrow")
    assert [f.kind for f in guard.find("Ann and Tom")] == ["name", "name"]
    assert guard.find("an announcement for tomorrow") == []
    assert EgressGuard("My brother Tom", public="Write to Tom").find("Dear Tom") == []


def test_normalize_maps_folded_text_back_to_the_source():
    text = "T\u0440\u043em\u200bs\u00f8,  \uff2f\uff4b!"
    folded, where = normalize(text)
    assert folded == "tpomso ok"
    assert [text[i] for i in where[:2]] == ["T", "\u0440"] and text[where[-1]] == "\uff4b"


def test_verbatim_spans_of_min_span_or_more_are_found_and_shorter_ones_are_not():
    guard = EgressGuard("the harbour every morning at seven", min_span=12)
    text = "We stroll along THE HARBOUR EVERY MORNING, then coffee."
    [finding] = guard.find(text)
    assert (finding.kind, text[finding.start:finding.end]) == ("verbatim", "THE HARBOUR EVERY MORNING")
    assert guard.find("at the harbour") == []  # 'the harbour' is only 11 characters


def test_public_text_is_not_private():
    context = "I host a monthly dinner party for my clients."
    assert EgressGuard(context).find("Plan the monthly dinner party") != []
    assert EgressGuard(context, public="Write a script for your monthly dinner party").find(
        "Plan the monthly dinner party") == []


def test_redact_replaces_every_private_span_with_its_placeholder():
    guard = EgressGuard(PROFILE)
    text = "Hi Odalys, mail odalys.b@fjordmail.example or call +47 912 34 567; see you at 42 Harbour Lane with Ingrid."
    redacted, findings = guard.redact(text)
    assert redacted == "Hi [PRIVATE], mail [PRIVATE] or call +[PRIVATE]; see you at [PRIVATE] with [PRIVATE]."
    assert sorted(f.kind for f in findings) == ["email", "name", "name", "number", "verbatim"]
    assert guard.find(redacted) == []


def test_ordinary_words_of_a_title_are_not_names():
    guard = EgressGuard("Compose a Listing for the New Waterfront Villa. The new owners love the waterfront view.")
    assert guard.find("A new house by a waterfront.") == []


def test_check_body_redacts_every_json_string_and_records_the_body_sent(tmp_path):
    audit = tmp_path / "audit.jsonl"
    guard = EgressGuard(PROFILE, audit_path=str(audit), record_bodies=True)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hi to Odalys Brennecke"}]}).encode()
    sent, record = guard.check_body("POST", "/v1/chat/completions", body)
    assert b"Odalys" not in sent and "[PRIVATE]" in json.loads(sent)["messages"][0]["content"]
    assert record.action == "redacted" and record.findings == [{"kind": "name", "chars": 16}]
    assert record.bytes_sent == len(sent) and record.body == sent.decode()
    [line] = audit.read_text().splitlines()
    assert json.loads(line)["endpoint"] == "/v1/chat/completions" and "Odalys" not in line
    assert os.stat(audit).st_mode & 0o777 == 0o600  # under 'audit' it holds bodies sent as they were


def test_block_policy_refuses_and_records_nothing_sent():
    guard = EgressGuard(PROFILE, policy="block")
    with pytest.raises(PrivacyBlockedError, match="private span"):
        guard.check_body("POST", "/v1/completions", json.dumps({"prompt": "Dear Ingrid Solheim"}).encode())
    [record] = guard.records
    assert record.action == "blocked" and record.bytes_sent == 0 and record.body == ""
    sent, record = guard.check_body("POST", "/v1/completions", json.dumps({"prompt": "Dear friend"}).encode())
    assert record.action == "sent"


def test_audit_policy_sends_unchanged_but_counts_the_leak():
    guard = EgressGuard(PROFILE, policy="audit")
    body = json.dumps({"prompt": "Dear Ingrid Solheim"}).encode()
    sent, record = guard.check_body("POST", "/v1/completions", body)
    assert sent == body and record.action == "leaked"
    assert guard.summary()["leaked_spans"] == 1


def test_bad_guard_parameters_are_named():
    with pytest.raises(InvalidParameterError, match="policy"):
        EgressGuard("x", policy="yolo")
    with pytest.raises(InvalidParameterError, match="min_span"):
        EgressGuard("x", min_span=2)


def test_the_whole_request_is_one_text_keys_and_split_strings_included():
    guard = EgressGuard(PROFILE)
    body = {"prompt": ["Say hi to Oda", "lys for me"], "max_tokens": 8}
    sent, record = guard.check_body("POST", "/v1/completions", json.dumps(body).encode())
    payload = json.loads(sent)
    assert "Oda" not in sent.decode() and payload["max_tokens"] == 8  # the keys are left as they are
    assert payload["prompt"] == ["Say hi to [PRIVATE]", " for me"] and len(record.findings) == 1
    with pytest.raises(PrivacyBlockedError, match="JSON key"):  # a key is checked too, and cannot be redacted
        guard.check_body("POST", "/v1/completions", json.dumps({"prompt": "hi", "Pelle": 1}).encode())
    # The request schema's own field names are public, even when the user has a friend called Max.
    sent, _ = EgressGuard("My friend Max").check_body("POST", "/v1/completions",
                                                     json.dumps({"prompt": "hi", "max_tokens": 4}).encode())
    assert json.loads(sent) == {"prompt": "hi", "max_tokens": 4}
    # A passage of the context ending one string must not reach into the next key ("...Pellelogprobs").
    sent, _ = guard.check_body("POST", "/v1/completions",
                               json.dumps({"prompt": "we walk the harbour every morning", "logprobs": 5}).encode())
    assert json.loads(sent)["logprobs"] == 5
    # A private word at the end of one string does not hide by running into the next key.
    sent, _ = guard.check_body("POST", "/v1/completions", json.dumps({"prompt": "Dear Pelle", "max_tokens": 2}).encode())
    assert json.loads(sent)["prompt"] == "Dear [PRIVATE]"


def test_token_id_prompts_are_decoded_checked_and_redacted(model):
    guard = EgressGuard(PROFILE, tokenizer=model)
    ids = model.tokenize("Good morning Ingrid Solheim", add_special=False)
    sent, record = guard.check_body("POST", "/v1/completions", json.dumps({"prompt": ids}).encode())
    assert record.action == "redacted" and model.detokenize(json.loads(sent)["prompt"]) == "Good morning [PRIVATE]"
    with pytest.raises(PrivacyBlockedError, match="token ids"):  # no tokenizer: it cannot be checked, so it is refused
        EgressGuard(PROFILE).check_body("POST", "/v1/completions", json.dumps({"prompt": ids}).encode())


def test_only_the_servers_own_ids_go_back_unread(model):
    """vLLM renders its chat template as ids (/tokenize), turned into text by /detokenize: those ids,
    the server's own answer, may be sent back without a tokenizer; any other id list is still refused
    (it could spell the context)."""
    guard = EgressGuard(PROFILE)
    guard.allow_echo([128006, 882, 128007])
    sent, record = guard.check_body("POST", "/detokenize", json.dumps({"tokens": [128006, 882, 128007]}).encode())
    assert json.loads(sent) == {"tokens": [128006, 882, 128007]} and record.action == "sent"
    ids = model.tokenize("Good morning Ingrid Solheim", add_special=False)
    for other in ([128006, 882], ids):
        with pytest.raises(PrivacyBlockedError, match="token ids"):
            guard.check_body("POST", "/detokenize", json.dumps({"tokens": other}).encode())


def test_a_short_draft_is_private_too():
    assert EgressGuard(["", "Hi all,"], public="Write a note").redact("Hi all, here it is")[0] == "[PRIVATE], here it is"
    guard = EgressGuard(["", "Hi Kvbo7!"], public="Write a note")
    redacted = guard.redact("Hi Kvbo7! Here is the note")[0]
    assert "Kvbo7" not in redacted and redacted.endswith("]! Here is the note")


def test_the_endpoint_path_is_public_but_the_rest_of_the_url_is_checked():
    """A profile that uses the word 'completions' (rare in English, so private), or 'HTTP' in prose (a
    capitalized word, so a name), once stopped every request to /v1/completions. The scheme, the port and
    the endpoint path are protocol; the host, the base path and the query are checked."""
    guard = EgressGuard(["Goals: track milestone completions for the Brennecke team; heed standardized HTTP "
                         "methods; PIN 8080\nRooms: 1\nFloor: 127\nStudied responses of V1/V2 on MSRC-v1"])
    assert guard.find("the visual cortex V1") and guard.find("its v1 and v2")  # "V1" is private text
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/"):
        # "1" and "127" are facts of the profile, and digits of the address: an IP host is not checked
        # (an abstracts dev sample whose profile held "...: 1" stopped the eval on 127.0.0.1). "/v1" is
        # the API's version: abstracts samples whose context held "V1" could send nothing at all.
        guard.check_envelope(f"http://127.0.0.1:8080{path}", [])
        guard.check_envelope(f"http://[::1]:8080{path}", [])
    guard.check_envelope("http://127.0.0.1:8080/apply-template", [])
    with pytest.raises(PrivacyBlockedError, match="the URL holds private text"):
        guard.check_envelope("http://127.0.0.1:8080/v1/v2/completions", [])  # only the last version segment
    with pytest.raises(PrivacyBlockedError, match="the URL holds private text"):
        guard.check_envelope("http://127.0.0.1:8080/brennecke/v1/completions", [])
    with pytest.raises(PrivacyBlockedError, match="the URL holds private text"):
        guard.check_envelope("http://127.0.0.1:8080/v1/completions?completions=1", [])
    for url in ("https://brennecke.example.org/v1/completions", "http://brennecke:x@127.0.0.1:8080/v1/completions",
                "http://127.0.0.1:8080/v1/completions#brennecke"):
        with pytest.raises(PrivacyBlockedError, match="the URL holds private text"):
            guard.check_envelope(url, [])


SPLIT_PROFILE = PROFILE + "Hobby: ice hockey\nLocker code: Qv7x93kd2m\n"


@pytest.mark.parametrize("first,second", [
    ("call me on +47 912", "34 567 tonight"),    # a phone number, each half too short to be one
    ("I play ice", "hockey on Fridays"),        # a fact of common words, private only as a whole
    ("my code is Qv7x9", "3kd2m"),               # a code, cut inside
], ids=["number", "phrase", "code"])
def test_a_fact_split_over_two_chat_messages_is_found(first, second):
    """The messages' "role" values stood between the two halves in the joined text ("...912user34 567"),
    so a fact cut at a message boundary passed unredacted."""
    guard = EgressGuard(SPLIT_PROFILE)
    body = json.dumps({"messages": [{"role": "user", "content": first},
                                    {"role": "user", "content": second}]}).encode()
    sent, record = guard.check_body("POST", "/v1/chat/completions", body)
    assert record.action == "redacted", first
    contents = [m["content"] for m in json.loads(sent)["messages"]]
    assert not EgressGuard(SPLIT_PROFILE).find(" ".join(contents)), contents


def test_a_placeholder_says_neither_the_kind_nor_the_number_of_words_it_stands_for():
    """A placeholder per kind ("[NAME]", "[NUMBER]") told a hostile remote what kind of fact stood where,
    and one per finding how many stood side by side (issue 29). Each body's record counts them."""
    guard = EgressGuard(PROFILE)
    redacted, findings = guard.redact("Walk Pelle Tromsø, then call 912-34-567 or odalys.b@fjordmail.example today")
    assert len(findings) >= 3
    assert redacted == "Walk [PRIVATE], then call [PRIVATE] or [PRIVATE] today"
    sent, record = guard.check_body("POST", "/v1/completions", json.dumps({"prompt": "Walk Pelle Tromsø now"}).encode())
    assert json.loads(sent)["prompt"] == "Walk [PRIVATE] now" and record.placeholders == 1
    assert guard.summary()["placeholders"] == 1


def test_a_prompt_the_remote_knows_is_sent_as_it_is():
    # Redacting a word of a prompt the remote knows told it that the profile holds that word: the
    # ChatML template went out as "<|im_start|>[PRIVATE]" for a profile whose occupation is "assistant".
    prompt = "<|im_start|>user\nWrite a note about my week<|im_end|>\n<|im_start|>assistant\n"
    guard = EgressGuard("Name: Odalys Brennecke\nOccupation: assistant", known=[prompt])
    sent, _ = guard.check_body("POST", "/v1/completions",
                               json.dumps({"prompt": prompt + "I work as an assistant"}).encode())
    text = json.loads(sent)["prompt"]
    assert text.startswith(prompt)
    assert text.endswith("I work as an [PRIVATE]")  # the word is still private in the generated text
    # Known only where a string begins with it: a server that renders the prompt writes the known text,
    # and the same words after it are checked (a hostile /apply-template answering "Dear Ingrid").
    hostile = EgressGuard("My sister Ingrid Solheim visits.", known=["Write to Dear Ingrid Solheim"])
    sent, _ = hostile.check_body("POST", "/v1/completions", json.dumps(
        {"prompt": "Write to Dear Ingrid Solheim: Dear Ingrid Solheim, hello"}).encode())
    assert json.loads(sent)["prompt"] == "Write to Dear Ingrid Solheim: Dear [PRIVATE], hello"
    # A role our client writes is no word of the context either, in any policy.
    body = {"messages": [{"role": "user", "content": "Write a note"}, {"role": "assistant", "content": "Dear"}]}
    sent, record = guard.check_body("POST", "/v1/chat/completions", json.dumps(body).encode())
    assert json.loads(sent) == body and record.action == "sent"
    assert EgressGuard("Occupation: assistant", policy="block").check_body(
        "POST", "/v1/chat/completions", json.dumps(body).encode())[1].action == "sent"
