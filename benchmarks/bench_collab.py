"""Logits mode over a simulated network: local-only decode, the paper's per-token protocol, fixed
lookahead depths and the default (adaptive) depth, in one run.

    python benchmarks/bench_collab.py [--repeats 2] [--tokens 48] [--rtts 0,20,50,100] [--lookaheads 2,4,8,16] [--batched]

The remote is llama.cpp's own server (the bundled SmolLM2, 2 threads) behind the fault proxy, which
adds the round-trip time. Every protocol runs in this one script, interleaved, on the same prompts
with greedy decoding (so all of them write the same text):
  - local only: the local model alone (the speed logits mode is measured against);
  - per-token (paper): one request per token, max_tokens=1, no overlap;
  - per-token + overlap: the same, decoding locally while the request is in flight (overlap alone,
    so lookahead's gain over it is lookahead's own);
  - lookahead k: k tokens per request, with overlap;
  - default: the depth chosen per request from measurements (lookahead=None).
The local prefill of the private context is warmed up first and excluded: tokens/s counts the
generation after the first token. The wait for the first token (for lookahead k, a request for k
remote tokens) is in the first-token and end-to-end columns: wall time from the call to the last of
the N tokens. Every remote protocol must write the per-token protocol's text on every prompt: the
JSON records it per row and per RTT, and the run exits with status 1 (after writing the results)
when a text differs; with --batched each depth runs again with batch_verify, whose texts are
reported, not failed, and a table gives the local model's cost per evaluation by batch shape. A second table splits the default's time per token into local
decode, fusion and sampling, attribution, waiting on the remote, and the client's guard, HTTP and
parsing. Writes results/collab.json and results/collab.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cogenesis_device as cg
from cogenesis_device.testing import FaultProxy, LoopbackServer
from cogenesis_device.bench import fmt, model_info, summarize
from cogenesis_device.bench import row as common_row  # main() has rows of its own named row
from report import write

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "context-aware" / "dev.json"
DEFAULT = "default (adaptive)"
PAPER = "per-token (paper)"
METRICS = ("tokens_per_s", "first_token_ms", "end_to_end_ms", "round_trips_per_token", "wasted_per_accepted", "depth")
PROFILE = ("decode_ms", "sample_ms", "attribution_ms", "wait_ms", "guard_ms", "http_ms", "parse_ms", "other_ms")


def prompts(n: int) -> list[tuple[str, str]]:
    """(public instruction, private context) pairs: the paper's dev set when present, else the demo sample."""
    if DEV.exists():
        data = json.loads(DEV.read_text())[:n]
        return [(s["conversations"][0]["value"].split(": ")[0], s["additional_profile"]) for s in data]
    from importlib import resources

    sample = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())
    return [(sample["instruction"], sample["context"])]


def run_once(generator: cg.CoGenerator, remote: cg.RemoteModel, instruction: str, context: str, tokens: int) -> dict:
    before = dict(remote.timings)
    stream = generator.stream(instruction, context, max_tokens=tokens, sampling=cg.SamplingParams.collaborative())
    for _ in stream:
        pass
    result, s = stream.result, stream.result.stats
    row = {"tokens_per_s": s.tokens_per_s_after_first, "first_token_ms": s.first_token_ms,
           "end_to_end_ms": s.total_ms, "n_tokens": s.n_tokens, "round_trips_per_token": s.round_trips_per_token,
           "wasted_per_accepted": s.wasted_per_accepted,
           "depth": s.remote_tokens_asked / s.round_trips if s.round_trips else 0.0,
           "text": result.text, "fallback": result.fallback}
    engine = stream.engine_stats
    if engine is not None:  # the time per generated token, by where it went
        n = max(s.n_tokens, 1)
        client = {k: (remote.timings[k] - before[k]) / n for k in ("guard_ms", "http_ms", "parse_ms")}
        parts = {"decode_ms": engine.decode_ms / n, "sample_ms": engine.sample_ms / n,
                 "attribution_ms": engine.attribution_ms / n, "wait_ms": engine.wait_ms / n, **client}
        parts["other_ms"] = s.total_ms / n - sum(parts[k] for k in ("decode_ms", "sample_ms", "attribution_ms",
                                                                     "wait_ms"))
        parts["total_ms"] = s.total_ms / n
        row["profile"] = parts
    return row


