"""Generation through the native loop: parity, sampling, streaming, stops, threads, arrays in and out."""
import ctypes
import gc
import itertools
import re
import threading
import time
import tracemalloc

import llama_cpp
import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device import _native

from conftest import GREEDY

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a village",
]


def reference_greedy(llama_ref, tokens, n):
    out = []
    for t in llama_ref.generate(tokens, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llama_ref._model.vocab, t) or len(out) == n:
            break
        out.append(t)
    return out


@pytest.mark.parametrize("prompt", PROMPTS + ["<chat>"])
def test_greedy_matches_llama_cpp_python(model, llama_ref, prompt):
    if prompt == "<chat>":
        prompt = model.apply_chat_template([{"role": "user", "content": "Write a short email to my landlord about a broken heater."}])
    tokens = llama_ref.tokenize(prompt.encode(), special=True)
    assert model.tokenize(prompt, parse_special=True) == tokens
    ours = model.generate(tokens, max_tokens=64, **GREEDY)
    assert ours.tokens == reference_greedy(llama_ref, tokens, 64)
    assert ours.text == model.detokenize(ours.tokens)


def test_one_libllama_in_process(model, llama_ref):
    # Both libraries are in use (fixtures loaded a model through each).
    assert llama_ref.n_vocab() == model.n_vocab
    with open("/proc/self/maps") as f:
        mapped = set(re.findall(r"\S*libllama\S*", f.read()))
    assert len(mapped) == 1, mapped
    assert mapped.pop().startswith(str(llama_cpp.__path__[0]))


def test_same_seed_same_output_and_different_seeds_differ(model):
    hot = cg.SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)
    opts = dict(max_tokens=32, ignore_eos=True)
    a = model.generate("My favourite food is", hot.replace(seed=7), **opts)
    b = model.generate("My favourite food is", hot.replace(seed=7), **opts)
    assert a.tokens == b.tokens
    others = {tuple(model.generate("My favourite food is", hot.replace(seed=s), **opts).tokens) for s in (1, 2, 3)}
    assert len(others | {tuple(a.tokens)}) == 4


def test_sampling_with_default_chain_is_reproducible(model):
    a = model.generate("Write a poem about rain.", chat=True, max_tokens=24, sampling=cg.SamplingParams(seed=11))
    b = model.generate("Write a poem about rain.", chat=True, max_tokens=24, sampling=cg.SamplingParams(seed=11))
    assert a.tokens == b.tokens and a.text == b.text


def test_repeat_penalty_changes_greedy_output(model):
    plain = model.generate("one one one one one", max_tokens=16, ignore_eos=True, **GREEDY)
    penal = model.generate("one one one one one", max_tokens=16, ignore_eos=True,
                           sampling=cg.SamplingParams.greedy(repeat_penalty=1.8))
    assert plain.tokens.count(plain.tokens[0]) > penal.tokens.count(plain.tokens[0])


def test_no_repeat_ngram_blocks_exactly_the_generated_ngrams():
    """On scores that always prefer token 5, then 6, then 7: greedy alone repeats 5; with bigrams
    blocked every bigram of the output is new, and the choice is the best token that keeps it so."""
    logits = np.full(32, -5.0, dtype=np.float32)
    logits[[5, 6, 7, 8]] = [10.0, 9.0, 8.0, 7.0]
    plain = _native.Sampler(temperature=0)
    assert [plain.sample(logits) for _ in range(5)] == [5] * 5
    blocked = _native.Sampler(temperature=0, no_repeat_ngram=2)
    out = [blocked.sample(logits) for _ in range(6)]
    assert out == [5, 5, 6, 5, 7, 5]
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    blocked.reset()  # a new generation forgets the old n-grams
    assert [blocked.sample(logits) for _ in range(3)] == [5, 5, 6]
    with pytest.raises(cg.errors.InvalidParameterError, match="no_repeat_ngram"):
        _native.Sampler(no_repeat_ngram=-1)


