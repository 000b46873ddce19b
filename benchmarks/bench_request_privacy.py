"""A private request made public: what the instruction derived on the device still says, on PUPA.

    python benchmarks/bench_request_privacy.py --pupa DIR [--limit N]

DIR holds PUPA_New.csv and PUPA_TNB.csv (the `pupa/` folder of PAPILLON's repository,
Columbia-NLP-Lab/PAPILLON, MIT licence): 901 real user queries, each with its annotated PII units.
Each query is the private request of `derive_instruction` with no private context (so what it
removes is the request's own facts), through the product's own function and the bundled model.
Against the same metric, in the same run: PUPA's own redaction (`redacted_query`) and the query
sent as it is.

- PII units sent: a unit counts as sent when its words stand side by side in what is sent (after
  the leak scan's normalization); "any word" counts a unit as sent when any of its words of three or
  more letters (not a common word) is;
- other words kept: the query's words that belong to no PII unit, and the share of them that the
  sent text still holds (counted with multiplicity).
Writes results/request_privacy.json and results/request_privacy.md.
"""
from __future__ import annotations

import argparse
import collections
import csv
import pathlib
import sys
import time

import cogenesis_device as cg
from cogenesis_device.bench import model_info, summarize
from cogenesis_device.bench import row as common_row  # `row` names a PUPA record here
from cogenesis_device.collab import derive_instruction
from cogenesis_device.eval.leakscan import simplify
from report import write

FILES = ("PUPA_New.csv", "PUPA_TNB.csv")
COLUMNS = ("user_query", "pii_units", "redacted_query")
_COMMON = set("the a an and or of to in on for with at by from is are was were be my our your his her their "
              "this that it as".split())


def load(folder: pathlib.Path) -> list[dict]:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        sys.exit(f"--pupa {folder}: {', '.join(missing)} not found (the pupa/ folder of PAPILLON's repository)")
    rows = []
    for name in FILES:
        with open(folder / name, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                sys.exit(f"--pupa {folder / name}: no column {', '.join(absent)} (PUPA's columns: {', '.join(COLUMNS)})")
            rows += [r for r in reader if r["user_query"].strip()]
    return rows


def units_of(row: dict) -> list[str]:
    return [u for u in (simplify(p) for p in row["pii_units"].split("||")) if u]


def score(query: str, sent: str, units: list[str]) -> dict:
    sent_words = simplify(sent).split()
    padded = " " + " ".join(sent_words) + " "
    whole = sum(f" {u} " in padded for u in units)
    present = set(sent_words)
    any_word = sum(any(w in present for w in u.split() if len(w) >= 3 and w not in _COMMON) for u in units)
    unit_words = {w for u in units for w in u.split()}
    others = collections.Counter(w for w in simplify(query).split() if w not in unit_words)
    kept = collections.Counter(sent_words) & others
    return {"units": len(units), "sent_whole": whole, "sent_any_word": any_word,
            "other_words": sum(others.values()), "other_words_kept": sum(kept.values())}


def totals(scores: list[dict]) -> dict:
    sums = {k: sum(s[k] for s in scores) for k in scores[0]}
    return {**sums, "queries": len(scores),
            "units_sent_pct": round(100.0 * sums["sent_whole"] / max(1, sums["units"]), 2),
            "units_sent_any_word_pct": round(100.0 * sums["sent_any_word"] / max(1, sums["units"]), 2),
            "other_words_kept_pct": round(100.0 * sums["other_words_kept"] / max(1, sums["other_words"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pupa", type=pathlib.Path, required=True, help="folder holding PUPA_New.csv and PUPA_TNB.csv")
    parser.add_argument("--limit", type=int, default=0, help="only the first N queries (0: all)")
    parser.add_argument("--examples", type=int, default=0,
                        help="queries to keep in the JSON with what was sent of them (PUPA text: 0 by default)")
    args = parser.parse_args()
    rows = load(args.pupa)[:args.limit or None]
    local = cg.LocalModel(n_ctx=512, n_threads=2)
    methods = {"query as it is": [], "PUPA's redaction": [], "derive_instruction": []}
    start = time.perf_counter()
    examples = []
    for i, row in enumerate(rows):
        units, query = units_of(row), row["user_query"]
        derived = derive_instruction(local, query, "")
        for name, sent in (("query as it is", query), ("PUPA's redaction", row["redacted_query"]),
                           ("derive_instruction", derived.text)):
            methods[name].append(score(query, sent, units))
        if len(examples) < args.examples and len(query) < 400:
            examples.append({"query": query, "derived": derived.text, "pii_units": units})
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(rows)} queries", file=sys.stderr)
    seconds = time.perf_counter() - start
    results = {name: totals(scores) for name, scores in methods.items()}
    lines = ["| method | PII units sent (whole) | PII units sent (any word) | other words kept |", "|---|---|---|---|"]
    for name, t in results.items():
        lines.append(f"| {name} | {t['units_sent_pct']}% ({t['sent_whole']}/{t['units']}) | "
                     f"{t['units_sent_any_word_pct']}% ({t['sent_any_word']}/{t['units']}) | "
                     f"{t['other_words_kept_pct']}% ({t['other_words_kept']}/{t['other_words']}) |")
    lines.append(f"\n{len(rows)} queries; derive_instruction and scoring took {seconds:.1f} s in all.")
    info = model_info(local.path)
    measured = [common_row(f"request privacy: {metric}", summarize([t[metric]]), unit="%", **info, method=name)
                for name, t in results.items()
                for metric in ("units_sent_pct", "units_sent_any_word_pct", "other_words_kept_pct")]
    write("request_privacy", {"queries": len(rows), "seconds": round(seconds, 1), "results": results,
                              "examples": examples, "command": " ".join(sys.argv)},
          "# A private request made public (PUPA)\n\n" + "\n".join(lines) + "\n", measured)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
