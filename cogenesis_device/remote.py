"""The remote large model, over any OpenAI-compatible endpoint.

Every request goes through one HTTP transport, `_GuardedTransport`, which hands the body to the
job's EgressGuard (privacy.py) before a byte leaves, and records what was sent and received.
Requests run on one background asyncio loop: they can run concurrently, share pooled
connections, and a Future's cancel() aborts the HTTP request in flight.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import httpx2
import openai

from .errors import PrivacyBlockedError, RemoteError
from .privacy import EgressGuard

Messages = Sequence[dict]
_current_guard: contextvars.ContextVar[EgressGuard | None] = contextvars.ContextVar("cogenesis_guard", default=None)
# What on-device attribution withheld from the request being sent (recorded with it; see collab.py).
_current_attribution: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cogenesis_attribution",
                                                                                   default=None)
_PROBE_PROMPT = "The capital of France is"
_RETRY_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class TokenScores:
    """The remote's distribution at one position: its chosen token and the top alternatives.

    A token is its bytes when the server names it by id (read through the remote's tokenizer) or
    gives its bytes (llama.cpp), a control token is its name ('<|im_end|>'), and otherwise it is the
    text the server returns (OpenAI's legacy shape). An alternative that cannot be read as a token
    (a partial UTF-8 character sent as '' or U+FFFD) is left out; a chosen one is ''."""

    token: bytes | str
    logprob: float
    top: dict[bytes | str, float]


@dataclass(frozen=True)
class Continuation:
    """The remote's greedy or sampled continuation of a prompt, with scores at every position
    (no positions when its first choice is end-of-text)."""

    text: str
    steps: list[TokenScores]
    finish_reason: str


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str


@dataclass(frozen=True)
class RemoteCapabilities:
    """What the probe found at connect time."""

    model: str
    max_top_k: int  # largest `logprobs` the server accepted, up to the client's cap; 0 = none
    token_identity: str  # how the server names tokens: 'ids' (llama.cpp id, vLLM token_id:N), 'bytes' or 'text'
    positions_ok: bool  # logprobs at generated position i describe token i (checked against greedy choices)

    @property
    def next_token_scores(self) -> bool:
        """Whether the server supplies next-token scores (what logits mode needs)."""
        return self.max_top_k > 0 and self.positions_ok

    def missing(self) -> str:
        """What the server lacks for logits mode, in words ('' when nothing)."""
        if self.max_top_k == 0:
            return "returns no next-token logprobs on /v1/completions"
        return "" if self.positions_ok else "lists logprobs at the wrong positions"


class _GuardedTransport(httpx2.AsyncBaseTransport):
    """The choke point: every request (its URL, headers and body) passes the current job's guard, then
    is recorded; every answer is read up to max_response_bytes."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, default_guard: EgressGuard, timings: dict,
                 max_response_bytes: int):
        self._inner = inner
        self._default_guard = default_guard
        self._timings = timings
        self._max_response_bytes = max_response_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        guard = _current_guard.get() or self._default_guard
        checked = time.perf_counter()
        # Headers (some come from the environment: OPENAI_ORG_ID, OPENAI_PROJECT_ID...) and the URL
        # cannot be redacted: one that carries private text stops the request.
        guard.check_envelope(str(request.url), [(k, v) for k, v in request.headers.items() if not _fixed_header(k)])
        body, record = guard.check_body(request.method, request.url.path, await request.aread(),
                                        _current_attribution.get())
        self._timings["guard_ms"] += (time.perf_counter() - checked) * 1000.0
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
        headers.append(("content-length", str(len(body))))
        outgoing = httpx2.Request(request.method, request.url, headers=headers, content=body,
                                  extensions=request.extensions)
        start = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(outgoing)
            content = await _read_bounded(response, self._max_response_bytes)  # a truncated body fails here
        finally:
            record.duration_ms = (time.perf_counter() - start) * 1000.0
            self._timings["http_ms"] += record.duration_ms
        record.status = response.status_code
        record.bytes_received = len(content)
        return httpx2.Response(response.status_code, headers=response.headers, content=content,
                               extensions=response.extensions, request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _fixed_header(name: str) -> bool:
    """Headers whose values the client sets itself (the key, the transport's, openai-python's
    platform headers); every other header is checked."""
    name = name.lower()
    return name in ("authorization", "host", "accept", "accept-encoding", "connection", "content-type",
                    "content-length", "user-agent") or name.startswith("x-stainless-")


async def _read_bounded(response: httpx2.Response, limit: int) -> bytes:
    """The whole answer, or RemoteError once it passes limit bytes (a hostile or broken server's way
    to exhaust memory); nothing past the limit is read."""
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RemoteError(f"the answer is {int(declared)} bytes, more than max_response_bytes={limit}",
                              kind="malformed")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise RemoteError(f"the answer passed max_response_bytes={limit}", kind="malformed")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await response.aclose()


class _Retryable(Exception):
    def __init__(self, message: str, kind: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class RemoteModel:
    """A large model behind an OpenAI-compatible API. It never sees the private context.

    base_url: falls back to $COGENESIS_REMOTE_BASE_URL, then $OPENAI_BASE_URL.
    api_key: falls back to $OPENAI_API_KEY; a loopback server may go without one.
    model: the model name; by default the only model the server lists.
    timeout: seconds per attempt (connect, send, and the whole answer).
    max_retries: extra attempts after a timeout, refused connection, 408/409/429/5xx, or a
        malformed, logprob-less or truncated answer; then RemoteError.
    backoff, max_backoff: exponential backoff in seconds between attempts (Retry-After is honoured
        up to max_backoff).
    template: how the remote prompt is formatted for next-token scores: an object with
        apply_chat_template (a LocalModel of the same family), a callable(messages) -> str, or "raw"
        (the instruction as plain text, for base models).
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
        self._probe_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cogenesis-remote", daemon=True)
        self._thread.start()
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        transport = _GuardedTransport(httpx2.AsyncHTTPTransport(limits=limits), self.guard, self.timings,
                                      int(max_response_bytes))
        http = self._http = httpx2.AsyncClient(transport=transport, timeout=self.timeout)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, timeout=self.timeout,
                                          max_retries=0, http_client=http)

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
        context.run(_current_guard.set, guard)
        context.run(_current_attribution.set, attribution)
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

    # -- retries -----------------------------------------------------------------------------------

    async def _attempts(self, what: str, attempt: Callable[[], Any]):
        """Runs attempt() with bounded retries and backoff; raises RemoteError naming the last failure.

        The errors it raises carry no chained exception and no traceback from inside the client: those
        would hold the request body (before redaction, in the guard's frames) for anything that logs
        or reports the error."""
        for n in range(1, self.max_retries + 2):
            final: Exception | None = None
            try:
                return await asyncio.wait_for(attempt(), self.timeout)
            except PrivacyBlockedError as exc:
                final = exc
            except (asyncio.TimeoutError, openai.APITimeoutError):
                failure = _Retryable(f"no complete answer within {self.timeout:g} s", "timeout")
            except openai.APIConnectionError as exc:
                cause = exc.__cause__
                while cause is not None and not isinstance(cause, (PrivacyBlockedError, RemoteError)):
                    cause = cause.__cause__ or cause.__context__
                final = cause
                failure = _Retryable(f"connection failed ({exc.__cause__ or exc})", "connection")
            except openai.APIStatusError as exc:
                status = exc.status_code
                message = f"HTTP {status}: {_error_message(exc)}"
                if status not in _RETRY_STATUS and status < 500:
                    final = RemoteError(f"{what} at {self.base_url} failed: {message}", kind="status", attempts=n,
                                        status=status)
                failure = _Retryable(message, "status", status, _retry_after(exc.response.headers))
            except RemoteError as exc:
                final = exc
            except _Retryable as exc:
                failure = exc
            if final is not None or n > self.max_retries:
                del attempt  # its closure holds the request as the caller gave it, before the guard
            if final is not None:  # raised here, outside the except blocks: nothing chained
                raise _scrubbed(final)
            if n > self.max_retries:
                raise RemoteError(f"{what} at {self.base_url} failed after {n} attempt(s): {failure}",
                                  kind=failure.kind, attempts=n, status=failure.status) from None
            delay = min(self.max_backoff, self.backoff * 2 ** (n - 1)) * (0.5 + random.random() / 2)
            if failure.retry_after is not None:
                delay = min(self.max_backoff, max(delay, failure.retry_after))
            await asyncio.sleep(delay)

    # -- model and capabilities --------------------------------------------------------------------

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._wait(self._submit(self._attempts("listing models", self._list_model), None))
        return self._model

    async def _list_model(self) -> str:
        page = await self._client.models.list()
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
        gen, top_k = None, 0
        for k in sorted({self.max_top_k, min(self.max_top_k, 20), min(self.max_top_k, 5), 1}, reverse=True):
            try:
                gen, raw = await self._completion(model, _PROBE_PROMPT, n=2, top_k=k, temperature=0.0, raw=True)
                top_k = k
                break
            except RemoteError as exc:
                if exc.kind not in ("status", "missing_logprobs"):
                    raise
        if gen is None or not gen.steps:  # no logprobs, or (unlikely) nothing to judge them by
            return RemoteCapabilities(model, 0, "text", False)
        # Greedy: the chosen token must be listed at its own position, as the best entry there. (Its
        # logprob alone is not enough: off by one, the next position's best may score lower.)
        positions_ok = all(s.token in s.top and s.top[s.token] >= max(s.top.values()) - 1e-3
                           for s in gen.steps if s.top)
        return RemoteCapabilities(model, top_k, _token_identity(raw), positions_ok)

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
        with no template=, by the server itself (llama.cpp's /apply-template, a request that passes
        `guard` like any other, so it needs guard= or public=True)."""
        if self.template is None:
            guard = self._job_guard(guard, public, "prompt")
            return self._wait(self._submit(self._attempts("applying the server's chat template",
                                                          lambda: self._apply_template(messages)), guard))
        if self.template == "raw":
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        if hasattr(self.template, "apply_chat_template"):
            return self.template.apply_chat_template(messages, add_generation_prompt=True)
        return self.template(messages)

    async def _apply_template(self, messages: Messages) -> str:
        url = f"{self.base_url.removesuffix('/v1')}/apply-template"  # at the server root, not under /v1
        try:
            response = await self._http.post(url, json={"messages": list(messages)}, headers=self._auth)
        except httpx2.TimeoutException:
            raise _Retryable(f"no complete answer within {self.timeout:g} s", "timeout") from None
        except httpx2.HTTPError as exc:
            raise _Retryable(f"connection failed ({exc})", "connection") from None
        if response.status_code in (404, 405):
            raise RemoteError("the remote model's chat template is unknown and the server does not render it "
                              "(no /apply-template, which llama.cpp's server has): pass template= (a LocalModel of "
                              "the same family, a callable(messages) -> str, or 'raw')", kind="config")
        if response.status_code in _RETRY_STATUS or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", "status", response.status_code,
                             _retry_after(response.headers))
        if response.status_code >= 400:
            raise RemoteError(f"applying the server's chat template at {url} failed: HTTP {response.status_code}",
                              kind="status", status=response.status_code)
        try:
            prompt = response.json()["prompt"]
        except (ValueError, KeyError, TypeError):
            raise _Retryable("the /apply-template answer has no prompt", "malformed") from None
        if not isinstance(prompt, str):
            raise _Retryable("the /apply-template answer has no prompt", "malformed")
        return prompt

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
                    seed: int | None = None, raw: bool = False):
        """A coroutine for the parsed Continuation, and with raw=True the JSON body beside it. A plain
        function, so that no frame holding the prompt stays in the traceback of its errors."""
        async def attempt():
            answer = await self._client.completions.with_raw_response.create(
                model=model, prompt=prompt, max_tokens=n, temperature=temperature, logprobs=top_k, **_seed(seed))
            parsing = time.perf_counter()
            body = _json(answer)
            continuation = _parse_completion(body, n, self.tokenizer, top_k)
            self.timings["parse_ms"] += (time.perf_counter() - parsing) * 1000.0
            return (continuation, body) if raw else continuation

        return self._attempts("completion", attempt)

    def chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
             response_format: dict | None = None, guard: EgressGuard | None = None, public: bool = False) -> ChatReply:
        """A chat completion (streamed on the wire, so a truncated stream is detected and retried).

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

        async def attempt() -> ChatReply:
            extra = {"response_format": response_format} if response_format else {}
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model, messages=list(messages), max_tokens=max_tokens, temperature=temperature, stream=True,
                **_seed(seed), **extra)
            return _parse_chat_stream(raw.http_response.text)

        model = self.model
        return self._submit(self._attempts("chat completion", attempt), guard)


# -- parsing: every shape check raises _Retryable('malformed' | 'missing_logprobs' | 'truncated') --------


def _json(raw) -> Any:
    try:
        return json.loads(raw.http_response.text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Retryable(f"the answer is not JSON ({exc})", "malformed") from None


def _parse_completion(body: Any, n: int, tokenizer: Any = None, top_k: int | None = None) -> Continuation:
    """A /v1/completions answer with logprobs, in either shape servers use: OpenAI's legacy lists
    (`tokens`, `token_logprobs`, `top_logprobs` dicts; llama_cpp.server, vLLM, SGLang) or the content
    list of chat completions (`id`, `token`, `bytes`, `logprob`, `top_logprobs`; llama.cpp's server)."""
    try:
        choice = body["choices"][0]
        text, finish = choice.get("text", ""), choice.get("finish_reason") or "length"
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _Retryable("the answer has no choices[0]", "malformed") from None
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if isinstance(content, list):
        tops = [e.get("top_logprobs") if isinstance(e, dict) else None for e in content]
    elif isinstance(lp, dict) and isinstance(lp.get("tokens"), list) and isinstance(lp.get("top_logprobs"), list):
        tops = lp["top_logprobs"]
    else:
        raise _Retryable("the answer carries no logprobs", "missing_logprobs")
    # OpenAI: "up to logprobs+1 elements" (the sampled token is always listed). More is not an answer
    # to this request, and a hostile server's way to make the client work; checked before reading them.
    if len(tops) > n or (top_k is not None and any(hasattr(t, "__len__") and len(t) > top_k + 1 for t in tops)):
        raise _Retryable(f"the logprobs list more than the {n} positions and {top_k} alternatives asked for",
                         "malformed")
    steps = _content_steps(content, tokenizer) if isinstance(content, list) else _legacy_steps(lp, tokenizer)
    if not steps and not text and finish == "stop":
        # The remote's first choice is end-of-text, which llama_cpp.server reports as no tokens at all:
        # a valid answer that carries no scores for this position.
        return Continuation("", [], finish)
    if not steps and content == [] and text:
        raise _Retryable("the answer's logprobs list no tokens for its text", "missing_logprobs")
    return Continuation(text, steps, finish)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Retryable("a logprob is not a number", "malformed") from None


def _legacy_steps(lp: dict, tokenizer: Any) -> list[TokenScores]:
    tokens, token_lps, tops = lp["tokens"], lp.get("token_logprobs") or [], lp["top_logprobs"]
    if len(tops) != len(tokens) or len(token_lps) != len(tokens):
        raise _Retryable(f"the logprobs list {len(tokens)} tokens, {len(tops)} distributions and {len(token_lps)} "
                         "logprobs", "missing_logprobs")
    steps = []
    for token, token_lp, top in zip(tokens, token_lps, tops):
        if not isinstance(top, dict) or not isinstance(token, str):
            raise _Retryable("a logprobs entry is not a token -> logprob mapping", "malformed")
        scores: dict[bytes | str, float] = {}
        for name, value in top.items():
            _add(scores, _named_token(str(name), tokenizer), _number(value))
        steps.append(TokenScores(_named_token(token, tokenizer) or "", _number(token_lp), scores))
    return steps


def _content_steps(content: list, tokenizer: Any) -> list[TokenScores]:
    steps = []
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("top_logprobs"), list):
            raise _Retryable("a logprobs content entry has no top_logprobs list", "malformed")
        scores: dict[bytes | str, float] = {}
        own_bytes = None  # the chosen token's bytes as listed among the alternatives
        for alt in entry["top_logprobs"]:
            if not isinstance(alt, dict):
                raise _Retryable("a top_logprobs entry is not an object", "malformed")
            key = _content_token(alt, tokenizer, check=True)
            _add(scores, key, _number(alt.get("logprob")))
            if alt.get("id") is not None and alt.get("id") == entry.get("id"):
                own_bytes = _bytes(alt)
        entry_bytes = _bytes(entry)
        if own_bytes is None and tokenizer is not None and isinstance(entry.get("id"), int):
            own_bytes = _piece(tokenizer, entry["id"])
        if entry_bytes is not None and own_bytes is not None and entry_bytes != own_bytes:
            # llama.cpp's server lists the tokens of a UTF-8 character as one entry with the last one's
            # scores: the positions from here on are unknown, so the answer ends before them.
            break
        steps.append(TokenScores(_content_token(entry, tokenizer) or "", _number(entry.get("logprob")), scores))
    return steps


# A control token the server names by id without its bytes, when the remote's tokenizer is unknown:
# the only control token a completion ends on is its end of text, which the bridge maps to the local one.
_UNNAMED_CONTROL_TOKEN = "<|endoftext|>"


def _content_token(entry: dict, tokenizer: Any, check: bool = False) -> bytes | str | None:
    """A content-list token: by id through the remote's tokenizer, else its bytes, else its text.
    check: compare the tokenizer's bytes with the server's (alternatives are never merged entries)."""
    token_id, raw = entry.get("id"), _bytes(entry)
    if tokenizer is not None and isinstance(token_id, int) and not isinstance(token_id, bool):
        piece = _piece(tokenizer, token_id)
        if check and raw and piece != raw:
            raise RemoteError(f"the remote's tokenizer is not the server's: token {token_id} is {raw!r} there and "
                              f"{piece!r} here; pass the remote's own family as template=", kind="config")
        return piece or tokenizer.token_to_piece(token_id, special=True)
    if raw is not None:
        return raw or (_UNNAMED_CONTROL_TOKEN if token_id is not None else None)
    token = entry.get("token")
    return _named_token(token, tokenizer) if isinstance(token, str) else None


def _named_token(token: str, tokenizer: Any) -> bytes | str | None:
    """A token the server names by text: vLLM's 'token_id:N' through the remote's tokenizer; None for
    text that names no token (a partial UTF-8 character sent as '' or U+FFFD)."""
    if token.startswith("token_id:"):
        if tokenizer is None:
            raise RemoteError("the server names tokens by id (token_id:N) and the remote's tokenizer is unknown: "
                              "pass template= a LocalModel of the remote's family", kind="unsupported")
        try:
            token_id = int(token[len("token_id:"):])
        except ValueError:
            raise _Retryable(f"the server named a token {token!r}", "malformed") from None
        return _piece(tokenizer, token_id) or tokenizer.token_to_piece(token_id, special=True)
    return None if not token or "\ufffd" in token else token


def _piece(tokenizer: Any, token_id: int) -> bytes:
    if not 0 <= token_id < tokenizer.n_vocab:
        raise RemoteError(f"the server named token {token_id}, which the remote's tokenizer does not have "
                          f"({tokenizer.n_vocab} tokens)", kind="config")
    return tokenizer.token_to_piece(token_id)


def _bytes(entry: dict) -> bytes | None:
    raw = entry.get("bytes")
    if raw is None:
        return None
    try:
        return bytes(raw)
    except (TypeError, ValueError):
        raise _Retryable("a token's bytes are not a list of bytes", "malformed") from None


def _add(scores: dict, key: bytes | str | None, logprob: float) -> None:
    """Adds a token's probability; two entries naming one token (bytes of one UTF-8 string) share it."""
    if key is None:
        return
    held = scores.get(key)
    scores[key] = logprob if held is None else max(held, logprob) + math.log1p(math.exp(-abs(held - logprob)))


def _parse_chat_stream(body: str) -> ChatReply:
    parts, reasoning, finish, done = [], [], None, False
    for line in body.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            choices = json.loads(data)["choices"]
            if not choices:  # a usage-only chunk (OpenAI, vLLM, SGLang and llama.cpp send one on request)
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("a stream event is not a chat completion chunk", "malformed") from None
        # Reasoning models (vLLM, SGLang, llama.cpp with a reasoning format) stream their thinking in
        # reasoning_content: the reply is the answer, or the reasoning when there is no answer.
        parts.append(delta.get("content") or "")
        reasoning.append(delta.get("reasoning_content") or "")
        finish = choice.get("finish_reason") or finish
    if not done or finish is None:
        raise _Retryable("the stream ended before its last event", "truncated")
    return ChatReply("".join(parts) or "".join(reasoning), finish)


def _token_identity(body: Any) -> str:
    """How an answer names its tokens: 'ids', 'bytes' or 'text'."""
    lp = body["choices"][0]["logprobs"]
    if isinstance(lp.get("content"), list):
        first = lp["content"][0] if lp["content"] else {}
        return "ids" if isinstance(first.get("id"), int) else "bytes" if "bytes" in first else "text"
    return "ids" if any(str(t).startswith("token_id:") for t in lp["tokens"]) else "text"


def _scrubbed(error: Exception) -> Exception:
    """The error without its traceback and chained exceptions."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    error.__suppress_context__ = False
    return error


def _seed(seed: int | None) -> dict:
    return {} if seed is None else {"seed": int(seed)}


def _retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return str(body)[:300]
