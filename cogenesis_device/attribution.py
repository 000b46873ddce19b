"""Context attribution on the device: which generated tokens the private context explains.

The rules below run in the engine's collaborative loop (cg_cogen, engine/src/cogen.cpp); this module
holds their settings and documents them.

In logits mode the remote reads the text generated so far. Before a token becomes part of a request,
the local model scores it twice: with the private context (the main sequence, which wrote it) and
without it (a second sequence of the same session: the public instruction, then the same text). A
token is withheld, and a placeholder sent in its place (one for a run of withheld tokens), when

- its log-ratio log p(t | context) - log p(t | no context) exceeds `threshold` nats: the context
  explains it;
- or it is improbable without the context: log p(t | no context) < `min_logprob` nats;
- or it continues a withheld word: a name split into tokens carries its surprise in its first token,
  so the rest of the word goes too, and the earlier pieces of the word not yet sent go back;
- or it starts a word that was withheld before and is rare without the context (log p < -4 nats): a
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
PLACEHOLDER = _native.PLACEHOLDER  # what a request carries for a withheld run (the engine's CG_PLACEHOLDER)


_ENGINE = _native.cogen_default_params()  # the engine loop's attribution defaults


@dataclass(frozen=True)
class AttributionConfig:
    """When a generated token is withheld from the remote (see the module docstring)."""

    threshold: float = _ENGINE["threshold"]  # nats of log-ratio, with vs without the context
    min_logprob: float = _ENGINE["min_logprob"]  # nats: tokens less likely than this without the context are withheld
    budget_bits: float = _ENGINE["budget_bits"]  # most context information in `window` consecutive sent tokens
    window: int = _ENGINE["window"]

    def __post_init__(self):
        for name in ("threshold", "min_logprob", "budget_bits"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidParameterError(f"attribution {name} must be a finite number, got {getattr(self, name)}")
        if self.threshold < 0 or self.budget_bits < 0 or self.window < 1:
            raise InvalidParameterError(f"attribution threshold and budget_bits must be >= 0 and window >= 1, got "
                                        f"{self.threshold}, {self.budget_bits}, {self.window}")


def log_softmax_at(row: np.ndarray, token: int) -> float:
    top = float(row.max())
    return float(row[token] - top - math.log(float(np.exp(row - top).sum())))
