"""What a private text says about its writer by itself, found on the device without any other text.

The egress guard (privacy.py) finds what a text shares with the user's private context. A private
request ("Write to my landlord: I lost my job and I'm pregnant") also holds facts that no context
holds. `sensitive_spans` finds them in the text alone:

- identifiers: e-mail addresses, URLs and domains, anonymizer tags (`<PRESIDIO_ANONYMIZED_PERSON>`),
  dates with a month name, and numbers that identify: 4 or more digits with any separators (a phone,
  an account), codes of letters and 3 or more digits, amounts of money, ages (not "3 slides", nor a
  year alone);
- names of people, places and organisations: capitalized words inside a sentence, their chains
  ("University of North Florida", "H&R Technology"), a sentence's first word when it is capitalized
  elsewhere too or starts a chain; words rare in English (wordfreq), which are mostly names;
- sensitive topics (health, finances and work, family, legal matters, beliefs and identity): the
  clause that states one is removed whole, since its other words describe the fact; in the clause
  that holds the task itself only the topic's words go;
- family relations ("my wife", "our son"), which say who the user lives with: replaced by a word
  that says nothing of the relation.

`scrub` applies them: the public instruction keeps the task and loses the facts. It is a rule set,
not a proof: a fact paraphrased in ordinary lower-case words is not a name, a number or a listed topic.
"""
from __future__ import annotations

import bisect
import calendar
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .privacy import EMAIL_RE, word_zipf

# Zipf frequency (log10 of occurrences per billion words) below which a word is rare enough to be a name:
# capitalized, or in lower case (where rare English words, 'twirled', are more common than names).
RARE_NAME_ZIPF = 3.0
RARE_LOWERCASE_ZIPF = 2.0
# A sentence's first word before another capitalized one starts a name unless it is this common ('On Sunday').
CHAIN_START_MAX_ZIPF = 5.0
# A line whose words are mostly capitalized (a title, a heading) says nothing by its capitals.
TITLE_CASE_SHARE = 0.6
HEADING_WORD_MIN_ZIPF = 4.0  # a word this common is a heading's word when capitalized, not a name
RELATION_STANDIN = "someone close to me"
# A word this common is no name wherever it stands, capitalized or not ('The', 'In', 'Not', 'You').
FUNCTION_WORD_ZIPF = 6.0
# An acronym this common (lower-cased) names no one ('AI', 'IT', 'HR'); rarer ones may ('API', 'HSBC', 'GHF').
COMMON_ACRONYM_ZIPF = 4.0
# A word of a program's identifier ('messageContainer.classList', 'BuildId', 'train_data') names no one
# when each of its parts is a word this common (or 3 letters or fewer) and no part is a first name.
CODE_PART_MIN_ZIPF = 3.0
# Words that introduce a name, and the words after them taken for it: up to NAME_CUE_WORDS, ending
# before punctuation or a word this common ('called the police', 'work at home' name nothing).
_NAME_CUE = re.compile(r"\b(?:(?:my|his|her|their|our) name is|named|nicknamed|called|(?:located|based|lives?|living) in|"
                       r"(?:work|works|worked|working|employed|intern(?:ed|ing)?|stud(?:y|ies|ied|ying)) (?:at|for)|"
                       r"graduated from|hi|hello|hey|dear)[ \t]+(?=[^\W\d_])", re.I)
NAME_CUE_WORDS, NAME_CUE_STOP_ZIPF = 3, 5.5
_GREETED = {"everyone", "everybody", "all", "team", "there", "guys", "folks", "friends", "colleagues", "both", "world",
            "sir", "sirs", "madam", "customer", "customers", "reader", "readers", "hiring", "manager", "user", "users"}
_PLACE_ACRONYMS = {"usa", "uk", "uae", "la", "nyc", "dc", "eu", "ussr", "prc", "sf"}
_HONORIFICS = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "madame", "mme", "mlle", "herr", "frau",
               "señor", "señora", "sr", "sra"}