def test_no_repeat_ngram_in_generation_spares_the_prompt_and_is_seeded(model):
    prompt = "The cat sat on the mat. The cat sat on the mat. The cat sat on the"
    options = dict(max_tokens=48, ignore_eos=True, **GREEDY)
    free = model.generate(prompt, **options)
    blocked = model.generate(prompt, **{**options, "sampling": cg.SamplingParams.greedy(no_repeat_ngram=4)})
    # The prompt's 4-grams may be repeated: the first token (" mat", completing one) is the same.
    assert blocked.tokens[0] == free.tokens[0] == model.tokenize(" mat", add_special=False)[0]
    grams = [tuple(blocked.tokens[i:i + 4]) for i in range(len(blocked.tokens) - 3)]
    assert len(grams) == len(set(grams))
    free_grams = [tuple(free.tokens[i:i + 4]) for i in range(len(free.tokens) - 3)]
    assert len(free_grams) > len(set(free_grams))  # this prompt loops without the block
    assert model.generate(prompt, **{**options, "sampling": cg.SamplingParams.greedy(no_repeat_ngram=0)}).tokens == free.tokens  # 0 is off
    sampled = dict(max_tokens=32, sampling=cg.SamplingParams(temperature=0.9, seed=11, no_repeat_ngram=3))
    assert model.generate(prompt, **sampled).tokens == model.generate(prompt, **sampled).tokens


def _one_token(model, text):
    ids = model.tokenize(text, add_special=False)
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens in this vocabulary"
    return ids[0]


def test_no_repeat_ngram_by_text_sees_repeats_in_other_spacing_and_case(model):
    """Scores that always prefer "*" then "**": the text "* \\n*  \\n" and its variants in spacing are
    all the n-gram ("*", "*"), so by text the sampler blocks what by token id it lets through."""
    star, stars, space_nl, spaces_nl = (_one_token(model, t) for t in ("*", "**", " \n", "  \n"))
    hello, spaced_hello, world = (_one_token(model, t) for t in ("hello", " Hello", " world"))

    def run(sampler, forced, prefer):
        """Accept `forced` (by scores that pick each), then return the sampler's pick on `prefer`."""
        for t in forced:
            logits = np.full(model.n_vocab, -5.0, dtype=np.float32)
            logits[t] = 10.0
            assert sampler.sample(logits) == t
        logits = np.full(model.n_vocab, -5.0, dtype=np.float32)
        logits[prefer] = [10.0 - i for i in range(len(prefer))]
        return sampler.sample(logits)

    by_id = lambda: _native.Sampler(model.native, temperature=0, no_repeat_ngram=2)  # noqa: E731
    by_text = lambda: _native.Sampler(model.native, temperature=0, no_repeat_ngram=2, no_repeat_text=True)  # noqa: E731
    # "* \n**  \n*" then "**" again: by id the bigram ("*", "**") was never generated (a space stood
    # between); by text, with the whitespace left out, the text is "* ** *" and "**" would repeat it.
    markup = [star, space_nl, stars, spaces_nl, star]
    assert run(by_id(), markup, [stars, star]) == stars
    assert run(by_text(), markup, [stars, star]) == star
    # " Hello world" then "hello": " world" would repeat the phrase in another case and spacing.
    phrase = [spaced_hello, world, space_nl, hello]
    assert run(by_id(), phrase, [world, stars]) == world
    assert run(by_text(), phrase, [world, stars]) == stars
    # A whitespace-only token is never blocked and never part of an n-gram.
    assert run(by_text(), [space_nl, space_nl, space_nl], [space_nl]) == space_nl
    with pytest.raises(cg.errors.InvalidParameterError, match="needs the model"):
        _native.Sampler(temperature=0, no_repeat_ngram=2, no_repeat_text=True)


