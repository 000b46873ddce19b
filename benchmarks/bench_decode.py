"""Decode speed, cached-context first token, and peak memory of the native loop.

    python benchmarks/bench_decode.py [--repeats 3] [--threads 2]

Writes results/decode.json and results/decode.md. Every comparison runs in
this one script, on the same model, prompt and thread count:
  - ours:           cogenesis_device Generation (native loop, greedy)
  - Llama.generate: llama-cpp-python's high-level generator (greedy)
  - bare loop:      llama_decode + numpy argmax through llama_cpp's ctypes API
All three use the same llama.cpp context settings (flash attention on, 256-token
ubatches, same threads). Tokens/s is measured the same way for all: wall time
from the first generated token to the last (so prefill is excluded). A second
row samples (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05) instead of greedy.

The first token with a 2,000-token context is timed prefilled again and restored from a state file,
read two ways: warm (the file is in the page cache, as it is just after it was written or read) and
cold (written, fsync'd and dropped from the page cache with posix_fadvise(DONTNEED) before each read;
the JSON and the table give the share of its pages still resident after the drop, read by mincore).
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device.bench import fmt, machine, model_info, row, summarize
from cogenesis_device.testing import reference_llama
from report import write

NEW_TOKENS = 128
PARAGRAPH = (
    "The user keeps a diary of small things: the bus was late again, the bakery on the corner "
    "started selling rye bread, a colleague asked for help with the quarterly report, and the "
    "weekend plan is a long walk by the river with an old friend from university. "
)


def prompt_tokens(model: cg.LocalModel, n: int) -> np.ndarray:
    text = PARAGRAPH * (n // 40 + 2)
    return np.asarray(model.tokenize(text)[:n], dtype=np.int32)


def rate(first: float, last: float) -> float:
    return (NEW_TOKENS - 1) / (last - first)


SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
GREEDY = dict(temperature=0.0)
UBATCH = 256


def run_ours(model: cg.LocalModel, prompt: np.ndarray, n_ctx: int, threads: int, sampling: dict) -> float:
    session = _native.Session(model.native, n_ctx=n_ctx, n_threads=threads, n_ubatch=UBATCH, flash_attn=1)
    sampler = _native.Sampler(seed=1, **sampling)
    gen = _native.Generation(session, prompt, sampler, max_tokens=NEW_TOKENS, ignore_eos=True)
    first = None
    while not gen.finished:
        token, _ = gen.step()
        if token >= 0 and first is None:
            first = time.perf_counter()
    last = time.perf_counter()
    assert len(gen.tokens) == NEW_TOKENS
    return rate(first, last)


def run_llama_generate(llm: llama_cpp.Llama, prompt: np.ndarray, sampling: dict) -> float:
    first = None
    opts = dict(temp=sampling["temperature"], top_k=sampling.get("top_k", 40), top_p=sampling.get("top_p", 0.95),
                min_p=sampling.get("min_p", 0.05), repeat_penalty=1.0)
    for i, _ in enumerate(llm.generate(prompt.tolist(), reset=True, **opts)):
        if i == 0:
            first = time.perf_counter()
        if i == NEW_TOKENS - 1:
            break
    return rate(first, time.perf_counter())


class BareLoop:
    """The thinnest Python loop over llama.cpp: llama_decode + argmax through ctypes."""

    def __init__(self, llm: llama_cpp.Llama, n_ctx: int, threads: int):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, UBATCH
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = 1
        self.model = llm._model.model
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.n_vocab = llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def _decode(self, tokens, pos0: int) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = int(t), pos0 + i, 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == len(tokens) - 1
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, prompt: np.ndarray) -> float:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        for start in range(0, len(prompt), 512):
            self._decode(prompt[start : start + 512], start)
        pos = len(prompt)
        first = None
        for i in range(NEW_TOKENS):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
            token = int(logits.argmax())
            if i == 0:
                first = time.perf_counter()
            if i < NEW_TOKENS - 1:
                self._decode([token], pos)
                pos += 1
        return rate(first, time.perf_counter())


def bench_decode(model, repeats: int, threads: int) -> dict:
    out = {}
    for n_prompt in (40, 2000):
        n_ctx = n_prompt + NEW_TOKENS + 64
        prompt = prompt_tokens(model, n_prompt)
        llm = reference_llama(model.path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              n_ubatch=UBATCH, flash_attn=True, verbose=False)
        bare = BareLoop(llm, n_ctx, threads)
        samples = {"ours": [], "llama_generate": [], "bare_loop": [], "ours_sampled": [], "llama_generate_sampled": []}
        for _ in range(repeats):  # interleaved, so drift hits all alike
            samples["ours"].append(run_ours(model, prompt, n_ctx, threads, GREEDY))
            samples["llama_generate"].append(run_llama_generate(llm, prompt, GREEDY))
            samples["bare_loop"].append(bare.run(prompt))
            samples["ours_sampled"].append(run_ours(model, prompt, n_ctx, threads, SAMPLED))
            samples["llama_generate_sampled"].append(run_llama_generate(llm, prompt, SAMPLED))
        stats = {k: summarize(v) for k, v in samples.items()}
        stats["ratio_vs_llama_generate"] = stats["ours"]["mean"] / stats["llama_generate"]["mean"]
        stats["ratio_vs_bare_loop"] = stats["ours"]["mean"] / stats["bare_loop"]["mean"]
        stats["ratio_sampled_vs_llama_generate"] = stats["ours_sampled"]["mean"] / stats["llama_generate_sampled"]["mean"]
        out[str(n_prompt)] = stats
        print(f"prompt {n_prompt}: ours {fmt(stats['ours'])} tok/s, Llama.generate {fmt(stats['llama_generate'])}, "
              f"bare loop {fmt(stats['bare_loop'])}; sampled: ours {fmt(stats['ours_sampled'])}, "
              f"Llama.generate {fmt(stats['llama_generate_sampled'])}", file=sys.stderr)
    return out


def drop_from_page_cache(path: str) -> None:
    """Write the file's dirty pages to disk, then ask the kernel to drop its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def resident_share(path: str) -> float | None:
    """The share of the file's pages in the page cache (mincore over a mapping that touches no page)."""
    size = os.path.getsize(path)
    if size == 0:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return None
            return sum(v & 1 for v in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def bench_cached_first_token(model, repeats: int, threads: int) -> dict:
    context = prompt_tokens(model, 2000)
    instruction = np.asarray(model.tokenize("\nWrite a short note to my neighbour.", add_special=False), dtype=np.int32)
    prompt = np.concatenate([context, instruction])
    n_ctx = len(prompt) + 64
    greedy = _native.Sampler(temperature=0)
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "context.kv")
        writer = _native.Session(model.native, n_ctx=n_ctx, n_threads=threads, n_ubatch=UBATCH)
        writer.prefill(context)
        writer.save_state(state)
        state_bytes = Path(state).stat().st_size
        prefilled, cold, warm, resident_before, resident_after = [], [], [], [], []

        def restore() -> float:
            s = _native.Session(model.native, n_ctx=n_ctx, n_threads=threads)
            t0 = time.perf_counter()
            s.load_state(state)
            g = _native.Generation(s, prompt, greedy, max_tokens=1)
            g.step()
            elapsed = (time.perf_counter() - t0) * 1000
            assert g.timings.n_reused == len(context)
            return elapsed

        for _ in range(repeats):  # interleaved: prefilled, cold, warm
            s = _native.Session(model.native, n_ctx=n_ctx, n_threads=threads)
            t0 = time.perf_counter()
            g = _native.Generation(s, prompt, greedy, max_tokens=1)
            g.step()
            prefilled.append((time.perf_counter() - t0) * 1000)

            drop_from_page_cache(state)
            resident_before.append(resident_share(state))
            cold.append(restore())  # read from the disk
            resident_after.append(resident_share(state))
            warm.append(restore())  # read from the page cache, which the cold read filled
    res = {"prefilled_ms": summarize(prefilled), "restored_cold_ms": summarize(cold),
           "restored_warm_ms": summarize(warm), "state_file_bytes": state_bytes, "context_tokens": int(len(context)),
           "resident_share_before_cold_read": resident_before, "resident_share_before_warm_read": resident_after}
    res["speedup_cold"] = res["prefilled_ms"]["mean"] / res["restored_cold_ms"]["mean"]
    res["speedup_warm"] = res["prefilled_ms"]["mean"] / res["restored_warm_ms"]["mean"]
    print(f"first token with 2000-token context: prefilled {fmt(res['prefilled_ms'])} ms, restored cold "
          f"{fmt(res['restored_cold_ms'])} ms (resident before: {resident_before}), warm {fmt(res['restored_warm_ms'])} ms",
          file=sys.stderr)
    return res