_MONTH_NAMES = [n for n in (*calendar.month_name, *calendar.month_abbr) if n]
_CALENDAR = {n.lower() for n in (*calendar.day_name, *calendar.month_name, *calendar.day_abbr, *calendar.month_abbr) if n}
# Capitalized words that name nobody: the pronoun, and words capitalized by convention.
_COMMON_CAPITALIZED = _CALENDAR | {"i", "i'm", "i've", "i'd", "i'll", "ok", "okay", "mr", "mrs", "ms", "dr", "prof",
                                   "dear", "hi", "hello", "thanks", "thank", "please", "regards", "sincerely"}
_CHAIN_JOINERS = {"of", "the", "and", "&", "de", "du", "da", "del", "della", "van", "von", "der", "den", "la", "le",
                  "bin", "al", "el", "y"}

_WORD = re.compile(r"[^\W\d_](?:[\w'’&.-]*[^\W_])?")
_CODE_LINE = re.compile(r"[;{}]\s*$|^\s*(?:def|class|import|from|return|const|let|var|public|private|#include)\b|"
                        r"[=(]\s*[\w.]+\(|\w\.\w+\(|^(?: {4}|\t)", re.M)
_CODE_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_IDENTIFIERS = [
    ("email", EMAIL_RE),
    ("url", re.compile(r"(?:\b[a-z][a-z0-9+.-]{1,15}://|www\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|io|edu|gov|co|uk|de|fr|in|ai|app|"
                       r"info|biz|me|us|ca|au|ru|cn|jp)\b(?:/\S*)?", re.I)),
    # a home folder's path names its user ('/home/fxu80pep/public_html', 'C:\\Users\\ana\\data.txt')
    ("path", re.compile(r"(?:\b[A-Za-z]:)?[\\/](?:home|Users|users)[\\/][^\s\"'<>|]+|~[\\/][^\s\"'<>|]+")),
    ("tag", re.compile(r"<\s*[A-Z][A-Z0-9_]*_[A-Z0-9_]+\s*>|\b[A-Z]+(?:_[A-Z0-9]+){1,}\b")),
    ("date", re.compile(rf"\b(?:(?:{'|'.join(_MONTH_NAMES)})\.? \d{{1,2}}(?:st|nd|rd|th)?\b(?:,? \d{{4}})?|"
                        rf"\d{{1,2}}(?:st|nd|rd|th)? (?:of )?(?:{'|'.join(_MONTH_NAMES)})\b\.?(?:,? \d{{4}})?)", re.I)),
    ("number", re.compile(r"[#$€£¥+]?\w*\d\w*(?:[/.'’:,-]\w+)*(?:[ ,.:/-]+\d\w*(?:[/.'’:,-]\w+)*)*%?")),
]
# A number says who someone is when it is long (a phone, an account, a date with its year), a code of
# letters and digits, an amount of money or an age; "3 slides", "lib64" or a year alone do not.
MIN_ID_DIGITS = 4
_AMOUNT = re.compile(r"^[$€£¥]|\d(?:k|bn)$", re.I)
_CURRENCY_AFTER = re.compile(r"\s?(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks)\b", re.I)
_AGE_BEFORE = re.compile(r"(?:\b(?:age|aged|turns?|turned|turning|i am|i'm)\s*)$", re.I)
_AGE_AFTER = re.compile(r"^\s*(?:years?[ -]old|yo\b|y/o\b|-year-old)", re.I)
_YEAR = re.compile(r"^(?:19|20)\d\d$")
# Numbers that measure rather than identify: a time or a video's time code, a decimal, a span of years.
_MEASURE = re.compile(r"^(?:\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d{1,3})?|\d{1,5}[.,]\d{1,3}|(?:19|20)\d\d-(?:19|20)\d\d)$")

