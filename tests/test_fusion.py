"""Native logit fusion against its numpy reference, on random and real logits; fuzzing; the chain link."""
import math

import numpy as np
import pytest

import cogenesis_device as cg

from cogenesis_device import _native
from cogenesis_device import fusion as F
from cogenesis_device.errors import InvalidParameterError, MissingFileError
from reference import features_reference, fuse_reference

TOL = 1e-5
# The engine fuses in float32 against a float64 reference: near -33 nats (a 262k vocabulary's tail) one
# float32 step is 3.8e-6, and a few roundings exceed TOL; 1e-6 relative is about 8 of those steps.
REL_TOL = 1e-6


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def top_k(logits, k=20):
    lp = log_softmax(logits)
    ids = np.argsort(-lp, kind="stable")[:k].astype(np.int32)
    return ids, lp[ids].astype(np.float32)


def random_gate_arrays(rng, hidden=6):
    return dict(
        mean=rng.normal(size=8).astype(np.float32), std=(np.abs(rng.normal(size=8)) + 0.5).astype(np.float32),
        w1=rng.normal(size=(hidden, 8)).astype(np.float32), b1=rng.normal(size=hidden).astype(np.float32),
        w2=rng.normal(size=hidden).astype(np.float32), b2=0.25,
    )


def assert_matches_reference(local, ids, lps, noctx, gate_arrays, rule, fill, **kw):
    gate = F.Gate.from_arrays(**gate_arrays)
    out, info = F.fuse(local, ids, lps, rule=rule, fill=fill, local_noctx=noctx, gate=gate, **kw)
    ref = fuse_reference(local, ids, lps, rule=rule, fill=fill, local_noctx=noctx, gate_arrays=gate_arrays, **kw)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isfinite(out), finite)
    assert np.array_equal(out[~finite], ref[~finite])
    np.testing.assert_allclose(out[finite], ref[finite], atol=TOL, rtol=REL_TOL)
    assert info.fused_top == int(np.argmax(ref))
    return out, info


@pytest.mark.parametrize("rule", F.RULES)
@pytest.mark.parametrize("fill", F.FILLS)
@pytest.mark.parametrize("n_vocab", [1000, 49152, 262144])
def test_rules_match_numpy_on_random_logits(rule, fill, n_vocab):
    rng = np.random.default_rng(n_vocab)
    for _ in range(3):
        local = rng.normal(0, 4, n_vocab).astype(np.float32)
        noctx = rng.normal(0, 4, n_vocab).astype(np.float32)
        ids, lps = top_k(rng.normal(0, 4, n_vocab))
        assert_matches_reference(local, ids, lps, noctx, random_gate_arrays(rng), rule, fill, weight=0.3, alpha=0.7)
        assert_matches_reference(local, ids, lps, noctx, random_gate_arrays(rng), rule, fill, weight=0.3, alpha=0.7,
                                 plausible=0.02)


@pytest.mark.parametrize("rule", F.RULES)
def test_a_remote_cannot_force_a_token_the_local_model_finds_implausible(model, rule):
    local, noctx = real_logits(model, 49152)
    implausible = int(np.argmin(local))
    gate = F.Gate.from_arrays(**random_gate_arrays(np.random.default_rng(2)))
    one = (np.array([implausible], np.int32), np.array([0.0], np.float32))
    forced, info = F.fuse(local, *one, rule=rule, local_noctx=noctx, gate=gate, weight=0.1, plausible=0.0)
    assert int(np.argmax(forced)) == implausible and info.consulted and not info.overruled  # the paper's fusion
    out, info = F.fuse(local, *one, rule=rule, local_noctx=noctx, gate=gate, weight=0.1, plausible=0.1)
    assert info.fused_top == int(np.argmax(local))
    if rule == "max":
        assert np.isneginf(out[implausible]) and not info.overruled
    else:  # with the mask fill nothing listed is left: a local-only step ("max" keeps local scores)
        assert info.overruled and not info.consulted
        np.testing.assert_allclose(out, fuse_reference(local, [], []), atol=1e-5)
    # Among plausible tokens the remote still chooses: here, the local model's second choice.
    second = int(np.argsort(-local)[1])
    assert np.exp(local[second] - local.max()) >= 0.1, "the fixture's second choice must be plausible"
    out, info = F.fuse(local, np.array([second, implausible], np.int32), np.array([-0.05, -3.0], np.float32),
                       rule=rule, local_noctx=noctx, gate=gate, weight=0.1, plausible=0.1)
    assert info.fused_top == second and np.isneginf(out[implausible])


