"""Context attribution on the device: which generated tokens the private context explains.

In logits mode the remote reads the text generated so far. Before a token becomes part of a request,
the local model scores it twice: with the private context (the main sequence, which wrote it) and
without it (a second sequence of the same session: the public instruction, then the same text). A
token is withheld, and a placeholder sent in its place (one for a run of withheld tokens), when

- its log-ratio log p(t | context) - log p(t | no context) exceeds `threshold` nats: the context
  explains it;
- or it is improbable without the context: log p(t | no context) < `min_logprob` nats;
- or it continues a withheld word: a name split into tokens carries its surprise in its first token,
  so the rest of the word goes too, and the earlier pieces of the word not yet sent go back;
- or it starts a word that was withheld before and is rare without the context (log p < `RARE`): a
  name mentioned twice is predictable the second time, from the first mention, even without the context;
- or sending it would put more than `budget_bits` of context information into `window` consecutive
  sent tokens (across requests): a fact spread over many small tokens, such as the digits of a
  number, does not slip through one token at a time.

Every decision uses the local model's scores only, never the remote's, which an attacker controls.
The context information of a sent token is max(0, log2 p(t | context) - log2 p(t | no context)) bits.
A placeholder tells the remote that the context explained something there, not what.

Why the no-context side reads the text as written, not as sent: a placeholder leaves the sequence
that reads it without the words it replaced, so every ordinary token after it looks surprising and is
withheld in turn. Measured on dev sample 0 (48 greedy tokens): one withheld name cascaded into 31
withheld tokens, and speed fell to 0.45x. The two cases that reading the placeholders would catch, the
rest of a withheld word and a withheld word said again, have rules of their own above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _native
from .errors import InvalidParameterError

NO_CONTEXT_SEQ = 1  # the session's sequence without the private context (the main sequence is 0)
RARE = -4.0  # nats: a withheld word this unlikely without the context is withheld again when repeated
PLACEHOLDER = "[PRIVATE]"


@dataclass(frozen=True)
class AttributionConfig:
    """When a generated token is withheld from the remote (see the module docstring)."""

    threshold: float = 2.0  # nats of log-ratio, with vs without the context
    min_logprob: float = -10.0  # nats: tokens less likely than this without the context are withheld
    budget_bits: float = 8.0  # most context information in `window` consecutive sent tokens
    window: int = 16

    def __post_init__(self):
        for name in ("threshold", "min_logprob", "budget_bits"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidParameterError(f"attribution {name} must be a finite number, got {getattr(self, name)}")
        if self.threshold < 0 or self.budget_bits < 0 or self.window < 1:
            raise InvalidParameterError(f"attribution threshold and budget_bits must be >= 0 and window >= 1, got "
                                        f"{self.threshold}, {self.budget_bits}, {self.window}")


@dataclass
class _Entry:
    token: int
    piece: bytes
    withheld: bool
    bits: float  # context information, counted only when sent
    plain_lp: float  # log p(t | no context)
    sent: bool = False  # already part of a request: it can no longer be taken back


def log_softmax_at(row: np.ndarray, token: int) -> float:
    top = float(row.max())
    return float(row[token] - top - math.log(float(np.exp(row - top).sum())))


class EgressView:
    """The generated text as the remote reads it, and the no-context sequence that scores it.

    Tokens for the no-context sequence queue up in `pending` and are evaluated with the next
    main-sequence decode (one batch; see CoStream._decode), or by flush() when a decision needs them."""

    def __init__(self, model: _native.Model, session: _native.Session, config: AttributionConfig,
                 prompt: list[int], prefix_text: str = ""):
        self.model, self.session, self.config = model, session, config
        self.entries: list[_Entry] = []
        self.prefix_text = prefix_text  # the draft the generated text follows (the guard checks it)
        self._withheld_starts: set[int] = set()  # tokens that started a withheld word
        session.truncate(0, seq_id=NO_CONTEXT_SEQ)
        # Evaluated with the first flush, while the first request is in flight.
        self.pending: list[int] = list(prompt)
        self.row: np.ndarray | None = None

    # -- evaluation ------------------------------------------------------------------------------

    def take_pending(self) -> list[int]:
        """The queued tokens, handed to a batched decode (which must then call set_row)."""
        pending, self.pending = self.pending, []
        return pending

    def set_row(self, row: np.ndarray) -> None:
        self.row = row

    def flush(self) -> None:
        if self.pending:
            self.session.prefill(np.asarray(self.take_pending(), dtype=np.int32), seq_id=NO_CONTEXT_SEQ)
            self.set_row(self.session.logits(0))

    # -- decisions -------------------------------------------------------------------------------

    def add(self, token: int, context_lp: float) -> tuple[bool, float]:
        """Decide whether the generated token goes out as it is, given log p(token | context).
        Returns (withheld, log-ratio in nats)."""
        self.flush()
        cfg = self.config
        piece = self.model.token_to_piece(token)
        plain_lp = log_softmax_at(self.row, token)
        ratio = context_lp - plain_lp
        last = self.entries[-1] if self.entries else None
        continues_word = last is not None and _word_char(piece[:1]) and _word_char(last.piece[-1:])
        bits = max(0.0, ratio) / math.log(2)
        if continues_word and last.withheld:
            withheld = True
        elif ratio > cfg.threshold or plain_lp < cfg.min_logprob or (not continues_word and token in self._withheld_starts):
            withheld = True
            self._take_back_word(piece)
        else:
            recent = [e.bits for e in self.entries if not e.withheld][-(cfg.window - 1):] if cfg.window > 1 else []
            withheld = sum(recent) + bits > cfg.budget_bits
        self.entries.append(_Entry(token, piece, withheld, bits, plain_lp))
        if withheld and not continues_word:
            self._remember(self.entries[-1])
        self.pending.append(token)
        return withheld, ratio

    def _take_back_word(self, piece: bytes) -> None:
        """Withhold the unsent earlier pieces of the word the token continues."""
        i, following = len(self.entries), piece
        while i > 0:
            before = self.entries[i - 1]
            if before.sent or before.withheld or not (_word_char(before.piece[-1:]) and _word_char(following[:1])):
                break
            i, following = i - 1, before.piece
        if i < len(self.entries):
            for entry in self.entries[i:]:
                entry.withheld = True
            self._remember(self.entries[i])

    def _remember(self, entry: _Entry) -> None:
        if entry.plain_lp < RARE and _word_char(entry.piece.lstrip()[:1]):
            self._withheld_starts.add(entry.token)

    # -- what is sent ----------------------------------------------------------------------------

    def text(self) -> str:
        """The generated text as sent: withheld runs replaced by one placeholder each."""
        out, run = bytearray(), False
        for entry in self.entries:
            if entry.withheld:
                if not run:
                    out += (b" " if entry.piece[:1].isspace() else b"") + PLACEHOLDER.encode()
                run = True
            else:
                out += entry.piece
                run = False
        return self.prefix_text + out.decode("utf-8", errors="replace")

    def mark_sent(self) -> dict:
        """Marks every entry as part of a request; returns that request's attribution record."""
        for entry in self.entries:
            entry.sent = True
        sent = [e for e in self.entries if not e.withheld]
        return {"sent_tokens": len(sent), "withheld_tokens": len(self.entries) - len(sent),
                "context_bits": round(sum(e.bits for e in sent), 4)}


def _word_char(first: bytes) -> bool:
    """Whether a byte belongs inside a word (letters, digits, and any byte of a multi-byte character)."""
    return bool(first) and (first.isalnum() or first[0] >= 0x80)