# Sensitive topics: word patterns (stems end in \w*), each naming a fact about the writer.
_TOPICS = {
    "health": r"pregnan\w*|miscarr\w*|diagnos\w*|cancer|tumou?r\w*|chemo\w*|diabet\w*|depress\w*|anxiety|"
              r"adhd|autis\w*|bipolar|schizo\w*|hiv|aids|std|stds|disease\w*|illness\w*|disorder\w*|surger\w*|"
              r"therap\w*|psychiatr\w*|medication\w*|prescri\w*|symptom\w*|hospital\w*|rehab\w*|addict\w*|"
              r"alcoholi\w*|overdos\w*|suicid\w*|disabilit\w*|disabled|injur\w*|ivf|infertil\w*|abortion\w*|"
              r"sick|sickness|migraine\w*|asthma|epilep\w*|dementia|alzheimer\w*|arthritis|stroke|allerg\w*|"
              r"covid|insomnia|eating disorder|weight loss|chronic|ultrasound|mri|x-ray|biopsy|prenatal|obstetric\w*|"
              r"gyn(?:a)?ecolog\w*|oncolog\w*|cardiolog\w*|dialysis|transplant\w*",
    "finances": r"lost my job|laid off|layoff\w*|fired|unemploy\w*|jobless|debt\w*|bankrupt\w*|owe|owed|owing|"
                r"loan\w*|mortgage\w*|salary|salaries|income|paycheck\w*|wage\w*|evict\w*|foreclos\w*|broke|"
                r"credit score|overdraft|savings|rent arrears|behind on rent|can't afford|cannot afford|"
                r"welfare|food stamps|benefits claim",
    "legal": r"arrest\w*|convict\w*|criminal record|lawsuit\w*|sued|suing|court case|custody|divorc\w*|"
             r"separat(?:ed|ion) from|restraining order|probation|parole|immigration status|undocumented|"
             r"deport\w*|asylum|visa status",
    "identity": r"gay|lesbian|bisexual|transgender|trans woman|trans man|queer|coming out|came out|"
                r"muslim|christian|jewish|hindu|buddhist|atheist|catholic|mormon|religio\w*|"
                r"democrat\w*|republican\w*|conservative|liberal|my ethnicity|my race",
    "family": r"my family|my relationship|my partner's|my marriage|my pregnancy|breakup|broke up|affair|cheat\w*",
}
_TOPIC_RE = re.compile(r"(?<![\w'’-])(?:" + "|".join(f"(?P<{k}>{v})" for k, v in _TOPICS.items()) + r")(?![\w'’-])",
                       re.I)
# "my wife", "our son", "his late mother": who the writer lives with
_RELATION = re.compile(
    r"\b(?:my|our)\s+(?:(?:late|dear|beloved|little|older|younger|elder|baby|twin|new|ex|ex-|step|future|soon-to-be)\s*)*"
    r"(?:wife|husband|spouse|fianc[ée]e?|girlfriend|boyfriend|partner|son|daughter|kids?|child|children|baby|"
    r"mother|mom|mum|father|dad|parents?|brother|sister|siblings?|twins?|grandmother|grandma|grandfather|grandpa|"
    r"grandparents?|grandson|granddaughter|grandchild(?:ren)?|aunt|uncle|niece|nephew|cousin|in-laws?|"
    r"mother-in-law|father-in-law|stepmother|stepfather|stepson|stepdaughter)\b", re.I)
# Where a clause ends: punctuation, or a conjunction that opens a new one.
_CLAUSE_BREAK = re.compile(r"[.;:!?()\[\]\n—–]+|,\s*|\s+(?=(?:because|since|as|after|when|while|but|and|so|though|"
                           r"although|now that|given that|ever since|which|who|where)\b)", re.I)


@dataclass(frozen=True)
class SensitiveSpan:
    """One span of a text that states a fact about its writer (positions in the text)."""

    kind: str  # 'email', 'url', 'path', 'tag', 'number', 'name', 'rare', 'relation', or a topic: 'health', 'finances'...
    start: int
    end: int


