"""Teacher-forced scoring of gold answers: bits per byte for local (with context), remote (without),
and each fusion rule, plus the per-position records the fusion gate is trained on.

The remote's scores come from a GGUF model run here without the context, cut to its top-k as a server
would send them; the remote-alone figure uses its full distribution. Where the two tokenizers differ,
a local position is fused only where its byte offset in the gold text is also a remote token boundary
(as in generation); elsewhere it is scored local-only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import _native
from ..errors import InvalidParameterError
from ..fusion import FEATURE_NAMES, FusionConfig, log_softmax, remote_dense
from ..local import LocalModel
from .datasets import Sample

GATE_GRID = np.linspace(0.0, 1.0, 21)  # local weights at which each position's log-normalizer is stored



@dataclass
class GoldScore:
    """Negative log-likelihood (nats) of one gold answer under each system."""

    tid: str
    n_bytes: int
    n_local_tokens: int
    n_remote_tokens: int
    n_fused_positions: int  # local positions where a remote distribution took part
    nll: dict[str, float] = field(default_factory=dict)

    def bpb(self, system: str) -> float:
        return self.nll[system] / math.log(2) / self.n_bytes


@dataclass
class GateRecords:
    """Per fused position: the 8 gate features, log p(gold) under local and remote (with the fill),
    and log Z(w) = logsumexp(w * local + (1 - w) * remote) at GATE_GRID, so the fused loss at any w
    can be interpolated without the vocabulary."""

    features: np.ndarray  # (n, 8)
    local_gold: np.ndarray  # (n,)
    remote_gold: np.ndarray  # (n,)
    log_z: np.ndarray  # (n, len(GATE_GRID))
    fill: str
    n_bytes: int  # the gold answer's UTF-8 bytes
    unfused_nll: float  # local nll (nats) of the positions scored without the remote

    def save(self, path) -> None:
        np.savez_compressed(path, features=self.features, local_gold=self.local_gold, remote_gold=self.remote_gold,
                            log_z=self.log_z, fill=self.fill, n_bytes=self.n_bytes, unfused_nll=self.unfused_nll)

    @classmethod
    def load(cls, path) -> "GateRecords":
        with np.load(path) as z:
            return cls(z["features"], z["local_gold"], z["remote_gold"], z["log_z"], str(z["fill"]), int(z["n_bytes"]),
                       float(z["unfused_nll"]))


def _offsets(model: LocalModel, tokens: list[int]) -> list[int]:
    """Byte offset in the text where each token starts."""
    out, pos = [], 0
    for t in tokens:
        out.append(pos)
        pos += len(model.native.token_to_piece(t))
    return out


class GoldScorer:
    """Scores gold answers teacher-forced. local sees the context; remote (a LocalModel standing in for
    the remote, e.g. the GGUF the loopback server runs) sees only the public instruction.

    rules: fusion configs by label. top_k: how much of the remote's distribution fusion gets.
    gate_fill: when set, score() also returns GateRecords computed with that fill."""

    def __init__(self, local: LocalModel, remote: LocalModel, rules: dict[str, FusionConfig], *, top_k: int = 20,
                 gate_fill: str | None = None):
        self.local, self.remote, self.rules, self.top_k, self.gate_fill = local, remote, rules, top_k, gate_fill
        self._bridge = local.vocab_bridge
        self._noctx_session = local.new_session()
        self._zero_gate = _native.Gate.from_arrays(np.zeros(8, np.float32), np.ones(8, np.float32),
                                                   np.zeros((1, 8), np.float32), np.zeros(1, np.float32),
                                                   np.zeros(1, np.float32), 0.0)

    def _remote_steps(self, sample: Sample, gold: list[int]) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        """The remote's nll of the gold (full distribution) and its top-k at each of its positions."""
        prompt = self.remote.tokenize(self.remote.format_prompt([{"role": "user", "content": sample.instruction}]),
                                      parse_special=True)
        nll, steps = 0.0, []
        with self.remote.pooled_session() as session:
            for row, target in zip(LocalModel.teacher_forced_rows(session, prompt, gold), gold):
                lp = log_softmax(row)
                nll -= lp[target]
                top = np.argpartition(-lp, self.top_k)[:self.top_k]
                steps.append((top.astype(np.int32), lp[top].astype(np.float32)))
        return nll, steps

    def score(self, sample: Sample) -> tuple[GoldScore, GateRecords | None]:
        local, remote = self.local, self.remote
        gold_l = local.tokenize(sample.gold, add_special=False)
        gold_r = remote.tokenize(sample.gold, add_special=False)
        if not gold_l or not gold_r:
            raise InvalidParameterError(f"sample {sample.tid}: empty gold answer")
        remote_nll, remote_steps = self._remote_steps(sample, gold_r)
        same_vocab = remote.n_vocab == local.n_vocab and gold_l == gold_r
        boundary = {off: j for j, off in enumerate(_offsets(remote, gold_r))}

        def remote_at(i: int, offset: int):
            j = i if same_vocab else boundary.get(offset)
            if j is None:
                return None
            ids, lps = remote_steps[j]
            if same_vocab:
                return ids, lps
            pieces = [remote.native.token_to_piece(int(t)) for t in ids]
            return self._bridge.map(pieces, lps)

        needs_noctx = any(c.rule == "context_delta" for c in self.rules.values())
        noctx_rows = (LocalModel.teacher_forced_rows(self._noctx_session, local.private_prompt("", sample.instruction), gold_l)
                      if needs_noctx else None)
        prompt = local.private_prompt(sample.context, sample.instruction)
        if len(prompt) + len(gold_l) > local.n_ctx:
            raise InvalidParameterError(
                f"sample {sample.tid}: prompt ({len(prompt)} tokens) + gold ({len(gold_l)}) exceed the local "
                f"context window ({local.n_ctx}); raise n_ctx or shorten the context")
        nll = {"local": 0.0, "remote": remote_nll, **{label: 0.0 for label in self.rules}}
        gate_rows: list[tuple] = []
        fused_positions, unfused_nll = 0, 0.0
        with local.pooled_session(scope=local.scope_for(sample.context)) as session:
            rows = LocalModel.teacher_forced_rows(session, prompt, gold_l)
            for i, (row, offset, target) in enumerate(zip(rows, _offsets(local, gold_l), gold_l)):
                noctx = next(noctx_rows) if noctx_rows is not None else None
                ll = log_softmax(row)
                nll["local"] -= ll[target]
                scores = remote_at(i, offset)
                if scores is None or len(scores[0]) == 0:
                    unfused_nll -= ll[target]
                    for label in self.rules:
                        nll[label] -= ll[target]
                    continue
                fused_positions += 1
                for label, cfg in self.rules.items():
                    fused, _ = _native.fuse(row, scores[0], scores[1], rule=cfg.rule, fill=cfg.fill, weight=cfg.weight,
                                            alpha=cfg.alpha, local_noctx=noctx, gate=cfg.gate)
                    nll[label] -= log_softmax(fused)[target]
                if self.gate_fill:
                    gate_rows.append(self._gate_row(row, ll, scores, target))
        score = GoldScore(sample.tid, len(sample.gold.encode("utf-8")), len(gold_l), len(gold_r), fused_positions,
                          {k: float(v) for k, v in nll.items()})
        if not self.gate_fill:
            return score, None
        n_bytes = score.n_bytes
        if not gate_rows:
            empty = np.zeros((0,))
            return score, GateRecords(np.zeros((0, 8), np.float32), empty, empty, np.zeros((0, len(GATE_GRID))),
                                      self.gate_fill, n_bytes, float(unfused_nll))
        feats, lg, rg, lz = (np.array(col) for col in zip(*gate_rows))
        return score, GateRecords(feats.astype(np.float32), lg, rg, lz, self.gate_fill, n_bytes, float(unfused_nll))

    def _gate_row(self, row: np.ndarray, ll: np.ndarray, scores, target: int) -> tuple:
        ids, lps = scores
        _, info = _native.fuse(row, ids, lps, rule="gate", fill=self.gate_fill, gate=self._zero_gate)
        features = [info.features[name] for name in FEATURE_NAMES]
        rd, _, _ = remote_dense(ids, lps, len(ll), self.gate_fill, ll)  # the remote side as fuse() builds it
        with np.errstate(invalid="ignore"):
            mix = GATE_GRID[:, None] * ll[None, :] + (1.0 - GATE_GRID)[:, None] * rd[None, :]
        mix[-1] = ll  # w = 1 is exactly local (0 * -inf would be NaN)
        m = mix.max(axis=1, keepdims=True)
        log_z = (m[:, 0] + np.log(np.exp(mix - m).sum(axis=1)))
        return features, ll[target], rd[target], log_z