BATCH_SHAPES = (("1 token (local only)", 1, False), ("1 + its no-context twin", 1, True),
                ("4 + 4 twins", 4, True), ("8 + 8 twins", 8, True), ("8 tokens", 8, False))


def batch_costs(local: cg.LocalModel, instruction: str, reps: int = 16) -> list[dict]:
    """The local model's time per evaluation and per main token, by batch shape: what batched
    verification can save where evaluating a batch costs less than its tokens one at a time."""
    import numpy as np

    text = np.array(local.tokenize((instruction + " ") * 40), dtype=np.int32)
    out = []
    for label, k, twins in BATCH_SHAPES:
        session = local.new_session(n_seq_max=2)
        session.prefill(text[:200], seq_id=0)
        session.prefill(text[:40], seq_id=1)
        times = []
        for i in range(reps):
            toks = text[200 + i * k:200 + (i + 1) * k]
            seqs = np.zeros(len(toks), dtype=np.int32)
            if twins:  # each main token beside its no-context twin, as the engine lays them out
                toks, seqs = np.repeat(toks, 2), np.tile(np.array([0, 1], dtype=np.int32), len(toks))
            t0 = time.perf_counter()
            session.decode(seqs, toks)
            times.append((time.perf_counter() - t0) * 1000.0)
        ms = summarize(times)
        out.append({"shape": label, "main_tokens": k, "ms_per_decode": ms,
                    "ms_per_main_token": summarize([t / k for t in times])})
    return out


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--rtts", default="0,20,50,100")
    ap.add_argument("--lookaheads", default="2,4,8,16")
    ap.add_argument("--threads", type=int, default=1, help="threads of the local model and of the server each")
    ap.add_argument("--batched", action="store_true",
                    help="also run each depth with batch_verify (its text may differ within llama.cpp's "
                         "batch-shape rounding: reported, not failed)")
    args = ap.parse_args()
    rtts = [float(x) for x in args.rtts.split(",")]
    lookaheads = [int(x) for x in args.lookaheads.split(",")]
    pairs = prompts(args.prompts)

    local = cg.LocalModel(n_ctx=2048, n_threads=args.threads)
    costs = batch_costs(local, pairs[0][0]) if args.batched else []
    protocols = {PAPER: dict(lookahead=1, overlap=False), "per-token + overlap": dict(lookahead=1, overlap=True)}
    protocols.update({f"lookahead {k}": dict(lookahead=k) for k in lookaheads})
    protocols[DEFAULT] = {}
    if args.batched:  # the same depths with the remote's tokens verified in one batch
        protocols.update({f"lookahead {k}, batched": dict(lookahead=k, batch_verify=True) for k in lookaheads})
        protocols[DEFAULT + ", batched"] = dict(batch_verify=True)
    rows, profiles, text_checks = [], [], []
    info = model_info(local.path)
    with LoopbackServer(n_ctx=2048, n_threads=args.threads) as server, FaultProxy(server.base_url) as proxy, \
            cg.RemoteModel(proxy.base_url, template=local) as remote:
        remote.connect()
        generators = {"local only": cg.CoGenerator(local, None)}
        generators.update({name: cg.CoGenerator(local, remote, mode="logits", **options)
                           for name, options in protocols.items()})
        for rtt in rtts:
            proxy.rtt_ms = rtt
            samples = {name: [] for name in generators}
            mismatches = []  # (repeat, prompt, protocol, first differing character)
            for repeat in range(args.repeats):
                for p, (instruction, context) in enumerate(pairs):
                    texts = {}
                    for name, generator in generators.items():  # interleaved: the same noise for all
                        run_once(generator, remote, instruction, context, 2)  # warm the local prefix cache
                        sample = run_once(generator, remote, instruction, context, args.tokens)
                        samples[name].append(sample)
                        texts[name] = sample["text"]
                    reference = texts[PAPER]  # every remote protocol must write the per-token protocol's text
                    for name, text in texts.items():
                        same = name == "local only" or text == reference
                        samples[name][-1]["same_text"] = same
                        if not same:
                            at = first_difference(text, reference)
                            if name.endswith("batched"):  # within batch-shape rounding: reported in its row
                                samples[name][-1]["first_difference"] = at
                                continue
                            mismatches.append({"repeat": repeat, "prompt": p, "protocol": name, "at_char": at})
                            print(f"ERROR: rtt {rtt:.0f} ms, prompt {p}, repeat {repeat}: {name!r} wrote a different "
                                  f"text from {PAPER!r} (from character {at}: {text[at:at + 30]!r} vs "
                                  f"{reference[at:at + 30]!r})", file=sys.stderr)
            text_checks.append({"rtt_ms": rtt, "same_text": not mismatches, "runs": args.repeats * len(pairs),
                                "mismatches": mismatches})
            for name, runs in samples.items():
                remote_row = name != "local only"
                row = {**info, "threads": args.threads, "test": f"logits mode, {args.tokens} tokens, RTT {rtt:g} ms",
                       "rtt_ms": rtt, "protocol": name, **{key: summarize([r[key] for r in runs]) for key in METRICS},
                       "n_tokens": summarize([r["n_tokens"] for r in runs]),
                       "fallbacks": sum(r["fallback"] for r in runs),
                       "same_text_as_per_token": sum(r["same_text"] for r in runs) if remote_row else None,
                       "first_differences": [r["first_difference"] for r in runs if "first_difference" in r],
                       "runs": len(runs)}
                rows.append(row)
                print(f"rtt {rtt:5.0f} ms  {name:20} {fmt(row['tokens_per_s'])} tok/s  "
                      f"end-to-end {fmt(row['end_to_end_ms'], 0)} ms  "
                      f"{fmt(row['round_trips_per_token'], 2)} RT/tok  depth {fmt(row['depth'])}", file=sys.stderr)
            profiles.append({"rtt_ms": rtt, **{k: summarize([r["profile"][k] for r in samples[DEFAULT]])["mean"]
                                                for k in (*PROFILE, "total_ms")}})

    lines = ["# Logits mode over a simulated network", "",
             f"`python benchmarks/bench_collab.py --repeats {args.repeats} --tokens {args.tokens} "
             f"--prompts {len(pairs)} --rtts {args.rtts} --lookaheads {args.lookaheads} --threads {args.threads}{' --batched' if args.batched else ''}`", "",
             f"Remote: llama.cpp's server (SmolLM2-135M, {args.threads} thread(s)) behind the delay proxy; local: "
             f"SmolLM2-135M with the private context ({args.threads} thread(s)); greedy, the default fusion and "
             f"attribution. Tokens/s after the first token; first token and end-to-end: wall time from the call "
             f"to the first token and to the last of the {args.tokens} (the first includes the first request, "
             f"of k remote tokens for lookahead k); mean ± sd over {args.repeats} repeats x {len(pairs)} "
             "prompts. Ratios are of means in this run (end-to-end: per-token time over this time). Same text: "
             "runs whose text is the per-token protocol's.", "",
             "| RTT ms | protocol | tok/s | vs local only | vs per-token (paper) | first token ms | "
             f"end-to-end ms ({args.tokens} tok) | end-to-end vs per-token | round trips/token | "
             "mean depth | remote tokens wasted per accepted | same text |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        same = [r for r in rows if r["rtt_ms"] == row["rtt_ms"]]
        mean = row["tokens_per_s"]["mean"]
        local_only = next(r for r in same if r["protocol"] == "local only")["tokens_per_s"]["mean"]
        paper = next(r for r in same if r["protocol"] == PAPER)
        remote_row = row["protocol"] != "local only"
        lines.append(f"| {row['rtt_ms']:.0f} | {row['protocol']} | {fmt(row['tokens_per_s'])} | "
                     f"{mean / local_only:.2f}x | {mean / paper['tokens_per_s']['mean']:.2f}x | "
                     f"{fmt(row['first_token_ms'])} | {fmt(row['end_to_end_ms'], 0)} | "
                     f"{paper['end_to_end_ms']['mean'] / row['end_to_end_ms']['mean']:.2f}x | "
                     + (f"{fmt(row['round_trips_per_token'], 2)} | {fmt(row['depth'])} | "
                        f"{fmt(row['wasted_per_accepted'], 2)} | {row['same_text_as_per_token']}/{row['runs']} |"
                        if remote_row else "- | - | - | - |"))
    lines += ["", "The default against the best fixed depth in the same run, by tokens/s after the first token and "
              "by end-to-end time:", "",
              "| RTT ms | default tok/s | best fixed | its tok/s | default / best | default end-to-end ms | "
              "best fixed (end-to-end) | its end-to-end ms | best / default (end-to-end) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for rtt in rtts:
        same = [r for r in rows if r["rtt_ms"] == rtt]
        fixed = [r for r in same if r["protocol"].startswith(("lookahead", "per-token +"))
                 and not r["protocol"].endswith("batched")]  # the default is not batched
        best = max(fixed, key=lambda r: r["tokens_per_s"]["mean"])
        fastest = min(fixed, key=lambda r: r["end_to_end_ms"]["mean"])
        default = next(r for r in same if r["protocol"] == DEFAULT)
        lines.append(f"| {rtt:.0f} | {default['tokens_per_s']['mean']:.1f} | {best['protocol']} | "
                     f"{best['tokens_per_s']['mean']:.1f} | "
                     f"{default['tokens_per_s']['mean'] / best['tokens_per_s']['mean']:.2f}x | "
                     f"{default['end_to_end_ms']['mean']:.0f} | {fastest['protocol']} | "
                     f"{fastest['end_to_end_ms']['mean']:.0f} | "
                     f"{fastest['end_to_end_ms']['mean'] / default['end_to_end_ms']['mean']:.2f}x |")
    lines += ["", "Where the default's time goes, ms per generated token (engine: decode, fusion and sampling, "
              "attribution, blocked waiting on the remote; client, on its own thread and overlapping the "
              "engine: guard, HTTP send-to-answer, parsing; other: the rest of the engine loop and the Python "
              "handoff):", "",
              "| RTT ms | total | decode | fusion+sampling | attribution | wait | other | guard | HTTP | parse |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        lines.append(f"| {p['rtt_ms']:.0f} | {p['total_ms']:.2f} | {p['decode_ms']:.2f} | {p['sample_ms']:.2f} | "
                     f"{p['attribution_ms']:.2f} | {p['wait_ms']:.2f} | {p['other_ms']:.2f} | {p['guard_ms']:.2f} | "
                     f"{p['http_ms']:.2f} | {p['parse_ms']:.2f} |")
    short = [r for r in rows if min(r["n_tokens"]["samples"]) < args.tokens]
    if short:
        lines += ["", "Runs that ended before " + str(args.tokens) + " tokens (end of text): " + ", ".join(
            f"RTT {r['rtt_ms']:g} ms {r['protocol']} (min {min(r['n_tokens']['samples']):.0f})" for r in short) + "."]
    if costs:
        lines += ["", "The local model's evaluation cost by batch shape (16 evaluations each, the main sequence "
                  "200 tokens in, its no-context twin 40):", "",
                  "| batch | ms per evaluation | ms per main token |", "|---|---|---|"]
        lines += [f"| {c['shape']} | {fmt(c['ms_per_decode'])} | {fmt(c['ms_per_main_token'])} |" for c in costs]
    same_text = all(c["same_text"] for c in text_checks)
    lines += ["", "Every remote protocol wrote the per-token protocol's text on every run: "
              + ("**yes**." if same_text else "**NO** (" + "; ".join(
                  f"RTT {c['rtt_ms']:g} ms: " + ", ".join(sorted({m['protocol'] for m in c['mismatches']}))
                  for c in text_checks if not c["same_text"]) + ").")]
    common = [common_row(r["test"] + f", {r['protocol']}", r[metric], unit=unit, protocol=r["protocol"],
                         rtt_ms=r["rtt_ms"], **{k: r[k] for k in ("model", "size", "threads")})
              for r in rows for metric, unit in (("tokens_per_s", "tok/s"), ("end_to_end_ms", "ms end to end"))]
    path = write("collab", {"args": vars(args), "same_text": same_text, "text_checks": text_checks, "protocols": rows, "batch_costs": costs,
                            "profile": profiles}, "\n".join(lines), common)
    print(f"wrote {path}", file=sys.stderr)
    if not same_text:
        print("FAILED: the protocols wrote different texts (see text_checks in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
