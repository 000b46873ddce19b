"""Research commands: `cogenesis eval`, `cogenesis finetune`, `cogenesis train-gate`, `cogenesis data build`."""
from __future__ import annotations

import sys
from contextlib import ExitStack

from ..errors import InvalidParameterError
from ..registry import DEFAULT_MODEL
from .types import non_negative, non_negative_int, positive, positive_int


def add_remote_timeout(p) -> None:
    p.add_argument("--remote-timeout", type=positive, default=None, metavar="SECONDS",
                   help="seconds a remote request may take, its whole answer included (default: the client's, 30; "
                        "raise it for a slow remote)")


def add_adapter(p) -> None:
    p.add_argument("--adapter", default=None, metavar="GGUF",
                   help="a LoRA adapter of the local model (what `cogenesis finetune` writes), attached to it")
    p.add_argument("--adapter-scale", type=float, default=1.0, help="the adapter's scale (default 1: as trained)")


def local_options(args) -> dict:
    """LocalModel's adapter arguments from the command line."""
    return {"adapter": args.adapter, "adapter_scale": args.adapter_scale} if args.adapter else {}


def remote_options(args) -> dict:
    """RemoteModel's keyword arguments from the command line (the client's defaults where none is given)."""
    return {} if args.remote_timeout is None else {"timeout": args.remote_timeout}


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the paper's Table 1 on a dataset: judge, ROUGE-L, similarity, bits/byte, leakage")
    p.add_argument("--data", required=True, help="dataset file or directory (context-aware, abstracts or JSONL)")
    p.add_argument("--out", required=True, help="output directory (an interrupted run resumes from it)")
    p.add_argument("--modes", default="local,remote,sketch,logits:weighted:mask",
                   help="comma-separated: local, remote, sketch, logits:<rule>[:fill][:w=..]; 'none' scores the gold "
                        "answers only (default %(default)s)")
    p.add_argument("--rules", default="weighted:tail,weighted:local,weighted:local:w=0.8,max:local,context_delta:local",
                   help="fusion rules scored on the gold answers, teacher-forced; '' for none (default %(default)s)")
    p.add_argument("--privacy", default="redact", help="policy or comma-separated policies per remote mode (redact, block, audit); "
                        "append ':text-only' to turn on-device attribution off (e.g. redact:text-only)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples only")
    p.add_argument("-n", "--max-tokens", type=positive_int, default=128, help="tokens generated per answer (default 128)")
    p.add_argument("--lookahead", type=positive_int, default=None, help="remote tokens per round trip (default: adaptive)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="local model")
    p.add_argument("--n-ctx", type=positive_int, default=4096, help="local context window (default 4096: the profiles are long)")
    p.add_argument("--remote-url", default=None, help="OpenAI-compatible remote (default: a loopback server)")
    p.add_argument("--remote-model", default=None, help="remote model name at --remote-url")
    p.add_argument("--api-key", default=None, help="API key (default $OPENAI_API_KEY, which keeps it out "
                   "of the process list)")
    p.add_argument("--loopback", default=None, metavar="MODEL",
                   help=f"registry model the loopback remote serves when no --remote-url (default: the --remote-gguf "
                        f"model, else {DEFAULT_MODEL})")
    p.add_argument("--remote-gguf", default=None, metavar="MODEL",
                   help="registry name or GGUF of the remote: it scores the gold answers teacher-forced and formats "
                        "the remote's prompts (default: the --loopback model); 'none' skips gold bits/byte")
    add_remote_timeout(p)
    p.add_argument("--judge", default="none", help="'none', 'remote' (the remote endpoint) or an OpenAI-compatible URL")
    p.add_argument("--judge-model", default=None, help="model name at the --judge endpoint (default: the only "
                   "one it serves)")
    p.add_argument("--trust-judge", action="store_true",
                   help="with --judge remote: send every profile to the remote under evaluation, the party the method "
                        "keeps it from (its requests are recorded and reported as sent by design)")
    p.add_argument("--gate", default=None, help="gate weights file for the 'gate' rule")
    p.add_argument("--gate-records", action="store_true", help="also save per-position gate training records")
    p.add_argument("--no-embeddings", action="store_true", help="skip the embedding metrics")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, default=None, metavar="N",
                   help="repetition control of every generating mode: never complete an n-gram the text already "
                        "holds (default: the library's, 4; 0 turns it off)")
    p.add_argument("--no-repeat-by", choices=("token", "text"), default=None,
                   help="what the n-grams compare: token ids, or token texts lower-cased and without whitespace, "
                        "which also catches markup looping in variants of spacing (default: the library's)")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_adapter(p)


