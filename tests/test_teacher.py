"""Teacher-forced gold scoring and gate training, checked against independent computations."""
import json
import math
from importlib import resources

import numpy as np
import pytest

from cogenesis_device import _native
from cogenesis_device.local import _ROWS_PER_DECODE as _CHUNK
from cogenesis_device.eval.datasets import Sample, parse_profile
from cogenesis_device.errors import InvalidParameterError
from reference import gate_reference
from cogenesis_device.fusion import FusionConfig
from cogenesis_device.eval.scoring import GATE_GRID, GoldScorer

DEMO = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())
GOLDS = [
    "Hi Striders! Saturday we run the 10 km loop from the Lakewalk at 7 am, then coffee at Amberline. "
    "I'm still easing back from my calf strain, so I'll pace the easy group. Keep stridin'! - Maren",
    "Hey team, quick reminder: 7 am Saturday, 10 km along the lake, coffee after. Bring a friend. Keep stridin'!",
    "Striders, the weekend run is on! Meet at 7 for our loop; I'll bring the route maps. Keep stridin'! Maren",
    "Morning crew! Saturday 10 km, easy pace, then Amberline Roasters. See you at seven. Keep stridin'!",
]


def _samples():
    profile = parse_profile(DEMO["context"])
    return [Sample(f"s{i}", DEMO["instruction"], DEMO["instruction"], gold, profile) for i, gold in enumerate(GOLDS)]


def _teacher_forced_logprobs(model, prompt, targets):
    """Independent path: log p(target) at each position from a fresh session, raw decode calls and a float64
    log-softmax. It feeds the tokens in the scorer's batch shapes (the prompt but its last token, then chunks
    of _CHUNK): llama.cpp's scores move with the batch shape, by up to 0.42 nats per token on these prompts
    between batched and one-at-a-time decoding (the same with llama-cpp-python alone). In the same shapes
    the scorer's values are reproduced to 4e-15 nats."""
    session = model.new_session()
    session.prefill(prompt[:-1])
    feed = [prompt[-1], *targets[:-1]]
    out = []
    for start in range(0, len(feed), _CHUNK):
        chunk = feed[start:start + _CHUNK]
        session.decode([0] * len(chunk), chunk)
        for i in range(len(chunk)):
            row = session.logits(i).astype(np.float64)
            out.append(row - row.max() - np.log(np.exp(row - row.max()).sum()))
    return [(lp[t], lp) for lp, t in zip(out, targets)]


@pytest.fixture(scope="module")
def scored(model):
    rules = {r: FusionConfig.parse(r) for r in ["weighted:tail", "weighted:tail:w=1", "weighted:mask", "max:tail",
                                        "context_delta:tail:a=0"]}
    scorer = GoldScorer(model, model, rules, gate_fill="tail")
    return scorer, [scorer.score(s) for s in _samples()]


def test_parse_rule():
    cfg = FusionConfig.parse("context_delta:tail:a=0.5")
    assert (cfg.rule, cfg.fill, cfg.alpha) == ("context_delta", "tail", 0.5)
    assert FusionConfig.parse("weighted:w=0.7").weight == 0.7 and FusionConfig.parse("weighted").fill == "mask"
    for bad, msg in [("avg", "rule must be one of"), ("weighted:fuzzy", "unknown part"), ("weighted:w=x", "not a number"),
                     ("gate", "needs a gate")]:
        with pytest.raises(InvalidParameterError, match=msg):
            FusionConfig.parse(bad)