PEAK_RSS = """
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)
"""
IMPORTS = "import numpy as np, cogenesis_device as cg\nfrom cogenesis_device import _native\n"
GENERATE = """
model = _native.Model({path!r})
prompt = model.tokenize({paragraph!r} * 60)[:2000]
session = _native.Session(model, n_ctx={n_ctx}, n_threads={threads})
_native.Generation(session, prompt, _native.Sampler(temperature=0), max_tokens={new}, ignore_eos=True).run()
"""


def peak_rss_bytes(code: str) -> int:
    """Peak RSS of a fresh interpreter running `code`."""
    # From a neutral directory, so the installed package is imported, not the source tree.
    out = subprocess.run([sys.executable, "-c", code + PEAK_RSS], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"RSS probe failed:\n{out.stderr}")
    return int(out.stdout)


def bench_peak_rss(model, threads: int) -> dict:
    n_ctx = 2304  # >= 2000 + 128, and a multiple of 256 so llama.cpp allocates exactly n_ctx cells
    # KV bytes per token, read off a saved state (the engine stores the KV cells verbatim).
    with tempfile.TemporaryDirectory() as tmp:
        s = _native.Session(model.native, n_ctx=512, n_threads=threads)
        s.prefill(prompt_tokens(model, 256))
        s.save_state(str(Path(tmp) / "kv"))
        kv_bytes = Path(tmp, "kv").stat().st_size / 256 * n_ctx
    generate = GENERATE.format(path=str(model.path), paragraph=PARAGRAPH, n_ctx=n_ctx, threads=threads, new=NEW_TOKENS)
    peak = peak_rss_bytes(IMPORTS + generate)
    model_bytes = Path(model.path).stat().st_size
    budget = model_bytes + kv_bytes + 60e6
    res = {
        "peak_rss_bytes": peak,
        "interpreter_and_imports_bytes": peak_rss_bytes(IMPORTS),
        "model_file_bytes": model_bytes,
        "kv_cache_bytes": kv_bytes,
        "budget_bytes": budget,
        "within_budget": peak <= budget,
    }
    print(f"peak RSS {peak / 1e6:.1f} MB (budget {budget / 1e6:.1f} MB)", file=sys.stderr)
    return res