def test_plausible_outside_zero_to_one_is_an_error():
    with pytest.raises(InvalidParameterError, match="plausible"):
        F.fuse(np.zeros(10, np.float32), np.array([1], np.int32), np.array([-0.1], np.float32), plausible=1.5)


def real_logits(model, n_vocab_expected):
    context = "Private notes: Dana lives in Leeds, works as a veterinary nurse, and signs her emails 'D.'. "
    instruction = "Write a short note to a colleague about swapping the Friday shift."
    s = model.new_session()
    s.prefill(model.native.tokenize(context + instruction))
    local = s.logits()
    s.truncate(0)
    s.prefill(model.native.tokenize(instruction))
    noctx = s.logits()
    assert local.shape == (n_vocab_expected,)
    return local, noctx


@pytest.mark.parametrize("rule", F.RULES)
@pytest.mark.parametrize("fill", F.FILLS)
def test_rules_match_numpy_on_real_smollm2_logits(model, rule, fill):
    local, noctx = real_logits(model, 49152)
    ids, lps = top_k(noctx, 20)  # the "remote" sees no context
    assert_matches_reference(local, ids, lps, noctx, random_gate_arrays(np.random.default_rng(1)), rule, fill,
                             weight=0.5, alpha=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("rule", F.RULES)
def test_rules_match_numpy_on_real_gemma3_logits(gemma_path, rule):
    import cogenesis_device as cg

    gemma = cg.LocalModel(gemma_path, n_ctx=256, n_threads=2)
    local, noctx = real_logits(gemma, 262144)
    ids, lps = top_k(noctx, 20)
    for fill in F.FILLS:
        assert_matches_reference(local, ids, lps, noctx, random_gate_arrays(np.random.default_rng(2)), rule, fill,
                                 weight=0.5, alpha=1.0)


@pytest.mark.parametrize("fill", F.FILLS)
def test_features_match_reference(model, fill):
    local, noctx = real_logits(model, 49152)
    ids, lps = top_k(noctx, 20)
    gate = F.Gate.from_arrays(**random_gate_arrays(np.random.default_rng(3)))
    _, info = F.fuse(local, ids, lps, rule="gate", gate=gate, fill=fill)
    native = np.array([info.features[k] for k in F.FEATURE_NAMES])
    np.testing.assert_allclose(native, features_reference(local, ids, lps, fill), atol=TOL, rtol=1e-5)
    assert 0.0 < info.weight < 1.0


@pytest.mark.parametrize("rule", ["weighted", "max", "gate"])
def test_the_local_fill_keeps_the_local_order_and_ratios_of_unlisted_tokens(model, rule):
    """Outside the remote's top-k, fusion with the local-shaped fill moves every token by the same
    amount: their order and probability ratios are the local model's (the tail fill flattens them
    toward an equal share, which is what costs the gold token's bits)."""
    local, noctx = real_logits(model, 49152)
    ids, lps = top_k(noctx, 20)
    gate = F.Gate.from_arrays(**random_gate_arrays(np.random.default_rng(5)))
    unlisted = np.ones(len(local), dtype=bool)
    unlisted[ids] = False
    ll = log_softmax(local)[unlisted]
    for weight in (0.2, 0.5, 0.8):
        out, _ = F.fuse(local, ids, lps, rule=rule, fill="local", weight=weight, gate=gate)
        shift = out[unlisted].astype(np.float64) - ll
        np.testing.assert_allclose(shift, shift[0], atol=1e-4)
        tail, _ = F.fuse(local, ids, lps, rule=rule, fill="tail", weight=weight, gate=gate)
        if rule != "max":  # the tail's equal share does move them apart
            assert np.ptp(tail[unlisted].astype(np.float64) - ll) > 1.0
    # The remote's leftover mass is what the unlisted tokens share, in local proportions.
    out, _ = F.fuse(local, ids, lps, rule="weighted", fill="local", weight=0.0)
    rest = 1.0 - np.exp(lps.astype(np.float64)).sum()
    assert np.exp(out[unlisted].astype(np.float64)).sum() == pytest.approx(rest, rel=1e-4)


def test_gate_file_loads_like_arrays(tmp_path):
    rng = np.random.default_rng(4)
    g = random_gate_arrays(rng, hidden=5)
    path = tmp_path / "gate.txt"
    values = [g["mean"], g["std"], g["w1"].ravel(), g["b1"], g["w2"], [g["b2"]]]
    path.write_text("cogenesis-gate 1 8 5\n" + "\n".join(" ".join(repr(float(v)) for v in arr) for arr in values))
    local = rng.normal(0, 3, 500).astype(np.float32)
    ids, lps = top_k(rng.normal(0, 3, 500))
    from_file = F.fuse(local, ids, lps, rule="gate", gate=F.Gate(str(path)))
    from_arrays = F.fuse(local, ids, lps, rule="gate", gate=F.Gate.from_arrays(**g))
    assert from_file[1].weight == pytest.approx(from_arrays[1].weight, abs=1e-6)
    np.testing.assert_allclose(from_file[0], from_arrays[0], atol=1e-6)

    with pytest.raises(MissingFileError):
        F.Gate(str(tmp_path / "none.txt"))
    (tmp_path / "bad.txt").write_text("hello world")
    with pytest.raises(InvalidParameterError, match="not a cogenesis gate file"):
        F.Gate(str(tmp_path / "bad.txt"))
    (tmp_path / "short.txt").write_text("cogenesis-gate 1 8 5\n1 2 3")
    with pytest.raises(InvalidParameterError, match="truncated"):
        F.Gate(str(tmp_path / "short.txt"))
    (tmp_path / "nf.txt").write_text("cogenesis-gate 1 12 5\n")
    with pytest.raises(InvalidParameterError, match="12 features"):
        F.Gate(str(tmp_path / "nf.txt"))


def test_sparse_fill_is_never_zero():
    rng = np.random.default_rng(5)
    n = 300
    local = rng.normal(0, 1, n).astype(np.float32)
    ids = np.array([3, 7, 11], dtype=np.int32)
    lps = np.log(np.array([0.5, 0.2, 0.1], dtype=np.float32))
    masked, _ = F.fuse(local, ids, lps, weight=0.0, fill="mask")
    assert np.isneginf(np.delete(masked, ids)).all()
    np.testing.assert_allclose(masked[ids], lps, atol=1e-6)
    tail, _ = F.fuse(local, ids, lps, weight=0.0, fill="tail")
    np.testing.assert_allclose(np.delete(tail, ids), math.log(0.2 / (n - 3)), atol=1e-6)
    np.testing.assert_allclose(np.exp(tail.astype(np.float64)).sum(), 1.0, atol=1e-5)
    # The paper's 0 fill would rank every unlisted token above the listed ones (logprobs < 0).
    for fused in (masked, tail):
        assert int(np.argmax(fused)) == 3
    full = np.log(np.array([0.6, 0.4], dtype=np.float32))
    no_rest, _ = F.fuse(local, ids[:2], full, weight=0.0, fill="tail")
    assert np.isneginf(np.delete(no_rest, ids[:2])).all()


def test_context_delta_with_alpha_zero_is_the_remote_distribution(model):
    local, noctx = real_logits(model, 49152)
    ids, lps = top_k(noctx, 20)
    for fill in F.FILLS:
        out, _ = F.fuse(local, ids, lps, rule="context_delta", alpha=0.0, fill=fill, local_noctx=noctx)
        remote_only, _ = F.fuse(local, ids, lps, rule="weighted", weight=0.0, fill=fill)
        np.testing.assert_array_equal(out, remote_only)
        p = np.exp(out.astype(np.float64))
        np.testing.assert_allclose(p[ids], np.exp(lps.astype(np.float64)), rtol=1e-5)


def test_empty_top_k_and_sentinels_make_a_local_only_step():
    local = np.random.default_rng(6).normal(0, 2, 100).astype(np.float32)
    for ids, lps in (([], []), ([4, 5], [-9999.0, -10000.0])):
        out, info = F.fuse(local, np.asarray(ids, dtype=np.int32), np.asarray(lps, dtype=np.float32), weight=0.0)
        np.testing.assert_allclose(out, log_softmax(local), atol=1e-5)
        assert info.consulted is False and info.weight == 1.0 and info.remote_top == -1


def test_duplicate_ids_are_merged():
    local = np.zeros(50, dtype=np.float32)
    ids = np.array([9, 9, 2], dtype=np.int32)
    lps = np.log(np.array([0.2, 0.3, 0.1], dtype=np.float32))
    out, info = F.fuse(local, ids, lps, weight=0.0)
    assert out[9] == pytest.approx(math.log(0.5), abs=1e-6)
    assert info.remote_top == 9
    np.testing.assert_allclose(out, fuse_reference(local, ids, lps, weight=0.0), atol=1e-6)


@pytest.mark.parametrize(
    "local_patch, ids, lps, kwargs, message",
    [
        ({3: np.nan}, [1], [-1.0], {}, "local score of token 3 is NaN"),
        ({4: np.inf}, [1], [-1.0], {}, r"\+inf"),
        ("all-inf", [1], [-1.0], {}, "all local scores are -inf"),
        ({}, [1], [np.nan], {}, "NaN"),
        ({}, [1], [np.inf], {}, "not a log-probability"),
        ({}, [1], [0.5], {}, "not a log-probability"),
        ({}, [10], [-1.0], {}, "outside the vocabulary"),
        ({}, [-1], [-1.0], {}, "outside the vocabulary"),
        ({}, list(range(10)) + [0], [-3.0] * 11, {}, "vocabulary has 10"),
        ({}, [1], [-1.0], {"weight": 1.5}, "weight"),
        ({}, [1], [-1.0], {"weight": float("nan")}, "weight"),
        ({}, [1], [-1.0], {"alpha": -1.0, "rule": "context_delta", "local_noctx": np.zeros(10, np.float32)}, "alpha"),
        ({}, [1], [-1.0], {"rule": "context_delta"}, "no-context"),
        ({}, [1], [-1.0], {"rule": "gate"}, "needs a gate"),
        ({}, [1], [-1.0], {"rule": "mean"}, "unknown fusion rule"),
        ({}, [1], [-1.0], {"fill": "zero"}, "unknown sparse fill"),
    ],
)
def test_bad_inputs_get_clear_errors(local_patch, ids, lps, kwargs, message):
    local = np.zeros(10, dtype=np.float32)
    if local_patch == "all-inf":
        local[:] = -np.inf
    else:
        for i, v in local_patch.items():
            local[i] = v
    with pytest.raises(InvalidParameterError, match=message):
        F.fuse(local, np.asarray(ids, dtype=np.int32), np.asarray(lps, dtype=np.float32), **kwargs)


def test_random_fuzz_never_crashes_or_returns_nan():
    rng = np.random.default_rng(7)
    odd = [np.nan, np.inf, -np.inf, -9999.0, 0.5, 0.0]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        n = int(rng.integers(1, 400))
        local = rng.normal(0, 5, n).astype(np.float32)
        local[rng.random(n) < 0.01] = rng.choice(odd)
        k = int(rng.integers(0, 30))
        ids = rng.integers(-3, n + 3, k).astype(np.int32)
        lps = -rng.random(k).astype(np.float32) * 6
        lps[rng.random(k) < 0.1] = rng.choice(odd)
        rule = F.RULES[int(rng.integers(0, 3))]
        try:
            out, _ = F.fuse(local, ids, lps, rule=rule, fill=F.FILLS[int(rng.integers(0, 2))],
                            weight=float(rng.random()), local_noctx=rng.normal(0, 5, n).astype(np.float32))
        except InvalidParameterError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert not np.isnan(out).any() and not np.isposinf(out).any()
    assert outcomes["ok"] > 50 and outcomes["error"] > 50


def test_fuse_writes_into_out_in_place():
    local = np.random.default_rng(8).normal(0, 1, 64).astype(np.float32)
    out = np.empty(64, dtype=np.float32)
    result, _ = F.fuse(local, np.array([1], np.int32), np.array([-0.5], np.float32), out=out)
    assert result is out or np.shares_memory(result, out)
    np.testing.assert_allclose(out, fuse_reference(local, [1], [-0.5]), atol=1e-6)
    with pytest.raises(ValueError, match="out must be"):
        F.fuse(local, np.array([1], np.int32), np.array([-0.5], np.float32), out=np.empty(64, dtype=np.float64))


def test_schedule_p_k_t():
    pattern = [F.schedule_consult(3, 2, 1, s) for s in range(12)]
    assert pattern == [True, True, True, False, False, True, False, False, True, False, False, True]
    assert [F.schedule_consult(0, 0, 0, s) for s in range(3)] == [False] * 3
    assert all(F.schedule_consult(0, 0, 1, s) for s in range(5))
    assert not F.schedule_consult(2, 1, 1, -1)


def fused_generation(model, weight, fill="mask", steps=24, rule="weighted"):
    """Local model with a private context, fused each step with a 'remote' that never saw it."""
    context = "Private profile: Dana, veterinary nurse in Leeds, signs emails 'D.'.\n"
    instruction = "Write a short note about the Friday shift."
    local_prompt = model.apply_chat_template([{"role": "user", "content": context + instruction}])
    remote_prompt = model.apply_chat_template([{"role": "user", "content": instruction}])
    remote = model.new_session()
    remote.prefill(model.native.tokenize(remote_prompt, parse_special=True))
    sampler = F.FusionSampler(model.native, rule=rule, fill=fill, weight=weight, temperature=0)
    gen = _native.Generation(model.new_session(), model.native.tokenize(local_prompt, parse_special=True), sampler,
                             max_tokens=steps)
    infos = []
    while not gen.finished:
        ids, lps = top_k(remote.logits(), 20)
        sampler.set_remote(ids, lps)
        token, _ = gen.step()
        if token < 0:
            break
        infos.append(sampler.last_info())
        remote.decode([0], [token])
    return gen, infos, local_prompt


def test_weight_one_reproduces_local_greedy_exactly(model):
    gen, infos, local_prompt = fused_generation(model, weight=1.0)
    local_only = model.generate(model.native.tokenize(local_prompt, parse_special=True), max_tokens=24,
                                sampling=cg.SamplingParams.greedy())
    assert gen.tokens.tolist() == local_only.tokens
    assert all(i.chosen == i.local_top and i.consulted and i.weight == 1.0 for i in infos)


def test_weight_zero_follows_the_remote(model):
    gen, infos, _ = fused_generation(model, weight=0.0)
    assert len(infos) > 5
    assert all(i.chosen == i.remote_top for i in infos)
    mixed, mixed_infos, _ = fused_generation(model, weight=0.5)
    assert {(i.chosen == i.local_top, i.chosen == i.remote_top) for i in mixed_infos} - {(False, False)}


def test_a_repeat_is_ruled_out_before_fusion_even_when_it_is_the_only_plausible_token(model):
    """History A B A; the local model is sure of B (C is 5 nats below: outside plausible=0.1) and the
    remote lists only B. With the no-repeat link after the fusion, B was the only candidate left and the
    repeat went through; before the fusion it rules B out, C becomes the best allowed local token, and
    the step is the local model's (overruled: the remote listed nothing allowed)."""
    a, b, c = 100, 200, 300
    sampler = F.FusionSampler(model.native, rule="weighted", fill="mask", plausible=0.1, temperature=0,
                              no_repeat_ngram=2)
    for t in (a, b, a):  # local-only steps that pick each token
        logits = np.full(model.n_vocab, -5.0, np.float32)
        logits[t] = 10.0
        assert sampler.sample(logits) == t
    logits = np.full(model.n_vocab, -5.0, np.float32)
    logits[[b, c]] = [10.0, 5.0]
    sampler.set_remote(np.array([b], np.int32), np.array([-0.01], np.float32))
    assert sampler.sample(logits) == c
    info = sampler.last_info()
    assert info.overruled and not info.consulted and info.chosen == c
    # A remote that lists an allowed token as well is fused as usual, among the allowed tokens.
    sampler.reset()
    for t in (a, b, a):
        logits = np.full(model.n_vocab, -5.0, np.float32)
        logits[t] = 10.0
        sampler.sample(logits)
    logits = np.full(model.n_vocab, -5.0, np.float32)
    logits[[b, c]] = [10.0, 9.0]
    sampler.set_remote(np.array([b, c], np.int32), np.array([-0.01, -5.0], np.float32))
    assert sampler.sample(logits) == c and sampler.last_info().consulted


def test_fusion_sampler_errors(model):
    with pytest.raises(InvalidParameterError, match="needs a gate"):
        F.FusionSampler(model.native, rule="gate")
    s = F.FusionSampler(model.native, rule="context_delta")
    with pytest.raises(InvalidParameterError, match="no-context"):
        s.set_remote(np.array([1], np.int32), np.array([-1.0], np.float32))
    s = F.FusionSampler(model.native)
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        s.set_remote(np.array([10**6], np.int32), np.array([-1.0], np.float32))


def test_logits_processor_call_shape():
    rng = np.random.default_rng(9)
    scores = rng.normal(0, 2, (2, 200)).astype(np.float32)
    input_ids = np.array([[1, 2, 3], [4, 5, 6]])
    seen = []

    def remote(prefix):
        seen.append(prefix)
        return [7, 8], [-0.1, -2.5]

    proc = F.FusionLogitsProcessor(remote, weight=0.4, fill="tail")
    fused = proc(input_ids, scores)
    assert fused.shape == scores.shape and seen == [[1, 2, 3], [4, 5, 6]]
    for r in range(2):
        np.testing.assert_allclose(fused[r], fuse_reference(scores[r], [7, 8], [-0.1, -2.5], weight=0.4, fill="tail"),
                                   atol=1e-5)
    assert len(proc.infos) == 2
    with pytest.raises(ValueError, match="local_noctx"):
        F.FusionLogitsProcessor(remote, rule="context_delta")


def test_logits_processor_with_torch_tensors():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    scores = torch.randn(1, 100)
    out = F.FusionLogitsProcessor(lambda p: ([3], [-0.2]), weight=0.5)(torch.tensor([[1, 2]]), scores)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy()[0], fuse_reference(scores.numpy()[0], [3], [-0.2]), atol=1e-5)
