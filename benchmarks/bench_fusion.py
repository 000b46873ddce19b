"""Fusion cost per step, and the cost of decoding a no-context sequence alongside.

    python benchmarks/bench_fusion.py [--repeats 5] [--steps 200] [--threads 2] [--rows 32]

Writes results/fusion.json and results/fusion.md. In one script:
  - fuse + sample one step, native (FusionSampler.set_remote + sample: fusion link + chain) vs numpy
    (the same weighted rule, every fill: mask, tail, local, and the same sampling, vectorized
    float32 numpy), for SmolLM2 (V = 49,152) and Gemma 3 270M (V = 262,144), remote top-k = 20,
    on two kinds of logits:
      random: one row of N(0, 4) local logits, the remote's top-20 of another;
      real:   --rows teacher-forced positions of the model's own greedy answer to the demo sample,
              local = the model with the private context, remote top-20 = the same model without
              it (the context-free prompt); the steps cycle through the rows.
    Native and numpy run the same number of steps, after a warm-up, in interleaved repeats
    (native, numpy, native, numpy, ...). Greedy rows also check that both choose the same token.
  - one decode step of each model, measured here: the fusion step's share is of the decode step
    of the model with that vocabulary;
  - decoding two sequences (with and without the private context) in one batch vs one.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources

import numpy as np

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device import fusion as F
from cogenesis_device.bench import fmt, machine, model_info, row, summarize
from report import write

K = 20
WEIGHT = 0.5
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
SAMPLINGS = {"greedy": dict(temperature=0), "sampled": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)}


def numpy_fuse_sample(local: np.ndarray, ids: np.ndarray, lps: np.ndarray, fill: str, greedy: bool, rng) -> int:
    """The weighted rule with the fill (see fusion.py), then greedy or softmax sampling, in vectorized
    numpy. Where only the listed tokens can win (mask, or a top-k that leaves nothing), it works on
    those k after the log-sum-exp, as the native link does."""
    m = local.max()
    e = np.exp(local - m)
    lse = m + np.log(e.sum())
    rest = 1.0 - float(np.exp(lps.astype(np.float64)).sum())
    if fill == "mask" or rest <= 1e-7:
        fused = WEIGHT * (local[ids] - lse) + (1.0 - WEIGHT) * lps
        if greedy:
            return int(ids[fused.argmax()])
        p = np.exp(fused - fused.max())
        return int(ids[np.searchsorted(np.cumsum(p), rng.random() * p.sum())])
    ll = local - lse
    if fill == "tail":
        remote = np.full(local.shape, np.log(rest / (local.size - ids.size)), dtype=np.float32)
    else:  # local: the rest in proportion to the local probabilities of the unlisted tokens
        unlisted = 1.0 - float(np.exp(ll[ids].astype(np.float64)).sum())
        if unlisted < 1e-6:  # the listed tokens hold nearly everything: sum the others directly
            e[ids] = 0.0
            unlisted = float(e.sum(dtype=np.float64) / np.exp(lse - m))
        if not unlisted > 0.0:
            return numpy_fuse_sample(local, ids, lps, "mask", greedy, rng)
        remote = ll + np.float32(np.log(rest) - np.log(unlisted))
    remote[ids] = lps
    fused = WEIGHT * ll + (1.0 - WEIGHT) * remote
    if greedy:
        return int(fused.argmax())
    p = np.exp(fused - fused.max())
    c = np.cumsum(p)
    return int(np.searchsorted(c, rng.random() * c[-1]))


def top_k(logits: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The remote's side as a server lists it: its k best token ids and their log-probabilities."""
    lp = F.log_softmax(logits)
    ids = np.argsort(-lp, kind="stable")[:k].astype(np.int32)
    return ids, lp[ids].astype(np.float32)


