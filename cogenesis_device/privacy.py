"""The egress guard: the one place where outgoing request bodies are checked, redacted and recorded.

A guard is given the private texts of one job (the context, the user's draft) and the public text the
user chose to send. Before a request leaves the process it reads the whole body as one text (every
JSON string, keys included, joined; token-id prompts decoded) and finds what the private texts
reveal, after normalization (see `normalize`), so a fact written differently is still the same fact:

- names: profile fields (`Name: ...`, `Location: ...`), JSON values, capitalized words in prose;
- words of the context that are rare in the language (wordfreq), however short: a pet's name, a town;
- short values of profile fields ("Age: 47", "Occupation: marine biologist");
- e-mail addresses, also spelled out ("odalys dot b at fjordmail dot example");
- numbers of 4 or more digits, by their digits alone (any separators), and dates in any common format;
- verbatim passages of the context (`min_span` normalized characters or more).

Text the user chose to send is public by whole words only ("Ann" stays private in "announcement").

policy "redact" replaces findings with placeholders, "block" refuses to send, "audit" sends the body
unchanged and only records what was found (for leakage measurements; never the default). Every
request is recorded: time, endpoint, bytes out and in, the findings, what on-device attribution
withheld (collab/), and the SHA-256 of the body as sent (the body itself with record_bodies=True).
"""
from __future__ import annotations

import calendar
import hashlib
import ipaddress
import json
import re
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from .errors import InvalidParameterError, PrivacyBlockedError
from .jsonl import append_private

POLICIES = ("redact", "block", "audit")
# What a redacted span becomes, whatever its kind: a placeholder per kind ("[NAME]", "[NUMBER]") told the
# remote what kind of fact stood there (issue 29). Side by side, placeholders merge into one.
PLACEHOLDER = "[PRIVATE]"
# Zipf frequency (log10 of occurrences per billion words) below which a word of the context is private.
RARE_ZIPF = 3.5
# Fields of a profile whose value is short enough to be one fact ("Age: 47", "City: Bergen").
MAX_FACT_WORDS = 5
GLUED_MIN = 6  # a private word this long is found inside a longer word as well
_NAME_KEYS = re.compile(r"name|location|city|town|hometown|address|employer|company|school|spouse|partner|sister|"
                        r"brother|mother|father|child|son|daughter|pet|dog|cat|friend|neighbou?r|colleague", re.I)
_PROPER_NOUN = re.compile(r"(?<=[a-z0-9,;] )((?:[A-Z][\w'’-]+)(?:[ -][A-Z][\w'’-]+){0,3})")
# Field names of the OpenAI-compatible request schema: our client writes them, so they are public.
# Any other key is checked like text (an app could put data in one).
PROTOCOL_KEYS = frozenset(
    "model prompt messages role content name max_tokens max_completion_tokens temperature top_p top_k min_p n "
    "stream stream_options include_usage logprobs top_logprobs echo stop presence_penalty frequency_penalty "
    "repeat_penalty best_of logit_bias user seed suffix response_format type json_schema schema strict tools "
    "tool_choice function parameters description continue_final_message add_generation_prompt "
    "return_tokens_as_token_ids".split())
# Fields whose value our client picks from a fixed set ("role": "user"): public, and left out where the body's
# text values are joined, since they would stand between two halves of a fact split over two messages.
PROTOCOL_VALUED_KEYS = frozenset(("role", "type"))
PROTOCOL_VALUES = frozenset("system user assistant developer tool function text json_object json_schema".split())
# Endpoint paths our client appends to the base URL: public like PROTOCOL_KEYS (a profile that says
# "completions" must not stop every request to /v1/completions).
PROTOCOL_PATHS = ("/chat/completions", "/completions", "/models", "/apply-template")
_API_VERSION = re.compile(r"/v\d{1,2}/?$")  # the last segment of an OpenAI-compatible base path
# The placeholder the guard writes, and the engine's attribution too (CG_PLACEHOLDER is the same text).
PLACEHOLDER_RE = re.compile(re.escape(PLACEHOLDER))
_FIELD_KEY = re.compile(r"[A-Za-z][\w .'/-]{0,39}")
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CALENDAR_WORDS = {name.lower() for name in (*calendar.day_name, *calendar.month_name, *calendar.month_abbr) if name}