def resident(shares: list) -> str:
    shares = [x for x in shares if x is not None]
    if not shares:
        return "unknown share"
    low, high = f"{100 * min(shares):.0f}", f"{100 * max(shares):.0f}"
    return f"{low}%" if low == high else f"{low}-{high}%"


def common_rows(res: dict) -> list[dict]:
    """The results in the schema the benchmarks share (report.row)."""
    info = {**model_info(res["model"]), "threads": res["threads"]}
    out = []
    for n, s in res["decode"].items():
        for key, impl, sampling in (("ours", "ours", "greedy"), ("llama_generate", "Llama.generate", "greedy"),
                                    ("bare_loop", "bare ctypes loop", "greedy"), ("ours_sampled", "ours", "sampled"),
                                    ("llama_generate_sampled", "Llama.generate", "sampled")):
            out.append(row(f"tg{NEW_TOKENS} after pp{n}, {sampling}", s[key], unit="tok/s", impl=impl, **info))
    c = res["cached_first_token"]
    for key, path in (("prefilled_ms", "prefilled again"), ("restored_cold_ms", "state file, cold (not in page cache)"),
                      ("restored_warm_ms", "state file, warm (in page cache)")):
        out.append(row(f"first token after a {c['context_tokens']}-token context", c[key], unit="ms", path=path, **info))
    return out


