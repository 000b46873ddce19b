"""`cogenesis eval` end to end: real model, real loopback server behind the recording proxy."""
import json
import os
import secrets
import zlib
from importlib import resources

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device.eval import datasets
from cogenesis_device.collab import NO_REPEAT_NGRAM, OUTLINE_PROMPT
from cogenesis_device.eval.runner import EvalSettings, Evaluation
from cogenesis_device.eval.judge import Judge
from cogenesis_device.eval.leakscan import leaked, plant_canaries, profile_facts
from cogenesis_device.eval.metrics import distinct_n, facts_used, repeated_ngram_rate, rouge_l

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


def _planted(sample):
    """The context the eval's modes see: the sample's, with its canaries planted (seeded by the sample id)."""
    return plant_canaries(sample.context, seed=zlib.crc32(sample.tid.encode()))


def _facts(sample):
    """The facts the eval's leak scan looks for in what a sample's jobs sent."""
    public = OUTLINE_PROMPT.format(instruction=sample.instruction)
    return profile_facts(sample.context, public) + _planted(sample)[1]


def _mode_bodies(proxy):
    """What the modes sent, as the proxy saw it on the wire (the judge reads the profile by design)."""
    return [r.body.decode("utf-8", "replace") for r in proxy.records
            if r.method == "POST" and b"You are grading" not in r.body]


def _files(out):
    return {name: (out / name).read_text() for name in ("generations.jsonl", "judge.jsonl", "gold.jsonl")}


def test_eval_writes_table_1_without_leaking_and_resumes(model, patient_remote, proxy, tmp_path):
    remote = patient_remote
    samples, canaries = _dataset(tmp_path)
    out = tmp_path / "run"
    _evaluation(out, model, remote).run(samples[:1])  # an "interrupted" run: one sample done
    first_requests, first_files = len(proxy.records), _files(out)
    evaluation = _evaluation(out, model, remote)
    results = evaluation.run(samples)
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted((g["tid"], g["mode"]) for g in gens) == sorted((s.tid, m) for s in samples for m in MODES)
    # the second run appended the second sample and left the first one's rows as they were
    assert first_requests < len(proxy.records)
    for name, text in _files(out).items():
        assert text.startswith(first_files[name]) and len(text) > len(first_files[name]), name
        assert {json.loads(line)["tid"] for line in text[len(first_files[name]):].splitlines()} == {samples[1].tid}
    assert set(results["modes"]) == set(MODES) and all(e["samples"] == 2 for e in results["modes"].values())
    by_tid = {s.tid: s for s in samples}
    for g in gens:
        sample = by_tid[g["tid"]]
        # each row's metrics are those of its recorded text against the sample's gold
        assert g["rouge_l"] == rouge_l(g["text"], sample.gold)
        assert g["facts_used"] == pytest.approx(facts_used(g["text"], sample.facts()), rel=0, abs=0, nan_ok=True)
        assert g["repeated_4grams"] == repeated_ngram_rate(g["text"], 4) and g["distinct_2"] == distinct_n(g["text"], 2)
        assert g["cosine"] == pytest.approx(evaluation.embedder.cosine(g["text"], sample.gold) if g["text"] else 0.0,
                                            abs=1e-5)
        if g["mode"] == "local":
            # the local mode is LocalModel.generate on the local prompt with the planted context, greedy, with the
            # eval's repetition control (a fresh scope: the same full prefill as the eval's first job of the sample)
            prompt = model.private_prompt(_planted(sample)[0], sample.instruction)
            alone = model.generate(prompt, max_tokens=12,
                                   scope=f"test-{secrets.token_hex(4)}",
                                   sampling=cg.SamplingParams.greedy(no_repeat_ngram=NO_REPEAT_NGRAM))
            assert g["text"] == alone.text and g["stats"]["n_tokens"] == len(alone.tokens)
    for mode, entry in results["modes"].items():
        rows = [g for g in gens if g["mode"] == mode]
        assert entry["fallbacks"] == 0, mode
        assert entry["leak"]["jobs_leaking"] == 0, mode
        # the table's figures are the rows' own: mean and sample sd of the per-row values, sums of the audits
        for metric in ("rouge_l", "cosine", "facts_used", "repeated_4grams", "distinct_2"):
            values = [g[metric] for g in rows if not np.isnan(g[metric])]  # NaN: not defined for the row
            expected = [np.mean(values), np.std(values, ddof=1), 2] if len(values) == 2 else [np.nan, np.nan, 0]
            assert entry[metric] == pytest.approx(expected, nan_ok=True), (mode, metric)
        assert entry["leak"]["requests"] == sum(g["audit"]["requests"] for g in rows)
        assert entry["leak"]["bytes_sent"] == sum(g["audit"]["bytes_sent"] for g in rows)
        if mode != "remote":  # the remote-alone answer is timed by nobody here
            assert entry["tokens_per_s_after_first"][0] > 0 and entry["first_token_ms"][0] > 0, mode
    assert results["modes"]["local"]["leak"]["requests"] == 0
    assert results["modes"]["logits:weighted:tail"]["leak"]["requests"] > 0
    judged = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
    assert sorted((j["tid"], j["mode"]) for j in judged) == sorted((g["tid"], g["mode"]) for g in gens)
    # The judge reads the profiles by design: its requests are counted, and reported as such.
    sent = results["judge_sent"]
    # two calls per verdict, and a retried call is sent (and counted) again
    assert sent["requests"] == sum(b"You are grading" in r.body for r in proxy.records) >= 2 * len(judged)
    assert sent["private_spans"] >= len(judged)
    assert "Sent by design: the judge's" in (out / "table.md").read_text()
    bpb = results["gold_bpb"]
    gold = [json.loads(line) for line in (out / "gold.jsonl").read_text().splitlines()]
    assert bpb["_samples"] == 2 and {"local", "remote", "weighted:tail", "max:tail"} <= set(bpb)
    assert [g["n_bytes"] for g in gold] == [len(by_tid[g["tid"]].gold.encode()) for g in gold] and bpb["_bytes"] == sum(
        g["n_bytes"] for g in gold)
    for system in ("local", "remote", "weighted:tail", "max:tail"):
        assert bpb[system]["bpb"] == pytest.approx(sum(g["nll"][system] for g in gold) / np.log(2) / bpb["_bytes"])
    assert 0 < bpb["local"]["bpb"] < 8
    table = (out / "table.md").read_text()
    assert "Gold bits per byte" in table and "| logits:weighted:tail |" in table
    # Nothing private left the process: not the canaries, not the door codes, not a profile fact (an independent
    # recount of the leak scan, from the bodies on the wire). The judge is the exception by design.
    mode_bodies = _mode_bodies(proxy)
    assert mode_bodies and not any(c.split()[0] in b or c.split()[1] in b for c in canaries for b in mode_bodies)
    assert not any(s.context.splitlines()[-1].split(": ")[1] in b for s in samples for b in mode_bodies)
    assert all(leaked(_facts(s), mode_bodies) == [] for s in samples)
    # a third run has nothing left to do: no request, no line written
    before, files = len(proxy.records), _files(out)
    _evaluation(out, model, remote).run(samples)
    assert len(proxy.records) == before and _files(out) == files


