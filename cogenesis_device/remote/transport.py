"""The one choke point: every request to a remote goes through `GuardedTransport`, which hands its
URL, headers and body to the job's EgressGuard (privacy.py) before a byte leaves, records what was sent
and received, and reads each answer up to a bound.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import httpx2

from ..errors import RemoteError
from ..privacy import EgressGuard

log = logging.getLogger("cogenesis_device.remote")

# The guard of the job whose request is being sent, and what on-device attribution withheld from it
# (recorded with it; see collab/); set by the client for each request it submits.
current_guard: contextvars.ContextVar[EgressGuard | None] = contextvars.ContextVar("cogenesis_guard", default=None)
current_attribution: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cogenesis_attribution",
                                                                                  default=None)
# The HTTP requests one client call has sent, counted here, so that openai-python's retries of HTTP
# faults and the client's retries of malformed answers draw on one budget (client.py).
requests_sent: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("cogenesis_requests_sent",
                                                                                default=None)


class GuardedTransport(httpx2.AsyncBaseTransport):
    """The choke point: every request (its URL, headers and body) passes the current job's guard, then
    is recorded; every answer is read whole, up to max_response_bytes, within timeout seconds (an
    httpx2.ReadTimeout past it, which the openai client retries as any timeout)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, default_guard: EgressGuard, timings: dict,
                 max_response_bytes: int, timeout: float):
        self._inner = inner
        self._default_guard = default_guard
        self._timings = timings
        self._max_response_bytes = max_response_bytes
        self._timeout = timeout

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        guard = current_guard.get() or self._default_guard
        checked = time.perf_counter()
        # Headers (some come from the environment: OPENAI_ORG_ID, OPENAI_PROJECT_ID...) and the URL
        # cannot be redacted: one that carries private text stops the request.
        guard.check_envelope(str(request.url), [(k, v) for k, v in request.headers.items() if not _fixed_header(k)])
        body, record = guard.check_body(request.method, request.url.path, await request.aread(),
                                        current_attribution.get())
        self._timings["guard_ms"] += (time.perf_counter() - checked) * 1000.0
        headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
        headers.append(("content-length", str(len(body))))
        outgoing = httpx2.Request(request.method, request.url, headers=headers, content=body,
                                  extensions=request.extensions)
        sent = requests_sent.get()
        if sent is not None:
            sent[0] += 1
        start = time.perf_counter()
        try:
            response, content = await asyncio.wait_for(self._exchange(outgoing), self._timeout)
        except asyncio.TimeoutError:
            log.warning("%s %s: no complete answer within %g s", request.method, request.url.path, self._timeout)
            raise httpx2.ReadTimeout(f"no complete answer within {self._timeout:g} s", request=request) from None
        except httpx2.TransportError as exc:
            log.warning("%s %s: %s", request.method, request.url.path, type(exc).__name__)
            raise
        finally:
            record.duration_ms = (time.perf_counter() - start) * 1000.0
            self._timings["http_ms"] += record.duration_ms
        if response.status_code >= 400:  # a server in trouble is news; a refused request (4xx) the caller's to report
            log.log(logging.WARNING if response.status_code == 429 or response.status_code >= 500 else logging.INFO,
                    "%s %s: HTTP %d", request.method, request.url.path, response.status_code)
        record.status = response.status_code
        record.bytes_received = len(content)
        return httpx2.Response(response.status_code, headers=response.headers, content=content,
                               extensions=response.extensions, request=request)

    async def _exchange(self, request: httpx2.Request) -> tuple[httpx2.Response, bytes]:
        response = await self._inner.handle_async_request(request)
        return response, await _read_bounded(response, self._max_response_bytes)  # a truncated body fails here

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