# -- normalization -----------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    """One character as lower-case ASCII letters and digits, or ' ' for a separator, or '' to drop.

    NFKC (fullwidth and compatibility forms), case folding, diacritics removed, confusable letters
    (Cyrillic 'о', Greek 'ρ'...) to the Latin letter they imitate, then transliteration (ø -> o)."""
    if unicodedata.category(char) in ("Cf", "Mn", "Me"):  # zero-width spaces and joiners, soft hyphens, accents
        return ""
    out = []
    for c in unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", char).casefold()):
        if unicodedata.category(c) in ("Mn", "Me", "Cf"):
            continue
        if not c.isascii():
            c = _skeleton(c)
        out.extend(ch if ch.isalnum() else " " for ch in c.lower())
    return "".join(out)


def _skeleton(char: str) -> str:
    """The ASCII a non-ASCII character looks like (Unicode confusables), else its transliteration."""
    from anyascii import anyascii
    from confusable_homoglyphs.confusables import confusables_data

    for glyph in confusables_data.get(char, ()):
        if len(glyph["c"]) == 1 and glyph["c"].isascii() and glyph["c"].isalnum():
            return glyph["c"]
    return anyascii(char)


def normalize(text: str) -> tuple[str, list[int]]:
    """(folded, where): folded is text in lower-case ASCII words separated by single spaces, and
    where[i] is the index in text of the character that produced folded[i]."""
    out: list[str] = []
    where: list[int] = []
    for i, char in enumerate(text):
        for c in _fold_char(char) if not char.isascii() or not char.isalnum() else char.lower():
            if c == " " and (not out or out[-1] == " "):
                continue
            out.append(c)
            where.append(i)
    if out and out[-1] == " ":
        out.pop()
        where.pop()
    return "".join(out), where


def fold(text: str) -> str:
    """normalize(text) without the positions."""
    return normalize(text)[0]


@lru_cache(maxsize=1)
def _zipf():
    from wordfreq import zipf_frequency

    return lru_cache(maxsize=200000)(lambda word: zipf_frequency(word, "en"))


def word_zipf(word: str) -> float:
    """How common a folded word is in English: log10 of its occurrences per billion words (wordfreq)."""
    return _zipf()(word)


def is_rare(word: str) -> bool:
    """A folded word that is rare in English, or carries digits (codes, canaries, plates)."""
    if any(c.isdigit() for c in word):
        return not word.isdigit()  # pure numbers are handled as numbers
    return len(word) >= 2 and word_zipf(word) < RARE_ZIPF


# -- what a private text reveals --------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One private span found in an outgoing text (positions in that text)."""

    kind: str  # 'name', 'word', 'email', 'number', 'date' or 'verbatim'
    start: int
    end: int

    @property
    def chars(self) -> int:
        return self.end - self.start


def _profile_values(text: str) -> Iterable[tuple[str, str]]:
    """(key, value) pairs of a profile: 'Key: value' lines, and the leaves of any JSON object in it."""
    for line in re.split(r"\n|(?<=[.;!?])\s+", text):  # fields may share a line with prose
        key, sep, value = line.partition(":")
        key = key.strip(" -*\t")
        if sep and _FIELD_KEY.fullmatch(key) and value.strip():
            yield key, value.strip()
    for start in [m.start() for m in re.finditer(r"[\[{]", text)][:50]:
        try:
            data, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            continue
        yield from _json_leaves(data, "")