def run_eval(args) -> int:
    from ..eval import datasets
    from ..eval.runner import EvalSettings, Evaluation
    from ..fusion import Gate
    from ..eval.judge import Judge
    from ..local import LocalModel
    from ..testing import LoopbackServer
    from ..remote import RemoteModel

    if args.judge == "remote" and not args.trust_judge:
        raise InvalidParameterError("--judge remote sends each user's profile to the remote under evaluation, the party "
                                    "the method keeps it from; add --trust-judge to do it anyway, or give the judge "
                                    "an endpoint of its own")
    samples = datasets.load(args.data, limit=args.limit)
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    settings = EvalSettings(modes=[] if args.modes == "none" else split(args.modes), rules=split(args.rules), policies=split(args.privacy),
                            max_tokens=args.max_tokens, lookahead=args.lookahead,
                            gold=args.remote_gguf != "none", gate_records=args.gate_records,
                            embeddings=not args.no_embeddings,
                            **({} if args.no_repeat_ngram is None else {"no_repeat_ngram": args.no_repeat_ngram}),
                            **({} if args.no_repeat_by is None else {"no_repeat_text": args.no_repeat_by == "text"}))
    gate = Gate(args.gate) if args.gate else None
    local = LocalModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads, **local_options(args))
    needs_remote = any(m != "local" for m in settings.modes) or args.judge == "remote"
    # The remote's GGUF scores the gold answers and formats the remote's prompts: load it only for those.
    if args.loopback is None:
        args.loopback = args.remote_gguf if args.remote_gguf not in (None, "none") else DEFAULT_MODEL
    scorer_name = args.remote_gguf if args.remote_gguf not in (None, "none") else args.loopback
    scorer = LocalModel(scorer_name, n_ctx=2048, n_threads=args.threads) if settings.gold or needs_remote else None
    with ExitStack() as stack:
        remote, url = None, args.remote_url
        if needs_remote:
            if url is None:
                print(f"starting a loopback remote ({args.loopback}) ...", file=sys.stderr)
                url = stack.enter_context(LoopbackServer(args.loopback, n_threads=args.threads)).base_url
            remote = stack.enter_context(RemoteModel(url, args.api_key, args.remote_model, template=scorer,
                                                     **remote_options(args)))
        judge = None
        if args.judge == "remote":
            judge = Judge(remote)
        elif args.judge != "none":
            judge = Judge(stack.enter_context(RemoteModel(args.judge, args.api_key, args.judge_model)))
        evaluation = Evaluation(args.out, local, remote, settings, scorer_remote=scorer if settings.gold else None,
                                judge=judge, gate=gate, progress=not args.quiet)
        evaluation.run(samples)
    print((evaluation.out / "table.md").read_text(), end="")
    print(f"written: {evaluation.out / 'results.json'}, {evaluation.out / 'table.md'}", file=sys.stderr)
    return 0