def test_no_repeat_text_in_generation_leaves_no_repeated_text_ngram(model):
    """A prompt that makes the model write markup: by text, no 3-gram of its non-space pieces repeats."""
    prompt = "Write a markdown table of fruits and colours:\n\n| fruit | colour |\n|---|---|\n| apple | red |\n"
    options = dict(max_tokens=128, ignore_eos=True)  # long enough that by id the table repeats (64 did not on every CPU)
    by_text = model.generate(prompt, **options, sampling=cg.SamplingParams.greedy(no_repeat_ngram=3, no_repeat_text=True))
    by_id = model.generate(prompt, **options, sampling=cg.SamplingParams.greedy(no_repeat_ngram=3))

    def text_grams(tokens):
        keys = ["".join(model.detokenize([t]).split()).lower() for t in tokens]
        keys = [k for k in keys if k]
        return [tuple(keys[i:i + 3]) for i in range(len(keys) - 2)]

    grams = text_grams(by_text.tokens)
    assert grams and len(grams) == len(set(grams))
    id_grams = text_grams(by_id.tokens)  # by id, the table's "| ... |" pieces repeat in other spacing
    assert len(id_grams) > len(set(id_grams))

def test_stream_yields_the_same_text_as_generate(model):
    full = model.generate("List three colours:", max_tokens=40, **GREEDY)
    with model.stream("List three colours:", max_tokens=40, **GREEDY) as stream:
        chunks = list(stream)
    assert "".join(chunks) == full.text
    assert stream.result.tokens == full.tokens
    assert stream.result.finish_reason == full.finish_reason
    assert len(chunks) > 5


def test_stop_string_ends_generation_before_it(model):
    full = model.generate("Count: one, two,", max_tokens=30, ignore_eos=True, **GREEDY)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 4]
    cut = model.generate("Count: one, two,", max_tokens=30, stop=[stop, "zzzz-never"], **GREEDY)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    with model.stream("Count: one, two,", max_tokens=30, stop=[stop], **GREEDY) as s:
        assert "".join(s) == cut.text


def test_finish_reasons(model):
    assert model.generate("Hi", max_tokens=0).finish_reason == "length"
    assert model.generate("Hi", max_tokens=0).text == ""
    done = model.generate("What is 2+2?", chat=True, max_tokens=200, **GREEDY)
    assert done.finish_reason == "eos" and 0 < len(done.tokens) < 200
    small = cg.LocalModel(n_ctx=48, n_threads=2)
    full = small.generate("The history of the city begins", max_tokens=100, ignore_eos=True, **GREEDY)
    assert full.finish_reason == "context_full"
    assert full.stats.n_prompt + full.stats.n_generated == 48 + 1  # the last token is sampled, not stored


def test_prompt_prefix_is_reused(model):
    prompt = "A long shared preamble about the weather in Lisbon. " * 5 + "Today"
    first = model.generate(prompt, max_tokens=8, **GREEDY)
    again = model.generate(prompt, max_tokens=8, **GREEDY)
    assert again.tokens == first.tokens
    assert again.stats.n_reused == again.stats.n_prompt - 1
    assert again.stats.prefill_ms < first.stats.prefill_ms or first.stats.n_reused > 0


def test_cancel_stops_a_stream(model):
    with model.stream("Tell me a long story.", chat=True, max_tokens=300, ignore_eos=True, **GREEDY) as stream:
        for i, _ in enumerate(stream):
            if i == 4:
                stream.cancel()
        result = stream.result
    assert result.finish_reason == "cancelled"
    assert 5 <= result.stats.n_generated < 300
    # The session is back in the pool and works.
    assert model.generate("Hi", max_tokens=2).finish_reason in ("length", "eos")


