"""The standard suite of `cogenesis bench`, on the user's model and thread counts.

Each test is one function that returns rows (see bench/__init__.py); repetitions run interleaved
where a test compares paths, so the machine's drift hits every path alike. Ratios belong to rows of
the same run: a path is always measured beside its baseline.

  pp      prompt processing: prefill of n_prompt tokens, tokens/s
  tg      text generation: n_gen tokens after a one-token prompt, decode tokens/s (greedy)
  cached  the first token of a job whose n_prompt-token private context is already on the device, ms:
          prefilled again (the baseline), restored from a state file (LocalModel.cache_prefix), and
          kept in a pooled session of the same user (scope)
  fusion  one step of the collaborative sampler: the remote's top-k set, fused with the local logits
          and sampled with the collaboration's default fusion and sampling, microseconds
  collab  logits mode through a loopback remote (llama.cpp's server in a child process, serving the
          same model) behind a proxy that adds each RTT: tokens/s after the first token, for the local
          model alone, the paper's per-token protocol and the default (adaptive lookahead)
"""
from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import _native
from ..collab import CoGenerator
from ..errors import InvalidParameterError
from ..fusion import FusionConfig, log_softmax
from ..local import LocalModel
from ..remote import RemoteModel
from ..registry import resolve_model
from ..sampling import COLLABORATIVE
from ..testing import FaultProxy, LoopbackServer
from . import TESTS, BenchConfig, model_info, row, summarize

PROTOCOLS = {  # name: CoGenerator options (None: the local model alone)
    "local only": None,
    "per-token (paper)": dict(lookahead=1, overlap=False),
    "default": {},
}
REMOTE_TOP_K = 20  # alternatives per position that the servers return (OpenAI's maximum)
FUSION_STEPS = 200  # steps per repetition of the fusion test


