"""Logit fusion: native fusion on numpy arrays and a LogitsProcessor (the float64 numpy reference the
native code is tested against is the tests' own: tests/reference.py).

Every rule works in log-probability space. The local side is log-softmax(local logits). The remote
side is a sparse top-k of (ids, logprobs), and its unlisted tokens get the fill:
  - mask: -inf;
  - tail: log((1 - sum p_topk) / (V - k)), an equal share of what the top-k leaves;
  - local: what the top-k leaves, shared in proportion to the local model's probabilities,
    log(1 - sum p_topk) + local(t) - log(sum of local p over unlisted tokens). With the weighted
    rule, unlisted tokens then keep the local model's order and ratios; a gold token the remote did
    not list is not pushed down to an equal share of the leftover (which costs bits: docs/benchmarks.md,
    "Gold bits per byte by rule and fill").
Never 0. The rules:
  - weighted:      w * local + (1 - w) * remote          (w = 0.5 is the paper's mean)
  - max:           max(local, remote)
  - context_delta: remote + alpha * (local - local_noctx)  (the private context as the "tuning")
  - gate:          weighted, with w from a learned gate over vocabulary-independent features

`plausible` (every rule) limits the candidates to tokens the local model, which reads the private
context, finds plausible: p_local(t) >= plausible * p_local(top-1). A remote that lists one token
at logprob 0 can then no longer dictate text the local model would not write; a step where no
listed token is plausible is local-only. 0 is the paper's fusion (no limit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import _native
from .errors import InvalidParameterError

RULES = ("weighted", "max", "context_delta", "gate")
FILLS = ("mask", "tail", "local")
FEATURE_NAMES = (
    "local_entropy", "remote_entropy", "local_top_p", "remote_top_p",
    "overlap", "divergence", "local_p_of_remote_top", "remote_p_of_local_top",
)
FEATURE_TOP_K = 20
SENTINEL = -9999.0

fuse = _native.fuse
Gate = _native.Gate
FusionSampler = _native.FusionSampler
VocabBridge = _native.VocabBridge
schedule_consult = _native.schedule_consult


# The collaborative loop's fusion defaults (cg_cogen_default_params), which FusionConfig() is.
_COGEN_FUSION = _native.cogen_default_params()["fusion"]


@dataclass(frozen=True)
class FusionConfig:
    """How local and remote scores are combined (see fusion.py). schedule=(P, K, T): consult the
    remote on every step below P, then on T of every K + T steps; None consults on every step.
    plausible: the remote chooses only among tokens whose local probability (with the private
    context) is at least this share of the local top-1's; 0 is the paper's fusion, where a remote
    listing a single token dictates the text."""

    rule: str = _COGEN_FUSION["rule"]
    fill: str = _COGEN_FUSION["fill"]
    weight: float = _COGEN_FUSION["weight"]
    alpha: float = _COGEN_FUSION["alpha"]
    gate: object = None
    schedule: tuple[int, int, int] | None = None
    plausible: float = _COGEN_FUSION["plausible"]

    @classmethod
    def parse(cls, spec: str, gate: object = None) -> "FusionConfig":
        """A config from its short form: 'weighted', 'weighted:tail', 'weighted:local:w=0.8',
        'context_delta:tail:a=0.5', 'gate:local' (needs gate=), 'max:mask'."""
        parts = spec.split(":")
        rule, fill, options = parts[0], "mask", {}
        for part in parts[1:]:
            if part in FILLS:
                fill = part
            elif part[:2] in ("w=", "a="):
                try:
                    options["weight" if part[0] == "w" else "alpha"] = float(part[2:])
                except ValueError:
                    raise InvalidParameterError(f"fusion rule {spec!r}: {part!r} is not a number") from None
            else:
                raise InvalidParameterError(f"fusion rule {spec!r}: unknown part {part!r} "
                                            f"(fills: {', '.join(FILLS)}; w=, a=)")
        if rule not in RULES:
            raise InvalidParameterError(f"fusion rule {spec!r}: rule must be one of {', '.join(RULES)}")
        if rule == "gate" and gate is None:
            raise InvalidParameterError(f"fusion rule {spec!r} needs a gate weights file (--gate)")
        return cls(rule=rule, fill=fill, gate=gate if rule == "gate" else None, **options)



# -- numpy reference (float64); the native code must agree with it -----------


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax in float64."""
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def remote_dense(ids, logprobs, n_vocab: int, fill: str, ll: np.ndarray | None = None
                  ) -> tuple[np.ndarray, dict[int, float], float]:
    """The remote side on the whole vocabulary, its listed tokens, and the tail's fill (-inf for
    the other fills). fill='local' needs ll, the local log-probabilities."""
    merged: dict[int, float] = {}
    for i, lp in zip(np.asarray(ids).tolist(), np.asarray(logprobs, dtype=np.float64).tolist()):
        if lp <= SENTINEL:
            continue
        p = np.exp(min(lp, 0.0))
        merged[i] = merged.get(i, 0.0) + p
    listed = {i: np.log(min(p, 1.0)) for i, p in merged.items()}
    fill_lp = -np.inf
    rest = 1.0 - sum(np.exp(v) for v in listed.values())
    if fill == "tail" and rest > 1e-7 and n_vocab > len(listed):
        fill_lp = np.log(rest / (n_vocab - len(listed)))
    dense = np.full(n_vocab, fill_lp)
    if fill == "local" and rest > 1e-7 and n_vocab > len(listed):
        unlisted = np.ones(n_vocab, dtype=bool)
        unlisted[list(listed)] = False
        mass = np.exp(ll[unlisted]).sum()
        if mass > 0:
            dense = np.log(rest) + ll - np.log(mass)
    for i, v in listed.items():
        dense[i] = v
    return dense, listed, fill_lp


