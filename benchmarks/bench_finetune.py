"""The paper's SFT step measured: a LoRA of the local model trained on dev samples on the CPU, then the
tuned and the base model scored by the engine on dev samples the adapter never saw.

    python benchmarks/bench_finetune.py [--train 100] [--held-out 50] [--epochs 1] [--rank 8] [--alpha 16]
                                        [--lr 0.001] [--past-writings 0] [--threads 2] [--gen-tokens 128]
                                        [--remote NAME --fused-samples N]

The first train + held-out samples of the dev split are shuffled by the seed; held-out of them are
never trained on (Finetuner.split). Training time is the whole `Finetuner.run` (loading, tokenizing,
training, the per-epoch held-out scoring in torch, the export), wall clock. Then, in the engine: gold
bits per byte of the held-out answers teacher-forced (base, tuned), and ROUGE-L (rouge-score) of each
model's greedy answer (the product's local-only path, CoGenerator without a remote). With --remote, the
tuned model fused with that remote (a registry GGUF standing in for the server, as `cogenesis eval
--remote-gguf` does) on the first --fused-samples held-out samples, by the eval's fusion rules.
--past-writings N adds, for each trained sample, up to N of
its user's past writings as tasks of their own (the writing's title the request, the rest of the profile
the context); the held-out users' writings are never trained on. Writes results/finetune.json and
results/finetune.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


import cogenesis_device as cg
from cogenesis_device.attribution import log_softmax_at
from cogenesis_device.bench import fmt, model_info, summarize
from cogenesis_device.bench import row as common_row
from cogenesis_device.eval import lora_export  # noqa: F401 - imported now: the run must not pick up later edits
from cogenesis_device.eval.datasets import load
from cogenesis_device.eval.finetune import FinetuneConfig, Finetuner, read_records
from cogenesis_device.eval.metrics import rouge_l
from report import RESULTS, write

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "context-aware" / "dev.json"


def gold_bpb(local: cg.LocalModel, instruction: str, context: str, gold: str) -> tuple[float, int]:
    """(nll in nats of the gold answer's tokens, its bytes), teacher-forced in the engine."""
    prompt = local.private_prompt(context, instruction)
    targets = local.tokenize(gold, add_special=False)
    nll = 0.0
    with local.pooled_session(scope=cg.LocalModel.scope_for(context)) as session:  # the generation reuses its prefill
        for row, target in zip(cg.LocalModel.teacher_forced_rows(session, prompt, targets), targets):
            nll -= log_softmax_at(row, target)
    return float(nll), len(gold.encode("utf-8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--held-out", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rank", type=int, default=FinetuneConfig.rank)
    ap.add_argument("--alpha", type=float, default=FinetuneConfig.alpha)
    ap.add_argument("--lr", type=float, default=FinetuneConfig.learning_rate)
    ap.add_argument("--past-writings", type=int, default=0,
                    help="also train on up to N of each trained sample's past writings (Sample.past_tasks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--out", default=None, help="the run's folder (default: a new temporary one)")
    ap.add_argument("--remote", default=None, help="a registry model fused with the tuned one (e.g. qwen2.5-coder-1.5b-instruct)")
    ap.add_argument("--fused-samples", type=int, default=0)
    args = ap.parse_args()
    if not DEV.exists():
        print(f"the dev split is not at {DEV}", file=sys.stderr)
        return 2
    n = args.train + args.held_out
    records = read_records(DEV)[:n]
    samples = load(DEV)[:n]
    config = FinetuneConfig(held_out=args.held_out / n, epochs=args.epochs, threads=args.threads, rank=args.rank,
                            alpha=args.alpha, learning_rate=args.lr, past_writings=args.past_writings)
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune-"))
    args.out = str(out)
    base = cg.LocalModel(n_ctx=4096, n_threads=args.threads)
    finetuner = Finetuner(base, config)
    started = time.perf_counter()
    result = finetuner.run(records, out, on_epoch=lambda r: print(f"epoch {r.epoch}: loss {r.train_loss:.3f}, "
                                                                  f"held-out {r.held_out_bpb:.4f} bpb", file=sys.stderr))
    wall_s = time.perf_counter() - started
    invocations, earlier = 1, {}
    if result.resumed_from_step:  # a run taken up again (more epochs, or --remote): its earlier wall time counts too
        previous = RESULTS / "finetune.json"
        earlier = json.loads(previous.read_text()) if previous.exists() else {}
        if earlier.get("args", {}).get("out") != str(out) or "wall_s" not in earlier:
            print(f"{out} holds an earlier run whose wall time is unknown here: train into a new --out", file=sys.stderr)
            return 2
        wall_s += earlier["wall_s"]
        invocations += earlier.get("invocations", 1)
    _, held = finetuner.split(n)
    tuned = cg.LocalModel(n_ctx=4096, n_threads=args.threads, adapter=result.adapter)

    trained_steps = result.n_train * len(result.epochs[1:])
    same_adapter = (earlier.get("trained_steps") == trained_steps and earlier.get("held_out") == held
                    and earlier.get("args", {}).get("gen_tokens") == args.gen_tokens)
    per_model = earlier["engine"] if same_adapter else {}  # the same adapter scored before: taken as it was
    for name, model in (("base", base), ("tuned", tuned)) if not per_model else ():
        generator = cg.CoGenerator(model, None)
        nll = n_bytes = 0.0
        rouge = []
        for i in held:
            s = samples[i]
            a, b = gold_bpb(model, s.instruction, s.context, s.gold)
            nll, n_bytes = nll + a, n_bytes + b
            text = generator.generate(s.instruction, s.context, max_tokens=args.gen_tokens).text
            rouge.append(rouge_l(text, s.gold))
        per_model[name] = {"bpb": nll / math.log(2) / n_bytes, "rouge_l": summarize(rouge)}
        print(f"{name}: {per_model[name]['bpb']:.4f} bpb, ROUGE-L {fmt(per_model[name]['rouge_l'], 3)}", file=sys.stderr)

    fused = None
    if args.remote and args.fused_samples:
        from cogenesis_device.eval.runner import EvalSettings
        from cogenesis_device.fusion import FusionConfig
        from cogenesis_device.eval.scoring import GoldScorer

        rules = {r: FusionConfig.parse(r, None) for r in EvalSettings.rules if not r.startswith("context_delta")}

        remote = cg.LocalModel(args.remote, n_ctx=4096, n_threads=args.threads)
        scorer = GoldScorer(tuned, remote, rules)
        scored = [scorer.score(samples[i])[0] for i in held[:args.fused_samples]]
        total_bytes = sum(s.n_bytes for s in scored)
        bpb = {label: sum(s.nll[label] for s in scored) / math.log(2) / total_bytes for label in scored[0].nll}
        fused = {"remote": args.remote, "samples": args.fused_samples, "bpb": bpb}
        print(f"fused with {args.remote}: {bpb}", file=sys.stderr)

    delta = per_model["tuned"]["bpb"] / per_model["base"]["bpb"] - 1
    info = model_info(base.path)
    rows = [common_row(f"finetune {args.train} samples, {args.epochs} epoch(s)", summarize([wall_s]), unit="s",
                       model=info["model"], size=info.get("size"), threads=args.threads)]
    md = ["# LoRA fine-tuning of the local model (the paper's SFT step)", "",
          f"`python benchmarks/bench_finetune.py --train {args.train} --held-out {args.held_out} --epochs {args.epochs} "
          f"--rank {args.rank} --alpha {args.alpha:g} --lr {args.lr:g} --past-writings {args.past_writings} --threads {args.threads} --gen-tokens {args.gen_tokens}"
          + (f" --remote {args.remote} --fused-samples {args.fused_samples}" if fused else "") + "`", "",
          f"SmolLM2-135M-Instruct, LoRA rank {config.rank}, alpha {config.alpha:g}, learning rate "
          f"{config.learning_rate:g}, bf16 autocast where native; {args.train} dev samples trained on"
          + (f" with up to {args.past_writings} of each one's past writings as tasks of their own (leave one out: "
             f"{result.n_train} examples an epoch)" if args.past_writings else "")
          + f", {result.n_held_out} held out (never trained on, nor their past writings), {args.threads} threads.", "",
          f"Whole run (load, train, per-epoch held-out scoring, export): **{wall_s / 60:.1f} min**"
          + (f" over {invocations} invocations on one --out (each resumed the last one's checkpoint; the model load "
             "and export counted each time)" if invocations > 1 else "")
          + f"; of it training {result.train_seconds / 60:.1f} min.", "",
          "Held-out scoring in torch, per epoch:", "", "| epoch | train loss (nats/token) | held-out gold bits/byte |",
          "|---|---|---|"]
    md += [f"| {r.epoch} | {'-' if math.isnan(r.train_loss) else f'{r.train_loss:.3f}'} | {r.held_out_bpb:.4f} |"
           for r in result.epochs]
    md += ["", f"In the engine, on the {len(held)} held-out samples (greedy answers of {args.gen_tokens} tokens at "
           "most for ROUGE-L):", "", "| model | gold bits/byte | ROUGE-L |", "|---|---|---|"]
    md += [f"| {name} | {v['bpb']:.4f} | {fmt(v['rouge_l'], 3)} |" for name, v in per_model.items()]
    md += ["", f"Tuned against base: **{delta * 100:+.1f}%** gold bits per byte (target: at most -10%)."]
    if fused:
        tuned_alone = fused["bpb"]["local"]
        md += ["", f"The tuned model fused with {args.remote} (the eval's rules, the remote's top 20; the remote "
               f"scored by its GGUF in the engine), on the first {args.fused_samples} held-out samples:", "",
               "| system | gold bits/byte | vs the tuned model alone |", "|---|---|---|"]
        md += [f"| {'tuned local alone' if label == 'local' else 'remote alone' if label == 'remote' else label} | "
               f"{v:.4f} | {(v / tuned_alone - 1) * 100:+.1f}% |" for label, v in fused["bpb"].items()]
    path = write("finetune", {"args": vars(args), "config": asdict(config),
                              "wall_s": wall_s, "invocations": invocations, "trained_steps": trained_steps, "train_s": result.train_seconds, "epochs": [asdict(r) for r in result.epochs],
                              "held_out": held, "engine": per_model, "fused": fused}, "\n".join(md), rows)
    print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
