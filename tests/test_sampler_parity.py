"""The engine's sampler chain against llama.cpp's own samplers, on real logits of the bundled model.

Our bindings do not expose the candidate set the chain keeps (`Sampler.sample` returns only the token), so
the truncation samplers are compared by their draws: with a fixed seed, many draws on one row of scores
must stay inside the candidate set llama.cpp's top_k / top_p / min_p leave, cover it, and follow its
renormalized distribution. The repetition penalty is deterministic, so greedy picks under it are compared
step by step, on raw scores and through a whole generation.
"""
import ctypes

import llama_cpp
import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device import _native

from conftest import GREEDY

PROMPTS = ["The capital of France is", "Once upon a time, in a village", "My favourite food is"]
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)

# top_p compares a running sum of probabilities with p. llama.cpp sums the softmax normalizer in float32 over
# the whole vocabulary, the engine in double: on "My favourite food is" llama.cpp's normalizer is 1.4e-4
# (relative) low, and at top_p=0.9 it stops one token earlier (505 tokens where the exact sum needs 506). A
# token whose exact cumulative mass before it lies this close to p may fall on either side.
TOP_P_ROUNDING = 1e-3


@pytest.fixture(scope="module")
def rows(model):
    """The next-token scores of each prompt, from the engine's own session."""
    out = {}
    for prompt in PROMPTS:
        session = model.new_session()
        session.prefill(model.tokenize(prompt))
        out[prompt] = session.logits()
    return out


def _token_array(logits):
    buf = np.zeros(logits.size, dtype=TOKEN_DATA)
    buf["id"] = np.arange(logits.size)
    buf["logit"] = logits
    arr = llama_cpp.llama_token_data_array(data=buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
                                           size=logits.size, selected=-1, sorted=False)
    return buf, arr


def llama_candidates(logits, top_k=0, top_p=1.0, min_p=0.0):
    """The ids llama.cpp's own chain top_k -> top_p -> min_p keeps (the engine's order, and llama.cpp's)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if top_k > 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
    if top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
    if min_p > 0.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
    try:
        buf, arr = _token_array(logits)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        # llama.cpp writes the survivors into the array it was given, or points it at a buffer of its own
        raw = ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_byte))
        kept = np.ctypeslib.as_array(raw, (arr.size * TOKEN_DATA.itemsize,))
        ids = kept.view(TOKEN_DATA)["id"].copy()
    finally:
        llama_cpp.llama_sampler_free(chain)
    assert 0 < ids.size <= logits.size and len(set(ids.tolist())) == ids.size
    return ids


def top_p_boundary(logits, ids, top_p):
    """Tokens at top_p's cut whose side depends on float rounding (see TOP_P_ROUNDING)."""
    if top_p >= 1.0:
        return set()
    x = logits[ids].astype(np.float64)
    order = np.argsort(-x, kind="stable")
    p = np.exp(x[order] - x.max())
    before = np.concatenate([[0.0], np.cumsum(p / p.sum())[:-1]])
    return {int(ids[order[i]]) for i in np.flatnonzero(np.abs(before - top_p) < TOP_P_ROUNDING)}


# (prompt index, top_k, top_p, min_p, temperature, draws). top_p alone sorts the whole vocabulary at each
# draw (3 ms), hence fewer draws there. Each cut is chosen where it keeps more than one token.
CASES = [
    (1, 5, 1.0, 0.0, 1.0, 1500),     # top_k alone: the 5th token has 2% of the kept mass; the 6th, 1.7% of all
    (2, 40, 1.0, 0.0, 0.7, 1500),    # top_k with a temperature: applied after the cut, to the kept tokens
    (1, 0, 0.8, 0.0, 1.0, 250),      # top_p alone: 4 tokens (the 4th: 4.4%), the 5th would be 2%
    (2, 0, 0.3, 0.0, 1.0, 250),      # top_p alone on a flat distribution: 8 tokens
    (0, 0, 1.0, 0.05, 1.0, 1500),    # min_p alone: 2 tokens
    (2, 0, 1.0, 0.2, 1.0, 1500),     # min_p alone: 6 tokens
    (2, 40, 0.95, 0.05, 0.8, 1500),  # the default chain
    (1, 20, 0.8, 0.1, 1.0, 1500),    # each stage cuts: top_p over the top 20, then min_p
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"p{c[0]}-k{c[1]}-p{c[2]}-m{c[3]}-t{c[4]}")
def test_truncation_keeps_llama_cpp_candidates_with_their_probabilities(rows, case):
    """Every draw is a token llama.cpp keeps, and each kept token is drawn as often as its probability says."""
    index, top_k, top_p, min_p, temperature, n = case
    logits = rows[PROMPTS[index]]
    ids = llama_candidates(logits, top_k, top_p, min_p)
    assert ids.size > 1, "a case must leave a choice"
    before_top_p = llama_candidates(logits, top_k) if top_k else np.arange(logits.size)
    either_side = top_p_boundary(logits, before_top_p, top_p)
    sampler = _native.Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=1234)
    draws = np.array([sampler.sample(logits) for _ in range(n)])
    drawn, counts = np.unique(draws, return_counts=True)
    outside = set(drawn.tolist()) - set(ids.tolist()) - either_side
    assert not outside, f"drawn but cut by llama.cpp: {sorted(outside)}"
    # Each candidate is drawn as often as llama.cpp's kept distribution says: softmax(logit / T) over the kept
    # ids, within 5 standard deviations (so a candidate of 2% is never missed in 1500 draws).
    x = logits[ids].astype(np.float64) / temperature
    q = np.exp(x - x.max())
    q /= q.sum()
    got = dict(zip(drawn.tolist(), counts.tolist()))
    for token, share in zip(ids.tolist(), q):
        expected = n * share
        bound = 5 * np.sqrt(expected * (1 - share)) + 2
        assert abs(got.get(token, 0) - expected) <= bound, (token, got.get(token, 0), expected)


