"""Command line: `cogenesis generate "prompt"` streams text to stdout and stats to stderr."""
from __future__ import annotations

import argparse
import sys

from .errors import CogenesisError
from .registry import DEFAULT_MODEL, MODELS


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with the local model")
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registry name or .gguf path (default {DEFAULT_MODEL})")
    p.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--system", default=None, help="system message (chat models)")
    p.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    p.add_argument("--n-ctx", type=int, default=2048, help="context window in tokens (default 2048)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all cores)")


def _generate(args) -> int:
    from .local import LocalModel

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    model = LocalModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads)
    options = dict(
        max_tokens=args.max_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed, stop=args.stop,
    )
    chat = not args.raw and model.has_chat_template  # base models continue the raw text
    with model.stream(prompt, chat=chat, system=args.system, **options) as stream:
        for text in stream:
            sys.stdout.write(text)
            sys.stdout.flush()
        result = stream.result
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[{model.name}] finish={result.finish_reason}; {result.stats.summary()}; "
          f"load {result.stats.load_ms:.0f} ms", file=sys.stderr)
    return 0


def _models(_args) -> int:
    for spec in MODELS.values():
        print(f"{spec.name:24} {spec.description} [pip: {spec.package}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cogenesis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    sub.add_parser("models", help="list the registry's models")
    args = parser.parse_args(argv)
    try:
        return {"generate": _generate, "models": _models}[args.command](args)
    except CogenesisError as exc:
        print(f"cogenesis: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
