"""The public instruction derived on the device from a user's private request."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..attribution import NO_CONTEXT_SEQ, AttributionConfig, log_softmax_at
from ..local import LocalModel
from ..privacy import EgressGuard
from ..sensitive import scrub


@dataclass(frozen=True)
class DerivedInstruction:
    """The public instruction derived from a private request, and the spans removed from it."""

    text: str
    removed: list[str]


def derive_instruction(local: LocalModel, request: str, context: str,
                       attribution: AttributionConfig | None = None) -> "DerivedInstruction":
    """The public instruction for a private request: the request without what it says about the user
    by itself (names, places, numbers, dates, sensitive topics, family relations: see sensitive.py),
    without the spans the text guard finds of the context, and without the words the context explains
    (the attribution rule, scored on the device on the request's tokens), whole words at a time."""
    spans = [(f.start, f.end) for f in EgressGuard([context], tokenizer=local).find(request)]
    if context:
        spans += _explained_words(local, request, context, attribution or AttributionConfig())
    return DerivedInstruction(*scrub(request, also=spans))


def _explained_words(local: LocalModel, request: str, context: str, cfg: AttributionConfig) -> list[tuple[int, int]]:
    """Character spans of the request's words that the context explains (same rule as attribution)."""
    tokens = local.tokenize(request, add_special=False)
    if not tokens:
        return []
    lps = []
    with local.pooled_session(scope=LocalModel.scope_for(context)) as session:
        for seq, ctx in ((0, context), (NO_CONTEXT_SEQ, "")):
            rows = local.teacher_forced_rows(session, local.private_prompt_parts(ctx, "")[0], tokens, seq_id=seq)
            lps.append(np.array([log_softmax_at(row, t) for row, t in zip(rows, tokens)]))
        session.truncate(0, seq_id=NO_CONTEXT_SEQ)
    explained = (lps[0] - lps[1] > cfg.threshold) | (lps[1] < cfg.min_logprob)
    spans, pos = [], 0
    for token, hit in zip(tokens, explained):
        piece = local.native.token_to_piece(token).decode("utf-8", errors="replace").strip()
        start = request.find(piece, pos) if piece else -1
        if start >= 0:
            if hit:
                spans.append(_whole_word(request, start, start + len(piece)))
            pos = start + len(piece)
    return spans



def _whole_word(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "'’-"):
        start -= 1
    while end < len(text) and (text[end].isalnum() or text[end] in "'’-"):
        end += 1
    return start, end