def llama_penalty_greedy(next_row, n_vocab, last_n, penalty, steps, history=()):
    """Greedy picks through llama.cpp's penalties sampler: `history` is accepted first, then each pick.
    next_row(picks) gives the scores for the next pick."""
    pen = llama_cpp.llama_sampler_init_penalties(n_vocab, last_n, penalty, 0.0, 0.0)
    try:
        for t in history:
            llama_cpp.llama_sampler_accept(pen, t)
        picks = []
        for _ in range(steps):
            buf, arr = _token_array(next_row(picks))
            llama_cpp.llama_sampler_apply(pen, ctypes.byref(arr))
            assert arr.size == n_vocab
            picks.append(int(buf["id"][int(np.argmax(buf["logit"]))]))  # the first of equal maxima, as greedy does
            llama_cpp.llama_sampler_accept(pen, picks[-1])
        return picks
    finally:
        llama_cpp.llama_sampler_free(pen)


def test_repeat_penalty_window_matches_llama_cpp(rows):
    """On a fixed row of scores, greedy under the penalty cycles through the best tokens as the window lets
    them back in, so a window one token longer or shorter changes the sequence."""
    for prompt in PROMPTS[0], PROMPTS[2]:
        logits = rows[prompt]
        seen = set()
        for last_n, penalty in [(1, 1.5), (3, 1.5), (8, 1.3), (64, 2.0)]:
            ours = _native.Sampler(temperature=0, repeat_penalty=penalty, repeat_last_n=last_n)
            picks = [ours.sample(logits) for _ in range(24)]
            reference = llama_penalty_greedy(lambda _: logits, logits.size, last_n, penalty, 24)
            assert picks == reference, (prompt, last_n, penalty)
            seen.add(tuple(picks))
        assert len(seen) == 4  # each window gives another sequence: the comparison can tell them apart


def test_generation_with_repeat_penalty_matches_llama_cpp_penalties(model):
    """Through LocalModel.generate: the engine feeds the prompt to the penalty window, then each generated
    token. The reference decodes with a session of its own, and picks with llama.cpp's penalties sampler fed
    the same way."""
    prompt = model.tokenize("one two one two one two one two")
    for last_n in (3, 8):  # windows where one token more or less changes the output (8: the prompt's length)
        session = model.new_session()
        session.prefill(prompt)

        def next_row(picks):
            if picks:
                session.decode([0], [picks[-1]])
            return session.logits()

        reference = llama_penalty_greedy(next_row, model.n_vocab, last_n, 1.6, 8, history=prompt)
        ours = model.generate(prompt, max_tokens=8, ignore_eos=True,
                              sampling=cg.SamplingParams.greedy(repeat_penalty=1.6, repeat_last_n=last_n))
        assert ours.tokens == reference, last_n
    plain = model.generate(prompt, max_tokens=8, ignore_eos=True, **GREEDY)
    assert plain.tokens != reference  # the penalty decides these tokens


@pytest.mark.parametrize("setting", [dict(top_k=1), dict(top_p=0.01), dict(min_p=1.0)], ids=lambda s: next(iter(s)))
def test_each_truncation_setting_reaches_the_chain_through_generate(model, setting):
    """A setting that keeps only the top token makes hot sampling greedy, whatever the seed; dropped or
    passed to another link at the Python boundary, it would not (the other links are off)."""
    sampling = cg.SamplingParams(**{"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.5, **setting})
    options = dict(max_tokens=10, ignore_eos=True)
    prompt = model.tokenize("Once upon a time, in a village")
    greedy = model.generate(prompt, max_tokens=10, ignore_eos=True, **GREEDY).tokens
    assert all(model.generate(prompt, sampling.replace(seed=seed), **options).tokens == greedy for seed in range(4))
    sampling = sampling.replace(top_k=0, top_p=1.0, min_p=0.0)  # the control: the same sampling without the setting is not greedy
    assert any(model.generate(prompt, sampling.replace(seed=seed), **options).tokens != greedy for seed in range(4))
