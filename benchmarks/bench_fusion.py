"""Fusion cost per step, and the cost of decoding a no-context sequence alongside.

    python benchmarks/bench_fusion.py [--repeats 5] [--steps 200]

Writes results/fusion.json and results/fusion.md. In one script:
  - fuse + sample one step, native (FusionSampler.sample: fusion link + chain) vs numpy
    (the same weighted/tail rule and the same sampling, vectorized float32 numpy), at
    V = 49,152 (SmolLM2) and 262,144 (Gemma 3), remote top-k = 20;
  - one SmolLM2 decode step, measured here, as the yardstick for the 2% budget;
  - decoding two sequences (with and without the private context) in one batch vs one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cogenesis_device as cg  # noqa: E402
from cogenesis_device import _native  # noqa: E402
from cogenesis_device import fusion as F  # noqa: E402
from report import fmt, machine, summarize, write  # noqa: E402

K = 20
WEIGHT = 0.5


def numpy_fuse_sample(local: np.ndarray, ids: np.ndarray, lps: np.ndarray, fill: str, greedy: bool, rng) -> int:
    """The weighted rule, then greedy or softmax sampling, in vectorized numpy. With mask fill only
    the listed tokens can win, so (like the native link) it works on those k after the log-sum-exp."""
    m = local.max()
    lse = m + np.log(np.exp(local - m).sum())
    if fill == "mask":
        fused = WEIGHT * (local[ids] - lse) + (1.0 - WEIGHT) * lps
        if greedy:
            return int(ids[fused.argmax()])
        p = np.exp(fused - fused.max())
        return int(ids[np.searchsorted(np.cumsum(p), rng.random() * p.sum())])
    ll = local - lse
    rest = max(1.0 - float(np.exp(lps).sum()), 1e-30)
    remote = np.full(local.shape, np.log(rest / (local.size - ids.size)), dtype=np.float32)
    remote[ids] = lps
    fused = WEIGHT * ll + (1.0 - WEIGHT) * remote
    if greedy:
        return int(fused.argmax())
    p = np.exp(fused - fused.max())
    c = np.cumsum(p)
    return int(np.searchsorted(c, rng.random() * c[-1]))


def time_per_call(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps * 1e6  # microseconds


def bench_fuse(vocab_model: _native.Model, repeats: int, steps: int) -> dict:
    n_vocab = vocab_model.n_vocab
    rng = np.random.default_rng(n_vocab)
    local = rng.normal(0, 4, n_vocab).astype(np.float32)
    remote = rng.normal(0, 4, n_vocab)
    remote -= remote.max() + np.log(np.exp(remote - remote.max()).sum())
    ids = np.argsort(-remote)[:K].astype(np.int32)
    lps = remote[ids].astype(np.float32)
    model_free = {}
    for fill, mode, sampling in [(f, m, s) for f in F.FILLS for m, s in (
            ("greedy", dict(temperature=0)), ("sampled", dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)))]:
        sampler = F.FusionSampler(vocab_model, rule="weighted", fill=fill, weight=WEIGHT, seed=1, **sampling)

        def native():
            sampler.set_remote(ids, lps)
            sampler.sample(local)

        def numpy():
            numpy_fuse_sample(local, ids, lps, fill, mode == "greedy", rng)

        samples = {"native_us": [], "numpy_us": []}
        for _ in range(repeats):
            samples["native_us"].append(time_per_call(native, steps))
            samples["numpy_us"].append(time_per_call(numpy, max(steps // 4, 10)))
        stats = {k: summarize(v) for k, v in samples.items()}
        stats["speedup"] = stats["numpy_us"]["mean"] / stats["native_us"]["mean"]
        model_free[f"{fill}/{mode}"] = stats
        print(f"V={n_vocab} {fill} {mode}: native {fmt(stats['native_us'])} us, numpy {fmt(stats['numpy_us'])} us, "
              f"{stats['speedup']:.1f}x", file=sys.stderr)
    return model_free


def bench_decode_step(model: cg.LocalModel, repeats: int, steps: int) -> dict:
    """One SmolLM2 decode step after a 40-token prompt, and one/two-sequence batches."""
    ctx = model.native.tokenize("Private notes about Dana, a veterinary nurse in Leeds who signs emails D. " * 6)[:200]
    noctx = model.native.tokenize("Write a short note about the Friday shift.")
    one, two = [], []
    for _ in range(repeats):
        s = _native.Session(model.native, n_ctx=1024, n_seq_max=2)
        s.prefill(ctx, seq_id=0)
        s.prefill(noctx, seq_id=1)
        t_one = t_two = 0.0
        for i in range(steps // 2):  # alternate, so drift hits both alike
            t0 = time.perf_counter()
            s.decode([0], [100 + i])
            t_one += time.perf_counter() - t0
            t0 = time.perf_counter()
            s.decode([0, 1], [200 + i, 300 + i])
            t_two += time.perf_counter() - t0
        one.append(t_one / (steps // 2) * 1e6)
        two.append(t_two / (steps // 2) * 1e6)
    res = {"one_sequence_us": summarize(one), "two_sequences_us": summarize(two)}
    res["two_over_one"] = res["two_sequences_us"]["mean"] / res["one_sequence_us"]["mean"]
    print(f"decode step: one sequence {fmt(res['one_sequence_us'])} us, two in one batch "
          f"{fmt(res['two_sequences_us'])} us ({res['two_over_one']:.2f}x)", file=sys.stderr)
    return res


def markdown(res: dict, args) -> str:
    step = res["decode"]["one_sequence_us"]["mean"]
    lines = [
        "# Logit fusion per step",
        "",
        f"`python benchmarks/bench_fusion.py --repeats {args.repeats} --steps {args.steps}`, {res['machine']['date']}, "
        f"{res['machine']['cpus']} CPUs. Weighted rule (w = 0.5), remote top-k = {K}; mean ± sd over "
        f"{args.repeats} repeats. Native: FusionSampler.set_remote + sample (fusion link and sampler chain in C++). "
        "numpy: the same rule and sampling, vectorized float32.",
        "",
        "| vocabulary | fill / sampling | native (µs/step) | numpy (µs/step) | native speed-up | native / SmolLM2 decode step |",
        "|---|---|---|---|---|---|",
    ]
    for v, modes in res["fuse"].items():
        for mode, s in modes.items():
            lines.append(f"| {v} | {mode} | {fmt(s['native_us'])} | {fmt(s['numpy_us'])} | {s['speedup']:.1f}x | "
                         f"{100 * s['native_us']['mean'] / step:.1f}% |")
    d = res["decode"]
    lines += [
        "",
        "## Decoding the no-context sequence alongside (SmolLM2, 2 threads)",
        "",
        "| batch | time per decode step (µs) |",
        "|---|---|",
        f"| one sequence (200-token context) | {fmt(d['one_sequence_us'])} |",
        f"| two sequences in one batch (+ 10-token no-context) | {fmt(d['two_sequences_us'])} |",
        "",
        f"Two sequences cost **{d['two_over_one']:.2f}x** one sequence.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    model = cg.LocalModel(n_ctx=1024, n_threads=2)
    gemma = _native.Model(str(cg.resolve_model("gemma3-270m")), vocab_only=True)  # its 262,144-token vocabulary
    res = {
        "fuse": {str(m.n_vocab): bench_fuse(m, args.repeats, args.steps) for m in (model.native, gemma)},
        "decode": bench_decode_step(model, args.repeats, args.steps),
        "machine": machine(),
    }
    print(write("fusion", res, markdown(res, args)).read_text())


if __name__ == "__main__":
    main()
