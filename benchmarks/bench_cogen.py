"""Per-position overhead of logits mode: the engine's loop (cg_cogen) vs the Python loop it replaced.

    python benchmarks/bench_cogen.py [--repeats 3] [--prompts 3] [--tokens 64] [--before ef6ae8c]

Overhead is everything but the local decode and the network wait, per generated token:
(total - local decode - time blocked on the remote) / tokens. Both loops run in this process, in
turn on the same prompts (greedy, lookahead 8, attribution on, the redact guard), against one
loopback llama_cpp.server; the remote client (RemoteModel) is the same. The Python loop is the
product's own code at commit --before (collab.py and attribution.py read from git), run over
today's native module; its decode time is measured around its decode calls.
Writes results/cogen.json and results/cogen.md.
"""
from __future__ import annotations

import argparse
import re
import importlib.util
import subprocess
import sys
import time
import types
from pathlib import Path

import cogenesis_device as cg
from bench_collab import prompts
from cogenesis_device.testing import SERVERS, LoopbackServer
from cogenesis_device.remote import RemoteModel
from cogenesis_device.bench import fmt, model_info, row, summarize
from report import write

ROOT = Path(__file__).resolve().parent.parent


def load_before(commit: str) -> types.ModuleType:
    """The Python loop at `commit`, as modules of today's package (so `from . import _native` works)."""
    modules = {}
    for name in ("attribution", "collab"):
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:cogenesis_device/{name}.py"],
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from .attribution import", "from .before_attribution import")
        source = re.sub(r'info\["(\w+)"\]', r"info.\1", source)  # FusionInfo is a bound class now, not a dict
        full = f"cogenesis_device.before_{name}"
        spec = importlib.util.spec_from_loader(full, loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "cogenesis_device"
        sys.modules[full] = module
        exec(compile(source, f"{commit}:{name}.py", "exec"), module.__dict__)
        modules[name] = module
    collab = modules["collab"]
    decode = collab.CoStream._decode

    def timed_decode(self, session, tokens):  # the old loop's local decode, as the engine counts it
        start = time.perf_counter()
        try:
            return decode(self, session, tokens)
        finally:
            self._bench_decode_ms = getattr(self, "_bench_decode_ms", 0.0) + (time.perf_counter() - start) * 1000.0

    collab.CoStream._decode = timed_decode
    return collab


def overhead(generator, instruction: str, context: str, tokens: int) -> dict:
    stream = generator.stream(instruction, context, max_tokens=tokens)  # both loops' default: greedy
    for _ in stream:
        pass
    s = stream.result.stats
    decode_ms = getattr(stream, "_bench_decode_ms", None)
    decode_ms = s.local_decode_ms if decode_ms is None else decode_ms
    rest = s.total_ms - decode_ms - s.network_wait_ms
    # Tokens/s after the first token; the loop of --before named it decode_tokens_per_s.
    rate = s.tokens_per_s_after_first if hasattr(s, "tokens_per_s_after_first") else s.decode_tokens_per_s
    engine = getattr(stream, "engine_stats", None)  # the Python loop has no such counters
    native = {} if engine is None else {
        "fusion_and_attribution_ms_per_token": (engine.sample_ms + engine.attribution_ms) / s.n_tokens}
    return {"overhead_ms_per_token": rest / s.n_tokens, "decode_ms_per_token": decode_ms / s.n_tokens, **native,
            "wait_ms_per_token": s.network_wait_ms / s.n_tokens, "tokens_per_s": rate,
            "text": stream.result.text, "round_trips": s.round_trips, "fallback": stream.result.fallback}


def native_cell(row: dict) -> str:
    value = row.get("fusion_and_attribution_ms_per_token")
    return "-" if value is None else fmt(value, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--before", default="ef6ae8c", help="commit of the Python loop")
    ap.add_argument("--threads", type=int, default=2)
    # The Python loop of --before reads tokens as text, which llama_cpp.server sends (llama.cpp's
    # server sends bytes and ids, which that loop predates).
    ap.add_argument("--server", default="llama-cpp-python", choices=SERVERS, help="the loopback remote")
    args = ap.parse_args()

    before = load_before(args.before)
    local = cg.LocalModel(n_ctx=4096, n_threads=args.threads)
    pairs = prompts(args.prompts)
    metrics = ("overhead_ms_per_token", "fusion_and_attribution_ms_per_token", "decode_ms_per_token",
               "wait_ms_per_token", "tokens_per_s")
    with LoopbackServer(server=args.server, n_ctx=2048, n_threads=args.threads) as server, \
            RemoteModel(server.base_url, template=local, timeout=120) as remote:
        remote.connect()
        loops = {f"Python loop ({args.before})": before.CoGenerator(local, remote, lookahead=8),
                 "engine loop (cg_cogen)": cg.CoGenerator(local, remote, lookahead=8)}
        runs = {name: [] for name in loops}
        same_text = True
        for _ in range(args.repeats):
            for instruction, context in pairs:
                texts = []
                for name, generator in loops.items():  # interleaved: the same noise for both
                    overhead(generator, instruction, context, 2)  # warm the local prefix cache
                    run = overhead(generator, instruction, context, args.tokens)
                    runs[name].append(run)
                    texts.append(run["text"])
                    print(f"{name:30} overhead {run['overhead_ms_per_token']:.2f} ms/tok, decode "
                          f"{run['decode_ms_per_token']:.2f}, wait {run['wait_ms_per_token']:.2f}", file=sys.stderr)
                same_text &= texts[0] == texts[1]
    rows = [{"loop": name, **{m: summarize([r[m] for r in rs]) for m in metrics if m in rs[0]},
             "fallbacks": sum(r["fallback"] for r in rs)} for name, rs in runs.items()]
    ratio = rows[1]["overhead_ms_per_token"]["mean"] / rows[0]["overhead_ms_per_token"]["mean"]
    command = (f"python benchmarks/bench_cogen.py --repeats {args.repeats} --prompts {args.prompts} "
               f"--tokens {args.tokens} --before {args.before}")
    lines = [
        "# Logits mode: per-position overhead, engine loop vs the Python loop", "",
        f"`{command}`. Greedy, lookahead 8, attribution on, redact guard; {len(pairs)} prompts x "
        f"{args.repeats} repeats, interleaved; a loopback llama_cpp.server as the remote. Overhead = "
        "(total - local decode - time blocked on the remote) / tokens; mean ± sd over runs.", "",
        "| loop | overhead ms/token | of which native fusion + attribution | local decode ms/token | "
        "network wait ms/token | tok/s |",
        "|---|---|---|---|---|---|",
        *[f"| {r['loop']} | {fmt(r['overhead_ms_per_token'], 2)} | "
          f"{native_cell(r)} | {fmt(r['decode_ms_per_token'], 2)} | "
          f"{fmt(r['wait_ms_per_token'], 2)} | {fmt(r['tokens_per_s'])} |" for r in rows], "",
        f"Engine overhead / Python overhead: **{ratio:.2f}x** (target: at most 0.5x). "
        f"Same greedy text from both loops on every run: {'yes' if same_text else 'no'}.",
    ]
    info = {**model_info(local.path), "threads": args.threads}
    common = [row(f"logits mode tg{args.tokens}, per-token overhead, {r['loop']}", r["overhead_ms_per_token"],
                  unit="ms/token", loop=r["loop"], **info) for r in rows]
    path = write("cogen", {"command": command, "loops": rows, "overhead_ratio": ratio, "same_text": same_text},
                 "\n".join(lines), common)
    print("\n".join(lines))
    print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
