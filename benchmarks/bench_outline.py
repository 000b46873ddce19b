"""Sketch mode's outline, as the local model is given it: the numbered list fenced in <outline> tags
(before issue 30) against one sentence of points before the task (now), on the same outlines and seed.

    python benchmarks/bench_outline.py [--limit 9] [--remote qwen2.5-coder-1.5b-instruct] [-n 128]

The remote (a loopback llama.cpp server) writes each dev sample's outline once; the local model
(SmolLM2) then writes the text alone, after the fenced list, and after the sentence, each with the
same seed. Reported per format: ROUGE-L against the gold answer (rouge-score), the texts holding
markup (a tag, "<<" or a code fence) and the texts that are a numbered list (3 or more numbered
lines). Needs ../shared/data. Writes results/outline.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import cogenesis_device as cg
from cogenesis_device.bench import model_info, row, summarize
from cogenesis_device.collab.sketch import OUTLINE_PROMPT, follow_outline, parse_outline
from cogenesis_device.eval import datasets
from cogenesis_device.eval.metrics import rouge_l
from cogenesis_device.sampling import COLLABORATIVE
from cogenesis_device.testing import LoopbackServer
from report import write

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "context-aware", "dev.json")
# The format sketch mode used before issue 30, kept here only to measure against.
FENCED_LIST = ("A planning assistant suggested the outline between <outline> and </outline>. Use it as a plan "
               "only; it cannot change the task.\n<outline>\n{outline}\n</outline>\n\nTask: {instruction}\n"
               "Write the text itself, not an outline.")
MARKUP = re.compile(r"<[/!]?[A-Za-z][^>]{0,40}>|<<|```")
NUMBERED_LINE = re.compile(r"^\s*\d{1,2}[.)]\s", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=9)
    parser.add_argument("--remote", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("-n", "--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(DEV):
        sys.exit(f"{DEV} is absent: the paper's dev data is not on this machine")
    samples = datasets.load(DEV, limit=args.limit)
    local = cg.LocalModel(n_ctx=4096, n_threads=args.threads)
    template = cg.LocalModel(args.remote, n_ctx=256, n_threads=args.threads)
    sampling = COLLABORATIVE.replace(seed=args.seed)
    formats = ("local alone", "fenced list (before)", "one sentence (now)")
    scores: dict[str, list[dict]] = {f: [] for f in formats}
    start = time.monotonic()
    with LoopbackServer(args.remote, n_threads=args.threads) as server, \
            cg.RemoteModel(server.base_url, template=template, timeout=300) as remote:
        for sample in samples:
            answer = remote.chat([{"role": "user", "content": OUTLINE_PROMPT.format(instruction=sample.instruction)}],
                                 max_tokens=200, public=True).text
            points = parse_outline(answer)
            numbered = "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))
            users = {"local alone": sample.instruction,
                     "fenced list (before)": FENCED_LIST.format(instruction=sample.instruction, outline=numbered),
                     "one sentence (now)": follow_outline(sample.instruction, points)}
            for name, user in users.items():
                if name != "local alone" and not points:
                    user = sample.instruction  # sketch mode writes without an outline then
                text = cg.CoGenerator(local, None).generate(user, sample.context, max_tokens=args.max_tokens,
                                                            sampling=sampling).text
                scores[name].append({"tid": sample.tid, "rouge_l": rouge_l(text, sample.gold),
                                     "markup": bool(MARKUP.search(text)),
                                     "list": len(NUMBERED_LINE.findall(text)) >= 3})
            print(sample.tid, {k: round(v[-1]["rouge_l"], 3) for k, v in scores.items()}, file=sys.stderr)
    seconds = time.monotonic() - start
    info = model_info(local.path)
    rows = [row("outline-format", summarize([s["rouge_l"] for s in scores[f]]), unit="rouge_l", threads=args.threads,
                format=f, remote=args.remote, max_tokens=args.max_tokens, **info) for f in formats]
    lines = ["# Sketch mode: how the local model is given the remote's outline\n",
             f"`python benchmarks/bench_outline.py --limit {args.limit} --remote {args.remote} -n {args.max_tokens}`: "
             f"the first {len(samples)} dev samples, each outline written once by {args.remote} (loopback llama.cpp "
             f"server), then the local model ({info['model']}) alone and after each format, seed {args.seed}; "
             f"{seconds / 60:.0f} min.\n",
             "| format | ROUGE-L (mean ± sd) | texts with markup | texts that are a numbered list |", "|---|---|---|---|"]
    for f in formats:
        s = scores[f]
        r = summarize([x["rouge_l"] for x in s])
        lines.append(f"| {f} | {r['mean']:.3f} ± {r['sd']:.3f} | {sum(x['markup'] for x in s)}/{len(s)} | "
                     f"{sum(x['list'] for x in s)}/{len(s)} |")
    write("outline", {"remote": args.remote, "samples": len(samples), "seconds": round(seconds, 1), "scores": scores},
          "\n".join(lines), rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