def sensitive_spans(text: str) -> list[SensitiveSpan]:
    """The spans of text that state a fact about its writer, merged where they overlap."""
    spans = [SensitiveSpan(kind, m.start(), m.end()) for kind, regex in _IDENTIFIERS for m in regex.finditer(text)
             if kind != "number" or _identifying_number(text, m)]
    spans += _names(text)
    spans += [SensitiveSpan("relation", m.start(), m.end()) for m in _RELATION.finditer(text)]
    spans += _topic_clauses(text)
    return _merged(spans)


def _identifying_number(text: str, m: re.Match) -> bool:
    token = m.group()
    digits = sum(c.isdigit() for c in token)
    if _YEAR.match(token) or (_MEASURE.match(token) and not _CURRENCY_AFTER.match(text, m.end())):
        return False
    return (digits >= MIN_ID_DIGITS or (digits >= 3 and any(c.isalpha() for c in token)) or bool(_AMOUNT.search(token))
            or bool(_CURRENCY_AFTER.match(text, m.end()))
            or bool(_AGE_BEFORE.search(text[max(0, m.start() - 12):m.start()]))
            or bool(_AGE_AFTER.match(text[m.end():m.end() + 12])))


@lru_cache(maxsize=1)
def _first_names() -> dict[str, float]:
    """US census first names (the `names` package) and how common each is, in percent of people."""
    import os

    import names

    folder = os.path.dirname(names.__file__)
    out: dict[str, float] = {}
    for file in ("dist.female.first", "dist.male.first"):
        with open(os.path.join(folder, file), encoding="ascii") as f:
            for line in f:
                name, share = line.split()[:2]
                out[name.lower()] = max(out.get(name.lower(), 0.0), float(share))
    return out


# A word is taken for a first name where people bear it more often than writers use it as a word:
# 'Emma', 'Rachel', 'Mark' are; 'Will', 'May', 'Hope', 'Young' are words first. Written in lower case
# a name must be rarer still as a word: 'emma', 'harrison', but not 'rose', 'grace', 'mark'.
NAME_SHARE, NAME_MAX_ZIPF, COMMON_NAME_SHARE = 0.01, 5.2, 0.1
LOWERCASE_NAME_MAX_ZIPF = 4.5


def _is_first_name(lower: str, *, written_in_lower_case: bool = False) -> bool:
    share = _first_names().get(lower, 0.0)
    if written_in_lower_case:
        return share >= NAME_SHARE and word_zipf(lower) < LOWERCASE_NAME_MAX_ZIPF
    return share >= COMMON_NAME_SHARE or (share >= NAME_SHARE and word_zipf(lower) < NAME_MAX_ZIPF)


# Languages whose word lists judge a Latin-script text that is not English ('contexte', 'cual'), and
# the share of a text's lower-case words common in English below which it is taken for another language.
OTHER_LATIN_LANGUAGES = ("fr", "es", "de", "it", "pt", "nl")
ENGLISH_SHARE = 0.6
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


@lru_cache(maxsize=200000)
def _zipf_in(word: str, lang: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, lang)


def _frequency(text: str, words: list[re.Match]):
    """How common a folded word of this text is in the text's own language: English, Russian for
    Cyrillic words, and for a Latin-script text mostly of words rare in English the likeliest of
    OTHER_LATIN_LANGUAGES, so another language's common words are not taken for names."""
    lower = [m.group().lower() for m in words if len(m.group()) >= 3 and m.group().islower() and
             not _CYRILLIC.search(m.group())]
    foreign = len(lower) >= 5 and sum(word_zipf(w) >= RARE_NAME_ZIPF for w in lower) < ENGLISH_SHARE * len(lower)
    lang = max(OTHER_LATIN_LANGUAGES, key=lambda la: sum(_zipf_in(w, la) >= RARE_NAME_ZIPF for w in lower)) \
        if foreign else None

    def zipf(word: str) -> float:
        if _CYRILLIC.search(word):
            return _zipf_in(word, "ru")
        return max(word_zipf(word), _zipf_in(word, lang)) if lang else word_zipf(word)
    return zipf


