"""`cogenesis eval`: the paper's Table 1 on a dataset, with gold bits per byte and privacy leakage.

Modes: local (local model with context, no remote), remote (remote alone, public instruction only),
sketch, and logits:<rule> (e.g. logits:weighted:tail, see FusionConfig.parse). Everything a run
computes is appended to JSONL files in the output directory, one line per (sample, mode), so an
interrupted run resumes where it stopped; the table is rebuilt from those files at the end.

Output directory:
  gold.jsonl         teacher-forced nll per system (local, remote, each --rules entry)
  gate/<tid>.npz     per-position gate training records (with --gate-records)
  generations.jsonl  text, stats, metrics and leakage per sample and mode
  judge.jsonl        judge scores per sample and mode
  results.json, table.md
"""
from __future__ import annotations

import json
import math
import os
import sys
import zlib
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..collab import OUTLINE_PROMPT, CoGenerator, derive_instruction
from ..errors import InvalidParameterError, PrivacyBlockedError, RemoteError
from ..fusion import FusionConfig
from ..jsonl import KeyedLog, read_jsonl
from ..local import LocalModel
from ..privacy import POLICIES, EgressGuard, summarize
from ..remote import RemoteModel
from ..sampling import COLLABORATIVE, SamplingParams
from .datasets import Sample
from .judge import CRITERIA, Judge
from .leakscan import leaked, plant_canaries, profile_facts
from .metrics import default_embedder, distinct_n, facts_used, repeated_ngram_rate, rouge_l
from .scoring import GoldScorer


# A policy of the eval: a guard policy, optionally ':text-only' to turn attribution off (for measurements).
TEXT_ONLY = ":text-only"


def mode_label(mode: str, policy: str) -> str:
    return mode if policy == "redact" or mode == "local" else f"{mode} [{policy}]"


def validate_modes(modes: Sequence[str], gate: object = None) -> list[str]:
    out = []
    for mode in modes:
        mode = mode.strip()
        if mode.startswith("logits"):
            FusionConfig.parse(mode.partition(":")[2] or "weighted", gate)
        elif mode not in ("local", "remote", "sketch"):
            raise InvalidParameterError(f"unknown mode {mode!r}: use local, remote, sketch or logits:<rule>")
        out.append(mode)
    return out


@dataclass
class EvalSettings:
    modes: Sequence[str] = ("local", "remote", "sketch", "logits:weighted:mask")  # the library's default fusion
    rules: Sequence[str] = ("weighted:tail", "weighted:local", "weighted:local:w=0.8", "max:local", "context_delta:local")
    policies: Sequence[str] = ("redact",)
    max_tokens: int = 128
    lookahead: int | None = None  # None: adaptive
    gold: bool = True
    gate_records: bool = False
    gate_fill: str = "local"  # the fill the gate's training records are computed with
    embeddings: bool = True
    canaries: bool = True  # plant made-up facts in each context (leakscan.plant_canaries) and look for them
    derive: bool = True  # derive each sample's public instruction from its full request on the device, and scan it
    no_repeat_ngram: int = COLLABORATIVE.no_repeat_ngram  # the engine's repetition control in every generating mode (0: off)
    no_repeat_text: bool = COLLABORATIVE.no_repeat_text  # its n-grams compared by token text, not token id


