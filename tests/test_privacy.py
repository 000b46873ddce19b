"""The egress guard on its own: what it finds, how it redacts, blocks and records."""
import json

import pytest

from cogenesis_device.errors import InvalidParameterError, PrivacyBlockedError
from cogenesis_device.privacy import EgressGuard, extract_entities

PROFILE = (
    "Name: Odalys Brennecke\n"
    "Location: Tromsø, Norway\n"
    "Email: odalys.b@fjordmail.example, phone +47 912 34 567.\n"
    "I moved to 42 Harbour Lane last spring and I walk my dog Pelle along the quay every morning.\n"
    "Last week I met Ingrid Solheim at the market and we talked about the new waterfront library.\n"
)


def test_entities_found_in_a_profile():
    found = extract_entities(PROFILE)
    assert {"Odalys Brennecke", "Odalys", "Brennecke", "Ingrid Solheim", "Ingrid", "Solheim", "Norway"} <= found["name"]
    assert found["email"] == {"odalys.b@fjordmail.example"}
    assert found["phone"] == {"+47 912 34 567"}
    assert found["address"] == {"42 Harbour Lane"}


def test_verbatim_spans_of_min_span_or_more_are_found_and_shorter_ones_are_not():
    guard = EgressGuard("the quay every morning at seven", min_span=12)
    text = "We stroll along THE QUAY EVERY MORNING, then coffee."
    [finding] = guard.find(text)
    assert (finding.kind, text[finding.start:finding.end]) == ("verbatim", "THE QUAY EVERY MORNING")
    assert guard.find("the quay is nice") == []  # 'the quay ' is only 9 characters


def test_public_text_is_not_private():
    context = "I host a monthly dinner party for my clients."
    assert EgressGuard(context).find("Plan the monthly dinner party") != []
    assert EgressGuard(context, public="Write a script for your monthly dinner party").find(
        "Plan the monthly dinner party") == []


def test_redact_replaces_every_private_span_with_its_placeholder():
    guard = EgressGuard(PROFILE)
    text = "Hi Odalys, mail odalys.b@fjordmail.example or call +47 912 34 567; see you at 42 Harbour Lane with Ingrid."
    redacted, findings = guard.redact(text)
    assert redacted == "Hi [NAME], mail [EMAIL] or call [PHONE]; see you at [ADDRESS] with [NAME]."
    assert sorted(f.kind for f in findings) == ["address", "email", "name", "name", "phone"]
    assert guard.find(redacted) == []


def test_ordinary_words_of_a_title_are_not_names():
    guard = EgressGuard("Compose a Listing for the New Waterfront Villa. The new owners love the waterfront view.")
    assert guard.find("A new house by a waterfront.") == []


def test_check_body_redacts_every_json_string_and_records_the_body_sent(tmp_path):
    audit = tmp_path / "audit.jsonl"
    guard = EgressGuard(PROFILE, audit_path=str(audit))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hi to Odalys Brennecke"}]}).encode()
    sent, record = guard.check_body("POST", "/v1/chat/completions", body)
    assert b"Odalys" not in sent and "[NAME]" in json.loads(sent)["messages"][0]["content"]
    assert record.action == "redacted" and record.findings == [{"kind": "name", "chars": 16}]
    assert record.bytes_sent == len(sent) and record.body == sent.decode()
    [line] = audit.read_text().splitlines()
    assert json.loads(line)["endpoint"] == "/v1/chat/completions" and "Odalys" not in line


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
