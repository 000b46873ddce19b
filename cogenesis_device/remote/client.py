"""The client of a remote model over any OpenAI-compatible endpoint.

Every request goes through one HTTP transport, `GuardedTransport` (transport.py), which hands the body
to the job's EgressGuard (privacy.py) before a byte leaves, and records what was sent and received.
Requests run on one background asyncio loop: they can run concurrently, share pooled
connections, and a Future's cancel() aborts the HTTP request in flight.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import math
import os
import random
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import httpx2
import openai

from ..errors import PrivacyBlockedError, RemoteError, without_traceback
from ..privacy import EgressGuard
from ..prompts import plain_prompt
from .formats import (ChatReply, Continuation, RemoteCapabilities, Retryable, parse_completion, parse_json,
                      parse_text_completion, read_chat_chunks, token_identity)
from .transport import GuardedTransport, current_attribution, current_guard, requests_sent

log = logging.getLogger("cogenesis_device.remote")

Messages = Sequence[dict]
_PROBE_PROMPT = "The capital of France is"
_RETRY_STATUS = {408, 409, 429}  # and 5xx: what openai-python retries, unless x-should-retry says otherwise
_PARAMETER_REFUSED = {400, 422}  # the probe's top-k refused: try a smaller one
_NO_ENDPOINT = {404, 405, 501}  # e.g. no /v1/completions for this model (OpenAI's chat models): no logprobs
_TEMPLATE_PROBE = ({"role": "user", "content": "Hello"},)  # public: how the server renders one message


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class RemoteModel:
    """A large model behind an OpenAI-compatible API. It never sees the private context.

    base_url: falls back to $COGENESIS_REMOTE_BASE_URL, then $OPENAI_BASE_URL.
    api_key: falls back to $OPENAI_API_KEY; a loopback server may go without one.
    model: the model name; by default the only model the server lists.
    timeout: seconds per attempt (connect, send, and the whole answer).
    max_retries: extra attempts after a timeout, refused connection, 408/409/429/5xx, or a
        malformed, logprob-less or truncated answer; then RemoteError. HTTP faults are retried by
        openai-python's client as it retries them (Retry-After, retry-after-ms and x-should-retry
        honoured, else exponential backoff from 0.5 s); both kinds draw on this one budget.
    backoff, max_backoff: exponential backoff in seconds before another try after a malformed,
        logprob-less or truncated answer (which the HTTP client takes as it comes); max_backoff also
        caps every wait of the HTTP client, a server's Retry-After included.
    template: how the remote prompt is formatted for next-token scores: a LocalModel of the remote's
        GGUF or of its family (its format_prompt: the chat template, or plain text for a base model),
        a callable(messages) -> str, or "raw" (plain text, prompts.plain_prompt).
    tokenizer: the remote's tokenizer (a LocalModel or _native.Model of the server's model), which
        reads tokens the server names by id; by default the template's, when it is a LocalModel.
        Without one, tokens are read from their bytes or text.
    max_top_k: the largest number of alternatives per position to ask for.
    audit_path: JSONL file recording requests made outside any job (the probe, for example).
    allow_insecure_http: accept an http:// URL to a host other than this machine. Off by default: the
        instruction, the generated text and the API key would cross the network in clear.
    max_response_bytes: the largest answer read; a longer one is a RemoteError (default 8 MiB).

    Requests outside a collaboration job (chat, next_tokens, prompt with the server's template) need
    either a job's `guard=` or `public=True`, the caller's statement that the text is not private.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str | None = None, *,
                 timeout: float = 30.0, max_retries: int = 2, backoff: float = 0.25, max_backoff: float = 10.0,
                 template: Any = None, tokenizer: Any = "auto", max_top_k: int = 20, max_connections: int = 16,
                 audit_path: str | None = None, allow_insecure_http: bool = False,
                 max_response_bytes: int = 8 << 20):
        base_url = base_url or os.environ.get("COGENESIS_REMOTE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise RemoteError("no remote base URL: pass base_url= or set COGENESIS_REMOTE_BASE_URL or OPENAI_BASE_URL",
                              kind="config")
        scheme = urlparse(base_url).scheme
        if scheme not in ("http", "https"):
            raise RemoteError(f"the remote base URL {base_url!r} is not http(s)", kind="config")
        if scheme == "http" and not _is_loopback(base_url) and not allow_insecure_http:
            raise RemoteError(f"{base_url} is plain http to another machine: the instruction, the generated text and "
                              "the API key would cross the network in clear. Use https, or pass allow_insecure_http=True",
                              kind="config")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not _is_loopback(base_url):
                raise RemoteError(f"no API key for {base_url}: pass api_key= or set OPENAI_API_KEY", kind="config")
            api_key = "no-key-loopback"
        if not (timeout > 0 and math.isfinite(timeout)):
            raise RemoteError(f"timeout must be a positive number of seconds, got {timeout}", kind="config")
        if max_response_bytes < 1024:
            raise RemoteError(f"max_response_bytes must be at least 1024, got {max_response_bytes}", kind="config")
        if max_retries < 0 or max_top_k < 1:
            raise RemoteError(f"max_retries must be >= 0 and max_top_k >= 1, got {max_retries}, {max_top_k}",
                              kind="config")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.max_top_k = int(max_top_k)
        self.template = template
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = template if hasattr(template, "native") else None
        self.tokenizer = getattr(tokenizer, "native", tokenizer)
        self.guard = EgressGuard(audit_path=audit_path)
        # Where the client's time goes, summed over requests (updated on the client's own thread):
        # guard_ms checking bodies, http_ms from sending a request to its whole answer, parse_ms
        # reading answers (JSON and logprobs).
        self.timings = {"guard_ms": 0.0, "http_ms": 0.0, "parse_ms": 0.0}
        self._model = model
        self._capabilities: RemoteCapabilities | None = None
        self._renderer: str | None = None  # how the server renders templates (server_template); "" for not at all
        self._added_tokens: list | None = None  # what vLLM's tokenizer adds to a prompt (a BOS)
        self._probe_rendering: str | None = None  # the server's rendering of _TEMPLATE_PROBE
        self._probe_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cogenesis-remote", daemon=True)
        self._thread.start()
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        transport = GuardedTransport(httpx2.AsyncHTTPTransport(limits=limits), self.guard, self.timings,
                                      int(max_response_bytes), self.timeout)
        http = httpx2.AsyncClient(transport=transport, timeout=self.timeout)
        self._client = _openai_client(self.max_backoff, base_url=self.base_url, api_key=api_key,
                                      timeout=self.timeout, max_retries=self.max_retries, http_client=http)
        self._clients = {self.max_retries: self._client}  # by the retries left them, sharing one pool
        # The chat request's length limit: OpenAI's newer models refuse max_tokens and ask for
        # max_completion_tokens, which other servers may not read; switched on the first such refusal.
        self._token_limit = "max_tokens"
        # Scores are read as the server's own distribution: llama_cpp.server applies repeat_penalty 1.1
        # unless told otherwise, and then the token it returns at temperature 0 is not its own best
        # (its logprobs are from before the penalty). repeat_penalty=1.0 goes with each scoring request
        # until a server refuses the field (OpenAI: "Unrecognized request argument").
        self._neutral_penalty = True

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    def _submit(self, coro, guard: EgressGuard | None, attribution: dict | None = None) -> concurrent.futures.Future:
        if self._loop.is_closed():
            coro.close()
            raise RemoteError("the RemoteModel is closed", kind="config")
        # The task inherits the context current at submission, which carries the job's guard.
        context = contextvars.copy_context()
        context.run(current_guard.set, guard)
        context.run(current_attribution.set, attribution)
        return context.run(asyncio.run_coroutine_threadsafe, coro, self._loop)

    @staticmethod
    def _wait(future: concurrent.futures.Future):
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RemoteError("the remote request was cancelled", kind="cancelled") from None
        except BaseException:
            future.cancel()
            raise

    # -- retries ---------------------------------------------------------------------------------

    def _retrying(self, retries: int) -> openai.AsyncOpenAI:
        """The openai client that retries HTTP faults at most `retries` times (on the client's thread)."""
        retries = max(0, retries)
        client = self._clients.get(retries)
        if client is None:
            client = self._clients[retries] = self._client.with_options(max_retries=retries)
        return client

    async def _attempts(self, what: str, attempt: Callable[[openai.AsyncOpenAI], Any], final_kinds: tuple = ()):
        """Runs attempt(client) until it answers, in at most max_retries + 1 HTTP requests (counted by the
        transport), and raises RemoteError naming the last failure.

        The openai client it is given retries HTTP faults; this loop retries what that client takes as an
        answer: a malformed, truncated or logprob-less one (unless its kind is in final_kinds), or an
        error event in a stream with a transient code. The errors it raises carry no chained exception
        and no traceback from inside the client: those would hold the request body (before redaction, in
        the guard's frames) for anything that logs or reports the error."""
        sent = [0]
        requests_sent.set(sent)
        budget = self.max_retries + 1
        for n in range(1, budget + 1):
            final: BaseException | None = None
            failure: Retryable | None = None
            try:
                return await attempt(self._retrying(budget - sent[0] - 1))
            except (PrivacyBlockedError, RemoteError) as exc:
                final = exc
            except openai.APITimeoutError:
                final = self._failed(what, sent[0], f"no complete answer within {self.timeout:g} s", "timeout")
            except openai.APIConnectionError as exc:
                final = self._failed(what, sent[0], f"connection failed ({exc.__cause__ or exc})", "connection")
            except openai.APIStatusError as exc:
                final = self._failed(what, sent[0], f"HTTP {exc.status_code}: {_error_message(exc)}", "status",
                                     exc.status_code)
            except openai.APIError as exc:  # an error event in a stream: the server's message, and its code
                code = exc.body.get("code") if isinstance(exc.body, dict) else None
                code = code if isinstance(code, int) else None
                message = f"the server reported an error in the stream: {_error_message(exc)}"
                if code is not None and (code in _RETRY_STATUS or code >= 500):
                    failure = Retryable(message, "status", code)
                else:
                    final = self._failed(what, sent[0], message, "status", code)
            except Retryable as exc:
                failure = exc
            if failure is not None and (failure.kind in final_kinds or sent[0] >= budget):
                final = self._failed(what, sent[0], str(failure), failure.kind, failure.status)
            if final is not None:  # raised here, outside the except blocks: nothing chained
                del attempt  # its closure holds the request as the caller gave it, before the guard
                raise without_traceback(final)
            delay = min(self.max_backoff, self.backoff * 2 ** (n - 1)) * (0.5 + random.random() / 2)
            log.warning("%s at %s: %s; trying again in %.2f s", what, self.base_url, failure, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: every attempt returns or raises")  # pragma: no cover

    def _failed(self, what: str, attempts: int, message: str, kind: str, status: int | None = None) -> RemoteError:
        return RemoteError(f"{what} at {self.base_url} failed after {attempts} attempt(s): {message}", kind=kind,
                           attempts=attempts, status=status)

    # -- model and capabilities --------------------------------------------------------------------

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._wait(self._submit(self._attempts("listing models", self._list_model), None))
        return self._model

    async def _list_model(self, client: openai.AsyncOpenAI) -> str:
        page = await client.models.list()
        ids = [m.id for m in page.data]
        if len(ids) != 1:
            raise RemoteError(f"the server at {self.base_url} serves {len(ids)} models ({', '.join(ids[:5])}); "
                              f"pass model=", kind="config")
        return ids[0]

    @property
    def capabilities(self) -> RemoteCapabilities:
        """Probes the server once (thread-safe) and remembers what it found."""
        with self._probe_lock:
            if self._capabilities is None:
                self._capabilities = self._wait(self._submit(self._probe(self.model), None))
            return self._capabilities

    def connect(self) -> RemoteCapabilities:
        """Lists the model and probes the server now rather than on first use."""
        return self.capabilities

    async def _probe(self, model: str) -> RemoteCapabilities:
        """What the server offers, from answers only: a refused parameter (400, 422) tries a smaller top-k;
        an answer without logprobs (asked once), or no completions endpoint (404, 405, 501), means none;
        any other failure (401, 429 or 5xx after the retries, a timeout) is an error, and nothing is
        remembered of it."""
        gen, top_k = None, 0
        for k in sorted({self.max_top_k, min(self.max_top_k, 20), min(self.max_top_k, 5), 1}, reverse=True):
            try:
                gen, raw = await self._completion(model, _PROBE_PROMPT, n=2, top_k=k, temperature=0.0, raw=True,
                                                  final_kinds=("missing_logprobs",))
                top_k = k
                break
            except RemoteError as exc:
                if exc.kind == "missing_logprobs" or exc.status in _NO_ENDPOINT:
                    break
                if not (exc.kind == "status" and exc.status in _PARAMETER_REFUSED):
                    raise
        if gen is None or not gen.steps:  # no logprobs, or (unlikely) nothing to judge them by
            return RemoteCapabilities(model, 0, "text", False)
        # Greedy: the chosen token must be listed at its own position, as the best entry there. (Its
        # logprob alone is not enough: off by one, the next position's best may score lower.)
        positions_ok = all(s.token in s.top and s.top[s.token] >= max(s.top.values()) - 1e-3
                           for s in gen.steps if s.top)
        return RemoteCapabilities(model, top_k, token_identity(raw), positions_ok)

    # -- requests ----------------------------------------------------------------------------------

    def _job_guard(self, guard: EgressGuard | None, public: bool, call: str) -> EgressGuard:
        """The guard a request goes through: the job's, or, for text the caller declared public, the
        model's own (which records it). Free text with neither is refused: the model's guard knows no
        context, so it would send anything and record it as clean."""
        if guard is not None:
            return guard
        if not public:
            raise RemoteError(f"{call}() outside a collaboration job needs guard= (the job's EgressGuard, which knows "
                              "the private context) or public=True (the text holds nothing private)", kind="config")
        return self.guard

    def prompt(self, messages: Messages, *, guard: EgressGuard | None = None, public: bool = False) -> str:
        """The text prompt for /v1/completions: the messages formatted with the remote's template, or,
        with no template=, by the server itself (see server_template). A request to the server passes
        `guard` like any other, so it needs guard= or public=True."""
        if self.template is None:
            guard = self._job_guard(guard, public, "prompt")
            return self._wait(self._submit(self._attempts("applying the server's chat template",
                                                          lambda client: self._render(client, messages)),
                                           guard))
        if self.template == "raw":
            return plain_prompt(messages)
        if hasattr(self.template, "format_prompt"):
            return self.template.format_prompt(messages)
        return self.template(messages)

    def server_template(self) -> str | None:
        """How the server renders chat messages with its model's own template, asked once with a public
        message: "apply-template" (llama.cpp's /apply-template), "tokenize" (vLLM's /tokenize with
        messages, then /detokenize), or None when it offers neither (llama_cpp.server, SGLang, TGI,
        OpenAI). A failure other than a missing endpoint raises RemoteError, and nothing is remembered."""
        if self._probe_rendering is None and self._renderer != "":
            try:
                self._probe_rendering = self._wait(self._submit(self._attempts(
                    "applying the server's chat template", lambda client: self._render(client, _TEMPLATE_PROBE)),
                    self.guard))
            except RemoteError:
                if self._renderer != "":  # a failure, not the answer "no endpoint"
                    raise
        return self._renderer or None

    def check_template(self) -> str | None:
        """Compares template= with the server's own rendering of a public message, where the server
        renders (server_template). Returns a warning, also logged, when the markup around the message
        differs: the remote then reads prompts in markup it was not trained on (ChatML sent to a Llama 3
        model, say), and its scores are worse than they should be. None when they agree (a default
        system turn the server adds before is allowed), or when there is nothing to compare."""
        if self.template is None or self.base_model:
            return None
        try:
            if self.server_template() is None:
                return None
        except RemoteError as exc:
            log.info("the chat template was not checked against the server's: %s", exc)
            return None
        ours, theirs = self.prompt(_TEMPLATE_PROBE), self._probe_rendering
        # The same markup around the message, and after it up to the reply; what comes before may differ
        # (a default system turn, as SmolLM2's Jinja template adds and llama.cpp's built-in one does not).
        before, found, after = ours.rpartition(_TEMPLATE_PROBE[0]["content"])
        their_before, their_found, their_after = theirs.rpartition(_TEMPLATE_PROBE[0]["content"])
        if found and their_found and after == their_after and their_before.endswith(before):
            return None
        warning = (f"template= formats prompts unlike the server's own chat template (one message renders as "
                   f"{ours!r} here, {theirs!r} by the server): pass the remote's own GGUF as template=, or "
                   f"template=None to let the server render")
        log.warning("%s", warning)
        return warning

    async def _render(self, client: openai.AsyncOpenAI, messages: Messages) -> str:
        """The messages rendered by the server: llama.cpp's /apply-template, else vLLM's /tokenize and
        /detokenize; remembers which one answers. Both sit at the server root, not under /v1."""
        root = self.base_url.removesuffix("/v1")
        if self._renderer in (None, "apply-template"):
            try:
                response = await client.post(f"{root}/apply-template", body={"messages": list(messages)},
                                             cast_to=httpx2.Response)
                self._renderer = "apply-template"
                return _answer_field(response, "prompt", str, "/apply-template")
            except openai.APIStatusError as exc:
                if exc.status_code not in _NO_ENDPOINT:
                    raise
        if self._renderer in (None, "tokenize"):
            model = self._model or await self._list_model(client)
            try:
                response = await client.post(f"{root}/tokenize", cast_to=httpx2.Response, body={
                    "model": model, "messages": list(messages), "add_generation_prompt": True})
            except openai.APIStatusError as exc:
                # SGLang's /tokenize reads only a prompt, and refuses messages as a malformed request.
                if exc.status_code not in _NO_ENDPOINT | _PARAMETER_REFUSED:
                    raise
            else:
                self._renderer = "tokenize"
                tokens = _answer_field(response, "tokens", list, "/tokenize")
                if not all(type(t) is int for t in tokens):
                    raise Retryable("the /tokenize answer's tokens are not all ids", "malformed")
                # The completions endpoint adds the tokenizer's own leading special tokens (a BOS) to
                # the text it is sent: drop them here, or the remote would read two.
                if self._added_tokens is None:
                    empty = await client.post(f"{root}/tokenize", cast_to=httpx2.Response, body={
                        "model": model, "prompt": "", "add_special_tokens": True})
                    self._added_tokens = _answer_field(empty, "tokens", list, "/tokenize")
                if self._added_tokens and tokens[:len(self._added_tokens)] == self._added_tokens:
                    tokens = tokens[len(self._added_tokens):]
                (current_guard.get() or self.guard).allow_echo(tokens)
                text = await client.post(f"{root}/detokenize", cast_to=httpx2.Response,
                                         body={"model": model, "tokens": tokens})
                return _answer_field(text, "prompt", str, "/detokenize")
        self._renderer = ""
        raise RemoteError("the remote model's chat template is unknown and the server does not render it "
                          "(no /apply-template as llama.cpp's server has, no /tokenize with messages as vLLM's "
                          "has): pass template= (a LocalModel of the same family, a callable(messages) -> str, "
                          "or 'raw')", kind="config")

    def next_tokens(self, prompt: str, *, n: int = 1, top_k: int | None = None, temperature: float = 0.0,
                    seed: int | None = None, guard: EgressGuard | None = None, public: bool = False) -> Continuation:
        """n tokens of the remote's continuation of prompt, with its top_k alternatives at each.
        guard: the job's EgressGuard; or public=True, stating that the prompt holds nothing private."""
        return self._wait(self.submit_next_tokens(prompt, n=n, top_k=top_k, temperature=temperature, seed=seed,
                                                  guard=guard, public=public))

    def submit_next_tokens(self, prompt: str, *, n: int = 1, top_k: int | None = None, temperature: float = 0.0,
                           seed: int | None = None, guard: EgressGuard | None = None, public: bool = False,
                           attribution: dict | None = None) -> concurrent.futures.Future:
        """next_tokens in the background: returns a Future; cancel() aborts the request.

        attribution: what on-device attribution withheld from the prompt, recorded with the request."""
        guard = self._job_guard(guard, public, "next_tokens")
        caps = self.capabilities
        if not caps.next_token_scores:
            raise RemoteError(f"the server at {self.base_url} {caps.missing()}; it cannot supply next-token scores",
                              kind="unsupported")
        if n < 1:
            raise RemoteError(f"n must be at least 1, got {n}", kind="config")
        k = min(top_k or caps.max_top_k, caps.max_top_k)
        return self._submit(self._completion(caps.model, prompt, n=n, top_k=k, temperature=temperature, seed=seed),
                            guard, attribution)

    def _completion(self, model: str, prompt: str, *, n: int, top_k: int, temperature: float,
                    seed: int | None = None, raw: bool = False, final_kinds: tuple = ()):
        """A coroutine for the parsed Continuation, and with raw=True the JSON body beside it. A plain
        function, so that no frame holding the prompt stays in the traceback of its errors."""
        async def create(client: openai.AsyncOpenAI):
            neutral = {"extra_body": {"repeat_penalty": 1.0}} if self._neutral_penalty else {}
            return await client.completions.with_raw_response.create(
                model=model, prompt=prompt, max_tokens=n, temperature=temperature, logprobs=top_k, **_seed(seed),
                **neutral)

        async def attempt(client: openai.AsyncOpenAI):
            try:
                answer = await create(client)
            except openai.BadRequestError as exc:
                if not (self._neutral_penalty and "repeat_penalty" in _error_message(exc)):
                    raise
                self._neutral_penalty = False
                log.info("%s does not take repeat_penalty: scoring requests go without it", self.base_url)
                answer = await create(client)
            parsing = time.perf_counter()
            body = parse_json(answer)
            continuation = parse_completion(body, n, self.tokenizer, top_k)
            self.timings["parse_ms"] += (time.perf_counter() - parsing) * 1000.0
            return (continuation, body) if raw else continuation

        return self._attempts("completion", attempt, final_kinds)

    @property
    def base_model(self) -> bool:
        """Whether template= makes the remote a base model (plain text, no chat template)."""
        return (isinstance(self.template, str) and self.template == "raw") or \
            getattr(self.template, "has_chat_template", True) is False

    def _text_completion(self, model: str, prompt: str, *, max_tokens: int, temperature: float, seed: int | None):
        """A coroutine for a completion's text, without logprobs (a plain function, like _completion)."""
        async def attempt(client: openai.AsyncOpenAI) -> ChatReply:
            answer = await client.completions.with_raw_response.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature, **_seed(seed))
            return parse_text_completion(parse_json(answer))

        return self._attempts("completion", attempt)

    def chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
             response_format: dict | None = None, guard: EgressGuard | None = None, public: bool = False) -> ChatReply:
        """A chat completion (streamed on the wire, so a truncated stream is detected and retried). To a
        base model (see base_model) the messages go as its plain-text prompt to /v1/completions: its
        server has no chat template to apply either (llama.cpp's falls back to ChatML markup, which a base
        model echoes instead of answering).

        guard: the job's EgressGuard; or public=True, stating that the messages hold nothing private.
        response_format is passed through as the server expects it, e.g. OpenAI and vLLM's
        {"type": "json_schema", "json_schema": {"name": ..., "schema": ...}} or llama_cpp.server's
        {"type": "json_object", "schema": ...}."""
        return self._wait(self.submit_chat(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                           response_format=response_format, guard=guard, public=public))

    def submit_chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0,
                    seed: int | None = None, response_format: dict | None = None,
                    guard: EgressGuard | None = None, public: bool = False) -> concurrent.futures.Future:
        guard = self._job_guard(guard, public, "chat")
        if self.base_model:
            if response_format:
                raise RemoteError("response_format needs a chat model, and template= makes the remote a base model",
                                  kind="config")
            return self._submit(self._text_completion(self.model, self.prompt(messages), max_tokens=max_tokens,
                                                      temperature=temperature, seed=seed), guard)

        async def streamed(client: openai.AsyncOpenAI) -> ChatReply:
            extra = {"response_format": response_format} if response_format else {}
            stream = await client.chat.completions.create(
                model=model, messages=list(messages), temperature=temperature, stream=True,
                **{self._token_limit: max_tokens}, **_seed(seed), **extra)
            try:
                chunks = [chunk.to_dict() async for chunk in stream]
            except ValueError:  # an event that is not JSON
                raise Retryable("a stream event is not a chat completion chunk", "malformed") from None
            return read_chat_chunks(chunks)

        async def attempt(client: openai.AsyncOpenAI) -> ChatReply:
            try:
                return await streamed(client)
            except openai.BadRequestError as exc:
                if self._token_limit == "max_tokens" and "max_completion_tokens" in _error_message(exc):
                    self._token_limit = "max_completion_tokens"
                    log.info("%s asks for max_completion_tokens instead of max_tokens: sending that", self.base_url)
                    return await streamed(client)
                raise

        model = self.model
        return self._submit(self._attempts("chat completion", attempt), guard)


