"""Command line: text streams to stdout, stats and the privacy audit go to stderr.

  cogenesis demo                      both modes on a bundled sample, with a loopback "remote"
  cogenesis run "instruction" --context-file profile.txt [--mode auto|logits|sketch] [--remote-url URL]
  cogenesis generate "prompt"         the local model alone
  cogenesis eval --data DIR --out DIR Table 1 on a dataset (see research.py for finetune, train-gate, data build)
  cogenesis bench [-m MODEL] [-t 1,2] the latency suite on your model (bench.py)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack
from importlib import resources

from .._libllama import REQUIRED_VERSION
from .._version import __version__
from ..errors import CogenesisError, CogenesisIOError, InvalidParameterError
from ..registry import DEFAULT_MODEL, MODELS, resolve_model
from .. import _native
from ..attribution import AttributionConfig
from ..fusion import FusionConfig
from ..sampling import COLLABORATIVE, ENGINE_DEFAULT
from . import bench, research

log = logging.getLogger("cogenesis_device.cli")
from .types import non_negative, non_negative_int, positive, positive_int, unit_interval

EXIT_FELL_BACK = 3  # --strict: the remote failed and the text is the local model's alone

# The defaults shown and used here are the engine's (cg_*_default_params), read through the core.
_LOCAL, _COLLAB = ENGINE_DEFAULT, COLLABORATIVE
_GENERATE, _SESSION = _native.generate_default_params(), _native.session_default_params()
_FUSION, _ATTRIBUTION = FusionConfig(), AttributionConfig()


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with the local model")
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registry name or .gguf path (default {DEFAULT_MODEL})")
    p.add_argument("-n", "--max-tokens", type=positive_int, default=_GENERATE["max_tokens"],
                   help=f"tokens to generate (default {_GENERATE['max_tokens']})")
    p.add_argument("--temp", type=non_negative, default=_LOCAL.temperature,
                   help=f"temperature; 0 is greedy (default {_LOCAL.temperature})")
    p.add_argument("--top-k", type=non_negative_int, default=_LOCAL.top_k, help=f"0 disables (default {_LOCAL.top_k})")
    p.add_argument("--top-p", type=unit_interval, default=_LOCAL.top_p, help=f"1 disables (default {_LOCAL.top_p})")
    p.add_argument("--min-p", type=unit_interval, default=_LOCAL.min_p, help=f"0 disables (default {_LOCAL.min_p})")
    p.add_argument("--repeat-penalty", type=positive, default=_LOCAL.repeat_penalty,
                   help=f"1 disables (default {_LOCAL.repeat_penalty})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--system", default=None, help="system message (chat models)")
    p.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    p.add_argument("--n-ctx", type=positive_int, default=_SESSION["n_ctx"],
                   help=f"context window in tokens (default {_SESSION['n_ctx']})")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: all cores)")
    research.add_adapter(p)


def _generate(args) -> int:
    from ..local import LocalModel

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise InvalidParameterError("the prompt is empty: pass it as the first argument or on standard input")
    model = LocalModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads, **research.local_options(args))
    sampling = _LOCAL.replace(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repeat_penalty=args.repeat_penalty, seed=args.seed)
    chat = not args.raw and model.has_chat_template  # base models continue the raw text
    with model.stream(prompt, sampling, max_tokens=args.max_tokens, stop=args.stop, chat=chat,
                      system=args.system) as stream:
        for text in stream:
            sys.stdout.write(text)
            sys.stdout.flush()
        result = stream.result
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[{model.name}] finish={result.finish_reason}; {result.stats.summary()}; "
          f"load {result.stats.load_ms:.0f} ms", file=sys.stderr)
    return 0


def _add_collaboration(p) -> None:
    """Options shared by `run` and `demo`."""
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"local model (default {DEFAULT_MODEL})")
    p.add_argument("-n", "--max-tokens", type=positive_int, default=96, help="tokens to generate (default 96)")
    p.add_argument("--temp", type=non_negative, default=_COLLAB.temperature,
                   help=f"temperature; 0 is greedy (default {_COLLAB.temperature})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--privacy", default="redact", choices=["redact", "block", "audit"],
                   help="what the egress guard does with private spans (default redact)")
    p.add_argument("--min-span", type=positive_int, default=12, help="shortest private verbatim span in characters (12)")
    p.add_argument("--rule", default=_FUSION.rule, choices=["weighted", "max", "context_delta"],
                   help=f"fusion rule (default {_FUSION.rule})")
    p.add_argument("--weight", type=unit_interval, default=_FUSION.weight,
                   help=f"local weight of the weighted rule (default {_FUSION.weight})")
    p.add_argument("--fill", default=_FUSION.fill, choices=["mask", "tail", "local"],
                   help=f"remote scores outside its top-k (default {_FUSION.fill})")
    p.add_argument("--lookahead", type=positive_int, default=None,
                   help="remote tokens per round trip (1: per-token protocol; default: adaptive)")
    p.add_argument("--threshold", type=non_negative, default=_ATTRIBUTION.threshold,
                   help="attribution: withhold generated tokens the context explains by more than this many nats "
                        f"(default {_ATTRIBUTION.threshold})")
    p.add_argument("--no-attribution", action="store_true",
                   help="send the generated text without on-device attribution (the text guard only; measurements)")
    p.add_argument("--audit", default=None, help="append every request to this JSONL file")
    p.add_argument("--html", default=None, help="write the token-attributed text to this HTML file")
    research.add_remote_timeout(p)
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {EXIT_FELL_BACK} when the remote failed and the local model wrote alone "
                        "(without it: exit 0, and the fallback is reported on stderr)")
    p.add_argument("--n-ctx", type=positive_int, default=_SESSION["n_ctx"], help=f"local context window (default {_SESSION['n_ctx']})")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: all cores)")
    research.add_adapter(p)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="write with private context: local model + remote model")
    p.add_argument("instruction_arg", nargs="?", metavar="instruction", help="the public instruction")
    p.add_argument("--instruction", default=None, help="the public instruction (or positional)")
    p.add_argument("--request", default=None,
                   help="the user's whole request, private: the public instruction is derived from it on the device")
    p.add_argument("--context-file", default=None,
                   help="file with the private context, never sent ('-': standard input)")
    p.add_argument("--context", default="", help="private context as text (visible in the process list: "
                   "prefer --context-file)")
    p.add_argument("--draft-file", default=None, help="file with the text the response must start with (private)")
    p.add_argument("--draft", default="", help="text the response must start with, private (visible in the "
                   "process list: prefer --draft-file)")
    p.add_argument("--mode", default="auto", choices=["auto", "logits", "sketch"],
                   help="auto (default): logits where the server returns next-token logprobs, else sketch")
    p.add_argument("--remote-url", default=None, help="OpenAI-compatible base URL (default: "
                   "$COGENESIS_REMOTE_BASE_URL or $OPENAI_BASE_URL)")
    p.add_argument("--remote-model", default=None, help="remote model name (default: the only one served)")
    p.add_argument("--api-key", default=None, help="API key (default $OPENAI_API_KEY, which keeps it out of the "
                   "process list)")
    p.add_argument("--template", default="auto", choices=["auto", "server", "local", "raw"],
                   help="remote prompt format for logits mode: auto (default): the server's own rendering where it "
                        "offers one (llama.cpp's /apply-template, vLLM's /tokenize), else the local model's chat "
                        "template, with a warning; server: the server's only; local: the local model's (same "
                        "family; checked against the server's where it renders); raw: plain text")
    p.add_argument("--loopback", default=None, metavar="MODEL",
                   help="start a loopback llama.cpp server with this registry model as the remote")
    _add_collaboration(p)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="both modes on a bundled sample, with a loopback server as the remote")
    p.add_argument("--remote", default=DEFAULT_MODEL, metavar="MODEL",
                   help=f"registry model the loopback remote serves (default {DEFAULT_MODEL}; see `cogenesis models`)")
    _add_collaboration(p)


def _warn_on_audit(args) -> None:
    if args.privacy == "audit":
        print("cogenesis: warning: --privacy audit sends private spans as they are and only counts them (for leakage "
              "measurements); the default, redact, replaces them", file=sys.stderr)


def _check_context(local, context: str, args) -> None:
    """A one-line error for a context that is empty or leaves no room to write in the window."""
    if args.context_file and not context.strip():
        raise InvalidParameterError(f"the context file {args.context_file} is empty")
    n = len(local.tokenize(context, add_special=False))
    if n + args.max_tokens > local.n_ctx:
        raise InvalidParameterError(f"the context holds {n} tokens, and with {args.max_tokens} to write that is more "
                                    f"than the context window of {local.n_ctx} (raise --n-ctx or shorten the context)")


def _collaborate(args, remote, local, instruction: str | None, context: str, mode: str, draft: str = "",
                 request: str | None = None, record_bodies: bool = False):
    from ..collab import CoGenerator

    privacy = {"policy": args.privacy, "min_span": args.min_span, "audit_path": args.audit,
               "record_bodies": record_bodies}
    fusion = {"rule": args.rule, "weight": args.weight, "fill": args.fill}
    attribution = False if args.no_attribution else {"threshold": args.threshold}
    generator = CoGenerator(local, remote, mode=mode, fusion=fusion, privacy=privacy, lookahead=args.lookahead,
                            attribution=attribution)
    stream = generator.stream(instruction, context, request=request, draft=draft, max_tokens=args.max_tokens,
                              sampling=_COLLAB.replace(temperature=args.temp, seed=args.seed))
    sys.stdout.write(draft)
    for text in stream:
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    result = stream.result
    audit = result.audit_summary()
    mode = result.mode
    if result.mode_reason:
        print(f"[{mode}] {result.mode_reason}", file=sys.stderr)
    if result.outline:
        print(f"[{mode}] outline from the remote:\n{result.outline}", file=sys.stderr)
    if result.outline_note:
        print(f"[{mode}] {result.outline_note}", file=sys.stderr)
    print(f"[{mode}] finish={result.finish_reason}; {result.stats.summary()}", file=sys.stderr)
    if request is not None:
        print(f"[{mode}] instruction sent (derived from the request): {result.instruction}", file=sys.stderr)
    print(f"[{mode}] privacy ({args.privacy}): {audit['requests']} requests, {audit['bytes_sent']} B sent, "
          f"{audit['withheld_tokens']} generated tokens withheld, {audit['context_bits']:.1f} bits of context sent, "
          f"{audit['redacted_spans']} private spans redacted, {audit['leaked_spans']} sent unredacted", file=sys.stderr)
    if result.fallback:
        print(f"[{mode}] fallback: {result.fallback_reason}", file=sys.stderr)
    if args.html:
        result.to_html(args.html)
        print(f"[{mode}] token attribution written to {args.html}", file=sys.stderr)
    return result


def _report_facts(result, context: str, instruction: str) -> None:
    """Which facts of the private context the text used, and which of those the requests carried,
    by the independent scan (leakscan.py) of the bodies sent."""
    from ..eval import leakscan

    used = leakscan.leaked(leakscan.profile_facts(context, instruction), [result.text])
    sent = [r for r in result.audit if r.action != "blocked"]
    left = leakscan.leaked(used, [r.body for r in sent])
    def fields(facts) -> str:  # 'profile:name' -> 'name', each once
        return ", ".join(dict.fromkeys(f.kind.split(":", 1)[-1] for f in facts))

    print(f"[{result.mode}] private facts in the text: {fields(used) or 'none'}. "
          f"Sent to the remote: {fields(left) or 'none of them'} "
          f"(scan of the {len(sent)} requests, {sum(r.bytes_sent for r in sent)} B)", file=sys.stderr)


def _read_text(path: str, what: str) -> str:
    """A private text from a file ('-': standard input), or a one-line error."""
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CogenesisIOError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CogenesisIOError(f"the {what} file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _run(args) -> int:
    from ..local import LocalModel
    from ..testing import LoopbackServer
    from ..remote import RemoteModel

    instruction = args.instruction or args.instruction_arg
    if instruction is not None and not instruction.strip():
        raise InvalidParameterError("the instruction is empty")
    if not instruction and not args.request:
        raise InvalidParameterError("no instruction: pass it as the first argument, with --instruction, or the whole "
                                    "private request with --request")
    if instruction and args.request:
        raise InvalidParameterError("give an instruction or --request, not both")
    for option, value, instead in (("--context", args.context, "--context-file"), ("--draft", args.draft, "--draft-file"),
                                   ("--request", args.request, "a public instruction, with --context-file for the private part"),
                                   ("--api-key", args.api_key, "$OPENAI_API_KEY")):
        if value:
            print(f"cogenesis: warning: {option} is visible to other users in the process list and kept in shell "
                  f"history; prefer {instead}", file=sys.stderr)
    _warn_on_audit(args)
    context = _read_text(args.context_file, "context") if args.context_file else args.context
    draft = _read_text(args.draft_file, "draft") if args.draft_file else args.draft
    local = LocalModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads, **research.local_options(args))
    _check_context(local, context, args)
    with ExitStack() as stack:
        url = args.remote_url
        if args.loopback:
            print(f"starting a loopback remote ({args.loopback}) ...", file=sys.stderr)
            url = stack.enter_context(LoopbackServer(args.loopback, n_threads=args.threads)).base_url
        template = {"local": local, "raw": "raw", "server": None, "auto": None}[args.template]
        if args.loopback and args.template == "auto":  # the remote's GGUF is known: its own template
            template = _remote_template(args.loopback, local, args.threads)
        remote = stack.enter_context(RemoteModel(url, args.api_key, args.remote_model, template=template,
                                                 **research.remote_options(args)))
        if template is None and args.template == "auto":
            _choose_template(remote, local)
        elif args.template == "local":
            remote.check_template()
        result = _collaborate(args, remote, local, instruction or None, context, args.mode, draft, args.request)
    return _exit_status(args, [result])


def _remote_template(name: str, local, threads: int):
    """The remote's prompts are written in its own chat template, and its tokens read with its tokenizer:
    the local model's when they are one file, else the remote's GGUF (its weights are mapped, not read)."""
    from ..local import LocalModel

    return local if resolve_model(name) == local.path else LocalModel(name, n_ctx=256, n_threads=threads)


def _choose_template(remote, local) -> None:
    """--template auto: the server renders its own template where it can; else the local model's is
    assumed to be the remote's family, and the user is told, since a wrong one lowers the remote's scores
    without any error."""
    from ..errors import RemoteError

    try:
        renderer = remote.server_template()
    except RemoteError as exc:
        renderer, why = None, f"asking how the server renders its chat template failed ({exc})"
    else:
        why = "the server does not render its chat template (no /apply-template, no /tokenize with messages)"
    if renderer is None:
        remote.template, remote.tokenizer = local, local.native
        log.warning("%s: remote prompts use the local model's chat template, which must be of the remote's family "
                    "(else pass --template raw, or a server that renders)", why)
    else:
        log.info("remote prompts are rendered by the server (%s)", renderer)


def _demo(args) -> int:
    from ..local import LocalModel
    from ..testing import LoopbackServer
    from ..remote import RemoteModel

    _warn_on_audit(args)
    sample = json.loads(resources.files("cogenesis_device").joinpath("data/demo.json").read_text(encoding="utf-8"))
    local = LocalModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads, **research.local_options(args))
    template = _remote_template(args.remote, local, args.threads)
    print(f"starting a loopback OpenAI-compatible server as the remote ({args.remote}) ...", file=sys.stderr)
    with LoopbackServer(args.remote, n_threads=args.threads) as server, \
            RemoteModel(server.base_url, template=template, **research.remote_options(args)) as remote:
        print(f"instruction (sent): {sample['instruction']}\nprivate context (kept on the device):\n"
              f"{sample['context']}\n")
        results = []
        for mode in ("sketch", "logits"):
            print(f"--- {mode} mode ---")
            sys.stdout.flush()
            results.append(_collaborate(args, remote, local, sample["instruction"], sample["context"], mode,
                                        record_bodies=True))
            _report_facts(results[-1], sample["context"], sample["instruction"])
            print()
    return _exit_status(args, results)


def _exit_status(args, results) -> int:
    """0, or with --strict EXIT_FELL_BACK when a generation fell back to the local model alone."""
    return EXIT_FELL_BACK if args.strict and any(r.fallback for r in results) else 0


def _models(_args) -> int:
    for spec in MODELS.values():
        print(f"{spec.name:24} {spec.description} [pip: {spec.package}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cogenesis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cogenesis {__version__} (engine "
                        f"{_native.__engine_version__}, llama-cpp-python {REQUIRED_VERSION})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr what the library does: -v retries, fallbacks and failed requests, "
                             "-vv every request (openai-python's log too)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_run(sub)
    _add_generate(sub)
    sub.add_parser("models", help="list the registry's models")
    research.add_eval(sub)
    research.add_finetune(sub)
    research.add_train_gate(sub)
    research.add_data(sub)
    bench.add_bench(sub)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        commands = {"demo": _demo, "run": _run, "generate": _generate, "models": _models, "eval": research.run_eval,
                    "finetune": research.run_finetune,
                    "train-gate": research.run_train_gate, "data": research.run_data, "bench": bench.run_bench}
        return commands[args.command](args)
    except CogenesisError as exc:
        print(f"cogenesis: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cogenesis generate ... | head`): stop quietly, as a command killed by
        # SIGPIPE does. stdout points at /dev/null so that the interpreter's final flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _configure_logging(verbosity: int) -> None:
    """Library warnings (a retried answer, a fallback) always reach stderr; -v adds information, -vv
    debugging, openai-python's included. The library itself only logs; configuring is the app's."""
    library, openai_log = logging.getLogger("cogenesis_device"), logging.getLogger("openai")
    if _STDERR not in library.handlers:
        library.addHandler(_STDERR)
    library.setLevel(logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    if verbosity >= 2 and _STDERR not in openai_log.handlers:
        openai_log.addHandler(_STDERR)
        openai_log.setLevel(logging.DEBUG)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a record comes (main() may run many times in one
    process, as the tests run it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_STDERR = _Stderr()
_STDERR.setFormatter(logging.Formatter("cogenesis: %(levelname)s: %(message)s"))


if __name__ == "__main__":
    sys.exit(main())