def markdown(res: dict, args) -> str:
    d = res["decode"]
    lines = [
        "# Native decode loop (SmolLM2-135M-Instruct Q4_1)",
        "",
        f"`python benchmarks/bench_decode.py --repeats {args.repeats} --threads {args.threads}`, "
        f"{res['machine']['date']}, {res['machine']['cpus']} CPUs. {NEW_TOKENS} new tokens, mean ± sd over "
        f"{args.repeats} interleaved repeats.",
        "",
        "| prompt tokens | sampling | ours (tok/s) | Llama.generate (tok/s) | bare ctypes loop (tok/s) | ours / Llama.generate | ours / bare loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, s in d.items():
        lines.append(f"| {n} | greedy | {fmt(s['ours'])} | {fmt(s['llama_generate'])} | {fmt(s['bare_loop'])} | "
                     f"{s['ratio_vs_llama_generate']:.2f}x | {s['ratio_vs_bare_loop']:.2f}x |")
        lines.append(f"| {n} | sampled | {fmt(s['ours_sampled'])} | {fmt(s['llama_generate_sampled'])} | - | "
                     f"{s['ratio_sampled_vs_llama_generate']:.2f}x | - |")
    c = res["cached_first_token"]
    lines += [
        "",
        f"## First token with a {c['context_tokens']}-token private context",
        "",
        "| path | time to first token (ms) | speed-up |",
        "|---|---|---|",
        f"| prefilled again | {fmt(c['prefilled_ms'])} | 1x |",
        f"| restored from the state file ({c['state_file_bytes'] / 1e6:.1f} MB), cold: dropped from the page cache "
        f"before each read ({resident(c['resident_share_before_cold_read'])} of its pages resident) | "
        f"{fmt(c['restored_cold_ms'])} | {c['speedup_cold']:.0f}x |",
        f"| restored from the state file, warm: in the page cache ({resident(c['resident_share_before_warm_read'])} "
        f"resident) | {fmt(c['restored_warm_ms'])} | {c['speedup_warm']:.0f}x |",
        "",
        "Cold: the file was fsync'd and dropped with posix_fadvise(POSIX_FADV_DONTNEED), so this kernel reads it "
        "from the disk (a VM host's or the disk's own cache may still serve it). Warm: read again right after, as "
        "a state file is just after it was written.",
        "",
        "## Peak memory (2,000-token prompt, 128 new tokens)",
        "",
    ]
    m = res["peak_rss"]
    lines += [
        f"Peak RSS {m['peak_rss_bytes'] / 1e6:.1f} MB; budget = model file {m['model_file_bytes'] / 1e6:.1f} MB + "
        f"KV cache {m['kv_cache_bytes'] / 1e6:.1f} MB + 60 MB = {m['budget_bytes'] / 1e6:.1f} MB "
        f"({'within' if m['within_budget'] else 'OVER'} budget). Python with numpy and the package imported, "
        f"before loading the model: {m['interpreter_and_imports_bytes'] / 1e6:.1f} MB.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = cg.LocalModel(n_ctx=512, n_threads=args.threads)
    res = {
        "model": str(model.path),
        "threads": args.threads,
        "new_tokens": NEW_TOKENS,
        "decode": bench_decode(model, args.repeats, args.threads),
        "cached_first_token": bench_cached_first_token(model, args.repeats, args.threads),
        "peak_rss": bench_peak_rss(model, args.threads),
    }
    res["machine"] = machine()
    path = write("decode", res, markdown(res, args), common_rows(res))
    print(path.read_text())


if __name__ == "__main__":
    main()