# -- parsing: every shape check raises Retryable('malformed' | 'missing_logprobs' | 'truncated') --------


def _openai_client(max_backoff: float, **options) -> openai.AsyncOpenAI:
    """openai-python's client, each of its retry waits (a server's Retry-After included, which it
    honours up to two minutes) capped at max_backoff: a hostile or broken server could otherwise hold a
    generation that long per retry. Its with_options() copies keep the class, so the cap too.
    (_calculate_retry_timeout is openai-python's own hook for the wait; the version is pinned below 4.)"""
    class CappedRetryWaits(openai.AsyncOpenAI):
        def _calculate_retry_timeout(self, *args, **kwargs) -> float:
            return min(max_backoff, super()._calculate_retry_timeout(*args, **kwargs))

    return CappedRetryWaits(**options)


def _seed(seed: int | None) -> dict:
    return {} if seed is None else {"seed": int(seed)}


def _error_message(exc: openai.APIError) -> str:
    """The server's own message: OpenAI's {"error": {"message": ...}}, vLLM's {"message": ...}, or the body."""
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body) if not isinstance(body.get("message"), str) else body
        body = body.get("message", body) if isinstance(body, dict) else body
    return str(body or exc.message)[:300]


def _answer_field(response: httpx2.Response, field: str, kind: type, endpoint: str):
    """One field of a JSON answer, of the type expected; else a retryable malformed answer."""
    try:
        value = response.json()[field]
    except (ValueError, KeyError, TypeError):
        raise Retryable(f"the {endpoint} answer has no {field}", "malformed") from None
    if not isinstance(value, kind):
        raise Retryable(f"the {endpoint} answer has no {field}", "malformed")
    return value