def random_steps(n_vocab: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(n_vocab)
    local = rng.normal(0, 4, n_vocab).astype(np.float32)
    return [(local, *top_k(rng.normal(0, 4, n_vocab)))]


def real_steps(model: cg.LocalModel, n_rows: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(local logits, remote ids, remote logprobs) at n_rows positions of the model's own greedy answer:
    local with the private context, the remote top-k from the same model without it."""
    sample = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())
    instruction, context = sample["instruction"], sample["context"]
    if model.has_chat_template:
        with_context, without = model.private_prompt(context, instruction), model.private_prompt("", instruction)
    else:  # Gemma 3 270M's GGUF has none: a plain prompt
        with_context = model.tokenize(f"Notes about the user:\n{context}\n\n{instruction}\n\nResponse:")
        without = model.tokenize(f"{instruction}\n\nResponse:")
    session = model.new_session()
    gen = _native.Generation(session, np.asarray(with_context, dtype=np.int32), _native.Sampler(temperature=0),
                             max_tokens=n_rows, ignore_eos=True)
    gen.run()
    answer = [int(t) for t in gen.tokens]
    local = [np.array(r, dtype=np.float32) for r in cg.LocalModel.teacher_forced_rows(session, with_context, answer)]
    remote = [top_k(np.asarray(r)) for r in cg.LocalModel.teacher_forced_rows(model.new_session(), without, answer)]
    return [(x, ids, lps) for x, (ids, lps) in zip(local, remote)]


def time_per_call(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    return (time.perf_counter() - t0) / steps * 1e6  # microseconds


def bench_fuse(model: cg.LocalModel, kind: str, steps_data: list, repeats: int, steps: int) -> list[dict]:
    out = []
    n = len(steps_data)
    for fill in F.FILLS:
        for mode, sampling in SAMPLINGS.items():
            greedy = mode == "greedy"
            sampler = F.FusionSampler(model.native, rule="weighted", fill=fill, weight=WEIGHT, seed=1, **sampling)
            rng = np.random.default_rng(1)

            def native(i):
                x, ids, lps = steps_data[i % n]
                sampler.set_remote(ids, lps)
                return sampler.sample(x)

            def numpy(i):
                x, ids, lps = steps_data[i % n]
                return numpy_fuse_sample(x, ids, lps, fill, greedy, rng)

            same = sum(native(i) == numpy(i) for i in range(n)) if greedy else None  # outside the timing
            warm = max(steps // 5, 5)
            time_per_call(native, warm)
            time_per_call(numpy, warm)
            samples = {"native_us": [], "numpy_us": []}
            for _ in range(repeats):  # interleaved, the same steps for both
                samples["native_us"].append(time_per_call(native, steps))
                samples["numpy_us"].append(time_per_call(numpy, steps))
            stats = {k: summarize(v) for k, v in samples.items()}
            out.append({"model": model.path.name, "n_vocab": model.n_vocab, "logits": kind, "rows": n, "fill": fill,
                        "sampling": mode, **stats, "speedup": stats["numpy_us"]["mean"] / stats["native_us"]["mean"],
                        "greedy_same_token": same})
            print(f"V={model.n_vocab} {kind:6} {fill:5} {mode:7}: native {fmt(stats['native_us'])} us, numpy "
                  f"{fmt(stats['numpy_us'])} us, {out[-1]['speedup']:.1f}x"
                  + (f", same greedy token {same}/{n}" if greedy else ""), file=sys.stderr)
    return out


def bench_decode_step(model: cg.LocalModel, repeats: int, steps: int, threads: int) -> dict:
    """One decode step after a 200-token context, alone and batched with a no-context sequence."""
    ctx = model.native.tokenize("Private notes about Dana, a veterinary nurse in Leeds who signs emails D. " * 6)[:200]
    noctx = model.native.tokenize("Write a short note about the Friday shift.")
    one, two = [], []
    half = max(steps // 2, 1)
    for _ in range(repeats):
        s = _native.Session(model.native, n_ctx=1024, n_seq_max=2, n_threads=threads)
        s.prefill(ctx, seq_id=0)
        s.prefill(noctx, seq_id=1)
        s.decode([0], [99])  # warm-up
        t_one = t_two = 0.0
        for i in range(half):  # alternate, so drift hits both alike
            t0 = time.perf_counter()
            s.decode([0], [100 + i])
            t_one += time.perf_counter() - t0
            t0 = time.perf_counter()
            s.decode([0, 1], [200 + i, 300 + i])
            t_two += time.perf_counter() - t0
        one.append(t_one / half * 1e6)
        two.append(t_two / half * 1e6)
    res = {"model": model.path.name, "n_vocab": model.n_vocab, "threads": threads,
           "one_sequence_us": summarize(one), "two_sequences_us": summarize(two)}
    res["two_over_one"] = res["two_sequences_us"]["mean"] / res["one_sequence_us"]["mean"]
    print(f"{model.path.name} decode step: one sequence {fmt(res['one_sequence_us'])} us, two in one batch "
          f"{fmt(res['two_sequences_us'])} us ({res['two_over_one']:.2f}x)", file=sys.stderr)
    return res


def markdown(res: dict, command: str) -> str:
    steps = {d["model"]: d["one_sequence_us"]["mean"] for d in res["decode"]}
    lines = [
        "# Logit fusion per step",
        "",
        f"`{command}`, {res['machine']['date']}, {res['machine']['cpus']} CPUs. Weighted rule (w = 0.5), remote "
        f"top-k = {K}; mean ± sd over {res['args']['repeats']} interleaved repeats of {res['args']['steps']} steps "
        "each, after a warm-up. Native: FusionSampler.set_remote + sample (fusion link and sampler chain in C++). "
        "numpy: the same rule, fill and sampling, vectorized float32. Logits: random = one row of N(0, 4) local "
        f"logits and another's top-{K}; real = {res['args']['rows']} positions of the model's greedy answer to the "
        "demo sample, local with the private context, remote top-20 from the same model without it. Decode step: "
        f"one decode step of the model with that vocabulary ({res['args']['threads']} threads, measured below). "
        "Same greedy token: positions where native and numpy chose the same token.",
        "",
        "| model (vocabulary) | logits | fill / sampling | native (µs/step) | numpy (µs/step) | native speed-up | "
        "native / decode step of this model | same greedy token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in res["fuse"]:
        same = "-" if c["greedy_same_token"] is None else f"{c['greedy_same_token']}/{c['rows']}"
        lines.append(f"| {c['model']} ({c['n_vocab']}) | {c['logits']} | {c['fill']}/{c['sampling']} | "
                     f"{fmt(c['native_us'])} | {fmt(c['numpy_us'])} | {c['speedup']:.1f}x | "
                     f"{100 * c['native_us']['mean'] / steps[c['model']]:.1f}% | {same} |")
    lines += [
        "",
        f"## Decoding the no-context sequence alongside ({res['args']['threads']} threads)",
        "",
        "| model | batch | time per decode step (µs) |",
        "|---|---|---|",
    ]
    for d in res["decode"]:
        lines += [f"| {d['model']} | one sequence (200-token context) | {fmt(d['one_sequence_us'])} |",
                  f"| {d['model']} | two sequences in one batch (+ 10-token no-context) | {fmt(d['two_sequences_us'])} |"]
    lines += [""] + [f"{d['model']}: two sequences cost **{d['two_over_one']:.2f}x** one sequence." for d in res["decode"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="decode threads (fusion runs on the calling thread)")
    parser.add_argument("--rows", type=int, default=32, help="positions of real logits per model")
    args = parser.parse_args()
    command = (f"python benchmarks/bench_fusion.py --repeats {args.repeats} --steps {args.steps} "
               f"--threads {args.threads} --rows {args.rows}")
    fuse, decode, rows = [], [], []
    for name in MODELS:  # one model at a time: Gemma's real rows are 1 MB each
        model = cg.LocalModel(name, n_ctx=1024, n_threads=args.threads)
        info = model_info(model.path)
        decode.append(bench_decode_step(model, args.repeats, args.steps, args.threads))
        for kind, data in (("random", random_steps(model.n_vocab)), ("real", real_steps(model, args.rows))):
            fuse += bench_fuse(model, kind, data, args.repeats, args.steps)
        d = decode[-1]
        rows += [row("decode step, 200-token context", d["one_sequence_us"], unit="us", **info, threads=args.threads),
                 row("decode step, + no-context sequence in the batch", d["two_sequences_us"], unit="us", **info,
                     threads=args.threads)]
        rows += [row(f"fuse+sample weighted {c['fill']}/{c['sampling']}, {c['logits']} logits", c[f"{impl}_us"],
                     unit="us", **info, threads=1, impl=impl)
                 for c in fuse if c["model"] == info["model"] for impl in ("native", "numpy")]
        del model, data
    res = {"args": vars(args), "command": command, "fuse": fuse, "decode": decode, "machine": machine()}
    print(write("fusion", res, markdown(res, command), rows).read_text())


if __name__ == "__main__":
    main()
