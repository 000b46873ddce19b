"""An independent measure of what reached the remote, for `cogenesis eval` and the privacy tests.

It scans the bodies that were actually sent (as the remote received them) for facts of the private
context, and shares no code with the egress guard (privacy.py), so it does not share its blind spots:

- canaries: made-up facts planted in the context in many surface forms (a one-word name, a city, a
  phone number with assorted separators, a diagnosis, an e-mail address; with diacritics, homoglyphs,
  fullwidth letters, zero-width spaces). Each is searched for in its canonical form;
- profile facts: each field of the sample's profile (Name, Age, Location, Occupation, every item of
  Privacy_info, Smart_device_usage...), matched by its distinctive words after normalization.
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..privacy import PLACEHOLDER_RE

# Letters of other scripts that look like Latin ones (homoglyphs), by Unicode name.
_LOOKALIKE = {
    "CYRILLIC SMALL LETTER A": "a", "CYRILLIC SMALL LETTER IE": "e", "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p", "CYRILLIC SMALL LETTER ES": "c", "CYRILLIC SMALL LETTER U": "y",
    "CYRILLIC SMALL LETTER HA": "x", "CYRILLIC SMALL LETTER I": "u", "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER JE": "j", "CYRILLIC SMALL LETTER DZE": "s", "GREEK SMALL LETTER OMICRON": "o",
    "GREEK SMALL LETTER ALPHA": "a", "GREEK SMALL LETTER RHO": "p", "GREEK SMALL LETTER NU": "v",
    "GREEK SMALL LETTER IOTA": "i", "GREEK SMALL LETTER KAPPA": "k", "GREEK SMALL LETTER TAU": "t",
}
_STROKES = {"ø": "o", "đ": "d", "ł": "l", "ß": "ss", "æ": "ae", "œ": "oe", "þ": "th", "ħ": "h", "ı": "i"}


def simplify(text: str) -> str:
    """Lower-case ASCII words separated by single spaces, whatever the script tricks."""
    out = []
    for char in unicodedata.normalize("NFKC", text).lower():
        if unicodedata.category(char) == "Cf":  # zero-width characters
            continue
        base = "".join(c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c))
        if base and not base.isascii():
            base = _STROKES.get(base) or _LOOKALIKE.get(unicodedata.name(base, ""), " ")
        out.append(base if base.isalnum() else " ")
    return " ".join("".join(out).split())


def sent_text(bodies: Iterable[str]) -> str:
    """Every string of every JSON body sent, simplified, as segments joined by ' | ': one per body, and
    one per stretch between placeholders. A placeholder is where the remote read nothing of the private
    text: the words on its two sides were not side by side, and "[PRIVATE]" is not the word "private"
    (read as one, "the [PRIVATE] of my family" revealed "a private family gathering")."""
    texts = []
    for body in bodies:
        strings: list[str] = []

        def visit(value) -> None:
            if isinstance(value, str):
                strings.append(value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    strings.append(str(k))
                    visit(v)
            elif isinstance(value, list):
                if value and all(isinstance(v, int) for v in value):  # unread, it would count as nothing sent
                    raise ValueError("the leak scan reads text, not token ids: a body sent a token-id prompt")
                for v in value:
                    visit(v)

        try:
            payload = json.loads(body)
        except ValueError:
            payload = body
        visit(payload)
        # what the guard and the engine's attribution send in place of what they withhold: not text
        texts.extend(simplify(piece) for piece in PLACEHOLDER_RE.split(" ".join(strings)))
    return " | ".join(texts)


@dataclass(frozen=True)
class Fact:
    """One private fact: how it is named in reports, and when sent text reveals it."""

    kind: str
    value: str
    words: tuple[str, ...]  # simplified words that reveal it side by side (a sentence: see `pairs`)
    digits: str = ""  # for numbers: the digits, any separators allowed between them
    pairs: tuple[str, ...] = ()  # a sentence: any of these two-word phrases of its content words reveals it

    def leaked_in(self, text: str) -> bool:
        if self.digits:
            return self.digits in re.sub(r"(?<=\d) (?=\d)", "", text)
        if self.pairs:
            content = " " + " ".join(_content_words(text.split())) + " "
            return any(f" {pair} " in content for pair in self.pairs)
        if self.kind.startswith("canary") and len(self.words) == 1:
            # A made-up word is revealed inside another word too ("myKavelosun"); a short one only where it
            # touches one of that word's ends, since "Feri" is also the inside of "offering".
            word = re.escape(self.words[0])
            inside = word if len(self.words[0]) >= CANARY_INSIDE_MIN else rf"(?<![a-z0-9]){word}|{word}(?![a-z0-9])"
            return re.search(inside, text) is not None
        return bool(self.words) and re.search(r"(?<![a-z0-9])" + " ".join(map(re.escape, self.words)) + r"(?![a-z0-9])",
                                              text) is not None


# -- canaries ----------------------------------------------------------------------------------------

CANARY_INSIDE_MIN = 6  # a made-up word this long is found anywhere inside another word
_SYLLABLES = ("ka", "ve", "lo", "ri", "sun", "mar", "tho", "zel", "dra", "quin", "bor", "ny", "fe", "lis", "gor")


def _made_up_word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def _disguise(word: str, how: str) -> str:
    """word in another surface form that reads the same."""
    if how == "homoglyph":
        return word.replace("o", "\u043e").replace("a", "\u0430").replace("e", "\u0435")
    if how == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in word)
    if how == "zero-width":
        return word[:2] + "\u200b" + word[2:]
    if how == "diacritics":
        return word.replace("o", "ø").replace("a", "å").replace("e", "é")
    return word


def plant_canaries(context: str, seed: int) -> tuple[str, list[Fact]]:
    """The context with made-up facts added in varied surface forms, and those facts (canonical)."""
    rng = random.Random(seed)
    forms = ["plain", "homoglyph", "fullwidth", "zero-width", "diacritics"]
    pet, city, friend = _made_up_word(rng, 2), _made_up_word(rng, 3), _made_up_word(rng, 2)
    condition = _made_up_word(rng, 3).lower() + "itis"
    digits = "".join(rng.choice("123456789") for _ in range(9))
    separators = rng.choice([" ", ".", "-", ""])
    phone = separators.join([digits[:3], digits[3:5], digits[5:]])
    mailbox, domain = _made_up_word(rng, 2).lower(), _made_up_word(rng, 2).lower() + "mail"
    lines = [
        f"My dog is called {_disguise(pet, rng.choice(forms))}.",
        f"I grew up in {_disguise(city, rng.choice(forms))} and still visit my friend {_disguise(friend, rng.choice(forms))} there.",
        f"I was diagnosed with {_disguise(condition, rng.choice(forms))} last spring.",
        f"Phone: +47 {phone}",
        f"Email: {mailbox}@{domain}.example",
    ]
    facts = [
        Fact("canary:name", pet, (simplify(pet),)),
        Fact("canary:city", city, (simplify(city),)),
        Fact("canary:name", friend, (simplify(friend),)),
        Fact("canary:diagnosis", condition, (simplify(condition),)),
        Fact("canary:number", phone, (), digits),
        Fact("canary:email", f"{mailbox}@{domain}.example", (mailbox,)),
        Fact("canary:email", f"{mailbox}@{domain}.example", (domain,)),
    ]
    return context.rstrip() + "\n" + "\n".join(lines), facts


# -- profile facts -----------------------------------------------------------------------------------

_FIELD = re.compile(r"^([A-Za-z_ ]{2,40}):\s*(.+)$", re.MULTILINE)
_COMMON = set("the a an and or of to in on for with at by from is are was were be been has have had it its this "
              "that their her his she he they them you your our we my me i as into about after before every each "
              "some other more most very also often uses use using".split())


def _content_words(words: Iterable[str]) -> list[str]:
    """The words two-word phrases are made of: not the common ones, and not single letters (the "s" of
    "tonight's", the "B" of "B-tree"). Facts, public text and sent text alike: a title's "MPI's
    one-sided" is public "mpi one", as the fact's "MPI one-sided" is."""
    return [w for w in words if w not in _COMMON and len(w) > 1]