def add_finetune(sub) -> None:
    from ..eval.finetune import FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="LoRA of the local model on (instruction, context, answer) records, on the CPU "
                                        "([finetune] extra); load the adapter with --adapter")
    p.add_argument("data", help='JSONL of {"instruction", "context", "answer"} records ("gold" also read), or a file '
                                "`cogenesis eval --data` reads (the paper's dev split)")
    p.add_argument("--out", required=True, help="output folder: adapter.gguf, history.jsonl and the checkpoint (an "
                                                "interrupted run resumes from it)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"local model (default {DEFAULT_MODEL})")
    p.add_argument("--limit", type=positive_int, default=None, help="first N records only")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="passes over the records (default %(default)s)")
    p.add_argument("--rank", type=positive_int, default=d.rank, help="LoRA rank (default %(default)s)")
    p.add_argument("--alpha", type=positive, default=d.alpha, help="LoRA alpha: the update is scaled by alpha / rank "
                                                                   "(default %(default)s)")
    p.add_argument("--lr", type=positive, default=d.learning_rate, help="peak learning rate (default %(default)s)")
    p.add_argument("--past-writings", type=int, default=d.past_writings, metavar="N",
                   help="also train on up to N of each trained record's past writings, each as a task of its own "
                        "(data the evaluation reads, such as the dev split; default %(default)s)")
    p.add_argument("--held-out", type=float, default=d.held_out,
                   help="share of the records scored each epoch (gold bits/byte) and never trained on (default %(default)s)")
    p.add_argument("--max-tokens", type=positive_int, default=d.max_tokens,
                   help="longest prompt + answer trained on (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the order and the init (default %(default)s)")
    p.add_argument("-t", "--threads", type=positive_int, default=None, help="threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_finetune(args) -> int:
    from ..eval.finetune import FinetuneConfig, Finetuner, read_records
    from ..local import LocalModel

    records = read_records(args.data)[:args.limit]
    config = FinetuneConfig(rank=args.rank, alpha=args.alpha, learning_rate=args.lr, epochs=args.epochs,
                            held_out=args.held_out, max_tokens=args.max_tokens, seed=args.seed, threads=args.threads,
                            past_writings=args.past_writings)
    local = LocalModel(args.model, n_ctx=args.max_tokens, n_threads=args.threads)

    def epoch_line(r) -> None:
        loss = "" if r.epoch == 0 else f"train loss {r.train_loss:.3f} nats/token, "
        print(f"epoch {r.epoch}{' (before training)' if r.epoch == 0 else ''}: {loss}held-out gold "
              f"{r.held_out_bpb:.4f} bits/byte", file=sys.stderr)

    result = Finetuner(local, config, progress=not args.quiet).run(records, args.out, on_epoch=epoch_line)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else ""
    print(f"trained on {result.n_train} records ({result.n_held_out} held out) in {result.train_seconds / 60:.1f} min"
          f"{resumed}", file=sys.stderr)
    print(f"written: {result.adapter} (load with --adapter, or LocalModel(adapter=...))", file=sys.stderr)
    return 0


def add_train_gate(sub) -> None:
    p = sub.add_parser("train-gate", help="train the fusion gate on `cogenesis eval --gate-records` output ([train] extra)")
    p.add_argument("records", help="an eval output directory (its gate/ records)")
    p.add_argument("--out", required=True, help="gate weights file to write (the engine's text format)")
    p.add_argument("--held-out", type=float, default=0.33, help="share of samples held out (default 0.33)")
    p.add_argument("--hidden", type=int, default=16, help="hidden units (default 16)")
    p.add_argument("--steps", type=int, default=600, help="full-batch Adam steps (default 600)")
    p.add_argument("--lr", type=positive, default=0.02, help="learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training run (default %(default)s)")


def run_train_gate(args) -> int:
    from ..eval.gate_training import export, load_records, train, write_report

    if not 0 < args.held_out < 1:
        raise InvalidParameterError(f"--held-out must be between 0 and 1, got {args.held_out}")
    arrays, report = train(load_records(args.records), held_out=args.held_out, hidden=args.hidden, steps=args.steps,
                           lr=args.lr, seed=args.seed)
    export(arrays, args.out)
    write_report(report, args.out + ".json")
    print(report.to_markdown(), end="")
    print(f"written: {args.out} (load with --gate, or Gate(path)), {args.out}.json", file=sys.stderr)
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser("build", help="synthesize a context-aware dataset (portraits -> profiles -> tasks -> texts)")
    b.add_argument("--out", required=True, help="output directory (a rerun resumes; dataset.json is the result)")
    b.add_argument("--portraits", type=int, default=4, help="group portraits (default 4)")
    b.add_argument("--users", type=int, default=2, help="users per portrait (default 2)")
    b.add_argument("--tasks", type=int, default=3, help="writing tasks per user, one sample each (default 3)")
    b.add_argument("--attempts", type=int, default=3, help="tries per reply before it is rejected (default 3)")
    b.add_argument("--temp", type=non_negative, default=0.8, help="temperature of the remote's writing (default "
                   "%(default)s)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    b.add_argument("--remote-url", default=None, help="OpenAI-compatible endpoint (default: a loopback server)")
    b.add_argument("--remote-model", default=None, help="remote model name (default: the only one served)")
    b.add_argument("--api-key", default=None, help="API key (default $OPENAI_API_KEY)")
    b.add_argument("--loopback", default=DEFAULT_MODEL, metavar="MODEL",
                   help="registry model served on 127.0.0.1 when no --remote-url (default %(default)s)")
    b.add_argument("--json-format", default=None, choices=["json_schema", "json_object", "none"],
                   help="how structured replies are requested: json_schema (OpenAI, vLLM; default with --remote-url), "
                        "json_object (llama_cpp.server; default for the loopback) or none")


def run_data(args) -> int:
    from ..testing import LoopbackServer
    from ..remote import RemoteModel
    from ..eval.data_build import DataBuilder

    with ExitStack() as stack:
        url = args.remote_url
        if url is None:
            print(f"starting a loopback model server ({args.loopback}) ...", file=sys.stderr)
            url = stack.enter_context(LoopbackServer(args.loopback)).base_url
        remote = stack.enter_context(RemoteModel(url, args.api_key, args.remote_model))
        builder = DataBuilder(remote, args.out, portraits=args.portraits, users=args.users, tasks=args.tasks,
                              attempts=args.attempts, temperature=args.temp, seed=args.seed,
                              json_format=args.json_format or ("json_schema" if args.remote_url else "json_object"))
        path = builder.build()
    r = builder.report
    print(f"{r.samples} samples -> {path if r.samples else '(none written)'}; {r.requests} requests; "
          f"rejected replies {r.rejected}; duplicates dropped {r.duplicates}; totals {r.counts}", file=sys.stderr)
    return 0 if r.samples else 1
