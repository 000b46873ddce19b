"""Collaborative generation: the local model holds the private context, the remote only the instruction.

- sketch: the remote outlines the public instruction; the local model writes from context + outline.
- logits: the local model's scores (with context) are fused with the remote's (without) at each
  step. One remote call serves several tokens (remote lookahead): the remote continues its own
  greedy text for `lookahead` tokens and lists its top-k at each; the local side fuses position
  by position and accepts while the fused choice equals the remote's token, because until then
  the remote's scores were computed on exactly the accepted prefix. At the first difference the
  fused token is kept, the local KV cache is rolled back, and the next call starts from there.
  The local model decodes its pending token while the request is in flight.

What the remote reads of the generated text is decided on the device (attribution.py): tokens the
private context explains are withheld and sent as placeholders. Fused candidates are limited to
tokens the local model finds plausible (FusionConfig.plausible), so the remote cannot dictate text.
Every request then goes through the job's EgressGuard (privacy.py), which redacts or blocks what
the private texts reveal.
"""
from __future__ import annotations

import codecs
import html
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import _native
from .attribution import NO_CONTEXT_SEQ, AttributionConfig, EgressView, log_softmax_at
from .errors import InvalidParameterError, RemoteError
from .local import LocalModel
from .privacy import AuditRecord, EgressGuard, summarize
from .remote import RemoteModel

MODES = ("sketch", "logits")
SYSTEM_PROMPT = ("You write on behalf of the user described below. Use their details, experiences and writing "
                 "style wherever they fit the task.\n\nAbout the user:\n{context}")
OUTLINE_PROMPT = ("Plan a piece of writing for the task below. Answer with an outline only: 8 to 15 numbered "
                  "points, each 3 to 5 words.\n\nTask: {instruction}")
FOLLOW_OUTLINE = "{instruction}\n\nFollow this outline:\n{outline}"


@dataclass(frozen=True)
class FusionConfig:
    """How local and remote scores are combined (see fusion.py). schedule=(P, K, T): consult the
    remote on every step below P, then on T of every K + T steps; None consults on every step.
    plausible: the remote chooses only among tokens whose local probability (with the private
    context) is at least this share of the local top-1's; 0 is the paper's fusion, where a remote
    listing a single token dictates the text."""

    rule: str = "weighted"
    fill: str = "mask"
    weight: float = 0.5
    alpha: float = 1.0
    gate: object = None
    schedule: tuple[int, int, int] | None = None
    plausible: float = 0.1


@dataclass(frozen=True)
class TokenInfo:
    """Attribution of one generated token."""

    token: int
    text: str
    source: str  # 'fused' (remote scores were used) or 'local'
    weight: float  # the local side's weight at this step (1.0 when local only)
    local_p: float  # probability of the token under the local model (with context); NaN in sketch mode
    remote_p: float | None  # ... under the remote's top-k, None when unlisted or not consulted
    withheld: bool = False  # sent to the remote as a placeholder: the private context explains it
    context_nats: float = float("nan")  # log p(t | context) - log p(t | what the remote reads); NaN if not scored

    @property
    def remote_share(self) -> float:
        """How much of the fused choice came from the remote, in [0, 1]."""
        if self.remote_p is None:
            return 0.0
        remote = (1.0 - self.weight) * self.remote_p
        total = self.weight * self.local_p + remote
        return remote / total if total > 0 else 0.0


