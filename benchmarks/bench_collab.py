"""Logits mode over a simulated network: remote lookahead vs the paper's per-token protocol.

    python benchmarks/bench_collab.py [--repeats 3] [--tokens 48] [--rtts 0,20,50,100] [--lookaheads 4,8,16]

A loopback llama_cpp.server (the bundled SmolLM2) is the remote, behind the fault proxy, which
adds the round-trip time. Both protocols run in this one script, interleaved, on the same prompts
with greedy decoding (so both write the same text):
  - baseline: one request per token, prompt resent each time, max_tokens=1 (the paper's protocol);
  - ours: lookahead k tokens per request, decoding locally while the request is in flight.
The local prefill of the private context is warmed up first and excluded: tokens/s counts the
generation after the first token. Writes results/collab.json and results/collab.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cogenesis_device as cg  # noqa: E402
from cogenesis_device.loopback import FaultProxy, LoopbackServer  # noqa: E402
from report import fmt, summarize, write  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "context-aware" / "dev.json"


def prompts(n: int) -> list[tuple[str, str]]:
    """(public instruction, private context) pairs: the paper's dev set when present, else the demo sample."""
    if DEV.exists():
        data = json.loads(DEV.read_text())[:n]
        return [(s["conversations"][0]["value"].split(": ")[0], s["additional_profile"]) for s in data]
    from importlib import resources

    sample = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())
    return [(sample["instruction"], sample["context"])]


def run_once(generator: cg.CoGenerator, instruction: str, context: str, tokens: int) -> dict:
    result = generator.generate(instruction, context, max_tokens=tokens, temperature=0.0)
    s = result.stats
    return {
        "tokens_per_s": s.decode_tokens_per_s,
        "round_trips_per_token": s.round_trips_per_token,
        "network_wait_share": s.network_wait_ms / s.total_ms,
        "text": result.text,
        "fallback": result.fallback,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--rtts", default="0,20,50,100")
    ap.add_argument("--lookaheads", default="4,8,16")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    rtts = [float(x) for x in args.rtts.split(",")]
    lookaheads = [int(x) for x in args.lookaheads.split(",")]
    pairs = prompts(args.prompts)

    local = cg.LocalModel(n_ctx=2048, n_threads=args.threads)
    protocols = {"per-token (paper)": dict(lookahead=1, overlap=False)}
    protocols.update({f"lookahead {k}": dict(lookahead=k) for k in lookaheads})
    rows = []
    with LoopbackServer(n_ctx=2048, n_threads=args.threads) as server, FaultProxy(server.base_url) as proxy, \
            cg.RemoteModel(proxy.base_url, template=local) as remote:
        remote.connect()
        generators = {name: cg.CoGenerator(local, remote, **options) for name, options in protocols.items()}
        for rtt in rtts:
            proxy.rtt_ms = rtt
            samples = {name: [] for name in protocols}
            for _ in range(args.repeats):
                for instruction, context in pairs:
                    texts = set()
                    for name, generator in generators.items():  # interleaved: same noise for all
                        run_once(generator, instruction, context, 2)  # warm the local prefix cache
                        sample = run_once(generator, instruction, context, args.tokens)
                        samples[name].append(sample)
                        texts.add(sample["text"])
                    if len(texts) != 1:
                        print(f"warning: protocols wrote different texts for {instruction[:40]!r}", file=sys.stderr)
            for name, runs in samples.items():
                row = {"rtt_ms": rtt, "protocol": name,
                       **{key: summarize([r[key] for r in runs]) for key in
                          ("tokens_per_s", "round_trips_per_token", "network_wait_share")}}
                rows.append(row)
                print(f"rtt {rtt:5.0f} ms  {name:18} {fmt(row['tokens_per_s'])} tok/s  "
                      f"{fmt(row['round_trips_per_token'], 2)} RT/tok", file=sys.stderr)

    lines = ["# Logits mode over a simulated network", "",
             f"`python benchmarks/bench_collab.py --repeats {args.repeats} --tokens {args.tokens} "
             f"--prompts {len(pairs)} --rtts {args.rtts} --lookaheads {args.lookaheads}`", "",
             "Remote: llama_cpp.server (SmolLM2-135M, 2 threads) behind the delay proxy; local: SmolLM2-135M with "
             "the private context; greedy, weighted w=0.5. Tokens/s after the first token; mean ± sd over "
             f"{args.repeats} repeats x {len(pairs)} prompts.", "",
             "| RTT ms | protocol | tok/s | round trips/token | share of time waiting on the network | speed-up |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["rtt_ms"] == row["rtt_ms"] and r["protocol"].startswith("per-token"))
        ratio = row["tokens_per_s"]["mean"] / base["tokens_per_s"]["mean"]
        lines.append(f"| {row['rtt_ms']:.0f} | {row['protocol']} | {fmt(row['tokens_per_s'])} | "
                     f"{fmt(row['round_trips_per_token'], 2)} | {fmt(row['network_wait_share'], 2)} | {ratio:.2f}x |")
    path = write("collab", {"args": vars(args), "rows": rows}, "\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