def _json_leaves(data: Any, key: str) -> Iterable[tuple[str, str]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _json_leaves(v, str(k))
    elif isinstance(data, list):
        for v in data:
            yield from _json_leaves(v, key)
    elif data is not None and not isinstance(data, bool):
        yield key, str(data)


def _numbers(folded: str) -> Iterable[tuple[int, int, str]]:
    """(start, end, digits) of each run of digit groups ('912 34 567') in folded text."""
    for m in re.finditer(r"(?<![a-z0-9])\d+(?: \d+)*(?![a-z0-9])", folded):
        yield m.start(), m.end(), m.group(0).replace(" ", "")


_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE = re.compile(
    rf"(?<![a-z0-9])(?:(?P<y1>\d{{4}}) (?P<m1>\d{{1,2}}) (?P<d1>\d{{1,2}})"          # 1985-03-14
    rf"|(?P<a2>\d{{1,2}}) (?P<b2>\d{{1,2}}) (?P<y2>\d{{4}}|\d{{2}})"                   # 14/03/1985, 3/14/85
    rf"|(?P<mn3>{_MONTH_RE}) (?P<d3>\d{{1,2}})(?: st| nd| rd| th)? (?P<y3>\d{{4}})"  # March 14th, 1985
    rf"|(?P<d4>\d{{1,2}})(?: st| nd| rd| th)? (?:of )?(?P<mn4>{_MONTH_RE}) (?P<y4>\d{{4}}))(?![a-z0-9])")


def _dates(folded: str) -> Iterable[tuple[int, int, set[tuple[int, int, int]]]]:
    """(start, end, readings) of each date in folded text; a readings set holds (year, month, day)
    for every way the date can be read (3/4/1985 is March 4 or April 3)."""
    for m in _DATE.finditer(folded):
        g = m.groupdict()
        if g["y1"]:
            candidates = [(int(g["y1"]), int(g["m1"]), int(g["d1"]))]
        elif g["y2"]:
            year = int(g["y2"]) + (1900 if len(g["y2"]) == 2 and int(g["y2"]) > 30 else 2000 if len(g["y2"]) == 2 else 0)
            a, b = int(g["a2"]), int(g["b2"])
            candidates = [(year, b, a), (year, a, b)]
        elif g["y3"]:
            candidates = [(int(g["y3"]), _MONTHS[g["mn3"]], int(g["d3"]))]
        else:
            candidates = [(int(g["y4"]), _MONTHS[g["mn4"]], int(g["d4"]))]
        readings = {(y, mo, d) for y, mo, d in candidates if 1 <= mo <= 12 and 1 <= d <= 31}
        if readings:
            yield m.start(), m.end(), readings


@dataclass
class PrivateItems:
    """What a set of private texts reveals, in folded form (see normalize)."""

    phrases: dict[str, str] = field(default_factory=dict)  # folded words -> kind ('name', 'word', 'email')
    numbers: set[str] = field(default_factory=set)  # digit strings of 4+ digits
    dates: set[tuple[int, int, int]] = field(default_factory=set)
    windows: set[str] = field(default_factory=set)  # verbatim passages, min_span folded chars from a word start
    glued: set[str] = field(default_factory=set)  # single words of phrases, found inside longer words too


def private_items(private: Sequence[str], public: Sequence[str] = (), *, min_span: int = 12,
                  extra: Iterable[str] = ()) -> PrivateItems:
    """Everything the private texts reveal that is not in the public texts (by whole words)."""
    items = PrivateItems()
    phrases: dict[str, str] = {fold(e): "name" for e in extra if fold(e)}

    def add(phrase: str, kind: str) -> None:
        phrase = fold(phrase)
        if phrase and (len(phrase) >= 2 or phrase.isdigit()):
            phrases.setdefault(phrase, kind)

    for text in private:
        if not text:
            continue
        folded, _ = normalize(text)
        for key, value in _profile_values(text):
            words = fold(value).split()
            if 0 < len(words) <= MAX_FACT_WORDS:
                add(value, "name" if _NAME_KEYS.search(key) else "word")
                if _NAME_KEYS.search(key):
                    for part in re.split(r"[,;/]", value):
                        add(part, "name")
                        for word in fold(part).split():
                            if len(word) >= 3 and word not in _CALENDAR_WORDS:
                                add(word, "name")
        for phrase in _PROPER_NOUN.findall(text):
            words = [w for w in fold(phrase).split() if w not in _CALENDAR_WORDS]
            if words:
                add(" ".join(words), "name")
                for word in words:  # "Ingrid" of "Ingrid Solheim" alone too, but not "Lane" of "Harbour Lane"
                    if len(word) >= 3 and is_rare(word):
                        add(word, "name")
        for email in EMAIL_RE.findall(text):
            add(email, "email")
            local_part = email.split("@")[0]
            for word in fold(local_part).split():
                if len(word) >= 3 and not word.isdigit():
                    add(word, "name")
        for word in set(folded.split()):
            if is_rare(word):
                add(word, "word")
        for start, end, digits in _numbers(folded):
            if len(digits) >= 4:
                items.numbers.add(digits)
            items.numbers.update(group for group in folded[start:end].split() if len(group) >= 4)
        for _, _, readings in _dates(folded):
            items.dates.update(readings)
        n = min_span
        starts = [0] + [i + 1 for i, c in enumerate(folded) if c == " "]
        items.windows.update(folded[i:i + n] for i in starts if i + n <= len(folded))
        if 0 < len(folded) < n:  # a private text shorter than a passage (a short draft) is private whole
            add(folded, "verbatim")

    public_folded = " " + " ".join(fold(p) for p in public) + " "
    items.phrases = {p: k for p, k in phrases.items() if f" {p} " not in public_folded}
    # A private word glued to other letters ("codeQv7x93kd2m", "dearOdalys") escapes a whole-word match.
    # Words of GLUED_MIN characters or more are found anywhere, unless a public word holds them.
    items.glued = {p for p, k in items.phrases.items()
                   if k != "email" and " " not in p and len(p) >= GLUED_MIN and p not in public_folded}
    n = min_span
    public_starts = [0] + [i + 1 for i, c in enumerate(public_folded) if c == " "]
    items.windows -= {public_folded[i:i + n] for i in public_starts}
    public_numbers = {digits for _, _, digits in _numbers(public_folded)}
    items.numbers = {d for d in items.numbers if d not in public_numbers}
    public_dates = {r for _, _, readings in _dates(public_folded) for r in readings}
    items.dates -= public_dates
    return items


class _Matcher:
    """Finds private items in folded text."""

    def __init__(self, items: PrivateItems, min_span: int):
        self.items, self.min_span = items, min_span
        patterns = []
        for phrase in sorted(items.phrases, key=len, reverse=True):
            words = [re.escape(w) for w in phrase.split()]
            # An e-mail may be spelled out: "odalys dot b at fjordmail dot example".
            joint = r" (?:(?:at|dot) )?" if items.phrases[phrase] == "email" else " "
            patterns.append(joint.join(words))
        alternatives = ([r"(?<![a-z0-9])(?:" + "|".join(patterns) + r")(?![a-z0-9])"] if patterns else []) + (
            [_trie_pattern(items.glued)] if items.glued else [])
        self._regex = re.compile("|".join(alternatives)) if alternatives else None

    def find(self, folded: str) -> list[tuple[int, int, str]]:
        """(start, end, kind) spans in folded text, possibly overlapping."""
        found = []
        if self._regex is not None:
            for m in self._regex.finditer(folded):
                found.append((m.start(), m.end(), self.items.phrases.get(m.group(0), "email")))
        for start, end, digits in _numbers(folded):
            groups = folded[start:end].split()
            if any(self._private_number(d) for d in [digits, *groups] if len(d) >= 4):
                found.append((start, end, "number"))
        for start, end, readings in _dates(folded):
            if readings & self.items.dates:
                found.append((start, end, "date"))
        n, windows = self.min_span, self.items.windows
        if windows:
            run_start = run_end = -1
            for i in [0] + [i + 1 for i, c in enumerate(folded) if c == " "]:
                if folded[i:i + n] in windows:
                    if i > run_end:
                        if run_end >= 0:
                            found.append((run_start, run_end, "verbatim"))
                        run_start = i
                    run_end = i + n
            if run_end >= 0:
                found.append((run_start, run_end, "verbatim"))
            found = [(s, _word_end(folded, e), k) if k == "verbatim" else (s, e, k) for s, e, k in found]
        return found

    def _private_number(self, digits: str) -> bool:
        for number in self.items.numbers:
            if digits == number or number in digits or (len(digits) >= 6 and digits in number):
                return True
        return False


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex for any of the words, their shared prefixes factored out ('ab|ac' -> 'a(?:b|c)'): tried at
    every position of the text (glued words have no word boundary to start from), it follows one branch
    per character instead of trying every word. The longest word wins where one is a prefix of another."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict) -> str:
        branches = [re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char]
        if "" in node:
            return "(?:" + "|".join(branches) + ")?" if branches else ""
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return pattern(trie)


def _word_end(folded: str, end: int) -> int:
    """end moved to the end of the word it falls in (a passage is redacted in whole words)."""
    while end < len(folded) and folded[end] != " " and end > 0 and folded[end - 1] != " ":
        end += 1
    return end


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans merged; the kind of a merged span is that of its longest part."""
    merged: list[list] = []
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -s[1])):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if end - start > last[3]:
                last[2], last[3] = kind, end - start
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, kind, end - start])
    return [(s, e, k) for s, e, k, _ in merged]


# -- the audit record --------------------------------------------------------------------------------


@dataclass
class AuditRecord:
    """One outgoing HTTP request, as it left the process."""

    time: float
    method: str
    endpoint: str
    bytes_sent: int
    action: str  # 'sent', 'redacted', 'blocked' or 'leaked' (policy 'audit' with findings)
    findings: list[dict] = field(default_factory=list)  # [{"kind": ..., "chars": ...}]
    body: str = ""  # the body exactly as sent, kept only with record_bodies=True ("" when blocked)
    body_sha256: str = ""  # of the body as sent ("" when blocked): matches a body without keeping it
    status: int | None = None
    bytes_received: int = 0
    duration_ms: float = 0.0
    # On-device attribution of the generated text in this request (logits mode, see collab/):
    sent_tokens: int = 0  # generated tokens sent as they are
    withheld_tokens: int = 0  # generated tokens replaced by a placeholder
    context_bits: float = 0.0  # sum over sent tokens of max(0, log2 p(t | context) - log2 p(t | no context))
    # Placeholders in the body as sent (the guard's and attribution's): their number and places are what
    # the remote learns of what was withheld, so they are counted as information sent.
    placeholders: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


# -- the guard ---------------------------------------------------------------------------------------


def _app_supplied_part(url: str) -> str:
    """What of a request's URL the app (or the environment) wrote: user info, host name, base path, query
    and fragment. The scheme, the port, the endpoint path our client appends (PROTOCOL_PATHS), the API's
    version segment before it ("/v1") and a host given as an IP address are protocol: a profile that
    says "HTTP", "completions", "V1" (the visual cortex) or "Rooms: 1" must not stop every request to
    127.0.0.1/v1 (an address's numbers are too short to be a private number)."""
    parts = urlsplit(url)
    path = next((parts.path[:-len(p)] for p in PROTOCOL_PATHS if parts.path.endswith(p)), parts.path)
    path = _API_VERSION.sub("", path)
    host = None if parts.hostname is None or _is_ip_address(parts.hostname) else parts.hostname
    written = (parts.username, parts.password, host, path, parts.query, parts.fragment)
    return " ".join(x for x in written if x)


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class EgressGuard:
    """Checks, redacts and records the requests of one job.

    context: the private texts of the job (profile, history, draft); they must never leave.
    public: text the user chose to send (the instruction, our own prompt text); private items that
        occur in it as whole words are not private.
    entities: extra private strings (for example a name known from a structured profile).
    known: text the remote holds already, such as our own prompt as rendered for it (add_known adds
        more). A private span wholly inside it, where a string of the body begins with it, is sent as it
        is: redacting a word of a prompt the remote knows would tell it that the context holds that word
        ("<|im_start|>[PRIVATE]" says the profile's occupation is "assistant"). Only there: a server that
        renders the prompt writes the known text, and the same words elsewhere (the generated text) are
        checked as any other.
    min_span: shortest verbatim passage of the context, in normalized characters, that counts as private.
    tokenizer: the local model (tokenize/detokenize), to check prompts sent as token ids; without one,
        a body carrying token ids is refused.
    audit_path: a JSONL file (created 0600) to append one record per request to.
    record_bodies: keep each body as sent in its record (and so in the audit file). Off by default:
        a record holds the body's SHA-256, its length and the findings; under policy 'audit' a body
        holds private text as it is, so turn this on for leakage measurements only.
    """

    def __init__(self, context: str | Sequence[str] = "", *, public: str | Sequence[str] = (), policy: str = "redact",
                 min_span: int = 12, entities: Iterable[str] = (), audit_path: str | None = None,
                 tokenizer: Any = None, record_bodies: bool = False, known: Iterable[str] = ()):
        if policy not in POLICIES:
            raise InvalidParameterError(f"privacy policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if min_span < 4:
            raise InvalidParameterError(f"min_span must be at least 4 characters, got {min_span}")
        self.policy = policy
        self.min_span = min_span
        self.audit_path = audit_path
        self.record_bodies = record_bodies
        self.tokenizer = tokenizer
        self.records: list[AuditRecord] = []
        self._lock = threading.Lock()
        contexts = [context] if isinstance(context, str) else list(context)
        publics = [public] if isinstance(public, str) else list(public)
        self.items = private_items(contexts, publics, min_span=min_span, extra=entities)
        self._matcher = _Matcher(self.items, min_span)
        self._known: list[str] = []
        self._echoes: set[tuple[int, ...]] = set()
        for text in known:
            self.add_known(text)

    def allow_echo(self, ids: Sequence[int]) -> None:
        """Token ids the server itself answered, which may go back to it unread (vLLM's /detokenize of
        its own /tokenize answer, which renders the chat template): a function of what the server wrote
        tells it nothing of the device. Any other id list is checked with the tokenizer, or refused."""
        self._echoes.add(tuple(ids))

    def add_known(self, text: str) -> None:
        """Text the remote holds already (see the class docstring): our prompt once it is rendered."""
        if text and text not in self._known:
            self._known.append(text)

    # -- finding and redacting ---------------------------------------------------------------------

    def find(self, text: str) -> list[Finding]:
        """The private spans in text (positions in text), merged where they overlap."""
        folded, where = normalize(text)
        out = []
        for start, end, kind in _merge(self._matcher.find(folded)):
            out.append(Finding(kind, where[start], where[end - 1] + 1))
        return out

    def private_spans(self, text: str) -> list[Finding]:
        """find() as check_body reads generated text it sends: our placeholders are not private."""
        return _Parts(text, None).find(self.find, ignore_placeholders=True)

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        """text with every private span replaced by its placeholder, and the spans."""
        findings = self.find(text)
        return _replace(text, [(f.start, f.end, PLACEHOLDER) for f in findings]), findings

    # -- the choke point ---------------------------------------------------------------------------

    def check_envelope(self, url: str, headers: Sequence[tuple[str, str]]) -> None:
        """Raises PrivacyBlockedError if the URL or a header value holds private text, whatever the
        policy: they cannot be redacted, and nothing private belongs there. The refusal is recorded."""
        for what, value in (("the URL", _app_supplied_part(url)),
                            *((f"header {name!r}", value) for name, value in headers)):
            findings = self.find(value)
            if findings:
                record = AuditRecord(time=time.time(), method="", endpoint=urlsplit(url).path, bytes_sent=0,
                                     action="blocked", findings=_described(findings))
                self._record(record)
                raise PrivacyBlockedError(f"refused to send a request to {record.endpoint}: {what} holds private "
                                          f"text ({_spans(record.findings)})")

    def check_body(self, method: str, endpoint: str, body: bytes,
                   attribution: dict | None = None) -> tuple[bytes, AuditRecord]:
        """Returns the body to send and its audit record, or raises PrivacyBlockedError.

        The body is read as one text: every string of a JSON body (keys included) joined in order,
        token-id prompts decoded; a body that is not JSON is read as text. attribution: what the
        job's on-device attribution withheld from this request (sent_tokens, withheld_tokens,
        context_bits), recorded as given. A refusal names the private spans by kind and length
        only, and is raised from a frame that no longer holds the body: crash reporters that
        capture frame locals get nothing private from it."""
        sent, record, refusal = self._check(method, endpoint, body, attribution)
        if refusal is not None:
            del body, sent
            raise PrivacyBlockedError(refusal)
        return sent, record

    def _check(self, method: str, endpoint: str, body: bytes,
               attribution: dict | None) -> tuple[bytes, AuditRecord, str | None]:
        """check_body's work: (body to send, record, None) or (b"", record, why it was refused)."""
        text = body.decode("utf-8", errors="replace")
        try:
            payload, is_json = (json.loads(text) if text else None), True
        except json.JSONDecodeError:
            payload, is_json = text, False
        record = AuditRecord(time=time.time(), method=method, endpoint=endpoint, bytes_sent=len(body), action="sent",
                             **(attribution or {}))

        def refuse(why: str) -> tuple[bytes, AuditRecord, str]:
            record.action, record.bytes_sent = "blocked", 0
            self._record(record)
            return b"", record, f"refused to send a request to {endpoint}: {why}"

        try:
            parts = _Parts(payload, self.tokenizer, self._echoes)
        except PrivacyBlockedError as exc:
            return refuse(str(exc))
        findings = parts.find(self.find, known=self._known)
        record.findings = _described(findings)
        if findings and self.policy == "block":
            return refuse(f"it contains {len(record.findings)} private span(s) of the context: "
                          f"{_spans(record.findings)}; policy is 'block'")
        if findings and self.policy == "redact" and any(parts.in_key(f) for f in findings):
            return refuse("a JSON key holds private text, and keys are not redacted")
        if findings and self.policy == "redact":
            checked = parts.redacted([(f.start, f.end, PLACEHOLDER if f.kind else "") for f in findings])
            body = (json.dumps(checked, ensure_ascii=False) if is_json else checked).encode("utf-8")
            leftover = _Parts(checked, self.tokenizer, self._echoes).find(self.find, known=self._known, ignore_placeholders=True)
            if leftover:  # defence in depth: a placeholder next to text could re-form a span
                return refuse(f"redaction left {len(leftover)} private span(s)")
            record.action = "redacted"
            record.bytes_sent = len(body)
        elif findings:
            record.action = "leaked"
        record.body_sha256 = hashlib.sha256(body).hexdigest()
        sent_text = body.decode("utf-8", errors="replace")
        record.placeholders = len(PLACEHOLDER_RE.findall(sent_text))
        if self.record_bodies:
            record.body = sent_text
        self._record(record)
        return body, record, None

    def _record(self, record: AuditRecord) -> None:
        with self._lock:
            self.records.append(record)
            if self.audit_path:
                append_private(self.audit_path, record.to_json())

    def summary(self) -> dict:
        """Counts over the recorded requests (see summarize)."""
        with self._lock:
            return summarize(self.records)


def _described(findings: Sequence[Finding]) -> list[dict]:
    """Findings as an audit record keeps them: kind and length, never the text."""
    return [{"kind": f.kind, "chars": f.chars} for f in findings if f.kind]


def _spans(described: Sequence[dict]) -> str:
    return ", ".join(f"{d['kind']} ({d['chars']} chars)" for d in described)


def _replace(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """text with each span replaced; a placeholder that would follow another with only spaces between
    is left out, so the count of placeholders does not count the words of a fact ("[PRIVATE] [PRIVATE]")."""
    out, pos, last_placeholder = [], 0, None
    for start, end, placeholder in sorted(spans):
        if start < pos:
            continue
        gap = text[pos:start]
        if placeholder and placeholder == last_placeholder and not gap.strip():
            pos = end
            continue
        out.append(gap)
        out.append(placeholder)
        last_placeholder = placeholder or None
        pos = end
    out.append(text[pos:])
    return "".join(out)


class _Parts:
    """A JSON payload read as one text: its strings (keys included) and decoded token-id lists,
    joined in order with nothing between, so a span split across two strings is still one span."""

    def __init__(self, payload: Any, tokenizer: Any, echoes: set[tuple[int, ...]] = frozenset()):
        self._payload, self._tokenizer, self._echoes = payload, tokenizer, echoes
        self._segments: list[tuple[int, int]] = []  # (start, end) in text of each leaf, in visiting order
        self._leaves: list[str] = []
        self._is_key: list[bool] = []
        self._is_protocol: list[bool] = []  # the value of a field whose values are protocol words
        self._walk(payload, self._leaves)
        self.text = "".join(self._leaves)

    def find(self, find: Callable[[str], list[Finding]], *, known: Sequence[str] = (),
             ignore_placeholders: bool = False) -> list[Finding]:
        """find() over the text values joined (a span split across two strings or two chat messages),
        once with nothing between them and once with a space, and over each string alone, keys
        included (a private word at the end of one string must not hide by running into the next).
        The joined views leave out the values of protocol fields (a message's "role"), which would
        otherwise stand between the two halves of a fact. Returns pieces within single strings, in
        joined-text positions; the pieces after the first of a split span have kind '' (nothing
        replaces them). Spans wholly inside a `known` text that a string begins with are left out, and
        with ignore_placeholders, spans inside our placeholders."""
        spans: list[tuple[int, int, str]] = []
        values = [i for i, key in enumerate(self._is_key) if not key and not self._is_protocol[i]]
        # one text value alone is read by the pass over each string below: no joined view to add
        for separator in ("", " ") if len(values) > 1 else ():
            offsets, pos = [], 0
            for i in values:
                offsets.append((pos, i))
                pos += len(self._leaves[i]) + len(separator)
            for f in find(separator.join(self._leaves[i] for i in values)):
                kind = f.kind
                for at, i in offsets:
                    leaf_start, leaf_end = self._segments[i]
                    start, end = max(f.start, at), min(f.end, at + leaf_end - leaf_start)
                    if start < end:
                        spans.append((leaf_start + start - at, leaf_start + end - at, kind))
                        kind = ""
        for (start, _), leaf, protocol in zip(self._segments, self._leaves, self._is_protocol):
            if not protocol:  # a role our client wrote ("assistant") is no word of the context
                spans.extend((start + f.start, start + f.end, f.kind) for f in find(leaf))
        inside = [(leaf_start, leaf_start + len(text)) for (leaf_start, _), leaf in zip(self._segments, self._leaves)
                  for text in known if leaf.startswith(text)]
        if ignore_placeholders:  # our own placeholders are not private text
            inside += [(m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(self.text)]
        if inside:
            spans = [s for s in spans if not any(a <= s[0] and s[1] <= b for a, b in inside)]
        return [Finding(kind, start, end) for start, end, kind in _merge(spans)]

    def _leaf(self, value: str, chunks: list[str], is_key: bool = False, is_protocol: bool = False) -> None:
        self._is_key.append(is_key)
        self._is_protocol.append(is_protocol)
        start = sum(len(c) for c in chunks)
        chunks.append(value)
        self._segments.append((start, start + len(value)))

    def _walk(self, value: Any, chunks: list[str], key: str = "") -> None:
        if isinstance(value, str):
            self._leaf(value, chunks, is_protocol=key in PROTOCOL_VALUED_KEYS and value in PROTOCOL_VALUES)
        elif _is_token_ids(value) and tuple(value) in self._echoes:
            self._leaf("", chunks)  # the server's own answer, sent back: nothing of ours to read
        elif _is_token_ids(value):
            if self._tokenizer is None:
                raise PrivacyBlockedError("it carries token ids, which cannot be checked without the local tokenizer")
            self._leaf(self._tokenizer.detokenize(list(value)), chunks)
        elif isinstance(value, list):
            for v in value:
                self._walk(v, chunks)
        elif isinstance(value, dict):
            for k, v in value.items():
                self._leaf("" if k in PROTOCOL_KEYS else str(k), chunks, is_key=True)
                self._walk(v, chunks, str(k))

    def in_key(self, finding: Finding) -> bool:
        return any(key and s <= finding.start < e for key, (s, e) in zip(self._is_key, self._segments))

    def redacted(self, spans: Sequence[tuple[int, int, str]]) -> Any:
        """The payload with each span replaced; a span across several leaves puts its placeholder in
        the first and removes the rest. Token-id lists are re-tokenized. Keys are never changed."""
        per_leaf: list[list[tuple[int, int, str]]] = [[] for _ in self._segments]
        for start, end, placeholder in spans:
            first = True
            for i, (s, e) in enumerate(self._segments):
                if s < end and start < e or (start == end == s):
                    per_leaf[i].append((max(start, s) - s, min(end, e) - s, placeholder if first else ""))
                    first = False
        counter = iter(range(len(self._segments)))

        def leaf(value: str) -> str:
            return _replace(value, per_leaf[next(counter)])

        def walk(value: Any) -> Any:
            if isinstance(value, str):
                return leaf(value)
            if _is_token_ids(value) and tuple(value) in self._echoes:
                next(counter)
                return value
            if _is_token_ids(value):
                return self._tokenizer.tokenize(leaf(self._tokenizer.detokenize(list(value))), add_special=False)
            if isinstance(value, list):
                return [walk(v) for v in value]
            if isinstance(value, dict):
                out = {}
                for k, v in value.items():
                    next(counter)  # the key's leaf: left as it is (check_body refuses private keys)
                    out[k] = walk(v)
                return out
            return value

        return walk(self._payload)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def summarize(records: Sequence[AuditRecord]) -> dict:
    """Counts over audit records: requests, bytes, redacted spans, blocked requests, leaked spans, the
    most placeholders one body carried, and the attribution of the last request (it carries the whole
    generated prefix)."""
    last = next((r for r in reversed(records) if r.sent_tokens or r.withheld_tokens), None)
    return {
        "requests": len(records),
        "bytes_sent": sum(r.bytes_sent for r in records),
        "bytes_received": sum(r.bytes_received for r in records),
        "redacted_spans": sum(len(r.findings) for r in records if r.action == "redacted"),
        "blocked": sum(r.action == "blocked" for r in records),
        "leaked_spans": sum(len(r.findings) for r in records if r.action == "leaked"),
        "placeholders": max((r.placeholders for r in records), default=0),  # the most any one body carried
        "withheld_tokens": last.withheld_tokens if last else 0,
        "context_bits": last.context_bits if last else 0.0,
    }