def _names(text: str) -> list[SensitiveSpan]:
    """Capitalized words inside a sentence and their chains; a sentence's first word when it is a
    first name, capitalized elsewhere too, starts a chain or is rare; rare words and first names in
    lower case; a word after a title ('Ms. yoyo') or before 'et al.'; place names in any case;
    every other place a word of a name found stands. A program's identifiers, common acronyms and
    single letters are no names."""
    words = list(_WORD.finditer(text))
    capitalized_inside = set()
    first_of_sentence = []
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    lines = [bisect.bisect_left(newlines, m.start()) for m in words]  # the line each word stands on
    title_lines = _title_case_lines(words, lines)
    code_lines = {bisect.bisect_left(newlines, m.start()) for m in _CODE_LINE.finditer(text)}
    zipf = _frequency(text, words)
    for i, m in enumerate(words):
        before = text[words[i - 1].end():m.start()] if i else text[:m.start()]
        if i and (len(words[i - 1].group()) == 1 or words[i - 1].group().lower() in _HONORIFICS):
            before = before.replace(".", "", 1)  # the period of an initial or a title ends no sentence: 'P., & Zhang'
        first_of_sentence.append(i == 0 or bool(re.search(r"[.!?:\n\"“(\[\]|>#*=;{}]|^\s*[-•]", before)))
        if _is_capitalized(m.group()) and not first_of_sentence[i] and lines[i] not in title_lines:
            capitalized_inside.add(m.group().lower())
    is_name = []
    for i, m in enumerate(words):
        word, lower = m.group(), m.group().lower()
        if _names_no_one(word, lines[i] in code_lines) or zipf(lower) >= FUNCTION_WORD_ZIPF:
            is_name.append(False)
            continue
        # on a line of code a lower-case word is the program's ('lib64', 'randint'), not a name
        rare = len(lower) >= 3 and not lower.isupper() and not (lines[i] in code_lines and word.islower()) and \
            zipf(lower.strip("'’.-")) < (RARE_NAME_ZIPF if _is_capitalized(word) else RARE_LOWERCASE_ZIPF)
        if not _is_capitalized(word) or lower in _COMMON_CAPITALIZED or lines[i] in title_lines:
            is_name.append(rare or (lower not in _COMMON_CAPITALIZED and _is_first_name(lower, written_in_lower_case=True)))
        elif not first_of_sentence[i]:
            is_name.append(True)
        else:
            follows = i + 1 < len(words) and _is_capitalized(words[i + 1].group()) and \
                text[m.end():words[i + 1].start()].strip() == ""
            starts_chain = follows and zipf(lower) < CHAIN_START_MAX_ZIPF
            is_name.append(rare or lower in capitalized_inside or starts_chain or _is_first_name(lower))
    for i, m in enumerate(words):  # names by their neighbours: 'Mr. Lin', 'Song et al.'
        after_title = i > 0 and words[i - 1].group().lower().rstrip(".") in _HONORIFICS and \
            text[words[i - 1].end():m.start()].strip() in ("", ".")
        before_et_al = i + 2 < len(words) and words[i + 1].group().lower() == "et" and \
            words[i + 2].group().lower().startswith("al")
        if after_title or before_et_al:
            is_name[i] = True
    starts = [w.start() for w in words]
    for cue in _NAME_CUE.finditer(text):  # 'my name is amer', 'a company called tech stop', 'Hi May'
        i = bisect.bisect_left(starts, cue.end())
        for j in range(i, min(i + NAME_CUE_WORDS, len(words))):
            gap = text[words[j - 1].end():words[j].start()] if j > i else text[cue.end():words[j].start()]
            word, lower = words[j].group(), words[j].group().lower()
            common = zipf(lower) >= NAME_CUE_STOP_ZIPF and not (_is_capitalized(word) and _first_names().get(lower, 0.0) >= NAME_SHARE)
            if gap.strip() or common or lower in _HONORIFICS or lower in _GREETED:
                break
            is_name[j] = True
    for start, end in _places(words, text):
        is_name[start:end] = [True] * (end - start)
    # a word of a name found once is that name wherever it stands ("Johnny" of "Johnny Bay")
    named = {words[i].group().lower() for i in range(len(words)) if is_name[i] and _is_capitalized(words[i].group())
             and word_zipf(words[i].group().lower()) < FUNCTION_WORD_ZIPF}
    is_name = [flag or (_is_capitalized(m.group()) and m.group().lower() in named) for flag, m in zip(is_name, words)]
    spans, i = [], 0
    while i < len(words):
        if not is_name[i]:
            i += 1
            continue
        j = i
        # a chain: names joined by spaces or by a joiner word ("University of North Florida")
        while j + 1 < len(words):
            gap = text[words[j].end():words[j + 1].start()]
            if gap.strip() not in ("", "-", "&") or "\n" in gap:
                break
            if is_name[j + 1]:
                j += 1
            elif words[j + 1].group().lower() in _CHAIN_JOINERS and j + 2 < len(words) and is_name[j + 2] and \
                    text[words[j + 1].end():words[j + 2].start()].strip() == "":
                j += 2
            else:
                break
        spans.append(SensitiveSpan("name" if _is_capitalized(words[i].group()) else "rare",
                                   words[i].start(), _possessive_end(text, words[j].end())))
        i = j + 1
    return spans