def run(config: BenchConfig, on_row: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Every test of the config for every thread count, in TESTS order; on_row sees each row as it is made."""
    config.check()
    path = resolve_model(config.model)
    rows = []
    for threads in config.threads:
        local = LocalModel(path, n_ctx=_context_for(config), n_threads=threads)
        if "collab" in config.tests and not local.has_chat_template:
            raise InvalidParameterError(f"the collab test writes with the private context in a chat turn, and "
                                        f"{local.path.name} has no chat template: leave collab out of the tests")
        info = {**model_info(local.path), "threads": threads}
        for test in TESTS:
            if test in config.tests:
                for r in _TESTS[test](local, config, info):
                    on_row(r)
                    rows.append(r)
    return rows


def _context_for(config: BenchConfig) -> int:
    """A context window for the longest test: the cached prompt plus its instruction, or tg's tokens."""
    needed = max(config.n_prompt + 64, config.n_gen + 8, config.collab_tokens + 512)
    return -(-needed // 256) * 256


def _demo_sample() -> dict:
    return json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())


def _text_tokens(model: LocalModel, n: int) -> np.ndarray:
    """n tokens of realistic text (the demo's private context, repeated)."""
    context = _demo_sample()["context"]
    tokens = model.tokenize(context, add_special=False)
    return np.resize(np.asarray(tokens, dtype=np.int32), n)


def _prompt_processing(local: LocalModel, config: BenchConfig, info: dict) -> Iterator[dict]:
    tokens = _text_tokens(local, config.n_prompt)
    session = local.new_session()
    session.prefill(tokens[:8])  # warm-up: the first decode allocates the compute buffers
    rates = []
    for _ in range(config.repetitions):
        session.truncate(0)
        start = time.perf_counter()
        session.prefill(tokens)
        rates.append(len(tokens) / (time.perf_counter() - start))
    yield row(f"pp{config.n_prompt}", summarize(rates), unit="tok/s", **info)


def _text_generation(local: LocalModel, config: BenchConfig, info: dict) -> Iterator[dict]:
    session = local.new_session()
    prompt = np.asarray(local.tokenize("", add_special=True) or [0], dtype=np.int32)
    rates = []
    for repetition in range(config.repetitions + 1):  # the first is a warm-up
        session.truncate(0)
        generation = _native.Generation(session, prompt, _native.Sampler(temperature=0), max_tokens=config.n_gen,
                                        ignore_eos=True)
        generation.run()
        if repetition:
            rates.append(generation.timings.decode_tokens_per_s)
    yield row(f"tg{config.n_gen}", summarize(rates), unit="tok/s", **info)


def _cached_first_token(local: LocalModel, config: BenchConfig, info: dict) -> Iterator[dict]:
    context = _text_tokens(local, config.n_prompt).tolist()
    # Two jobs on the same private context, with instructions that share no first token: the second
    # finds the context, not its whole prompt, in the pooled session the first left behind.
    first_job = context + local.tokenize(" Write a short note to my neighbour.", add_special=False)
    second_job = context + local.tokenize(" Draft a reply to the landlord.", add_special=False)
    times = {"prefilled": [], "state file": [], "pooled session": []}
    reused = {path: set() for path in times}  # prompt tokens each path found cached: shows what it measured

    def first_token(path: str, prompt: list[int], keep: bool, **options) -> None:
        start = time.perf_counter()
        completion = local.generate(prompt, COLLABORATIVE, max_tokens=1, **options)
        if keep:
            times[path].append((time.perf_counter() - start) * 1000)
        reused[path].add(completion.stats.n_reused)

    with tempfile.TemporaryDirectory() as folder:  # 0700: the state file holds the context's tokens
        state = Path(folder) / "context.kv"
        local.cache_prefix(context, state)
        for repetition in range(config.repetitions + 1):
            keep = repetition > 0  # the first is a warm-up
            local.forget()
            first_token("prefilled", first_job, keep, scope="bench")
            local.forget()
            first_token("state file", first_job, keep, prefix_cache=state, scope="bench")
            first_token("pooled session", second_job, keep, scope="bench")  # the same user's session, still holding it
        local.forget(state)
    for path, ms in times.items():
        yield row(f"first token, {config.n_prompt}-token context {path}", summarize(ms), unit="ms",
                  context_tokens=config.n_prompt, path=path, reused_tokens=sorted(reused[path]), **info)


def _fusion_step(local: LocalModel, config: BenchConfig, info: dict) -> Iterator[dict]:
    sample = _demo_sample()
    session = local.new_session()
    session.prefill(local.tokenize(f"{sample['context']}\n\n{sample['instruction']}\n"))
    local_logits = np.array(session.logits(0), dtype=np.float32)
    session.truncate(0)
    session.prefill(local.tokenize(f"{sample['instruction']}\n"))
    logprobs = log_softmax(np.asarray(session.logits(0)))
    ids = np.argsort(-logprobs, kind="stable")[:REMOTE_TOP_K].astype(np.int32)
    fusion = FusionConfig()
    sampler = _native.FusionSampler(local.native, rule=fusion.rule, fill=fusion.fill, weight=fusion.weight,
                                    alpha=fusion.alpha, plausible=fusion.plausible, **COLLABORATIVE.to_dict())
    top = logprobs[ids].astype(np.float32)

    def steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            sampler.set_remote(ids, top)
            sampler.sample(local_logits)
        return (time.perf_counter() - start) / n * 1e6

    steps(FUSION_STEPS // 4)  # warm-up
    micros = [steps(FUSION_STEPS) for _ in range(config.repetitions)]
    yield row(f"fusion step, {fusion.rule}:{fusion.fill}, remote top-{REMOTE_TOP_K}", summarize(micros), unit="us",
              n_vocab=local.n_vocab, **info)


def _collaboration(local: LocalModel, config: BenchConfig, info: dict) -> Iterator[dict]:
    sample = _demo_sample()
    instruction, context = sample["instruction"], sample["context"]
    with LoopbackServer(str(local.path), n_ctx=2048, n_threads=info["threads"]) as server, \
            FaultProxy(server.base_url) as proxy, RemoteModel(proxy.base_url, template=local) as remote:
        remote.connect()
        generators = {name: CoGenerator(local, None) if options is None else
                      CoGenerator(local, remote, mode="logits", **options) for name, options in PROTOCOLS.items()}
        for rtt in config.rtts:
            proxy.rtt_ms = rtt
            results = {name: [] for name in generators}
            for _ in range(config.repetitions):
                for name, generator in generators.items():  # interleaved
                    generator.generate(instruction, context, max_tokens=2)  # the private prefix is cached
                    results[name].append(generator.generate(instruction, context, max_tokens=config.collab_tokens))
            for name, done in results.items():
                yield row(f"logits mode tg{config.collab_tokens}, RTT {rtt:g} ms, {name}",
                          summarize([r.stats.tokens_per_s_after_first for r in done]), unit="tok/s", protocol=name,
                          rtt_ms=rtt, fallbacks=sum(bool(r.fallback) for r in done),
                          round_trips=sum(r.stats.round_trips for r in done),
                          tokens=sum(r.stats.n_tokens for r in done), **info)


_TESTS = {"pp": _prompt_processing, "tg": _text_generation, "cached": _cached_first_token, "fusion": _fusion_step,
          "collab": _collaboration}