def test_local_and_remote_nll_match_an_independent_computation_token_by_token(model, scored):
    """Every position of two samples (the first scored from an empty cache, the second reusing the context's
    KV cache): the local log-probability per token, the remote's (full distribution, and cut to its top 20
    with the tail fill) and the totals, within 1e-3 nats per token (measured: 4e-15). A token scored against
    the wrong position or the wrong id is off by far more."""
    per_token = 1e-3
    _, results = scored
    for sample, (score, records) in list(zip(_samples(), results))[:2]:
        gold = model.tokenize(sample.gold, add_special=False)
        local = _teacher_forced_logprobs(model, model.private_prompt(sample.context, sample.instruction), gold)
        remote_prompt = model.tokenize(model.apply_chat_template([{"role": "user", "content": sample.instruction}]),
                                       parse_special=True)
        remote = _teacher_forced_logprobs(model, remote_prompt, gold)
        assert score.n_bytes == len(sample.gold.encode())
        assert score.n_fused_positions == len(gold) == len(records.local_gold)
        local_lp = np.array([lp for lp, _ in local])
        np.testing.assert_allclose(records.local_gold, local_lp, rtol=0, atol=per_token)
        tail = []  # the remote as fusion gets it: its top 20 as they are, the rest of the mass shared evenly
        for (lp, row), t in zip(remote, gold):
            top = np.argsort(-row)[:20]
            tail.append(lp if t in top else np.log((1.0 - np.exp(row[top]).sum()) / (row.size - 20)))
        np.testing.assert_allclose(records.remote_gold, tail, rtol=0, atol=per_token)
        assert score.nll["local"] == pytest.approx(-local_lp.sum(), abs=per_token)
        assert score.nll["remote"] == pytest.approx(-sum(lp for lp, _ in remote), abs=per_token)
        assert score.bpb("local") == pytest.approx(score.nll["local"] / math.log(2) / score.n_bytes)
    # the context helps the local model predict a gold answer written from it
    assert sum(s.nll["local"] for s, _ in results) < sum(s.nll["remote"] for s, _ in results)


def test_rule_limits(scored):
    for score, _ in scored[1]:
        assert score.nll["weighted:tail:w=1"] == pytest.approx(score.nll["local"], rel=1e-6)  # w = 1 is local
        # context_delta with a = 0 is the remote's top-k alone: finite with the tail fill, and no better than
        # the remote's full distribution
        assert math.isfinite(score.nll["context_delta:tail:a=0"])
        assert score.nll["context_delta:tail:a=0"] >= score.nll["remote"] - 1e-3


def test_gate_records_agree_with_native_fusion(scored):
    """The records' exact grid point w = 0.5 reproduces the native weighted:tail nll."""
    from cogenesis_device.eval.gate_training import fixed_w_nll

    half = int(np.argmin(abs(GATE_GRID - 0.5)))
    for score, records in scored[1]:
        assert records.features.shape == (score.n_fused_positions, 8)
        assert np.allclose(records.log_z[:, -1], 0.0, atol=1e-6)  # w = 1: the local log-softmax is normalized
        assert fixed_w_nll([records])[half] == pytest.approx(score.nll["weighted:tail"], rel=1e-4)
        assert fixed_w_nll([records])[-1] == pytest.approx(score.nll["local"], rel=1e-6)


def test_gate_training_exports_a_gate_the_engine_loads(model, scored, tmp_path):
    pytest.importorskip("torch", reason="gate training needs torch (pip install '.[train]')")
    from cogenesis_device.eval.gate_training import export, train

    scorer, results = scored
    records = {s.tid: r for s, (_, r) in zip(_samples(), results)}
    arrays, report = train(records, held_out=0.5, hidden=4, steps=150)
    assert report.train_samples + report.held_out_samples == len(records)
    by_w = report.held_out_bpb_by_w
    assert report.held_out_bpb_local == pytest.approx(by_w["1.00"])
    assert math.isfinite(report.held_out_bpb_gate) and 0 < report.gate_w_mean < 1
    path = tmp_path / "gate.txt"
    export(arrays, path)
    gate = _native.Gate(str(path))
    # the engine's gate on real fusion features gives the weight the trained arrays give
    sample = _samples()[0]
    prompt = model.private_prompt(sample.context, sample.instruction)
    session = model.new_session()
    session.prefill(prompt)
    row = session.logits(0)
    ids = np.argsort(-row)[:20].astype(np.int32)
    lps = (row[ids] - row.max() - 1.0).astype(np.float32)
    _, info = _native.fuse(row, ids, lps, rule="gate", fill="tail", gate=gate)
    feats = np.array([info.features[k] for k in ("local_entropy", "remote_entropy", "local_top_p", "remote_top_p",
                                                    "overlap", "divergence", "local_p_of_remote_top",
                                                    "remote_p_of_local_top")])
    assert info.weight == pytest.approx(gate_reference(feats, **arrays), abs=1e-5)
    # and the gate rule scores gold answers through the same scorer
    gated = GoldScorer(model, model, {"gate:tail": FusionConfig.parse("gate:tail", gate)})
    score, _ = gated.score(sample)
    assert math.isfinite(score.nll["gate:tail"])


def test_prompt_longer_than_the_window_is_a_clear_error(model):
    long = Sample("x", "Write", "Write", "ok then", {"History": "word " * 2000})
    with pytest.raises(InvalidParameterError, match="exceed the local context window"):
        GoldScorer(model, model, {}).score(long)
