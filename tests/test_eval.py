"""`cogenesis eval` end to end: real model, real loopback server behind the recording proxy."""
import json
import os
import secrets
from importlib import resources

import pytest

import cogenesis_device as cg
from cogenesis_device.eval import datasets
from cogenesis_device.eval.runner import EvalSettings, Evaluation
from cogenesis_device.eval.judge import Judge

from conftest import THREADS

DEMO = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text())
DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "context-aware")
MODES = ["local", "remote", "sketch", "logits:weighted:tail"]


def _dataset(tmp_path):
    """Two samples around the bundled demo profile, each with planted canaries."""
    rows, canaries = [], []
    for i, gold in enumerate(["Striders, Saturday 7 am, 10 km, coffee after. Keep stridin'!",
                              "Hi team! Group run this weekend: meet at seven, easy pace. Keep stridin'!"]):
        canary = f"Zq{secrets.token_hex(4)} Vr{secrets.token_hex(4)}"
        canaries.append(canary)
        context = DEMO["context"] + f"\nSecret friend: {canary}\nDoor code: {secrets.token_hex(6)}"
        rows.append({"tid": f"demo{i}", "instruction": DEMO["instruction"], "context": context, "gold": gold})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return datasets.load(path), canaries


def _evaluation(out, model, remote, **settings):
    options = dict(modes=MODES, rules=["weighted:tail", "max:tail"], max_tokens=12, lookahead=4)
    options.update(settings)
    return Evaluation(out, model, remote, EvalSettings(**options), scorer_remote=model, judge=Judge(remote, max_tokens=12),
                      progress=False)


def test_eval_writes_table_1_without_leaking_and_resumes(model, patient_remote, proxy, tmp_path):
    remote = patient_remote
    samples, canaries = _dataset(tmp_path)
    out = tmp_path / "run"
    _evaluation(out, model, remote).run(samples[:1])  # an "interrupted" run: one sample done
    first_requests = len(proxy.records)
    results = _evaluation(out, model, remote).run(samples)
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted((g["tid"], g["mode"]) for g in gens) == sorted((s.tid, m) for s in samples for m in MODES)
    assert set(results["modes"]) == set(MODES) and all(e["samples"] == 2 for e in results["modes"].values())
    for mode, entry in results["modes"].items():
        assert entry["fallbacks"] == 0, mode
        assert entry["leak"]["jobs_leaking"] == 0, mode
        assert 0.0 <= entry["rouge_l"][0] <= 1.0 and -1.0 <= entry["cosine"][0] <= 1.0
        if mode != "remote":  # the remote-alone answer is timed by nobody here
            assert entry["decode_tokens_per_s"][0] > 0 and entry["first_token_ms"][0] > 0, mode
    assert results["modes"]["local"]["leak"]["requests"] == 0
    assert results["modes"]["logits:weighted:tail"]["leak"]["requests"] > 0
    judged = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
    assert len(judged) == 2 * len(MODES)
    # The judge reads the profiles by design: its requests are counted, and reported as such.
    sent = results["judge_sent"]
    assert sent["requests"] == 2 * len(judged) and sent["private_spans"] >= len(judged)
    assert "Sent by design: the judge's" in (out / "table.md").read_text()
    bpb = results["gold_bpb"]
    assert bpb["_samples"] == 2 and {"local", "remote", "weighted:tail", "max:tail"} <= set(bpb)
    assert 0 < bpb["local"]["bpb"] < 8
    table = (out / "table.md").read_text()
    assert "Gold bits per byte" in table and "| logits:weighted:tail |" in table
    # Nothing private left the process: not the canaries, not the door codes. The judge is the exception by
    # design (it reads the profile), so only the modes' requests are checked here.
    mode_bodies = [r.body.decode("utf-8", "replace") for r in proxy.records if b"You are grading" not in r.body]
    assert mode_bodies and not any(c.split()[0] in b or c.split()[1] in b for c in canaries for b in mode_bodies)
    assert not any(s.context.splitlines()[-1].split(": ")[1] in b for s in samples for b in mode_bodies)
    # the second run did only the second sample; a third run has nothing left to do
    assert first_requests < len(proxy.records)
    before = len(proxy.records)
    _evaluation(out, model, remote).run(samples)
    assert len(proxy.records) == before
    assert len((out / "generations.jsonl").read_text().splitlines()) == len(gens)


def test_eval_audit_policy_reports_what_redaction_prevents(model, patient_remote, tmp_path):
    """With attribution off (':text-only') the generated prefix carries the profile's name: the guard finds it under both policies, redact sends it
    redacted, audit sends it as it is, and the independent scan sees the difference. (Before, with
    attribution on, both policies found 0 spans and the comparison held whatever the code did.)"""
    remote = patient_remote
    path = tmp_path / "intro.jsonl"
    path.write_text(json.dumps({"tid": "intro", "instruction": "Write a one-line introduction of myself with my full name",
                                "context": DEMO["context"], "gold": "Hi, I'm Maren Holloway."}) + "\n")
    samples = datasets.load(path)
    evaluation = _evaluation(tmp_path / "audit", model, remote, modes=["logits:weighted:tail:w=0.9"], rules=[],
                             policies=["redact:text-only", "audit:text-only"], gold=False, embeddings=False,
                             max_tokens=24)
    results = evaluation.run(samples)
    redacted = results["modes"]["logits:weighted:tail:w=0.9 [redact:text-only]"]["leak"]
    audited = results["modes"]["logits:weighted:tail:w=0.9 [audit:text-only]"]["leak"]
    assert redacted["found_before_redaction"] > 0 and audited["found_before_redaction"] > 0
    assert redacted["jobs_leaking"] == 0
    assert audited["jobs_leaking_profile"] == 1 and "profile:name" in audited["leaked_kinds"]


def test_eval_cli_on_a_dev_slice(proxy, tmp_path, capsys):
    if not os.path.exists(DEV):
        pytest.skip(f"{DEV} is absent: the paper's dev data is not on this machine")
    from cogenesis_device.cli import main

    out = tmp_path / "cli"
    code = main(["eval", "--data", DEV, "--out", str(out), "--limit", "1", "--modes", "local,logits:max:tail",
                 "--rules", "weighted:tail", "-n", "8", "--remote-url", proxy.base_url, "--no-embeddings", "-q",
                 "--gate-records", "-t", str(THREADS)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["modes"]) == {"local", "logits:max:tail"} and results["gold_bpb"]["_samples"] == 1
    assert len(list((out / "gate").glob("*.npz"))) == 1
    assert "| local |" in capsys.readouterr().out


def test_eval_rejects_bad_settings(model, tmp_path):
    with pytest.raises(cg.errors.InvalidParameterError, match="unknown mode"):
        Evaluation(tmp_path, model, None, EvalSettings(modes=["fancy"], embeddings=False), progress=False)
    with pytest.raises(cg.errors.InvalidParameterError, match="need a remote"):
        Evaluation(tmp_path, model, None, EvalSettings(modes=["sketch"], embeddings=False), progress=False)
    with pytest.raises(cg.errors.InvalidParameterError, match="privacy policy"):
        Evaluation(tmp_path, model, None, EvalSettings(modes=["local"], policies=["hide"], embeddings=False))