@dataclass(frozen=True)
class CoStats:
    first_token_ms: float
    total_ms: float
    n_tokens: int
    round_trips: int  # HTTP requests that left the process (retries included)
    bytes_sent: int
    bytes_received: int
    network_wait_ms: float  # time the loop spent blocked on the remote
    remote_tokens_accepted: int  # tokens where the fused choice matched the remote's own token
    withheld_tokens: int = 0  # generated tokens the remote received as placeholders (last request)
    context_bits: float = 0.0  # context information in the generated text the remote received

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.total_ms * 1000.0 if self.total_ms > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first one: the generation rate without the prompt prefill."""
        generation_ms = self.total_ms - self.first_token_ms
        return (self.n_tokens - 1) / generation_ms * 1000.0 if self.n_tokens > 1 and generation_ms > 0 else 0.0

    @property
    def round_trips_per_token(self) -> float:
        return self.round_trips / self.n_tokens if self.n_tokens else 0.0

    def summary(self) -> str:
        return (f"{self.n_tokens} tok in {self.total_ms:.0f} ms ({self.tokens_per_s:.1f} tok/s), first token "
                f"{self.first_token_ms:.0f} ms, {self.round_trips} round trips ({self.round_trips_per_token:.2f}/tok), "
                f"{self.bytes_sent} B sent, {self.bytes_received} B received, network wait {self.network_wait_ms:.0f} ms, "
                f"{self.withheld_tokens} tokens withheld, {self.context_bits:.1f} bits of context sent")


@dataclass
class CoResult:
    text: str
    mode: str
    tokens: list[int]
    attribution: list[TokenInfo]
    audit: list[AuditRecord]
    stats: CoStats
    finish_reason: str
    fallback: bool = False  # the remote failed and generation went on local-only
    fallback_reason: str | None = None
    outline: str | None = None  # sketch mode
    instruction: str | None = None  # the public instruction sent (derived on the device when request= was given)

    def audit_summary(self) -> dict:
        """requests, bytes_sent, bytes_received, redacted_spans, blocked, leaked_spans."""
        return summarize(self.audit)

    def to_html(self, path: str | None = None) -> str:
        """The text with each token shaded from blue (local) to orange (remote), like the paper's
        Figure 6; hover a token for its numbers. Written to `path` when given."""
        spans = []
        for info in self.attribution:
            share = info.remote_share
            colour = f"rgba({int(70 + 185 * share)},{int(130 + 35 * share)},{int(230 - 200 * share)},0.35)"
            remote = "-" if info.remote_p is None else f"{info.remote_p:.3f}"
            title = f"{info.source}; w={info.weight:.2f}; p_local={info.local_p:.3f}; p_remote={remote}"
            text = html.escape(info.text).replace("\n", "<br>")
            spans.append(f'<span style="background:{colour}" title="{html.escape(title)}">{text}</span>')
        fallback = f"<p><b>Fallback to local only:</b> {html.escape(self.fallback_reason)}</p>" if self.fallback else ""
        page = (
            "<!doctype html><meta charset='utf-8'><title>cogenesis-device</title>"
            "<style>body{font:16px/1.6 sans-serif;max-width:46em;margin:2em auto}span{border-radius:3px}"
            ".key span{padding:0 .4em}</style>"
            f"<h3>{html.escape(self.mode)} mode</h3>"
            "<p class='key'><span style='background:rgba(70,130,230,.35)'>local</span> "
            "<span style='background:rgba(255,165,30,.35)'>remote</span></p>"
            f"{fallback}<p>{''.join(spans)}</p><p><small>{html.escape(self.stats.summary())}</small></p>"
        )
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page


class _TextAssembler:
    """Token bytes -> text, holding back an unfinished UTF-8 character."""

    def __init__(self, model: _native.Model, text: str = ""):
        self._model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = text

    def add(self, token: int) -> str:
        piece = self._decoder.decode(self._model.token_to_piece(token))
        self.text += piece
        return piece

    @property
    def complete(self) -> bool:
        return not self._decoder.getstate()[0]


class CoGenerator:
    """Personalized writing with a local model (sees the context) and a remote one (does not).

    local: a LocalModel. remote: a RemoteModel, or None for local-only generation.
    mode: 'logits' or 'sketch'. fusion: a FusionConfig (or its fields as a dict).
    privacy: 'redact' (default), 'block' or 'audit', or a dict of EgressGuard arguments
        (policy, min_span, entities, audit_path).
    lookahead: tokens asked of the remote per call in logits mode (1 = the paper's per-token protocol).
    overlap: decode locally while a request is in flight.
    outline_tokens: longest outline asked of the remote in sketch mode.
    batch_verify: score the remote's lookahead tokens in one batched decode (True), or one at a time
        as they are accepted (False, the default). llama.cpp's logits depend slightly on the batch
        shape, so only False reproduces the per-token protocol bit for bit; and on a compute-bound
        CPU a batch costs nearly as much as its tokens one by one, while scoring one at a time stops
        at the first rejection. True pays off on devices where a batch is cheap (GPUs).
    remote_tokenizer: a model with the remote's tokenizer (by default `remote.template` when it is
        a LocalModel), used to keep lookahead exact; None means cross-tokenizer mode.
    attribution: in logits mode, withhold from the remote the generated tokens the private context
        explains (attribution.py): True (default settings), an AttributionConfig or its fields as a
        dict, or False (only the text guard; for measurements).
    """

    def __init__(self, local: LocalModel, remote: RemoteModel | None = None, *, mode: str = "logits",
                 fusion: FusionConfig | dict | None = None, privacy: str | dict = "redact", lookahead: int = 8,
                 overlap: bool = True, batch_verify: bool = False, top_k: int | None = None,
                 remote_tokenizer: object = "auto", outline_tokens: int = 200,
                 attribution: bool | dict | AttributionConfig = True):
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 1 <= lookahead <= 31:
            raise InvalidParameterError(f"lookahead must be between 1 and 31 tokens, got {lookahead}")
        self.local, self.remote, self.mode = local, remote, mode
        self.fusion = fusion if isinstance(fusion, FusionConfig) else FusionConfig(**(fusion or {}))
        self.privacy = {"policy": privacy} if isinstance(privacy, str) else dict(privacy)
        self.lookahead, self.overlap, self.batch_verify, self.top_k = lookahead, overlap, batch_verify, top_k
        self.outline_tokens = outline_tokens
        if remote_tokenizer == "auto":
            template = getattr(remote, "template", None)
            remote_tokenizer = template if hasattr(template, "tokenize") else None
        self.remote_tokenizer = remote_tokenizer
        if attribution is True:
            attribution = AttributionConfig()
        elif isinstance(attribution, dict):
            attribution = AttributionConfig(**attribution)
        self.attribution: AttributionConfig | None = attribution or None
        self._bridge = _native.VocabBridge(local.native)

    def generate(self, instruction: str | None = None, context: str = "", **options) -> CoResult:
        """Write a response to `instruction` for the user described by `context`. See stream()."""
        stream = self.stream(instruction, context, **options)
        for _ in stream:
            pass
        return stream.result

    def stream(self, instruction: str | None = None, context: str = "", *, request: str | None = None,
               draft: str = "", max_tokens: int = 256, temperature: float = 0.0, top_k: int = 40,
               top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None) -> "CoStream":
        """Like generate(), yielding text as it is written; the CoResult is in `.result` at the end.

        instruction: the public, context-free instruction, which the user chose to send.
        request: instead of instruction, the user's whole request, treated as private: the local
            model writes from it, and the instruction sent is derived on the device by removing what
            the context explains (see derive_instruction; the result's `instruction` holds it).
        draft: text the response must begin with (the user's own opening); private, like the context.
        The result's text includes it; max_tokens counts only what is generated after it.

        Only the instruction is sent to the remote (with the generated text in logits mode, where
        attribution and the guard withhold what is private)."""
        if max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be at least 1, got {max_tokens}")
        if (instruction is None) == (request is None):
            raise InvalidParameterError("give either instruction= (public) or request= (private), not both or neither")
        user = instruction
        if request is not None:
            instruction = self.derive_instruction(request, context).text
            user = request
        private = [context, draft] + ([request] if request is not None else [])
        guard = EgressGuard(private, public=[instruction, OUTLINE_PROMPT.format(instruction=instruction)],
                            tokenizer=self.local, **self.privacy)
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        return CoStream(self, instruction, user, context, draft, guard, max_tokens, sampling)

    def derive_instruction(self, request: str, context: str) -> "DerivedInstruction":
        """The public instruction for a private request (see derive_instruction), with this
        generator's attribution settings."""
        return derive_instruction(self.local, request, context, self.attribution)


class CoStream:
    """Iterates over the text of one collaborative generation."""

    def __init__(self, gen: CoGenerator, instruction: str, user: str, context: str, draft: str, guard: EgressGuard,
                 max_tokens: int, sampling: dict):
        self._gen, self._guard, self._draft = gen, guard, draft
        self._instruction, self._user = instruction, user  # what the remote may read; what the local model reads
        self._view: EgressView | None = None
        self._start = time.perf_counter()
        self._first_token_ms = 0.0
        self._network_ms = 0.0
        self._accepted = 0
        self.result: CoResult | None = None
        self._fallback: str | None = None
        self._outline: str | None = None
        self._attribution: list[TokenInfo] = []
        self._text = _TextAssembler(gen.local.native, draft)
        self._finish = "length"
        steps = self._sketch if gen.mode == "sketch" else self._logits
        self._pieces = steps(context, max_tokens, sampling)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finalize()
            raise
        if not self._first_token_ms:
            self._first_token_ms = (time.perf_counter() - self._start) * 1000.0
        return piece

    # -- shared pieces -----------------------------------------------------------------------------

    def _remote_failed(self, exc: RemoteError) -> None:
        self._fallback = f"{exc} (kind: {exc.kind}); continued with the local model only"

    def _wait(self, future):
        start = time.perf_counter()
        try:
            return future.result()
        finally:
            self._network_ms += (time.perf_counter() - start) * 1000.0

    def _emit(self, token: int, local_row: np.ndarray | None, remote_lp: dict | None, weight: float) -> str:
        """Records the token (and, in logits mode, whether the remote will read a placeholder for it)."""
        local_lp = log_softmax_at(local_row, token) if local_row is not None else float("nan")
        withheld, ratio = False, float("nan")
        if self._view is not None and self._fallback is None and not self._gen.local.native.is_eog(token):
            withheld, ratio = self._view.add(token, local_lp)
        piece = self._text.add(token)
        local_p = float(np.exp(local_lp))
        remote_p = float(np.exp(remote_lp[token])) if remote_lp and token in remote_lp else None
        self._attribution.append(TokenInfo(token, piece, "fused" if remote_lp is not None else "local",
                                           weight, local_p, remote_p, withheld, ratio))
        return piece

    def _finalize(self) -> None:
        records = list(self._guard.records)
        audit = summarize(records)
        tokens = [a.token for a in self._attribution]
        stats = CoStats(
            first_token_ms=self._first_token_ms, total_ms=(time.perf_counter() - self._start) * 1000.0,
            n_tokens=len(tokens), round_trips=audit["requests"] - audit["blocked"], bytes_sent=audit["bytes_sent"],
            bytes_received=audit["bytes_received"], network_wait_ms=self._network_ms,
            remote_tokens_accepted=self._accepted, withheld_tokens=audit["withheld_tokens"],
            context_bits=audit["context_bits"])
        self.result = CoResult(self._text.text, self._gen.mode, tokens, self._attribution, records, stats,
                               self._finish, self._fallback is not None, self._fallback, self._outline,
                               self._instruction)

    # -- sketch ------------------------------------------------------------------------------------

    def _sketch(self, context: str, max_tokens: int, sampling: dict) -> Iterator[str]:
        gen, instruction = self._gen, self._instruction
        user = self._user
        if gen.remote is not None:
            try:
                future = gen.remote.submit_chat([{"role": "user", "content": OUTLINE_PROMPT.format(
                    instruction=instruction)}], max_tokens=gen.outline_tokens, guard=self._guard)
                self._outline = self._wait(future).text.strip()
                user = FOLLOW_OUTLINE.format(instruction=self._user, outline=self._outline)
            except RemoteError as exc:
                self._remote_failed(exc)
        prompt = local_prompt(self._gen.local, context, user, self._draft)
        with gen.local.pooled_session() as session:
            sampler = _native.Sampler(**sampling)
            generation = _native.Generation(session, np.asarray(prompt, dtype=np.int32), sampler,
                                            max_tokens=max_tokens, stop=[], ignore_eos=False)
            try:
                while not generation.finished:
                    token, _ = generation.step()
                    if token >= 0:
                        yield self._emit(token, None, None, 1.0)
                self._finish = generation.finish_reason
            finally:
                generation.close()

    # -- logits ------------------------------------------------------------------------------------

    def _logits(self, context: str, max_tokens: int, sampling: dict) -> Iterator[str]:
        gen, fusion = self._gen, self._gen.fusion
        model = gen.local.native
        remote_prompt = self._remote_prompt(self._instruction)
        sampler = _native.FusionSampler(model, rule=fusion.rule, fill=fusion.fill, weight=fusion.weight,
                                        alpha=fusion.alpha, plausible=fusion.plausible, gate=fusion.gate, **sampling)
        prompt = local_prompt(gen.local, context, self._user, self._draft)
        n_ctx = gen.local.n_ctx
        with gen.local.pooled_session() as session:
            prefill_reusing(session, prompt[:-1])
            if remote_prompt is not None and gen.attribution is not None:
                # The no-context side, evaluated beside the main sequence: the public instruction and the
                # draft as the guard lets it out, then the generated text. The draft itself goes out
                # through the guard (which records what it redacts).
                draft = self._guard.redact(self._draft)[0] if self._guard.policy == "redact" else self._draft
                self._view = EgressView(model, session, gen.attribution,
                                        local_prompt(gen.local, "", self._instruction, draft), self._draft)
            try:
                yield from self._fused_tokens(session, sampler, remote_prompt, prompt[-1], max_tokens, n_ctx)
            finally:
                self._view = None
                session.truncate(0, seq_id=NO_CONTEXT_SEQ)  # its room goes back to the main sequence

    def _fused_tokens(self, session, sampler, remote_prompt, pending: int, max_tokens: int,
                      n_ctx: int) -> Iterator[str]:
        gen, model = self._gen, self._gen.local.native
        produced = 0
        while produced < max_tokens:
            if self._used(session) + 1 >= n_ctx:
                self._finish = "context_full"
                return
            call = self._call(remote_prompt, produced, max_tokens)
            if call is not None and not gen.overlap:
                self._await(call)
            base = session.seq_len()
            rows = self._decode(session, [pending])
            steps = self._await(call) if call is not None else []
            j = 0
            while True:  # fuse position by position while the remote's own tokens are accepted
                scores = steps[j] if j < len(steps) and self._consults(produced) else None
                token, remote_lp, weight = self._sample(sampler, rows[j], scores)
                produced += 1
                yield self._emit(token, rows[j], remote_lp, weight)
                if model.is_eog(token):
                    self._finish = "eos"
                    return
                # A token withheld from the next request does not end the run: the remote wrote the
                # scores that follow from its own token, so using them tells it nothing.
                if produced >= max_tokens or not self._continues(call, steps, j, token):
                    break
                if len(rows) == j + 1:
                    room = n_ctx - self._used(session) - 1
                    batch = call.speculation(j)[:room] if gen.batch_verify else [token][:room]
                    if not batch:
                        break
                    rows.extend(self._decode(session, batch))
                j += 1
            session.truncate(base + 1 + j)
            pending = token

    def _decode(self, session, tokens: list[int]) -> list[np.ndarray]:
        """Evaluates tokens on the main sequence, with the no-context sequence's queued tokens in the
        same batch when there are few of them; returns the main sequence's rows."""
        view = self._view
        extra = view.take_pending() if view is not None and len(tokens) == 1 and len(view.pending) <= 8 else []
        if view is not None and not extra:
            view.flush()
        session.decode([0] * len(tokens) + [NO_CONTEXT_SEQ] * len(extra), list(tokens) + extra)
        if extra:
            view.set_row(session.logits(len(tokens) + len(extra) - 1))
        return [session.logits(i) for i in range(len(tokens))]

    def _used(self, session) -> int:
        """Cells of the shared context window in use (both sequences, queued view tokens included)."""
        if self._view is None:
            return session.seq_len()
        return session.seq_len() + session.seq_len(seq_id=NO_CONTEXT_SEQ) + len(self._view.pending)

    def _remote_prompt(self, instruction: str) -> str | None:
        """The remote's prompt (public instruction only), after probing it; None if there is no usable remote."""
        remote = self._gen.remote
        if remote is None:
            return None
        try:
            prompt = remote.prompt([{"role": "user", "content": instruction}])
            remote.capabilities  # probe before the loop, so a failure falls back cleanly
            return prompt
        except RemoteError as exc:
            self._remote_failed(exc)
            return None

    def _call(self, remote_prompt: str | None, produced: int, max_tokens: int) -> "_RemoteCall | None":
        """Starts a lookahead request for the current prefix, when this step consults the remote."""
        gen = self._gen
        if remote_prompt is None or self._fallback is not None or not self._consults(produced) \
                or not self._text.complete:  # never send half a UTF-8 character
            return None
        view = self._view
        text = remote_prompt + (view.text() if view is not None else self._text.text)
        future = gen.remote.submit_next_tokens(text, n=min(gen.lookahead, max_tokens - produced), top_k=gen.top_k,
                                               guard=self._guard,
                                               attribution=view.mark_sent() if view is not None else None)
        # The guard redacts in the transport (and records it); the remote continues the redacted text,
        # which the canonical check needs only when the remote's tokenizer is known.
        seen = None
        if gen.remote_tokenizer is not None:
            seen = self._guard.redact(text)[0] if self._guard.policy == "redact" else text
        return _RemoteCall(future, seen, gen.remote_tokenizer)

    def _await(self, call: "_RemoteCall") -> list:
        if call.steps is None:
            try:
                call.steps = self._wait(call.future).steps
            except RemoteError as exc:
                self._remote_failed(exc)
                call.steps = []
            call.ids = [self._aligned(step.token) for step in call.steps]
        return call.steps

    def _sample(self, sampler, row: np.ndarray, scores) -> tuple[int, dict | None, float]:
        """One fused (or local-only, when scores is None) sampling step."""
        if scores is None:
            return sampler.sample(row), None, 1.0
        keys = list(scores.top)
        ids, lps = self._gen._bridge.map(keys, np.array([scores.top[k] for k in keys], np.float32))
        sampler.set_remote(ids, lps)
        token = sampler.sample(row)
        info = sampler.last_info()
        if info["overruled"]:  # the remote listed nothing the local model finds plausible
            return token, None, 1.0
        return token, dict(zip(ids.tolist(), lps.tolist())), info["weight"]

    def _continues(self, call, steps: list, j: int, token: int) -> bool:
        """Whether position j + 1 can use this call's scores: the token at j is the remote's own, and
        the remote's tokens so far are how it would tokenize their text (so a fresh call would see
        exactly the same prefix)."""
        if j >= len(steps) or token != call.ids[j]:
            return False
        self._accepted += 1
        return j + 1 < len(steps) and call.canonical(j + 1)

    def _consults(self, step: int) -> bool:
        schedule = self._gen.fusion.schedule
        return schedule is None or _native.schedule_consult(*schedule, step)

    def _aligned(self, remote_token: str) -> int:
        """The local id whose bytes are exactly the remote token, or -1 (boundaries differ)."""
        token_id = self._gen._bridge.lookup(remote_token)
        if token_id < 0 or self._gen.local.native.token_to_piece(token_id) != remote_token.encode("utf-8"):
            return -1
        return token_id


@dataclass
class _RemoteCall:
    """One lookahead request: its future, the text the remote continues (after redaction), and once
    awaited, the remote's steps and their local ids (-1 where token boundaries differ)."""

    future: object
    text: str | None
    tokenizer: object  # the remote's tokenizer when known (same family as the local model), else None
    steps: list | None = None
    ids: list[int] | None = None
    _tokens: list | None = None

    def canonical(self, m: int) -> bool:
        """Whether the remote's first m tokens are how it would tokenize their text after the prompt."""
        if self.tokenizer is None:  # cross-tokenizer: only token boundaries are checked (ids)
            return True
        if self._tokens is None:
            self._tokens = self.tokenizer.tokenize(self.text, parse_special=True)
        text = self.text + "".join(step.token for step in self.steps[:m])
        return self.tokenizer.tokenize(text, parse_special=True) == self._tokens + self.ids[:m]

    def speculation(self, j: int) -> list[int]:
        """The remote's tokens j, j+1, ... that map exactly onto local tokens, to score in one batch."""
        batch = []
        for token in self.ids[j:-1]:
            if token < 0:
                break
            batch.append(token)
        return batch


def local_prompt(local: LocalModel, context: str, user: str, draft: str = "") -> list[int]:
    """The local model's prompt tokens: the context as system message, the task, then the draft."""
    messages = ([{"role": "system", "content": SYSTEM_PROMPT.format(context=context)}] if context else [])
    text = local.apply_chat_template(messages + [{"role": "user", "content": user}]) + draft
    return local.tokenize(text, parse_special=True)


def prefill_reusing(session: _native.Session, tokens: list[int], seq_id: int = 0) -> None:
    """Prefill tokens, keeping the KV cache of a prefix the session already holds."""
    held, tokens = session.seq_tokens(seq_id=seq_id), np.asarray(tokens, dtype=np.int32)
    n = min(len(held), len(tokens))
    mismatch = np.flatnonzero(held[:n] != tokens[:n])
    same = int(mismatch[0]) if mismatch.size else n
    session.truncate(same, seq_id=seq_id)
    if same < len(tokens):
        session.prefill(tokens[same:], seq_id=seq_id)


_CHUNK = 32  # rows per teacher-forced decode (the session's n_outputs_max)


def teacher_forced_rows(session: _native.Session, prompt: list[int], targets: list[int], seq_id: int = 0):
    """Yield the scores that precede each target token, feeding the targets (teacher forcing).
    The session keeps its KV cache of the prompt's longest held prefix; the prompt's last token is
    always evaluated again, so its row exists even when the whole prompt was held."""
    prefill_reusing(session, prompt[:-1], seq_id)
    feed = [prompt[-1], *targets[:-1]]
    for start in range(0, len(feed), _CHUNK):
        chunk = feed[start:start + _CHUNK]
        session.decode([seq_id] * len(chunk), chunk)
        for i in range(len(chunk)):
            yield session.logits(i)


@dataclass(frozen=True)
class DerivedInstruction:
    """The public instruction derived from a private request, and the spans removed from it."""

    text: str
    removed: list[str]


def derive_instruction(local: LocalModel, request: str, context: str,
                       attribution: AttributionConfig | None = None) -> "DerivedInstruction":
    """The public instruction for a private request: the request without the spans the text guard
    finds and without the words the context explains (the attribution rule, scored on the device on
    the request's tokens), whole words at a time."""
    guard = EgressGuard([context], tokenizer=local)
    spans = [(f.start, f.end) for f in guard.find(request)]
    if context:
        spans += _explained_words(local, request, context, attribution or AttributionConfig())
    removed, out, pos = [], [], 0
    for start, end in sorted(spans):
        start = max(start, pos)
        if start >= end:
            continue
        out.append(request[pos:start])
        removed.append(request[start:end])
        pos = end
    out.append(request[pos:])
    return DerivedInstruction(" ".join("".join(out).split()), removed)


def _explained_words(local: LocalModel, request: str, context: str, cfg: AttributionConfig) -> list[tuple[int, int]]:
    """Character spans of the request's words that the context explains (same rule as attribution)."""
    tokens = local.tokenize(request, add_special=False)
    if not tokens:
        return []
    lps = []
    with local.pooled_session() as session:
        for seq, ctx in ((0, context), (NO_CONTEXT_SEQ, "")):
            rows = teacher_forced_rows(session, _prompt_before_user_text(local, ctx), tokens, seq_id=seq)
            lps.append(np.array([log_softmax_at(row, t) for row, t in zip(rows, tokens)]))
        session.truncate(0, seq_id=NO_CONTEXT_SEQ)
    explained = (lps[0] - lps[1] > cfg.threshold) | (lps[1] < cfg.min_logprob)
    spans, pos = [], 0
    for token, hit in zip(tokens, explained):
        piece = local.native.token_to_piece(token).decode("utf-8", errors="replace").strip()
        start = request.find(piece, pos) if piece else -1
        if start >= 0:
            if hit:
                spans.append(_whole_word(request, start, start + len(piece)))
            pos = start + len(piece)
    return spans


def _prompt_before_user_text(local: LocalModel, context: str) -> list[int]:
    """The tokens of local_prompt(local, context, user) that come before the user's text."""
    mark = "\uE000"  # a private-use character: it appears in no real request
    messages = ([{"role": "system", "content": SYSTEM_PROMPT.format(context=context)}] if context else [])
    text = local.apply_chat_template(messages + [{"role": "user", "content": mark}])
    return local.tokenize(text[:text.index(mark)], parse_special=True)


def _whole_word(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "'’-"):
        start -= 1
    while end < len(text) and (text[end].isalnum() or text[end] in "'’-"):
        end += 1
    return start, end