# -- transformers-style logits processor ---------------------------------------

RemoteFn = Callable[[Sequence[int]], "tuple[Sequence[int], Sequence[float]]"]


class FusionLogitsProcessor:
    """Fuses a remote top-k into each row of scores, with the call shape of transformers' LogitsProcessor.

    remote(input_ids_of_row) -> (ids, logprobs): the remote model's top-k for the next token, on
    this model's vocabulary (use VocabBridge.map for another tokenizer). An empty top-k leaves the
    row local-only. local_noctx(input_ids_of_row) -> scores is needed for context_delta. Works on
    numpy arrays, and on CPU float32 torch tensors without copying their data. `infos` collects
    each row's attribution.
    """

    def __init__(self, remote: RemoteFn, *, rule: str = "weighted", fill: str = "mask", weight: float = 0.5,
                 alpha: float = 1.0, gate: Gate | None = None,
                 local_noctx: Callable[[Sequence[int]], np.ndarray] | None = None):
        if rule == "context_delta" and local_noctx is None:
            raise ValueError("rule 'context_delta' needs local_noctx(prefix): this model's scores without the context")
        self.remote, self.rule, self.fill, self.weight, self.alpha, self.gate = remote, rule, fill, weight, alpha, gate
        self.local_noctx = local_noctx
        self.infos: list[dict] = []

    def __call__(self, input_ids, scores):
        torch_tensor = type(scores).__module__.startswith("torch")
        rows = scores.detach().cpu().numpy() if torch_tensor else np.asarray(scores)
        ids = input_ids.detach().cpu().numpy() if torch_tensor else np.asarray(input_ids)
        rows2d = rows.reshape(-1, rows.shape[-1])
        prefixes = ids.reshape(rows2d.shape[0], -1)
        out = np.empty(rows2d.shape, dtype=np.float32)
        for r in range(rows2d.shape[0]):
            prefix = prefixes[r].tolist()
            rid, rlp = self.remote(prefix)
            noctx = self.local_noctx(prefix) if self.local_noctx else None
            _, info = fuse(rows2d[r], np.asarray(rid, dtype=np.int32), np.asarray(rlp, dtype=np.float32),
                           rule=self.rule, fill=self.fill, weight=self.weight, alpha=self.alpha,
                           local_noctx=noctx, gate=self.gate, out=out[r])
            self.infos.append(info)
        out = out.reshape(rows.shape)
        if torch_tensor:
            import torch

            return torch.from_numpy(out).to(scores.device)
        return out
