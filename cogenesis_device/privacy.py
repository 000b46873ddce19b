"""The egress guard: the one place where outgoing request bodies are checked, redacted and recorded.

A guard is given the private context of one job (and the public text the user chose to send).
Before a request leaves the process it finds private spans in every string of the JSON body:

- verbatim substrings of the context at least `min_span` characters long (case-insensitive),
- entities found in the context: names, e-mail addresses, phone numbers, street addresses.

policy "redact" replaces them with placeholders, "block" refuses to send, "audit" sends the body
unchanged and only records what was found (for leakage measurements; never the default).
Every request is recorded: time, endpoint, bytes out and in, the findings, and the body as sent.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from .errors import InvalidParameterError, PrivacyBlockedError

POLICIES = ("redact", "block", "audit")
PLACEHOLDERS = {"verbatim": "[PRIVATE]", "name": "[NAME]", "email": "[EMAIL]", "phone": "[PHONE]", "address": "[ADDRESS]"}

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w])\+?\(?\d[\d ().-]{5,}\d(?![\w])")
_STREET = r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Square)"
_ADDRESS = re.compile(r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}" + _STREET + r"\b\.?")
# "Name: Isabel Martinez" / "Location: Miami, Florida" style fields of a profile.
_NAME_FIELD = re.compile(r"^[ \t-]*[\w ]*(?:name|location|city|hometown|employer|company|school)[\w ]*:[ \t]*(.+)$",
                         re.IGNORECASE | re.MULTILINE)
# Two to four capitalized words after a lowercase word: a proper noun inside a sentence, not a title.
_PROPER_NOUN = re.compile(r"(?<=[a-z,] )((?:[A-Z][a-z]+(?:[ -][A-Z][a-z]+){1,3}))\b")


@dataclass(frozen=True)
class Finding:
    """One private span found in an outgoing string."""

    kind: str  # 'verbatim', 'name', 'email', 'phone' or 'address'
    start: int
    end: int

    @property
    def chars(self) -> int:
        return self.end - self.start


@dataclass
class AuditRecord:
    """One outgoing HTTP request, as it left the process."""

    time: float
    method: str
    endpoint: str
    bytes_sent: int
    action: str  # 'sent', 'redacted', 'blocked' or 'leaked' (policy 'audit' with findings)
    findings: list[dict] = field(default_factory=list)  # [{"kind": ..., "chars": ...}]
    body: str = ""  # the body exactly as sent ("" when blocked)
    status: int | None = None
    bytes_received: int = 0
    duration_ms: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def _fold(text: str) -> str:
    """Lower-case without changing the length, so positions map back to the original."""
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


def _strip(text: str, f: Finding) -> Finding:
    """The span without surrounding whitespace, so "Dear [NAME]," keeps its spaces."""
    start, end = f.start, f.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Finding(f.kind, start, end)


def extract_entities(context: str) -> dict[str, set[str]]:
    """Names, e-mail addresses, phone numbers and street addresses that occur in a context."""
    names: set[str] = set()
    for value in _NAME_FIELD.findall(context):
        value = value.strip().strip(".;")
        if value:
            names.add(value)
            names.update(part for part in re.split(r"[\s,]+", value) if len(part) >= 3)
    # A proper noun's words count alone too ("Isabel" of "Isabel Martinez") unless the context also
    # uses them as ordinary lower-case words ("New" of "New Waterfront Listing").
    lower_words = set(re.findall(r"\b[a-z]+\b", context))
    for phrase in _PROPER_NOUN.findall(context):
        names.add(phrase)
        names.update(w for w in re.split(r"[ -]", phrase) if len(w) >= 3 and w.lower() not in lower_words)
    phones = {m for m in _PHONE.findall(context) if sum(c.isdigit() for c in m) >= 7}
    return {"name": names, "email": set(_EMAIL.findall(context)), "phone": phones, "address": set(_ADDRESS.findall(context))}


class EgressGuard:
    """Checks, redacts and records the requests of one job.

    context: the private text of the job (profile, history, draft); it must never leave.
    public: text the user chose to send (the instruction, our own prompt text); spans that also
        occur in it are not private.
    entities: extra private strings (for example a name known from a structured profile).
    min_span: shortest verbatim substring of the context that counts as private.
    audit_path: a JSONL file to append one record per request to.
    """

    def __init__(self, context: str | Sequence[str] = "", *, public: str | Sequence[str] = (), policy: str = "redact",
                 min_span: int = 12, entities: Iterable[str] = (), audit_path: str | None = None):
        if policy not in POLICIES:
            raise InvalidParameterError(f"privacy policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if min_span < 4:
            raise InvalidParameterError(f"min_span must be at least 4 characters, got {min_span}")
        self.policy = policy
        self.min_span = min_span
        self.audit_path = audit_path
        self.records: list[AuditRecord] = []
        self._lock = threading.Lock()
        self._contexts = [context] if isinstance(context, str) else list(context)
        self._public = [public] if isinstance(public, str) else list(public)
        self._rebuild(entities)

    def _rebuild(self, extra_entities: Iterable[str] = ()) -> None:
        public = _fold("\n".join(self._public))
        n = self.min_span
        public_grams = {public[i:i + n] for i in range(len(public) - n + 1)}
        grams: set[str] = set()
        entities: dict[str, set[str]] = {"name": set(extra_entities), "email": set(), "phone": set(), "address": set()}
        for text in self._contexts:
            folded = _fold(text)
            grams.update(folded[i:i + n] for i in range(len(folded) - n + 1))
            for kind, found in extract_entities(text).items():
                entities[kind].update(found)
        self._grams = grams - public_grams
        # Longest first so "Isabel Martinez" wins over "Isabel"; entities the user made public are allowed.
        self._entities = sorted(
            ((kind, e) for kind, found in entities.items() for e in found if e.strip() and _fold(e) not in public),
            key=lambda item: -len(item[1]),
        )
        self._entity_re = (
            re.compile("|".join(rf"(?<!\w){re.escape(e)}(?!\w)" for _, e in self._entities), re.IGNORECASE)
            if self._entities else None
        )
        self._entity_kind = {_fold(e): kind for kind, e in self._entities}

    # -- finding and redacting ---------------------------------------------------------------------

    def find(self, text: str) -> list[Finding]:
        """The private spans in text, merged where they overlap."""
        n = self.min_span
        folded = _fold(text)
        spans: list[Finding] = []
        start = end = -1
        for i in range(len(folded) - n + 1) if self._grams else ():
            if folded[i:i + n] in self._grams:
                if i > end:  # a new span; windows that overlap or touch extend the current one
                    if end >= 0:
                        spans.append(Finding("verbatim", start, end))
                    start = i
                end = i + n
        if end >= 0:
            spans.append(Finding("verbatim", start, end))
        spans = [_strip(text, f) for f in spans]
        if self._entity_re is not None:
            spans.extend(Finding(self._entity_kind.get(_fold(m.group(0)), "name"), m.start(), m.end())
                         for m in self._entity_re.finditer(text))
        spans.sort(key=lambda f: (f.start, -f.end, f.kind == "verbatim"))  # an entity names its span best
        merged: list[Finding] = []
        for f in spans:
            if merged and f.start < merged[-1].end:
                last = merged[-1]
                if f.end > last.end:  # a partial overlap becomes one verbatim span
                    merged[-1] = Finding("verbatim", last.start, f.end)
                continue
            merged.append(f)
        return merged

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        """text with every private span replaced by its placeholder, and the spans."""
        findings = self.find(text)
        out, pos = [], 0
        for f in findings:
            out.append(text[pos:f.start])
            out.append(PLACEHOLDERS[f.kind])
            pos = f.end
        out.append(text[pos:])
        return "".join(out), findings

    # -- the choke point ---------------------------------------------------------------------------

    def check_body(self, method: str, endpoint: str, body: bytes) -> tuple[bytes, AuditRecord]:
        """Returns the body to send and its audit record, or raises PrivacyBlockedError.

        Every string in a JSON body is checked; a body that is not JSON is checked as text."""
        findings: list[Finding] = []

        def visit(value):
            if isinstance(value, str):
                redacted, found = self.redact(value)
                findings.extend(found)
                return redacted if self.policy == "redact" else value
            if isinstance(value, list):
                return [visit(v) for v in value]
            if isinstance(value, dict):
                return {k: visit(v) for k, v in value.items()}
            return value

        text = body.decode("utf-8", errors="replace")
        try:
            payload = json.loads(text) if text else None
            is_json = True
        except json.JSONDecodeError:
            payload, is_json = text, False
        checked = visit(payload)
        summary = [{"kind": f.kind, "chars": f.chars} for f in findings]
        record = AuditRecord(time=time.time(), method=method, endpoint=endpoint, bytes_sent=len(body), action="sent",
                             findings=summary)
        if findings and self.policy == "block":
            record.action = "blocked"
            record.bytes_sent = 0
            self._record(record)
            kinds = ", ".join(sorted({f.kind for f in findings}))
            raise PrivacyBlockedError(
                f"refused to send a request to {endpoint}: it contains {len(findings)} private span(s) of the "
                f"context ({kinds}); policy is 'block'"
            )
        if findings and self.policy == "redact":
            body = (json.dumps(checked, ensure_ascii=False) if is_json else checked).encode("utf-8")
            leftover = self.find(body.decode("utf-8"))
            if leftover:  # defence in depth: a placeholder next to text could re-form a span
                record.action = "blocked"
                self._record(record)
                raise PrivacyBlockedError(f"redaction left {len(leftover)} private span(s) in a request to {endpoint}")
            record.action = "redacted"
            record.bytes_sent = len(body)
        elif findings:
            record.action = "leaked"
        record.body = body.decode("utf-8", errors="replace")
        self._record(record)
        return body, record

    def _record(self, record: AuditRecord) -> None:
        with self._lock:
            self.records.append(record)
            if self.audit_path:
                with open(self.audit_path, "a", encoding="utf-8") as f:
                    f.write(record.to_json() + "\n")

    def summary(self) -> dict:
        """Counts over the recorded requests (see summarize)."""
        with self._lock:
            return summarize(self.records)


def summarize(records: Sequence[AuditRecord]) -> dict:
    """Counts over audit records: requests, bytes, redacted spans, blocked requests, leaked spans."""
    return {
        "requests": len(records),
        "bytes_sent": sum(r.bytes_sent for r in records),
        "bytes_received": sum(r.bytes_received for r in records),
        "redacted_spans": sum(len(r.findings) for r in records if r.action == "redacted"),
        "blocked": sum(r.action == "blocked" for r in records),
        "leaked_spans": sum(len(r.findings) for r in records if r.action == "leaked"),
    }
