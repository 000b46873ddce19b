"""The evaluation runs whose tables docs/evaluation.md and docs/benchmarks.md quote, one name each.

    python benchmarks/eval_tables.py leak150 [--shared ../shared/data] [--work /tmp/runs]

runs `cogenesis eval` on the run's dataset (a folder of --shared) with the run's arguments into WORK/NAME (the per-sample JSONL there holds
private text, readable by its owner only) and copies the aggregate `table.md` and `results.json`
to benchmarks/results/eval/NAME/, with `run.json`: the command, the commit, the date and the wall time.
A run with gate records then trains the fusion gate on them (`gate.txt`, `gate.md`: `cogenesis train-gate`).
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from cogenesis_device.bench import machine
from report import code_stamp

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "eval")
GOLD_RULES = ("weighted:mask,weighted:tail,weighted:local,weighted:tail:w=0.8,weighted:local:w=0.8,"
              "max:mask,max:tail,max:local,context_delta:mask,context_delta:tail,context_delta:local")
GENERATION = ["--rules", "", "--remote-gguf", "none", "--no-embeddings"]
GEMMA = ["--loopback", "gemma3-270m", "--remote-gguf", "gemma3-270m"]
QWEN15 = ["--remote-gguf", "qwen2.5-coder-1.5b-instruct", "--remote-timeout", "300"]  # its loopback serves it too
QWEN_RULES = GOLD_RULES + "," + ",".join(f"weighted:local:w={w}" for w in (0.1, 0.2, 0.3, 0.4, 0.65))
CONTEXT_AWARE, ABSTRACTS = "context-aware", "abstracts"  # folders of --shared
REPETITION_MODES = "local,sketch,logits:weighted:mask,logits:weighted:local:w=0.8"
RUNS = {  # name: (dataset, arguments)
    # Gold bits per byte by rule and fill on the whole dev split, with the gate's training records.
    "gold150": (CONTEXT_AWARE, ["--modes", "none", "--rules", GOLD_RULES, "--gate-records", "--no-embeddings"]),
    # Generation and leakage of every mode, each remote mode under redact and with nothing withheld.
    "generation16": (CONTEXT_AWARE, ["--limit", "16", "-n", "64", "--privacy", "redact,audit:text-only", *GENERATION]),
    # Leakage of logits mode on the whole dev split, under redact.
    "leak150": (CONTEXT_AWARE, ["-n", "64", "--modes", "logits:weighted:mask", "--privacy", "redact", *GENERATION]),
    # Gemma 3 270M (a base model, another tokenizer) as the remote: gold bits per byte by rule and fill on
    # the whole dev split; generation and leakage of logits mode under redact and with nothing withheld.
    "gemma_gold150": (CONTEXT_AWARE, ["--modes", "none", *GEMMA, "--rules", GOLD_RULES, "--no-embeddings"]),
    "gemma16": (CONTEXT_AWARE, ["--limit", "16", "-n", "64", *GEMMA,
                                "--modes", "local,logits:weighted:mask,logits:weighted:local:w=0.8",
                                "--privacy", "redact,audit:text-only", "--rules", "", "--no-embeddings"]),
    # The paper's table with Gemma 3 as the remote: every mode on the whole dev split, each remote mode
    # under redact and with nothing withheld (the default fusion). Its GGUF formats the prompts (from
    # --loopback); gold bits per byte are gemma_gold150's.
    "gemma150": (CONTEXT_AWARE, ["-n", "64", "--loopback", "gemma3-270m", "--remote-gguf", "none",
                                 "--privacy", "redact,audit:text-only", "--rules", "", "--no-embeddings"]),
    # The abstracts dev split (SmolLM2 as the remote): gold bits per byte of every rule and fill, and
    # generation and leakage of every mode on its first 16 samples.
    "abstracts_gold161": (ABSTRACTS, ["--modes", "none", "--rules", GOLD_RULES, "--no-embeddings"]),
    "abstracts16": (ABSTRACTS, ["--limit", "16", "-n", "64", "--privacy", "redact,audit:text-only", *GENERATION]),
    # The same on the whole abstracts dev split (161 samples).
    "abstracts161": (ABSTRACTS, ["-n", "64", "--privacy", "redact,audit:text-only", *GENERATION]),
    # Qwen2.5-Coder-1.5B-Instruct as the remote (issue 30: a remote that really is larger), with SmolLM2 as the
    # local model: gold bits per byte by rule, fill and weight on the whole dev split; generation, leakage
    # and speed of every mode on the first 8 samples.
    "qwen15_gold150": (CONTEXT_AWARE, ["--modes", "none", *QWEN15, "--rules", QWEN_RULES, "--gate-records",
                                       "--no-embeddings"]),
    # The same on the first 100 samples: the whole split did not fit the session that measured it (the
    # interrupted qwen15_gold150 run's folder, renamed, resumed: no sample was scored twice).
    "qwen15_gold100": (CONTEXT_AWARE, ["--limit", "100", "--modes", "none", *QWEN15, "--rules", QWEN_RULES,
                                       "--gate-records", "--no-embeddings"]),
    "qwen15_8": (CONTEXT_AWARE, ["--limit", "8", "-n", "64", *QWEN15, "--privacy", "redact",
                                  "--modes", "local,remote,sketch,logits:weighted:mask,logits:weighted:local",
                                  "--rules", "", "--no-embeddings"]),
    # The paper's same-family pair: Qwen2.5-Coder-0.5B local, 1.5B remote, gold bits per byte on the whole dev split.
    "qwen05_qwen15_gold150": (CONTEXT_AWARE, ["-m", "qwen2.5-coder-0.5b-instruct", "--modes", "none", *QWEN15,
                                              "--rules", QWEN_RULES, "--gate-records", "--no-embeddings"]),
    # The same on the first 40 samples: the whole split did not fit the session (the interrupted run's
    # folder, renamed, resumed: no sample was scored twice).
    "qwen05_qwen15_gold40": (CONTEXT_AWARE, ["--limit", "40", "-m", "qwen2.5-coder-0.5b-instruct", "--modes", "none",
                                             *QWEN15, "--rules", QWEN_RULES, "--gate-records", "--no-embeddings"]),
    # Repetition without and with the engine's no-repeat n-gram link, its n-grams of token ids or of token texts.
    "repetition12_before": (CONTEXT_AWARE, ["--limit", "12", "--modes", REPETITION_MODES, "--no-repeat-ngram", "0",
                                            *GENERATION]),
    "repetition12_after": (CONTEXT_AWARE, ["--limit", "12", "--modes", REPETITION_MODES, "--no-repeat-ngram", "4",
                                           "--no-repeat-by", "token", *GENERATION]),
    "repetition12_text": (CONTEXT_AWARE, ["--limit", "12", "--modes", REPETITION_MODES, "--no-repeat-ngram", "4",
                                          "--no-repeat-by", "text", *GENERATION]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(RUNS))
    parser.add_argument("--shared", default="../shared/data", help="the folder holding the datasets")
    parser.add_argument("--work", default="runs", help="where each run's full output goes")
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.names:
        out = os.path.join(args.work, name)
        dataset, arguments = RUNS[name]
        command = ["cogenesis", "eval", "--data", os.path.join(args.shared, dataset), "--out", out, *arguments,
                   "-t", str(args.threads), "-q"]
        print("$", shlex.join(command), file=sys.stderr)
        start = time.monotonic()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        dest = os.path.join(RESULTS, name)
        os.makedirs(dest, exist_ok=True)
        for file in ("table.md", "results.json"):
            shutil.copyfile(os.path.join(out, file), os.path.join(dest, file))
        with open(os.path.join(dest, "run.json"), "w") as f:
            json.dump({"command": shlex.join(command), **code_stamp(), **machine(),
                       "wall_seconds": round(seconds, 1)}, f, indent=1)
        print(f"{name}: {seconds / 60:.1f} min -> {dest}", file=sys.stderr)
        if "--gate-records" in arguments:
            train_gate(out, dest)
    return 0


def train_gate(out: str, dest: str) -> None:
    """Train the fusion gate on a run's records: DEST/gate.txt (the weights), gate.txt.json and gate.md
    (held-out bits per byte against every fixed weight), with the command in gate.md."""
    command = ["cogenesis", "train-gate", out, "--out", os.path.relpath(os.path.join(dest, "gate.txt"))]
    report = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    with open(os.path.join(dest, "gate.md"), "w") as f:
        f.write(f"`{shlex.join(command)}` ({code_stamp()['commit'][:7]})\n\n{report}")


if __name__ == "__main__":
    sys.exit(main())