def _names_no_one(word: str, in_code: bool) -> bool:
    """A single letter ('Plan A'), a common acronym ('AI', 'IT'), or a program's identifier whose
    parts are common words: 'self.password', 'train_data', and on a line of code 'BuildId'."""
    letters = word.strip("'’.-")
    if len(letters) <= 1:
        return True
    if letters.isupper() and letters.isalpha() and len(letters) <= 6:
        return word_zipf(letters.lower()) >= COMMON_ACRONYM_ZIPF and letters.lower() not in _PLACE_ACRONYMS
    # Outside a line of code only a lower-case start joined by '.' or '_' reads as code: 'Spain.In'
    # is a missing space, 'LinkedIn' a name.
    code_shaped = "_" in letters or ("." in letters and all(seg[:1].islower() for seg in letters.split(".")))
    parts = _CODE_PARTS.findall(letters)
    if any(part.isdigit() for part in parts):  # 'ru.myitschool.lab23': a package, a school's name in it
        return False
    if not (code_shaped or (in_code and len(parts) >= 2 and re.search(r"[a-z][A-Z]|\.", letters))):
        return False
    places = _place_names()[0]
    return len(parts) >= 2 and any(len(part) >= 4 for part in parts) and all(
        len(part) <= 3 or (word_zipf(part.lower()) >= CODE_PART_MIN_ZIPF and part.lower() not in places and
                           _first_names().get(part.lower(), 0.0) < NAME_SHARE and part.lower() not in _HONORIFICS)
        for part in parts)


@lru_cache(maxsize=1)
def _place_names() -> tuple[frozenset[str], int]:
    """The place names of data/places.json (tools/places.py: GeoNames countries, continents, US states
    and large cities, lower-cased), and the most words one has."""
    import json
    from importlib import resources

    places = json.loads(resources.files("cogenesis_device").joinpath("data/places.json").read_text("utf-8"))["places"]
    return frozenset(places), max(len(p.split()) for p in places)


def _places(words: list[re.Match], text: str) -> list[tuple[int, int]]:
    """(first, end) word indexes of the place names among words, in any case ('belarus', 'HONG KONG')."""
    places, longest = _place_names()
    found, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            last = words[i + n - 1]
            if n > 1 and "\n" in text[words[i].start():last.end()]:
                continue
            if " ".join(w.group().lower() for w in words[i:i + n]) in places:
                found.append((i, i + n))
                i += n - 1
                break
        i += 1
    return found


