"""The engine on 64-bit ARM: its C programs, cross-built, run under qemu-aarch64 and checked against
this machine's x86-64 build of the same sources (engine/cross/arm64.sh builds both, then runs this).

    python benchmarks/arm64_parity.py --arm BUILD_DIR --host BUILD_DIR [--arch A] [--out DIR]

Checks, each on the bundled SmolLM2-135M:
  - fusion_fuzz: the same pseudo-random inputs on both (one draw per statement), so the same count
    of calls and refused calls;
  - provider_fuzz: a hostile provider's answers, no broken invariant (exit 0);
  - generate (greedy, 32 tokens, three prompts): the ARM text read back token by token under the x86
    model, each token x86's own greedy choice on the same prefix or a near-tie (the two tokens'
    log-probabilities within TIE_NATS of each other: the kernels sum in another order on ARM, so a
    near-tie can fall either way);
  - collaborate (the logits-mode loop with a second model as the remote, through the C ABI): the same
    text; a difference is reported, with where it starts.
Writes arm64.json and arm64.md (the rows of every benchmark: tokens/s of the C example, emulated and
native; emulated speed says nothing of a phone's). Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import cogenesis_device as cg
from cogenesis_device.bench import markdown_table, model_info, row, summarize

# The largest log-probability gap (under the x86 model) at which the ARM build's greedy choice still
# counts as a near-tie. Measured: 3 of 96 positions part, by 0.015, 0.047 and 0.224 nats (the Q4_1
# dot products quantize and sum in another order on NEON); a broken kernel moves scores by whole nats.
TIE_NATS = 0.25
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "To make a good cup of tea, you"]
N_TOKENS = 32
INSTRUCTION = "Write a short note inviting my colleagues to a team dinner"
CONTEXT = "Name: Odalys Brennecke\nLocation: Tromsø, Norway\nPrivate: sister Ingrid Solheim; allergic to shellfish."
STATS = re.compile(r"generated=(\d+) prefill=([\d.]+)ms first_token=([\d.]+)ms decode=([\d.]+)ms")


def run(command: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    proc.seconds = time.perf_counter() - started
    return proc


def greedy_gaps(model: cg.LocalModel, prompt: str, arm_text: str, n_tokens: int) -> list[dict]:
    """Reads the ARM text back token by token under the x86 model: at each position the token the
    ARM text continues with (the likeliest one whose text it starts with) and its log-probability
    gap to the x86 model's own greedy choice there, on the ARM text's prefix. A gap of 0 is the same
    token; a greedy run on a correct build has every gap within TIE_NATS."""
    session, context = model.new_session(), model.tokenize(prompt)
    positions, rest = [], arm_text
    while rest and len(positions) < n_tokens:
        logits = np.asarray(next(model.teacher_forced_rows(session, context, [0])), dtype=np.float64)
        logprobs = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
        candidates = [int(t) for t in np.argsort(-logprobs)[:50]
                      if (piece := model.detokenize([int(t)])) and rest.startswith(piece)]
        if not candidates:
            positions.append({"position": len(positions), "gap_nats": math.inf, "arm_text": rest[:16]})
            break
        chosen, best = candidates[0], int(np.argmax(logprobs))
        positions.append({"position": len(positions), "x86_token": model.detokenize([best]),
                          "arm_token": model.detokenize([chosen]),
                          "gap_nats": round(float(logprobs[best] - logprobs[chosen]), 4)})
        rest = rest[len(model.detokenize([chosen])):]
        context = [*context, chosen]
    return positions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", type=Path, required=True, help="the aarch64 build directory of engine/")
    ap.add_argument("--host", type=Path, required=True, help="this machine's build directory of engine/")
    ap.add_argument("--arch", default="armv8.2-a+dotprod", help="the -march the ARM build used (for the report)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    model = cg.LocalModel()
    path, info = str(model.path), model_info(model.path)
    checks, rows, failed = [], [], False

    def both(program: str, *program_args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        return (run([str(args.host / program), *program_args]),
                run([*QEMU, str(args.arm / program), *program_args]))

    host, arm = both("cogenesis_fusion_fuzz", "300", path)
    ok = host.returncode == arm.returncode == 0 and host.stdout == arm.stdout
    checks.append({"check": "fusion_fuzz 300", "ok": ok, "x86": host.stdout.strip(), "arm64": arm.stdout.strip()})

    host, arm = both("cogenesis_provider_fuzz", path, "8", "7")
    ok = host.returncode == arm.returncode == 0
    checks.append({"check": "provider_fuzz 8", "ok": ok, "x86": host.stdout.strip(), "arm64": arm.stdout.strip(),
                   "error": arm.stderr[-300:] if arm.returncode else ""})

    tokens_same = tokens_all = 0
    for prompt in PROMPTS:
        reference = model.generate(prompt, max_tokens=N_TOKENS, sampling=cg.SamplingParams.greedy())
        host, arm = both("cogenesis_example", path, prompt, str(N_TOKENS))
        check = {"check": f"generate {prompt[:24]!r}", "x86_equals_python": host.stdout == reference.text}
        if arm.returncode != 0 or host.returncode != 0:
            check.update(ok=False, error=(arm.stderr or host.stderr)[-300:])
        else:
            gaps = greedy_gaps(model, prompt, arm.stdout, N_TOKENS)
            parted = [g for g in gaps if g["gap_nats"] > 0]
            check.update(ok=check["x86_equals_python"] and len(gaps) == N_TOKENS
                         and all(g["gap_nats"] <= TIE_NATS for g in gaps),
                         tokens_same=len(gaps) - len(parted), tokens_read=len(gaps),
                         same_text=arm.stdout == host.stdout,
                         max_gap_nats=max((g["gap_nats"] for g in gaps), default=0.0),
                         ties=[{k: g[k] for k in ("position", "x86_token", "arm_token", "gap_nats") if k in g}
                               for g in parted])
        tokens_same += check.get("tokens_same", 0)
        tokens_all += len(reference.tokens)
        checks.append(check)
        for name, proc in (("x86-64", host), ("arm64 under qemu", arm)):
            found = STATS.search(proc.stderr)
            if found:
                generated, decode_ms = int(found.group(1)), float(found.group(4))
                rows.append(row(f"tg{generated} C example, {name}, {prompt[:16]!r}",
                                summarize([generated / decode_ms * 1000.0]), unit="tok/s", threads=os.cpu_count(),
                                machine=name, **info))

    collaborate = (path, INSTRUCTION, CONTEXT, "24", "4")
    host, arm = both("cogenesis_collaborate", *collaborate)
    same = host.returncode == arm.returncode == 0 and host.stdout == arm.stdout
    differs_at = next((i for i, (a, b) in enumerate(zip(host.stdout, arm.stdout)) if a != b),
                      min(len(host.stdout), len(arm.stdout)))
    checks.append({"check": "collaborate 24", "ok": host.returncode == arm.returncode == 0, "same_text": same,
                   **({} if same else {"differs_at_char": differs_at})})
    failed = not all(c["ok"] for c in checks)

    data = {"arch": args.arch, "tie_nats": TIE_NATS, "tokens_same": tokens_same, "tokens": tokens_all,
            "checks": checks}
    lines = ["# The engine on ARM64 (cross-built, run under qemu-aarch64)", "",
             f"Built by `engine/cross/arm64.sh` for `-march={args.arch}` (llama.cpp static, from the llama-cpp-python "
             f"0.3.36 sdist), compared with this machine's x86-64 build. Greedy tokens read back the same as x86's choice on the same prefix: "
             f"{tokens_same} of {tokens_all}; a difference passes as a near-tie when the two tokens' log-probabilities "
             f"are within {TIE_NATS} nats under the x86 model. Speeds under emulation are not a phone's.", "",
             "| check | ok | detail |", "|---|---|---|"]
    for c in checks:
        detail = {k: v for k, v in c.items() if k not in ("check", "ok")}
        lines.append(f"| {c['check']} | {'yes' if c['ok'] else '**no**'} | {json.dumps(detail, ensure_ascii=False)} |")
    lines += ["", markdown_table(rows)]
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import report  # noqa: E402 - stamps the files with the commit

    report.RESULTS = args.out
    written = report.write("arm64", data, "\n".join(lines), rows)
    print(written.read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
