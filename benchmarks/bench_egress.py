"""Egress privacy: what on-device attribution costs in speed, and what its threshold trades.

    python benchmarks/bench_egress.py [--repeats 2] [--prompts 2] [--tokens 48] [--rtts 0,50]
                                      [--samples 24] [--thresholds 1,2,3,4] [--sweep-tokens 64]

1. Speed: logits mode (lookahead 8) with attribution on vs off, interleaved in one run, on a loopback
   llama_cpp.server behind the delay proxy. Tokens/s after the first token.
2. Threshold sweep on the paper's dev split (skipped without ../shared/data): for each threshold, the
   share of generated tokens sent that were withheld, and what still reached the remote, by the
   independent scan (leakscan.py) with canaries planted in each context. The policy is 'audit', so
   the text guard redacts nothing: the figures are attribution's alone. ROUGE-L against the gold
   answer shows the quality cost.
Writes results/egress.json and results/egress.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import zlib

import cogenesis_device as cg
from bench_collab import DEV, prompts, run_once
from cogenesis_device.eval import leakscan
from cogenesis_device.eval.datasets import public_part
from cogenesis_device.testing import SERVERS, FaultProxy, LoopbackServer
from cogenesis_device.eval.metrics import rouge_l
from cogenesis_device.bench import fmt, model_info, summarize
from cogenesis_device.bench import row as common_row  # the functions here have rows of their own named row
from report import write


REMOTE_NAMES = {"llama.cpp": "llama.cpp's server", "llama-cpp-python": "llama_cpp.server"}


def speed(local, remote, proxy, args) -> list[dict]:
    rows = []
    pairs = prompts(args.prompts)
    generators = {"attribution off": cg.CoGenerator(local, remote, lookahead=8, attribution=False),
                  "attribution on": cg.CoGenerator(local, remote, lookahead=8)}
    for rtt in [float(x) for x in args.rtts.split(",")]:
        proxy.rtt_ms = rtt
        samples = {name: [] for name in generators}
        for _ in range(args.repeats):
            for instruction, context in pairs:
                for name, generator in generators.items():  # interleaved: the same noise for both
                    run_once(generator, remote, instruction, context, 2)  # warm the local prefix cache
                    samples[name].append(run_once(generator, remote, instruction, context, args.tokens))
        for name, runs in samples.items():
            rows.append({"rtt_ms": rtt, "setting": name, "tokens_per_s": summarize([r["tokens_per_s"] for r in runs])})
            print(f"rtt {rtt:4.0f} ms  {name:16} {fmt(rows[-1]['tokens_per_s'])} tok/s", file=sys.stderr)
    return rows


def sweep(local, remote, proxy, args) -> list[dict]:
    proxy.rtt_ms = 0.0
    data = json.loads(DEV.read_text())[:args.samples]
    settings = {"off": False, **{f"{t:g} nats": {"threshold": t} for t in map(float, args.thresholds.split(","))}}
    rows = []
    for label, attribution in settings.items():
        generator = cg.CoGenerator(local, remote, lookahead=8, attribution=attribution,
                                   privacy={"policy": "audit", "record_bodies": True})
        jobs = []
        for item in data:
            instruction = public_part(item["conversations"][0]["value"])
            profile = item["additional_profile"]
            context, canaries = leakscan.plant_canaries(profile, seed=zlib.crc32(str(item["tid"]).encode()))
            facts = leakscan.profile_facts(profile, instruction)
            result = generator.generate(instruction, context, max_tokens=args.sweep_tokens,
                                        sampling=cg.SamplingParams.collaborative())
            bodies = [r.body for r in result.audit]
            last = result.audit[-1] if result.audit else None
            sent = (last.sent_tokens + last.withheld_tokens) if last else 0
            jobs.append({"profile_leaked": len(leakscan.leaked(facts, bodies)), "profile_facts": len(facts),
                         "canaries_leaked": len(leakscan.leaked(canaries, bodies)), "canaries": len(canaries),
                         "withheld": last.withheld_tokens if last else 0, "sent": sent,
                         "context_bits": last.context_bits if last else 0.0,
                         "rouge_l": rouge_l(result.text, item["conversations"][1]["value"]),
                         "tokens_per_s": result.stats.tokens_per_s_after_first})
        row = {"attribution": label, "samples": len(jobs),
               "withheld_share": sum(j["withheld"] for j in jobs) / max(1, sum(j["sent"] for j in jobs)),
               "jobs_leaking_profile": sum(j["profile_leaked"] > 0 for j in jobs),
               "profile_fact_share": sum(j["profile_leaked"] for j in jobs) / max(1, sum(j["profile_facts"] for j in jobs)),
               "canaries_leaked": sum(j["canaries_leaked"] for j in jobs), "canaries": sum(j["canaries"] for j in jobs),
               "jobs_leaking_canary": sum(j["canaries_leaked"] > 0 for j in jobs),
               "context_bits": summarize([j["context_bits"] for j in jobs]),
               "rouge_l": summarize([j["rouge_l"] for j in jobs])}
        rows.append(row)
        print(f"{label:10} withheld {100 * row['withheld_share']:.1f}%  profile leaks "
              f"{row['jobs_leaking_profile']}/{len(jobs)} jobs  canaries {row['canaries_leaked']}  "
              f"bits {fmt(row['context_bits'])}  ROUGE-L {statistics.fmean(j['rouge_l'] for j in jobs):.3f}",
              file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rtts", default="0,50")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--thresholds", default="1,2,3,4")
    ap.add_argument("--sweep-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--server", default="llama.cpp", choices=SERVERS, help="the loopback remote")
    args = ap.parse_args()

    local = cg.LocalModel(n_ctx=2048, n_threads=args.threads)
    with LoopbackServer(server=args.server, n_ctx=2048, n_threads=args.threads) as server, FaultProxy(server.base_url) as proxy, \
            cg.RemoteModel(proxy.base_url, template=local) as remote:
        remote.connect()
        speed_rows = speed(local, remote, proxy, args)
        sweep_rows = sweep(local, remote, proxy, args) if DEV.exists() and args.samples > 0 else []

    command = (f"`python benchmarks/bench_egress.py --repeats {args.repeats} --prompts {args.prompts} --tokens "
               f"{args.tokens} --rtts {args.rtts} --samples {args.samples} --thresholds {args.thresholds} "
               f"--sweep-tokens {args.sweep_tokens} --server {args.server}`")
    lines = ["# Egress privacy: cost and trade-off", "", command, "",
             "## Speed: attribution on vs off (logits mode, lookahead 8, greedy)", "",
             f"Remote: {REMOTE_NAMES[args.server]} (SmolLM2-135M) behind the delay proxy; tokens/s after the first token; mean ± sd "
             f"over {args.repeats} repeats x {args.prompts} prompts, interleaved.", "",
             "| RTT ms | setting | tok/s | on / off |", "|---|---|---|---|"]
    for row in speed_rows:
        off = next(r for r in speed_rows if r["rtt_ms"] == row["rtt_ms"] and r["setting"] == "attribution off")
        lines.append(f"| {row['rtt_ms']:.0f} | {row['setting']} | {fmt(row['tokens_per_s'])} | "
                     f"{row['tokens_per_s']['mean'] / off['tokens_per_s']['mean']:.2f}x |")
    if sweep_rows:
        lines += ["", f"## Threshold sweep ({sweep_rows[0]['samples']} dev samples, {args.sweep_tokens} greedy tokens, "
                      "canaries planted, policy 'audit': attribution alone)", "",
                  "| attribution | tokens withheld (of those sent) | jobs leaking a profile fact | profile facts leaked | "
                  "jobs leaking a canary | canaries leaked | context bits sent per job | ROUGE-L |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in sweep_rows:
            bits = "-" if row["attribution"] == "off" else fmt(row["context_bits"])  # nothing scores it when off
            lines.append(f"| {row['attribution']} | {100 * row['withheld_share']:.1f}% | "
                         f"{row['jobs_leaking_profile']}/{row['samples']} | {100 * row['profile_fact_share']:.2f}% | "
                         f"{row['jobs_leaking_canary']}/{row['samples']} | {row['canaries_leaked']}/{row['canaries']} | "
                         f"{bits} | {fmt(row['rouge_l'], 3)} |")
    info = {**model_info(local.path), "threads": args.threads}
    common = [common_row(f"logits mode tg{args.tokens}, RTT {r['rtt_ms']:g} ms, {r['setting']}", r["tokens_per_s"],
                  unit="tok/s", rtt_ms=r["rtt_ms"], setting=r["setting"], **info) for r in speed_rows]
    path = write("egress", {"args": vars(args), "speed": speed_rows, "sweep": sweep_rows}, "\n".join(lines), common)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