def _is_capitalized(word: str) -> bool:
    return word[:1].isupper()


_POSSESSIVE = re.compile(r"['’]s\b")


def _possessive_end(text: str, end: int) -> int:
    match = _POSSESSIVE.match(text, end)
    return match.end() if match else end


def _title_case_lines(words: list[re.Match], lines: list[int]) -> set[int]:
    """Lines whose common words (three or more) are mostly capitalized: a heading's capitals name nobody.
    Only common words count: names are capitalized in any sentence, so counting them made a short
    sentence full of names a heading ("Write to Ingrid Solheim at Harbour Bank" kept "Harbour Bank")."""
    per_line: dict[int, list[bool]] = {}
    for m, line in zip(words, lines):
        lower = m.group().lower()
        if lower not in _CHAIN_JOINERS and lower not in _COMMON_CAPITALIZED and word_zipf(lower) >= HEADING_WORD_MIN_ZIPF and \
                _first_names().get(lower, 0.0) < NAME_SHARE:
            per_line.setdefault(line, []).append(_is_capitalized(m.group()))
    return {line for line, caps in per_line.items() if sum(caps) >= 3 and sum(caps) >= TITLE_CASE_SHARE * len(caps)}


def _topic_clauses(text: str) -> list[SensitiveSpan]:
    """A clause that states a sensitive topic, whole; in the first clause of a sentence (the task:
    "Write a pregnancy announcement") the topic's words only."""
    spans = []
    bounds = [0] + [m.end() for m in _CLAUSE_BREAK.finditer(text)] + [len(text)]
    for m in _TOPIC_RE.finditer(text):
        start = max(b for b in bounds if b <= m.start())
        end = min(b for b in bounds if b >= m.end())
        sentence_start = max([0] + [s.end() for s in re.finditer(r"[.!?\n]+\s*", text[:m.start()])])
        opens_sentence = not _CLAUSE_BREAK.search(text[sentence_start:start].rstrip(",; "))
        if opens_sentence and start <= sentence_start:
            start, end = m.start(), m.end()
        spans.append(SensitiveSpan(m.lastgroup or "topic", start, end))
    return spans


def topic_terms(text: str) -> list[str]:
    """The words of text that name a sensitive topic ("pregnant", "lost my job"): private wherever they
    stand, though no guard rule (names, numbers, rare words) would find them."""
    return [m.group() for m in _TOPIC_RE.finditer(text)]


def _merged(spans: list[SensitiveSpan]) -> list[SensitiveSpan]:
    out: list[SensitiveSpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.start >= span.end:
            continue
        if out and span.start < out[-1].end:
            last = out[-1]
            if span.end > last.end:
                out[-1] = SensitiveSpan(last.kind if last.end - last.start >= span.end - span.start else span.kind,
                                        last.start, span.end)
            continue
        out.append(span)
    return out


def scrub(text: str, also: Sequence[tuple[int, int]] = ()) -> tuple[str, list[str]]:
    """(text without the facts it states about its writer, the removed pieces). also: more (start, end)
    spans to remove (what another rule found). Relations are replaced by RELATION_STANDIN; everything
    else is removed, and the spaces and punctuation left around a removed piece are tidied."""
    out, removed, pos = [], [], 0
    spans = _merged([*sensitive_spans(text), *(SensitiveSpan("other", s, e) for s, e in also)])
    for span in spans:
        out.append(text[pos:span.start])
        removed.append(text[span.start:span.end])
        out.append(f" {RELATION_STANDIN} " if span.kind == "relation" else " ")  # words either side stay apart
        pos = span.end
    out.append(text[pos:])
    return _tidy("".join(out)), removed


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +([,.;:!?)])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"[,;:]+(?=\s*(?:[.!?]|$))", "", text, flags=re.M)
    return "\n".join(line.strip() for line in text.split("\n")).strip()