def profile_facts(profile: str, public: str = "") -> list[Fact]:
    """The facts of a 'Field: value' profile: each field value, and each item of a list field (items
    separated by ';'). A short value (a name, an age, a city) is revealed by its words side by side; a
    sentence ("Volunteers at the local animal shelter") by any two of its content words side by side
    ("animal shelter") that the public text does not hold. One-word items of a list (traits such as
    "Outgoing") are not counted: alone, they are ordinary words."""
    public = " " + " ".join(_content_words(simplify(public).split())) + " "
    facts = []
    for field_name, value in _FIELD.findall(profile):
        items = value.split(";")
        for item in items:
            kind = f"profile:{field_name.strip().lower()}"
            phrase = simplify(item).split()
            words = _content_words(phrase)
            if len(words) > 3:
                pairs = tuple(f"{a} {b}" for a, b in zip(words, words[1:]) if f" {a} {b} " not in public)
                if pairs:
                    facts.append(Fact(kind, item.strip(), tuple(words), pairs=pairs))
            elif words and not all(f" {w} " in public for w in words) and (len(items) == 1 or len(words) > 1):
                facts.append(Fact(kind, item.strip(), tuple(phrase)))
                if "name" in kind:  # a first or last name alone identifies too
                    facts.extend(Fact(kind, w, (w,)) for w in words if len(w) >= 3 and len(words) > 1)
    return facts


def leaked(facts: Sequence[Fact], bodies: Iterable[str]) -> list[Fact]:
    """The facts revealed by the bodies sent (each body scanned on its own)."""
    texts = sent_text(bodies).split(" | ")
    return [fact for fact in facts if any(fact.leaked_in(t) for t in texts)]