def _main_thread_rate(work) -> float:
    """Iterations per second of a Python loop on this thread while `work` runs on another."""
    done = threading.Event()
    ticks = 0

    def run():
        work()
        done.set()

    t = threading.Thread(target=run)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
    elapsed = time.perf_counter() - start
    t.join()
    return ticks / elapsed


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_gil_is_released_while_prefilling_and_decoding(model, phase):
    """The main thread keeps a good share of the pace it has while the other thread only sleeps.
    A C call that holds the GIL throughout leaves it a few ticks at the start and end (before, a
    test counting raw ticks passed even then)."""
    if phase == "prefill":  # ~700 prompt tokens, one generated, a new scope each time so nothing is reused
        scopes = itertools.count()
        work = lambda: model.generate("The weather is fine. " * 140, max_tokens=1, scope=f"gil-{next(scopes)}",  # noqa: E731
                                      **GREEDY)
    else:
        work = lambda: model.generate("Write a story.", chat=True, max_tokens=64, ignore_eos=True, **GREEDY)  # noqa: E731
    start = time.perf_counter()
    work()
    duration = time.perf_counter() - start
    baseline = _main_thread_rate(lambda: time.sleep(duration))
    during = _main_thread_rate(work)
    # The native threads share the two cores with this loop, so some slow-down is expected.
    assert during > 0.2 * baseline, (during, baseline)


def test_threads_generate_at_once_with_their_own_sessions(model):
    prompts = ["The sea is", "My cat likes", "In 1969, the", "Python is a"]
    expected = [model.generate(p, max_tokens=24, **GREEDY).tokens for p in prompts]
    results = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def work(i):
        barrier.wait()
        results[i] = model.generate(prompts[i], max_tokens=24, **GREEDY).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_a_session_serves_one_generation_at_a_time(model):
    session = model.new_session()
    greedy = _native.Sampler(temperature=0)
    gen = _native.Generation(session, model.tokenize("Hello"), greedy, max_tokens=4)
    with pytest.raises(RuntimeError, match="in use"):
        _native.Generation(session, model.tokenize("Hello"), greedy, max_tokens=4)
    gen.run()
    _native.Generation(session, model.tokenize("Hello"), greedy, max_tokens=4).run()


def test_two_sequences_in_one_batch_match_separate_decoding(model):
    a, b = model.tokenize("The weather today is"), model.tokenize("My private diary says that I")
    both = model.new_session(n_seq_max=2)
    both.prefill(a[:-1], seq_id=0)
    both.prefill(b[:-1], seq_id=1)
    both.decode([0, 1], [a[-1], b[-1]])
    batched = [both.logits(0), both.logits(1)]
    for row, toks in enumerate((a, b)):
        alone = model.new_session()
        alone.prefill(toks)
        ref = alone.logits()
        assert np.argmax(batched[row]) == np.argmax(ref)
        assert np.max(np.abs(batched[row] - ref)) < 0.05
    assert both.seq_len(0) == len(a) and both.seq_len(1) == len(b)


def test_truncate_rolls_back_the_kv_cache(model):
    s = model.new_session()
    toks = model.tokenize("Rolling back the cache")
    s.prefill(toks)
    first = s.logits()
    s.decode([0, 0, 0], [100, 200, 300])
    s.truncate(len(toks) - 1)
    s.prefill(toks[-1:])
    np.testing.assert_allclose(s.logits(), first, atol=1e-4)
    assert s.seq_tokens().tolist() == toks