class Evaluation:
    """Runs the modes over samples into out_dir. remote: the RemoteModel the modes talk to; scorer_remote: a
    LocalModel standing in for it in teacher-forced scoring (None skips gold bits per byte); judge: a Judge."""

    def __init__(self, out_dir: str | os.PathLike, local: LocalModel, remote: RemoteModel | None,
                 settings: EvalSettings, *, scorer_remote: LocalModel | None = None, judge: Judge | None = None,
                 gate: object = None, progress: bool = True):
        self.out = Path(out_dir)
        (self.out / "gate").mkdir(parents=True, exist_ok=True)
        self.local, self.remote, self.settings, self.judge, self.gate = local, remote, settings, judge, gate
        self.modes = validate_modes(settings.modes, gate)
        for policy in settings.policies:
            if policy.removesuffix(TEXT_ONLY) not in POLICIES:
                raise InvalidParameterError(f"privacy policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if remote is None and any(m != "local" for m in self.modes):
            raise InvalidParameterError("modes other than 'local' need a remote")
        self.rules = {r: FusionConfig.parse(r, gate) for r in settings.rules}
        self.scorer = None
        if settings.gold and scorer_remote is not None:
            self.scorer = GoldScorer(local, scorer_remote, self.rules,
                                     gate_fill=settings.gate_fill if settings.gate_records else None)
        if not self.modes and self.scorer is None:
            raise InvalidParameterError("nothing to do: no modes, and no gold scoring")
        self.embedder = default_embedder() if settings.embeddings else None
        self.progress = progress
        by_sample_and_mode = lambda rec: (rec["tid"], rec.get("mode"))  # noqa: E731
        self.gold_log = KeyedLog(self.out / "gold.jsonl", by_sample_and_mode)
        self.gen_log = KeyedLog(self.out / "generations.jsonl", by_sample_and_mode)
        self.judge_log = KeyedLog(self.out / "judge.jsonl", by_sample_and_mode)
        self.instruction_log = KeyedLog(self.out / "instructions.jsonl", lambda rec: rec["tid"])

    # -- one sample ---------------------------------------------------------------------------------

    def _jobs(self) -> list[tuple[str, str]]:
        return [(m, p) for m in self.modes for p in (["redact"] if m == "local" else self.settings.policies)]

    def _generate(self, sample: Sample, context: str, mode: str, policy: str,
                  remote_reply: tuple[Future, EgressGuard] | None, facts: list) -> dict:
        s = self.settings
        if mode == "remote":
            future, guard = remote_reply
            try:
                text, fallback = future.result().text, None
            except (RemoteError, PrivacyBlockedError) as exc:  # a refused request is this job's result: nothing sent
                text, fallback = "", str(exc)
            audit = guard.records
            stats = {}
        else:
            kind = "sketch" if mode == "sketch" else "logits"
            fusion = FusionConfig.parse(mode.partition(":")[2] or "weighted", self.gate) if mode.startswith("logits") else None
            gen = CoGenerator(self.local, None if mode == "local" else self.remote, mode=kind, fusion=fusion,
                              privacy={"policy": policy.removesuffix(TEXT_ONLY), "record_bodies": True},
                              lookahead=s.lookahead,
                              attribution=not policy.endswith(TEXT_ONLY))
            result = gen.generate(sample.instruction, context, max_tokens=s.max_tokens,
                                  sampling=SamplingParams.greedy(no_repeat_ngram=s.no_repeat_ngram,
                                                                 no_repeat_text=s.no_repeat_text))
            text, fallback, audit = result.text, result.fallback_reason, result.audit
            stats = {"first_token_ms": result.stats.first_token_ms, "total_ms": result.stats.total_ms,
                     "tokens_per_s_after_first": result.stats.tokens_per_s_after_first,
                     "round_trips_per_token": result.stats.round_trips_per_token, "n_tokens": result.stats.n_tokens}
        found = leaked(facts, [r.body for r in audit if r.action != "blocked"])
        record = {
            "tid": sample.tid, "mode": mode_label(mode, policy), "text": text, "fallback": fallback, "stats": stats,
            "audit": summarize(audit),
            "leak": {"facts": len(facts), "canaries": sum(f.kind.startswith("canary") for f in facts),
                     "leaked": [[f.kind, f.value] for f in found]},
            "found_before_redaction": sum(len(r.findings) for r in audit),
            "rouge_l": rouge_l(text, sample.gold), "facts_used": facts_used(text, sample.facts()),
            "repeated_4grams": repeated_ngram_rate(text, 4), "distinct_2": distinct_n(text, 2),
        }
        if self.embedder is not None:
            record["cosine"] = self.embedder.cosine(text, sample.gold) if text else 0.0
            record["history_similarity"] = self.embedder.max_cosine(text, sample.writings) if text else 0.0
        return record

    def _sample(self, sample: Sample) -> None:
        jobs = [(m, p) for m, p in self._jobs() if (sample.tid, mode_label(m, p)) not in self.gen_log]
        # The remote-alone answers are requested first, and waited for before the local model works: a
        # loopback remote shares the machine's cores, and answering while the local model and the gold
        # scorer ran starved it into timeouts (4 of the first 12 answers of the Gemma 3 dev run).
        remote_replies: dict[str, tuple[Future, EgressGuard]] = {}
        for mode, policy in jobs:
            if mode == "remote":
                guard = EgressGuard(sample.context, public=[sample.instruction], policy=policy.removesuffix(TEXT_ONLY),
                                    record_bodies=True)  # the leak scan reads them; they are not written out
                future = self.remote.submit_chat([{"role": "user", "content": sample.instruction}],
                                                 max_tokens=self.settings.max_tokens, guard=guard)
                remote_replies[policy] = (future, guard)
        wait([future for future, _ in remote_replies.values()])
        if self.scorer is not None and (sample.tid, None) not in self.gold_log:
            score, records = self.scorer.score(sample)
            if records is not None:
                records.save(self.out / "gate" / f"{_safe(sample.tid)}.npz")
            self.gold_log.add({"tid": sample.tid, "n_bytes": score.n_bytes, "n_local_tokens": score.n_local_tokens,
                               "n_remote_tokens": score.n_remote_tokens, "n_fused": score.n_fused_positions,
                               "nll": score.nll})
        if self.settings.derive and sample.task != sample.instruction and sample.tid not in self.instruction_log:
            self.instruction_log.add(self._derive(sample))
        public = OUTLINE_PROMPT.format(instruction=sample.instruction)
        facts = profile_facts(sample.context, public)
        context = sample.context
        if self.settings.canaries:
            context, canaries = plant_canaries(sample.context, seed=zlib.crc32(sample.tid.encode()))
            facts += canaries
        for mode, policy in jobs:
            self.gen_log.add(self._generate(sample, context, mode, policy, remote_replies.get(policy), facts))
        if self.judge is not None:
            pending = {}
            for mode, policy in self._jobs():
                label = mode_label(mode, policy)
                rec = self.gen_log.records.get((sample.tid, label))
                if rec is not None and (sample.tid, label) not in self.judge_log:
                    pending[label] = self.judge.submit(sample, rec["text"])
            for label, future in pending.items():
                try:
                    verdict = future.result()
                except RemoteError as exc:
                    print(f"judge failed on {sample.tid} / {label}: {exc}", file=sys.stderr)
                    continue
                self.judge_log.add({"tid": sample.tid, "mode": label, "scores": verdict.scores,
                                    "replies": list(verdict.replies), "audit": verdict.audit})

    def _derive(self, sample: Sample) -> dict:
        """What the instruction derived on the device from the full request leaks, next to the paper's split."""
        derived = derive_instruction(self.local, sample.task, sample.background)
        facts = profile_facts(sample.background)
        leaks = {name: [[f.kind, f.value] for f in leaked(facts, [json.dumps({"prompt": text})])]
                 for name, text in (("derived", derived.text), ("paper", sample.instruction), ("request", sample.task))}
        return {"tid": sample.tid, "derived": derived.text, "removed": derived.removed, "paper": sample.instruction,
                "request": sample.task, "facts": len(facts), "leaked": leaks}

    # -- whole run ----------------------------------------------------------------------------------

    def _with_progress(self, samples: Sequence[Sample]):
        if not self.progress:
            return samples
        try:
            from tqdm import tqdm
        except ImportError:  # the [eval] extra is not installed: no progress bar
            return samples
        return tqdm(samples, desc="samples", unit="sample", file=sys.stderr)

    def run(self, samples: Sequence[Sample]) -> dict:
        """Evaluate every sample (skipping work already in out_dir), then write results.json and table.md."""
        for sample in self._with_progress(samples):
            self._sample(sample)
        results = aggregate(self.out, [s.tid for s in samples], [mode_label(m, p) for m, p in self._jobs()],
                            list(self.rules))
        (self.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (self.out / "table.md").write_text(to_markdown(results))
        return results


def _safe(tid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tid)


def _mean_sd(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def aggregate(out: Path, tids: list[str], modes: list[str], rules: list[str]) -> dict:
    """Per-mode means (+- sd) of every metric, corpus bits per byte per system, leakage per mode."""
    wanted = set(tids)

    def read(name):
        latest = {(r["tid"], r.get("mode")): r for r in read_jsonl(out / name) if r.get("tid") in wanted}
        return list(latest.values())

    gens, judged, gold = read("generations.jsonl"), read("judge.jsonl"), read("gold.jsonl")
    derived = [r for r in read_jsonl(out / "instructions.jsonl") if r.get("tid") in wanted]
    table = {}
    for mode in modes:
        rows = [g for g in gens if g["mode"] == mode]
        if not rows:
            continue
        entry = {"samples": len(rows), "fallbacks": sum(bool(r["fallback"]) for r in rows)}
        for metric in ("rouge_l", "cosine", "history_similarity", "facts_used", "repeated_4grams", "distinct_2"):
            entry[metric] = _mean_sd([r.get(metric) for r in rows])
        for metric in ("first_token_ms", "tokens_per_s_after_first", "round_trips_per_token"):
            entry[metric] = _mean_sd([r["stats"].get(metric) for r in rows if r["stats"]])
        canary_hits = [[k for k, _ in r["leak"]["leaked"] if k.startswith("canary")] for r in rows]
        profile_hits = [[k for k, _ in r["leak"]["leaked"] if not k.startswith("canary")] for r in rows]
        sent = sum(r["audit"].get("withheld_tokens", 0) for r in rows)
        entry["leak"] = {
            "jobs_leaking": sum(bool(r["leak"]["leaked"]) for r in rows),
            "jobs_leaking_profile": sum(bool(h) for h in profile_hits),
            "jobs_leaking_canary": sum(bool(h) for h in canary_hits),
            "canaries_leaked": sum(len(h) for h in canary_hits),
            "canaries": sum(r["leak"]["canaries"] for r in rows),
            "profile_fact_share": _ratio(sum(len(h) for h in profile_hits),
                                         sum(r["leak"]["facts"] - r["leak"]["canaries"] for r in rows)),
            "leaked_kinds": sorted({k for h in canary_hits + profile_hits for k in h}),
            "context_bits": _mean_sd([r["audit"].get("context_bits", 0.0) for r in rows]),
            "withheld_tokens": sent,
            "found_before_redaction": sum(r["found_before_redaction"] for r in rows),
            "requests": sum(r["audit"]["requests"] for r in rows),
            "bytes_sent": sum(r["audit"]["bytes_sent"] for r in rows),
        }
        scores = [j["scores"] for j in judged if j["mode"] == mode]
        entry["judge"] = {c: _mean_sd([s.get(c) for s in scores]) for c in CRITERIA}
        entry["judge"]["unparsed"] = sum(s.get(c) is None for s in scores for c in CRITERIA)
        table[mode] = entry
    bpb = {}
    if gold:
        n_bytes = sum(g["n_bytes"] for g in gold)
        for system in ["local", "remote", *rules]:
            nll = [g["nll"][system] for g in gold if system in g["nll"]]
            if len(nll) == len(gold):
                bpb[system] = {"bpb": sum(nll) / math.log(2) / n_bytes,
                               "per_sample": _mean_sd([v / math.log(2) / g["n_bytes"] for v, g in zip(nll, gold)]),
                               "samples_infinite": sum(math.isinf(v) for v in nll)}
        bpb["_samples"] = len(gold)
        bpb["_bytes"] = n_bytes
        bpb["_fused_share"] = _ratio(sum(g["n_fused"] for g in gold), sum(g["n_local_tokens"] for g in gold))
    instructions = {}
    if derived:
        for name in ("request", "paper", "derived"):
            instructions[name] = {
                "samples_leaking": sum(bool(r["leaked"][name]) for r in derived),
                "fact_share": _ratio(sum(len(r["leaked"][name]) for r in derived), sum(r["facts"] for r in derived)),
                "words": _mean_sd([len(r[name].split()) for r in derived]),
            }
        instructions["_samples"] = len(derived)
    judge_audits = [j["audit"] for j in judged if "audit" in j]
    judge_sent = {"requests": sum(a["requests"] for a in judge_audits),
                  "bytes_sent": sum(a["bytes_sent"] for a in judge_audits),
                  "private_spans": sum(a["leaked_spans"] for a in judge_audits)} if judge_audits else None
    return {"samples": len(tids), "modes": table, "gold_bpb": bpb, "instructions": instructions,
            "judge_sent": judge_sent}


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _fmt(ms: tuple[float, float, int], digits: int = 3) -> str:
    mean, sd, n = ms
    if n == 0:
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def to_markdown(results: dict) -> str:
    lines = [f"# Evaluation ({results['samples']} samples)", ""]
    modes = results["modes"]
    if modes:
        lines += ["## Generation (mean ± sd over samples)", "",
                  "| mode | n | judge Ovl(w) | judge Per | judge Ovl(w/o) | ROUGE-L | cosine | history sim | facts used | "
                  "repeated 4-grams | distinct-2 | first token ms | tok/s after the first | RT/tok | fallbacks |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, e in modes.items():
            j = e["judge"]
            lines.append(f"| {mode} | {e['samples']} | {_fmt(j['overall_with_profile'], 2)} | {_fmt(j['personalization'], 2)} | "
                         f"{_fmt(j['overall_without_profile'], 2)} | {_fmt(e['rouge_l'])} | {_fmt(e['cosine'])} | "
                         f"{_fmt(e['history_similarity'])} | {_fmt(e['facts_used'])} | {_fmt(e['repeated_4grams'])} | "
                         f"{_fmt(e['distinct_2'])} | {_fmt(e['first_token_ms'], 0)} | "
                         f"{_fmt(e['tokens_per_s_after_first'], 1)} | {_fmt(e['round_trips_per_token'], 2)} | {e['fallbacks']} |")
        lines += ["", "The modes of a sample share the local KV cache: the first one run pays the context prefill in "
                      "its first-token time, the others reuse the cached prefix."]
        lines += ["", "## Privacy: what reached the remote (independent scan of the bodies sent, leakscan.py)", "",
                  "| mode | requests | guard findings | jobs leaking a profile fact | profile facts leaked | "
                  "canaries leaked | context bits sent per job | tokens withheld |", "|---|---|---|---|---|---|---|---|"]
        for mode, e in modes.items():
            lk = e["leak"]
            lines.append(f"| {mode} | {lk['requests']} | {lk['found_before_redaction']} | "
                         f"{lk['jobs_leaking_profile']}/{e['samples']} | {100 * lk['profile_fact_share']:.2f}% | "
                         f"{lk['canaries_leaked']}/{lk['canaries']} | {_fmt(lk['context_bits'], 1)} | "
                         f"{lk['withheld_tokens']} |")
        judge = results.get("judge_sent")
        if judge:
            lines += ["", f"Sent by design: the judge's {judge['requests']} requests ({judge['bytes_sent']} B) carried "
                          f"{judge['private_spans']} private spans of the profiles it grades with. They went to the "
                          "judge's endpoint, not through the collaboration."]
    inst = results.get("instructions") or {}
    if inst:
        lines += ["", f"## The public instruction ({inst['_samples']} samples): what each version sends of the profile", "",
                  "| instruction | samples leaking a profile fact | profile facts leaked | words |", "|---|---|---|---|"]
        labels = {"request": "the full request (nothing removed)", "paper": "the paper's split (before the first ': ')",
                  "derived": "derived on the device (request=)"}
        for name, label in labels.items():
            e = inst[name]
            lines.append(f"| {label} | {e['samples_leaking']}/{inst['_samples']} | {100 * e['fact_share']:.2f}% | "
                         f"{_fmt(e['words'], 1)} |")
    bpb = results["gold_bpb"]
    if bpb:
        lines += ["", f"## Gold bits per byte, teacher-forced ({bpb['_samples']} samples, {bpb['_bytes']} bytes; "
                      f"{100 * bpb['_fused_share']:.1f}% of local positions fused)", "",
                  "| system | bits/byte (corpus) | per sample mean ± sd | samples with p(gold) = 0 |", "|---|---|---|---|"]
        for system, v in bpb.items():
            if not system.startswith("_"):
                lines.append(f"| {system} | {v['bpb']:.4f} | {_fmt(v['per_sample'], 4)} | {v['samples_infinite']} |")
    return "\n".join(lines) + "\n"
