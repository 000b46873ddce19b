"""Training the vocabulary-independent fusion gate (pip install 'cogenesis-device[train]': torch on the CPU).

Input: the per-position records `cogenesis eval --gate-records` saves (scoring.GateRecords): 8 features,
log p(gold) on each side, and the log-normalizer of the fused distribution on a grid of weights. The
gate w = sigmoid(w2 . tanh(W1 z + b1) + b2) is trained to minimize the fused cross-entropy of the gold
next token, -(w l_local + (1 - w) l_remote)[gold] + log Z(w), with log Z interpolated between grid
points. Samples are split into train and held-out by tid; the report compares held-out bits per byte
of the gate with every fixed w on the grid (exact there) and with the best fixed w chosen on train.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from .scoring import GATE_GRID, GateRecords


@dataclass
class GateReport:
    train_samples: int
    held_out_samples: int
    train_positions: int
    held_out_positions: int
    held_out_bpb_gate: float
    held_out_bpb_best_fixed: float
    best_fixed_w: float  # chosen on the train split
    held_out_bpb_local: float  # w = 1
    held_out_bpb_by_w: dict
    gate_w_mean: float
    gate_w_sd: float
    fill: str

    def to_markdown(self) -> str:
        return "\n".join([
            f"Gate training ({self.fill} fill): {self.train_samples} train / {self.held_out_samples} held-out samples, "
            f"{self.train_positions} / {self.held_out_positions} positions", "",
            "| held-out | bits/byte |", "|---|---|",
            f"| local only (w = 1) | {self.held_out_bpb_local:.4f} |",
            f"| best fixed w = {self.best_fixed_w:.2f} (chosen on train) | {self.held_out_bpb_best_fixed:.4f} |",
            f"| learned gate (w = {self.gate_w_mean:.3f} ± {self.gate_w_sd:.3f}) | {self.held_out_bpb_gate:.4f} |",
            "",
        ])


def load_records(directory: str | Path) -> dict[str, GateRecords]:
    """tid-file stem -> records, from an eval output directory (or its gate/ folder)."""
    directory = Path(directory)
    if (directory / "gate").is_dir():
        directory = directory / "gate"
    records = {p.stem: GateRecords.load(p) for p in sorted(directory.glob("*.npz"))}
    if not records:
        raise InvalidParameterError(f"no gate records in {directory}; run `cogenesis eval --gate-records` first")
    fills = {r.fill for r in records.values()}
    if len(fills) != 1:
        raise InvalidParameterError(f"gate records mix fills {sorted(fills)}")
    return records


def split(names: list[str], held_out: float) -> tuple[list[str], list[str]]:
    """A split that depends only on the names: ordered by CRC32, the first share is held out."""
    ordered = sorted(names, key=lambda n: (zlib.crc32(n.encode()), n))
    n_test = max(1, round(held_out * len(names)))
    if len(names) < 2 or n_test >= len(names):
        raise InvalidParameterError(f"{len(names)} samples are too few to hold out {held_out:.0%}")
    test = set(ordered[:n_test])
    return [n for n in names if n not in test], [n for n in names if n in test]


def _stack(records: list[GateRecords]):
    return (np.concatenate([r.features for r in records]).astype(np.float64),
            np.concatenate([r.local_gold for r in records]), np.concatenate([r.remote_gold for r in records]),
            np.concatenate([r.log_z for r in records]))


def _bpb(records: list[GateRecords], fused_nll: float) -> float:
    return (fused_nll + sum(r.unfused_nll for r in records)) / math.log(2) / sum(r.n_bytes for r in records)


def fixed_w_nll(records: list[GateRecords]) -> np.ndarray:
    """Total fused nll (nats) at each grid weight: exact, no interpolation."""
    _, lg, rg, lz = _stack(records)
    with np.errstate(invalid="ignore"):
        mixed = GATE_GRID[None, :] * lg[:, None] + (1.0 - GATE_GRID)[None, :] * rg[:, None]
    mixed[:, -1] = lg
    return (lz - mixed).sum(axis=0)


def train(records: dict[str, GateRecords], *, held_out: float = 0.33, hidden: int = 16, steps: int = 600,
          lr: float = 0.02, seed: int = 0) -> tuple[dict, GateReport]:
    """Train the gate; returns its arrays (mean, std, w1, b1, w2, b2) and the held-out report."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("gate training needs the [train] extra: pip install 'cogenesis-device[train]'") from exc
    train_names, test_names = split(list(records), held_out)
    tr, te = [records[n] for n in train_names], [records[n] for n in test_names]
    x, lg, rg, lz = (torch.tensor(a) for a in _stack(tr))
    if len(x) == 0:
        raise InvalidParameterError("the train split has no fused positions")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)).double()
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def loss_of(w, lg, rg, lz):
        rg = torch.where(torch.isfinite(rg), rg, torch.full_like(rg, -1e4))  # a masked gold token: 0 * -inf is NaN
        pos = w * (len(GATE_GRID) - 1)
        i0 = pos.floor().clamp(0, len(GATE_GRID) - 2).long()
        frac = pos - i0
        log_z = torch.gather(lz, 1, i0[:, None])[:, 0] * (1 - frac) + torch.gather(lz, 1, i0[:, None] + 1)[:, 0] * frac
        return log_z - (w * lg + (1 - w) * rg)

    for _ in range(steps):
        opt.zero_grad()
        w = torch.sigmoid(net((x - mean) / std)[:, 0])
        loss = loss_of(w, lg, rg, lz).mean()
        loss.backward()
        opt.step()
    xt, lgt, rgt, lzt = (torch.tensor(a) for a in _stack(te))
    with torch.no_grad():
        wt = torch.sigmoid(net((xt - mean) / std)[:, 0])
        gate_nll = float(loss_of(wt, lgt, rgt, lzt).sum())
    train_fixed, test_fixed = fixed_w_nll(tr), fixed_w_nll(te)
    best = int(np.argmin(train_fixed))
    arrays = {"mean": mean.numpy(), "std": std.numpy(), "w1": net[0].weight.detach().numpy(),
              "b1": net[0].bias.detach().numpy(), "w2": net[2].weight.detach().numpy()[0],
              "b2": float(net[2].bias.detach().numpy()[0])}
    report = GateReport(
        train_samples=len(tr), held_out_samples=len(te), train_positions=len(x), held_out_positions=len(xt),
        held_out_bpb_gate=_bpb(te, gate_nll), held_out_bpb_best_fixed=_bpb(te, float(test_fixed[best])),
        best_fixed_w=float(GATE_GRID[best]), held_out_bpb_local=_bpb(te, float(test_fixed[-1])),
        held_out_bpb_by_w={f"{w:.2f}": _bpb(te, float(v)) for w, v in zip(GATE_GRID, test_fixed)},
        gate_w_mean=float(wt.mean()), gate_w_sd=float(wt.std()), fill=tr[0].fill)
    return arrays, report


def export(arrays: dict, path: str | Path) -> None:
    """Write the weights file the engine loads (cg_gate_load; format in cogenesis.h)."""
    w1 = np.asarray(arrays["w1"], dtype=np.float64)
    n_hidden, n_features = w1.shape
    parts = [f"cogenesis-gate 1 {n_features} {n_hidden}"]
    for name in ("mean", "std"):
        parts.append(" ".join(f"{v:.9g}" for v in np.asarray(arrays[name]).ravel()))
    parts += [" ".join(f"{v:.9g}" for v in row) for row in w1]
    parts.append(" ".join(f"{v:.9g}" for v in np.asarray(arrays["b1"]).ravel()))
    parts.append(" ".join(f"{v:.9g}" for v in np.asarray(arrays["w2"]).ravel()))
    parts.append(f"{float(arrays['b2']):.9g}")
    Path(path).write_text("\n".join(parts) + "\n")


def write_report(report: GateReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(asdict(report), indent=2) + "\n")