def test_eval_audit_policy_reports_what_redaction_prevents(model, patient_remote, proxy, tmp_path):
    """With attribution off (':text-only') the generated prefix carries the profile's name: under redact the
    engine asks the guard about each token and withholds the name before any request carries it; audit
    finds it and sends it as it is, and the independent scan sees the difference. (Before, with
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
    assert redacted["withheld_tokens"] > 0 and audited["withheld_tokens"] == 0
    assert audited["found_before_redaction"] > 0
    assert redacted["jobs_leaking"] == 0
    assert audited["jobs_leaking_profile"] == 1 and "profile:name" in audited["leaked_kinds"]
    # The leaks reported are what the bodies on the wire reveal, recounted independently of the eval's records
    # (the redact job, which leaks nothing, sent its bodies through the same proxy).
    rows = {json.loads(line)["mode"]: json.loads(line)
            for line in (tmp_path / "audit" / "generations.jsonl").read_text().splitlines()}
    recount = {(f.kind, f.value) for f in leaked(_facts(samples[0]), _mode_bodies(proxy))}
    assert {tuple(f) for f in rows["logits:weighted:tail:w=0.9 [audit:text-only]"]["leak"]["leaked"]} == recount
    assert rows["logits:weighted:tail:w=0.9 [redact:text-only]"]["leak"]["leaked"] == []
    assert audited["leaked_kinds"] == sorted({kind for kind, _ in recount})
    assert audited["canaries_leaked"] == sum(kind.startswith("canary") for kind, _ in recount)


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


@pytest.mark.slow
def test_eval_with_a_base_model_as_the_remote(model, gemma_path, tmp_path):
    """Gemma 3 270M has no chat template: its prompts (on the server, and for the gold scores) are plain text."""
    from cogenesis_device.cli import main

    _dataset(tmp_path)  # writes data.jsonl
    assert cg.LocalModel(str(gemma_path), n_ctx=256).format_prompt([{"role": "user", "content": "Write."}]) == "Write.\n\n"
    out = tmp_path / "gemma"
    code = main(["eval", "--data", str(tmp_path / "data.jsonl"), "--out", str(out), "--limit", "1",
                 "--modes", "logits:weighted:local", "--rules", "weighted:local", "-n", "8", "--loopback", str(gemma_path),
                 "--remote-gguf", str(gemma_path), "--judge", "none", "--no-embeddings", "-q", "-t", str(THREADS)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    logits = results["modes"]["logits:weighted:local"]
    assert logits["fallbacks"] == 0 and logits["leak"]["requests"] > 0  # the remote answered every request
    bpb = {system: results["gold_bpb"][system]["bpb"] for system in ("local", "remote", "weighted:local")}
    assert all(0 < value < 10 for value in bpb.values()) and bpb["remote"] != bpb["local"]
