"""Collaborative generation: the local model holds the private context, the remote only the instruction.

- sketch: the remote outlines the public instruction; the local model writes from context + outline.
- logits: the local model's scores (with context) are fused with the remote's (without) at each
  step. One remote call serves several tokens (remote lookahead): the remote continues its own
  greedy text for `lookahead` tokens and lists its top-k at each; the local side fuses position
  by position and accepts while the fused choice equals the remote's token, because until then
  the remote's scores were computed on exactly the accepted prefix. At the first difference the
  fused token is kept, the local KV cache is rolled back, and the next call starts from there.
  The local model decodes its pending token while the request is in flight. This loop is the
  engine's (cg_cogen in cogenesis.h); the RemoteModel reaches it as a remote provider.

What the remote reads of the generated text is decided on the device (attribution.py): tokens the
private context explains are withheld and sent as placeholders. Fused candidates are limited to
tokens the local model finds plausible (FusionConfig.plausible), so the remote cannot dictate text.
Every request then goes through the job's EgressGuard (privacy.py), which redacts or blocks what
the private texts reveal.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import time
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .. import _native
from ..attribution import AttributionConfig
from ..errors import CogenesisError, InvalidParameterError, PrivacyBlockedError, RemoteError, without_traceback
from ..fusion import FusionConfig
from ..local import LocalModel
from ..privacy import EgressGuard, summarize
from ..sampling import COLLABORATIVE, SamplingParams, sampling_or
from ..sensitive import topic_terms
from .instruction import DerivedInstruction, derive_instruction
from .results import CoResult, CoStats, TokenInfo
from .sketch import OUTLINE_PROMPT, follow_outline, outline_note, parse_outline

log = logging.getLogger("cogenesis_device.collab")

if TYPE_CHECKING:  # a type only: local-only generation loads no network client (openai-python)
    from ..remote import RemoteModel

MODES = ("auto", "sketch", "logits")
_COGEN_DEFAULTS = _native.cogen_default_params()
# The default repetition control of both modes (docs/collaboration.md: "Repetition control"), the engine's.
NO_REPEAT_NGRAM = COLLABORATIVE.no_repeat_ngram


def _raises_without_private_frames(method):
    """The library's errors leave `method` without their traceback and chained exceptions (issue 29).
    The frames they come through (the job's: CoStream._logits, _sketch, CoGenerator.stream...) hold
    the context, the request and the draft as locals, and crash reporters that capture frame locals
    would ship them. Each message names the problem by itself; other exceptions, bugs, keep theirs."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except CogenesisError as error:
            del args, kwargs  # the private texts as the caller passed them: not in this frame either
            raise without_traceback(error)
    return call


class CoGenerator:
    """Personalized writing with a local model (sees the context) and a remote one (does not).

    local: a LocalModel. remote: a RemoteModel, or None for local-only generation.
    mode: 'logits', 'sketch' or 'auto' (the default: logits mode where the server returns next-token
        logprobs, sketch mode where it does not; the result's mode_reason says which and why).
        'logits' against a server without next-token logprobs raises RemoteError naming what is missing.
    fusion: a FusionConfig (or its fields as a dict).
    privacy: 'redact' (default), 'block' or 'audit', or a dict of EgressGuard arguments
        (policy, min_span, entities, audit_path).
    lookahead: tokens asked of the remote per call in logits mode (1 = the paper's per-token protocol);
        None (default): chosen per request from the measured request latency, the remote's cost per
        token, the local speed and the recent acceptance.
    overlap: decode locally while a request is in flight.
    outline_tokens: longest outline asked of the remote in sketch mode.
    batch_verify: score the remote's lookahead tokens in one batched decode, attribution's no-context
        side in the same batch (True), or one at a time as they are accepted (False, the default). llama.cpp's logits depend slightly on the batch
        shape, so only False reproduces the per-token protocol bit for bit; and on a compute-bound
        CPU a batch costs nearly as much as its tokens one by one, while scoring one at a time stops
        at the first rejection. True pays off on devices where a batch is cheap (GPUs).
    remote_tokenizer: a model with the remote's tokenizer (by default `remote.tokenizer`), used to
        keep lookahead exact (a run goes on while the remote's tokens are how it would tokenize their
        text; its family may differ from the local model's). None: only token boundaries are checked.
    attribution: in logits mode, withhold from the remote the generated tokens the private context
        explains (attribution.py): True (default settings), an AttributionConfig or its fields as a
        dict, or False (only the text guard; for measurements).
    """

    def __init__(self, local: LocalModel, remote: RemoteModel | None = None, *, mode: str = "auto",
                 fusion: FusionConfig | dict | None = None, privacy: str | dict = "redact", lookahead: int | None = None,
                 overlap: bool = True, batch_verify: bool = False, top_k: int | None = None,
                 remote_tokenizer: object = "auto", outline_tokens: int = 200,
                 attribution: bool | dict | AttributionConfig = True):
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if lookahead is not None and not 1 <= lookahead <= 31:
            raise InvalidParameterError(f"lookahead must be between 1 and 31 tokens (None: adaptive), got {lookahead}")
        self.local, self.remote, self.mode = local, remote, mode
        self.fusion = fusion if isinstance(fusion, FusionConfig) else FusionConfig(**(fusion or {}))
        self.privacy = {"policy": privacy} if isinstance(privacy, str) else dict(privacy)
        self.lookahead, self.overlap, self.batch_verify, self.top_k = lookahead, overlap, batch_verify, top_k
        self.outline_tokens = outline_tokens
        if isinstance(remote_tokenizer, str) and remote_tokenizer == "auto":
            remote_tokenizer = getattr(remote, "tokenizer", None)
        self.remote_tokenizer = getattr(remote_tokenizer, "native", remote_tokenizer)
        if attribution is True:
            attribution = AttributionConfig()
        elif isinstance(attribution, dict):
            attribution = AttributionConfig(**attribution)
        self.attribution: AttributionConfig | None = attribution or None
        self._bridge = local.vocab_bridge

    @_raises_without_private_frames
    def generate(self, instruction: str | None = None, context: str = "", *, request: str | None = None,
                 draft: str = "", max_tokens: int = _COGEN_DEFAULTS["max_tokens"],
                 sampling: SamplingParams | None = None) -> CoResult:
        """Write a response to `instruction` for the user described by `context`. The arguments are stream()'s."""
        stream = self.stream(instruction, context, request=request, draft=draft, max_tokens=max_tokens,
                             sampling=sampling)
        for _ in stream:
            pass
        return stream.result

    @_raises_without_private_frames
    def stream(self, instruction: str | None = None, context: str = "", *, request: str | None = None,
               draft: str = "", max_tokens: int = _COGEN_DEFAULTS["max_tokens"],
               sampling: SamplingParams | None = None) -> "CoStream":
        """Like generate(), yielding text as it is written; the CoResult is in `.result` at the end.

        instruction: the public, context-free instruction, which the user chose to send.
        request: instead of instruction, the user's whole request, treated as private: the local
            model writes from it, and the instruction sent is derived on the device by removing what
            the context explains (see derive_instruction; the result's `instruction` holds it).
        draft: text the response must begin with (the user's own opening); private, like the context.
            The result's text includes it; max_tokens counts only what is generated after it.
        sampling: a SamplingParams for the local side's (fused) choice, in both modes; by default
            SamplingParams.collaborative(): greedy, and the engine never completes a 4-gram (of tokens)
            the generated text already holds, since small models loop without it.

        Only the instruction is sent to the remote (with the generated text in logits mode, where
        attribution and the guard withhold what is private)."""
        if max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be at least 1, got {max_tokens}")
        if (instruction is None) == (request is None):
            raise InvalidParameterError("give either instruction= (public) or request= (private), not both or neither")
        user, removed = instruction, []
        if request is not None:
            derived = self.derive_instruction(request, context)
            instruction, removed, user = derived.text, derived.removed, request
        private = [context, draft] + ([request] if request is not None else [])
        # What the derivation removed stays private in the generated text too (a topic word such as
        # "pregnant" is no name, number or rare word the guard would find of itself).
        guard = EgressGuard(private, public=[instruction, OUTLINE_PROMPT.format(instruction=instruction)],
                            entities=[*removed, *topic_terms(request or "")], tokenizer=self.local,
                            **self.privacy)
        sampling = sampling_or(COLLABORATIVE, sampling)
        return CoStream(self, instruction, user, context, draft, guard, max_tokens, sampling)

    @_raises_without_private_frames
    def derive_instruction(self, request: str, context: str) -> "DerivedInstruction":
        """The public instruction for a private request (see derive_instruction), with this
        generator's attribution settings."""
        return derive_instruction(self.local, request, context, self.attribution)


class CoStream:
    """Iterates over the text of one collaborative generation. close() (or leaving a `with` block)
    stops it and cancels the request in flight; cancel() does the same from any thread."""

    def __init__(self, gen: CoGenerator, instruction: str, user: str, context: str, draft: str, guard: EgressGuard,
                 max_tokens: int, sampling: SamplingParams):
        self._gen, self._guard, self._draft = gen, guard, draft
        self._instruction, self._user = instruction, user  # what the remote may read; what the local model reads
        self._start = time.perf_counter()
        self._first_token_ms = 0.0
        self._network_ms = 0.0
        self._decode_ms = 0.0
        self._n_reused = 0
        self._accepted = 0
        self.result: CoResult | None = None
        self._fallback: str | None = None
        self._outline: str | None = None
        self._outline_note: str | None = None
        self._attribution: list[TokenInfo] = []
        self._text = draft
        self._finish = "length"
        self._engine: _native.CoGeneration | _native.Generation | None = None
        self.engine_stats: _native.CoGenerationStats | None = None  # the engine loop's own (logits mode)
        self._provider: _RemoteProvider | None = None
        self._mode, self._mode_reason = gen.mode, None
        self._public_prompt: str | None = None  # the remote's prompt, once formatted
        self._pieces = self._run(context, max_tokens, sampling)

    def __iter__(self) -> Iterator[str]:
        return self

    @_raises_without_private_frames
    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finalize()
            raise
        if not self._first_token_ms:
            self._first_token_ms = (time.perf_counter() - self._start) * 1000.0
        return piece

    def __enter__(self) -> "CoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cancel(self) -> None:
        """Stop at the next token and abort the request in flight (safe from any thread)."""
        engine, provider = self._engine, self._provider
        # The engine first: a request aborted while the engine still waits on it would read as a
        # remote failure (a fallback to local-only) rather than as the cancellation it is.
        if engine is not None:
            engine.cancel()
        if provider is not None:
            provider.cancel()

    def close(self) -> None:
        """Stop the generation and release its session and request; `result` holds what was written."""
        if self.result is None:
            self.cancel()
            self._pieces.close()
            self._finish = "cancelled"
            self._finalize()

    # -- shared pieces -----------------------------------------------------------------------------

    def _remote_failed(self, exc: RemoteError) -> None:
        self._fell_back(f"{exc} (kind: {exc.kind}); continued with the local model only")

    def _fell_back(self, reason: str) -> None:
        self._fallback = reason
        log.warning("%s mode: %s", self._mode, reason)

    def _wait(self, future):
        start = time.perf_counter()
        try:
            return future.result()
        finally:
            self._network_ms += (time.perf_counter() - start) * 1000.0

    def _finalize(self) -> None:
        records = list(self._guard.records)
        audit = summarize(records)
        tokens = [a.token for a in self._attribution]
        stats = CoStats(
            first_token_ms=self._first_token_ms, total_ms=(time.perf_counter() - self._start) * 1000.0,
            n_tokens=len(tokens), round_trips=audit["requests"] - audit["blocked"], bytes_sent=audit["bytes_sent"],
            bytes_received=audit["bytes_received"], network_wait_ms=self._network_ms,
            remote_tokens_accepted=self._accepted, withheld_tokens=audit["withheld_tokens"],
            remote_tokens_asked=self.engine_stats.n_asked if self.engine_stats else 0,
            remote_tokens_used=self.engine_stats.n_scored if self.engine_stats else 0,
            local_decodes=self.engine_stats.n_decodes if self.engine_stats else 0,
            context_bits=audit["context_bits"], local_decode_ms=self._decode_ms, n_reused=self._n_reused)
        self.result = CoResult(self._text, self._mode, tokens, self._attribution, records, stats, self._finish,
                               fallback=self._fallback is not None, fallback_reason=self._fallback,
                               outline=self._outline, outline_note=self._outline_note,
                               instruction=self._instruction, mode_reason=self._mode_reason)

    def _run(self, context: str, max_tokens: int, sampling: SamplingParams) -> Iterator[str]:
        if self._mode == "auto":
            self._mode, self._mode_reason = self._choose_mode()
        steps = self._sketch if self._mode == "sketch" else self._logits
        yield from steps(context, max_tokens, sampling)

    def _choose_mode(self) -> tuple[str, str]:
        """mode="auto": logits mode where the server supplies next-token scores and the remote prompt
        can be formatted, sketch mode (a chat completion) elsewhere; and why, in words."""
        remote = self._gen.remote
        if remote is None:
            return "logits", "auto: no remote, so the local model alone"
        try:
            caps = remote.capabilities
            if not caps.next_token_scores:
                return "sketch", f"auto: sketch mode, since the server {caps.missing()}"
            self._public_prompt = remote.prompt([{"role": "user", "content": self._instruction}], guard=self._guard)
        except RemoteError as exc:
            if exc.kind == "config" and "template=" in str(exc):
                return "sketch", f"auto: sketch mode, since the remote's prompt format is unknown ({exc})"
            return "logits", f"auto: the probe failed ({exc})"
        return "logits", (f"auto: logits mode, since the server returns next-token logprobs "
                          f"(top {caps.max_top_k}, tokens named by {caps.token_identity})")

    # -- sketch, and local-only ----------------------------------------------------------------------

    def _sketch(self, context: str, max_tokens: int, sampling: SamplingParams) -> Iterator[str]:
        gen, instruction = self._gen, self._instruction
        user = self._user
        if gen.remote is not None:
            try:
                future = gen.remote.submit_chat([{"role": "user", "content": OUTLINE_PROMPT.format(
                    instruction=instruction)}], max_tokens=gen.outline_tokens, guard=self._guard)
                answer = self._wait(future).text
                points = parse_outline(answer)
                self._outline_note = outline_note(answer, points)
                if points:
                    self._outline = "\n".join(f"{i}. {point}" for i, point in enumerate(points, 1))
                    user = follow_outline(self._user, points)
            except RemoteError as exc:
                self._remote_failed(exc)
            except PrivacyBlockedError as exc:
                self._remote_failed(_not_sent(exc, self._guard))
        yield from self._local(context, user, max_tokens, sampling)

    def _local(self, context: str, user: str, max_tokens: int, sampling: SamplingParams) -> Iterator[str]:
        """The local model alone, through the engine's generation loop (as LocalModel generates)."""
        prompt = self._gen.local.private_prompt(context, user, self._draft)
        with self._gen.local.pooled_session(scope=LocalModel.scope_for(context)) as session:
            sampler = sampling.sampler(self._gen.local.native)
            self._engine = _native.Generation(session, np.asarray(prompt, dtype=np.int32), sampler,
                                              max_tokens=max_tokens, stop=[], ignore_eos=False)
            try:
                while not self._engine.finished:
                    token, text = self._engine.step()
                    self._text += text
                    if token >= 0:
                        self._attribution.append(TokenInfo(token, text, "local", 1.0, float("nan"), None))
                    if text or token >= 0:
                        yield text
                self._finish = self._engine.finish_reason
                timings = self._engine.timings
                self._decode_ms, self._n_reused = timings.decode_ms, timings.n_reused
            finally:
                self._engine.close()

    # -- logits ------------------------------------------------------------------------------------

    def _logits(self, context: str, max_tokens: int, sampling: SamplingParams) -> Iterator[str]:
        gen, fusion, attribution = self._gen, self._gen.fusion, self._gen.attribution
        remote_prompt = self._remote_prompt(self._instruction)
        if remote_prompt is None:  # no remote, or its probe failed
            yield from self._local(context, self._user, max_tokens, sampling)
            return
        prompt = gen.local.private_prompt(context, self._user, self._draft)
        noctx = None
        self._provider = _RemoteProvider(gen.remote, self._guard, records_attribution=attribution is not None)
        if attribution is not None:
            # The no-context side: the public instruction and the draft as the guard lets it out, then
            # the generated text. The draft itself goes out through the guard (which records what it redacts).
            draft = self._guard.redact(self._draft)[0] if self._guard.policy == "redact" else self._draft
            noctx = gen.local.private_prompt("", self._instruction, draft)
        attribution = attribution or AttributionConfig()
        with gen.local.pooled_session(scope=LocalModel.scope_for(context)) as session:
            self._engine = co = _native.CoGeneration(
                session, prompt, noctx_prompt=noctx, public_prefix=remote_prompt + self._draft,
                provider=self._provider, bridge=gen._bridge, remote_vocab=gen.remote_tokenizer, max_tokens=max_tokens,
                lookahead=gen.lookahead or 0, remote_top_k=gen.top_k or 0, overlap=gen.overlap,
                batch_verify=gen.batch_verify, schedule=fusion.schedule, rule=fusion.rule, fill=fusion.fill,
                weight=fusion.weight, alpha=fusion.alpha, plausible=fusion.plausible, gate=fusion.gate,
                attribution=gen.attribution is not None, threshold=attribution.threshold,
                min_logprob=attribution.min_logprob, budget_bits=attribution.budget_bits,
                window=attribution.window, **sampling.to_dict())
            with co:
                while not co.finished:
                    token, text = co.step()
                    self._text += text
                    if token.token >= 0:
                        self._attribution.append(_token_info(token, text))
                    if text or token.token >= 0:
                        yield text
                self._finish = co.finish_reason
                self.engine_stats = stats = co.stats
                self._network_ms += self._provider.wait_ms
                self._decode_ms, self._n_reused = stats.decode_ms, stats.n_reused
                self._accepted = stats.n_accepted
                if co.fallback_reason is not None:
                    self._fell_back(co.fallback_reason)

    def _remote_prompt(self, instruction: str) -> str | None:
        """The remote's prompt (public instruction only), after probing it; None if there is no usable
        remote. A server that cannot supply next-token scores is a configuration error, not a fault."""
        remote = self._gen.remote
        if remote is None:
            return None
        try:
            prompt = self._public_prompt or remote.prompt([{"role": "user", "content": instruction}], guard=self._guard)
            self._guard.add_known(prompt)  # its template's words are no news to the remote, even if the profile has them
            caps = remote.capabilities  # probe before the loop, so a failure falls back cleanly
        except RemoteError as exc:
            if exc.kind == "config":
                raise
            self._remote_failed(exc)
            return None
        if not caps.next_token_scores:
            raise RemoteError(f"logits mode needs next-token scores, and the server at {remote.base_url} "
                              f"{caps.missing()}; use mode='sketch' or mode='auto'", kind="unsupported")
        return prompt


def _not_sent(refusal: PrivacyBlockedError, guard: EgressGuard) -> RemoteError:
    """A request the guard refused to send. Under 'block' the refusal is what the app asked for, and the
    job fails closed (re-raised). Under 'redact' and 'audit' (whose guard still refuses what it cannot
    check or could not redact cleanly) nothing was sent, and the job goes on with the local model alone,
    as after a remote failure: a fallback of kind 'privacy' that the result reports."""
    if guard.policy == "block":
        raise refusal
    return RemoteError(f"{refusal}; nothing of that request was sent", kind="privacy")


def _token_info(token: "_native.CoToken", text: str) -> TokenInfo:
    remote_p = None if math.isnan(token.remote_logprob) else math.exp(token.remote_logprob)
    return TokenInfo(token.token, text, "fused" if token.fused else "local", token.weight,
                     math.exp(token.local_logprob), remote_p, token.withheld, token.context_nats)


class _RemoteProvider:
    """A RemoteModel as the engine's remote provider (see _native.CoGeneration): every request goes
    through the job's guard, with what attribution withheld from it recorded beside it."""

    def __init__(self, remote: RemoteModel, guard: EgressGuard, *, records_attribution: bool):
        self._remote, self._guard, self._records_attribution = remote, guard, records_attribution
        self._in_flight: set[concurrent.futures.Future] = set()
        self.wait_ms = 0.0  # blocked on the network (the engine's wait_ms also counts handing the steps over)
        if guard.policy != "redact":
            self.vet = None  # the engine asks only a redacting guard (with attribution on or off)
        # What the engine withheld is recorded whenever it decides token by token (attribution, or the
        # guard asked through vet), so the audit counts the tokens the guard kept back too.
        self._records_attribution = records_attribution or self.vet is not None

    def vet(self, text: bytes, n_new: int) -> int:
        """The guard's view of a new token (see _native.CoGeneration): the byte offset in text of the
        first private span reaching into its last n_new bytes, or -1. The engine withholds from there
        and ends the run, so what a request carries is decided before the run goes on (with attribution,
        the two agree)."""
        decoded = text.decode("utf-8")  # the engine asks only where the text ends on a whole character
        new_from = len(text[:len(text) - n_new].decode("utf-8", "ignore"))  # a split character counts as new
        starts = [f.start for f in self._guard.private_spans(decoded) if f.end > new_from]
        return len(decoded[:min(starts)].encode("utf-8")) if starts else -1

    def submit(self, text: str, tokens: np.ndarray, may_leave: np.ndarray, n_steps: int, top_k: int,
               context_bits: float) -> concurrent.futures.Future:
        attribution = None
        if self._records_attribution:
            sent = int(may_leave.sum())
            attribution = {"sent_tokens": sent, "withheld_tokens": len(may_leave) - sent,
                           "context_bits": round(float(context_bits), 4)}
        future = self._remote.submit_next_tokens(text, n=n_steps, top_k=top_k or None, guard=self._guard,
                                                 attribution=attribution)
        self._in_flight.add(future)
        return future

    def wait(self, future: concurrent.futures.Future) -> list:
        start = time.perf_counter()
        try:
            steps = future.result().steps
        except concurrent.futures.CancelledError:
            raise RemoteError("the request was cancelled", kind="cancelled") from None
        except PrivacyBlockedError as exc:
            raise _not_sent(exc, self._guard) from None
        finally:
            self.wait_ms += (time.perf_counter() - start) * 1000.0
        return steps

    def release(self, future: concurrent.futures.Future) -> None:
        future.cancel()
        self._in_flight.discard(future)

    def cancel(self) -> None:
        for future in list(self._in_flight):
            future.cancel()