def _status_bytes(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _peaks(call):
    """Memory a call takes at its peak: numpy's allocations (tracemalloc), and the process's resident set
    (VmHWM, reset through /proc/self/clear_refs), which also sees a copy made in C++. The second is None
    where the kernel does not let a process reset it."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: hand freed memory back, so a new allocation shows in the RSS
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss_before = _status_bytes("VmRSS")
    except OSError:
        rss_before = None
    tracemalloc.start()
    try:
        call()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return traced, None if rss_before is None else _status_bytes("VmHWM") - rss_before


def test_token_arrays_are_read_in_place_or_converted(model):
    """A C-contiguous int32 array is read where it is; another dtype, a strided view or a list is converted,
    to the same tokens. The array is 32 MiB of EOS (rendered as "" without special=True), so detokenize reads
    all of it and a copy would stand far above the allocator's noise."""
    native = model.native
    n = 1 << 23
    eos = np.full(n, native.eos, dtype=np.int32)
    # The control: these must be copied, and numpy's allocation of the copy is seen. The resident set
    # sees a copy too (one made in C++ as well), unless the process reuses memory it already holds,
    # as it may late in a long test session: then only the traced figure is asserted.
    rss_sees_copies = True
    for converted in (eos.astype(np.int64), np.repeat(eos, 2)[::2]):
        traced, rss = _peaks(lambda: native.detokenize(converted))
        assert traced >= 4 * n, (converted.dtype, traced, rss)
        rss_sees_copies &= rss is not None and rss >= 3 * n
    readonly = eos.copy()
    readonly.flags.writeable = False  # only read: a read-only array is taken as it is
    for in_place in (eos, readonly):
        traced, rss = _peaks(lambda: native.detokenize(in_place))
        assert traced < n // 8 and (not rss_sees_copies or rss < n // 2), (traced, rss)
    # converted input means the same tokens
    tokens = model.native.tokenize("Arrays in: read in place, or converted to int32.")
    text = native.detokenize(tokens)
    wide = np.zeros(2 * len(tokens), dtype=np.int64)
    wide[::2] = tokens
    for same in (tokens.tolist(), tokens.astype(np.int64), wide[::2], tokens.astype(np.uint16)):
        assert native.detokenize(same) == text
    session = model.new_session()
    session.prefill(wide[::2])
    assert session.seq_tokens().tolist() == tokens.tolist()


def test_returned_arrays_own_their_memory(model):
    """Each call returns memory of its own: not a view of the engine's buffers (the logits buffer is
    overwritten by the next evaluation) and not shared with another call's array."""
    session = model.new_session()
    tokens = model.native.tokenize("Arrays out own their memory")
    assert not np.shares_memory(tokens, model.native.tokenize("Arrays out own their memory"))
    session.prefill(tokens)
    first, again = session.logits(), session.logits()
    kept = first.copy()
    assert first.dtype == np.float32 and first.flags.c_contiguous and first.flags.writeable
    assert not isinstance(first.base, np.ndarray) and not np.shares_memory(first, again)
    first[:] = 0.0  # writing to one changes neither the engine nor the next call's array
    np.testing.assert_array_equal(session.logits(), kept)
    session.decode([0], [int(tokens[0])])
    assert not np.array_equal(session.logits(), kept)  # the engine's buffer moved on...
    np.testing.assert_array_equal(again, kept)  # ...the array returned before did not
    held = session.seq_tokens()
    held[:] = -1
    assert session.seq_tokens().tolist() == [*tokens.tolist(), int(tokens[0])]
    gen = _native.Generation(session, tokens, _native.Sampler(temperature=0), max_tokens=3)
    gen.run()
    out = gen.tokens
    assert not np.shares_memory(out, gen.tokens)
    expected = out.copy()
    gen.close()
    del session, gen
    gc.collect()
    # the arrays outlive the session and generation that returned them
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(out, expected)


def test_two_models_in_one_process_both_generate(model, llama_ref):
    """On a CPU with AMX, llama.cpp repacked each model's weights for AMX, and a decode segfaulted in its
    AMX matrix multiply (llama.cpp issue 20824): here every time a second model shared the process. The
    engine loads weights without the extra buffer types (and the reference is built the same way), so
    both models work, with the same greedy text."""
    second = cg.LocalModel(model.path, n_ctx=256, n_threads=2)
    prompt = "The capital of France is"
    first_text = model.generate(prompt, max_tokens=8, **GREEDY).text
    assert second.generate(prompt, max_tokens=8, **GREEDY).text == first_text
    expected = llama_ref(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert first_text == expected
