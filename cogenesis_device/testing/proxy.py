"""A fault-injecting HTTP proxy on 127.0.0.1: round-trip delay, jitter, and faults on demand (dropped
connections, 5xx/429, garbage bodies, truncated bodies and streams, answers without logprobs or with
their positions shifted, stalls). The collaboration tests and benchmarks put it in front of a loopback server.
"""
from __future__ import annotations

import asyncio
import collections
import json
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

FAULTS = ("drop", "status", "garbage", "truncate", "strip_logprobs", "shift_logprobs", "stall")


@dataclass
class ProxyRecord:
    """One request as the proxy received it."""

    method: str
    path: str
    body: bytes
    fault: str | None
    status: int = 0
    bytes_out: int = 0
    received: float = 0.0  # time.monotonic() when the request had arrived whole


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that delays and breaks requests on purpose.

    rtt_ms, jitter_ms: added to every request, half before forwarding and half before answering.
    inject(kind, count, after, ...): `count` requests, after `after` untouched ones, get fault `kind`:
      'drop' closes the connection without an answer; 'status' answers `status` (with Retry-After
      `retry_after` when given); 'garbage' answers 200 with a body that is not JSON; 'truncate' cuts
      the answer in half (a JSON body mid-way, an event stream cleanly between events);
      'strip_logprobs' removes logprobs from the answer; 'shift_logprobs' moves each position's
      alternatives to the position before (a server off by one); 'stall' waits `seconds` first.
    """

    def __init__(self, upstream_base_url: str, *, rtt_ms: float = 0.0, jitter_ms: float = 0.0, seed: int = 0):
        parsed = urlparse(upstream_base_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.path_prefix = parsed.path.rstrip("/")
        self.rtt_ms, self.jitter_ms = rtt_ms, jitter_ms
        self.records: list[ProxyRecord] = []
        self.connections = 0  # TCP connections accepted: shows whether clients reuse them
        self.port = 0
        self._random = random.Random(seed)
        self._faults: collections.deque[tuple[str, dict]] = collections.deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path_prefix}"

    def inject(self, kind: str, count: int = 1, *, after: int = 0, **params) -> None:
        """Queue `count` faults of `kind`, after `after` requests that pass untouched."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self._lock:
            self._faults.extend([(None, {})] * after + [(kind, params)] * count)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.records.clear()
            self.connections = 0

    def start(self) -> "FaultProxy":
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve():
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _half_rtt(self) -> None:
        delay = self.rtt_ms / 2 + (self._random.uniform(-self.jitter_ms, self.jitter_ms) / 2 if self.jitter_ms else 0)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                body = await reader.readexactly(length) if length else b""
                with self._lock:
                    kind, params = self._faults.popleft() if self._faults else (None, {})
                    record = ProxyRecord(method, path, body, kind, received=time.monotonic())
                    self.records.append(record)
                await self._half_rtt()
                if kind == "drop":
                    break
                if kind == "stall":
                    await asyncio.sleep(params.get("seconds", 5.0))
                if kind == "status":
                    extra = [("Retry-After", str(params["retry_after"]))] if "retry_after" in params else []
                    error = json.dumps({"error": {"message": "injected fault", "type": "server_error"}}).encode()
                    response = _Response(params.get("status", 503), "Injected", [("Content-Type", "application/json"),
                                                                                   *extra], error)
                elif kind == "garbage":
                    response = _Response(200, "OK", [("Content-Type", "application/json")], b"<html>upstream hiccup")
                else:
                    response = await self._forward(method, path, headers, body)
                    if kind == "strip_logprobs":
                        response.body = _strip_logprobs(response.body)
                    elif kind == "shift_logprobs":
                        response.body = _shift_logprobs(response.body)
                await self._half_rtt()
                record.status = response.status
                if kind == "truncate" and not response.header("content-type").startswith("text/event-stream"):
                    # Promise the whole body, send half, hang up.
                    record.bytes_out = await _send(writer, response, cut=len(response.body) // 2)
                    break
                if kind == "truncate":
                    events = response.body.split(b"\n\n")
                    response.body = b"\n\n".join(events[: max(1, len(events) // 2)]) + b"\n\n"
                record.bytes_out = await _send(writer, response)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    async def _forward(self, method: str, path: str, headers: list, body: bytes) -> _Response:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            skip = {"connection", "content-length", "host", "keep-alive"}
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.upstream[0]}:{self.upstream[1]}", "Connection: close",
                     f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers if k.lower() not in skip]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        _, status, *reason = status_line.split(" ", 2)
        upstream_headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line]
        if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in upstream_headers):
            payload = _dechunk(payload)
        kept = [(k, v) for k, v in upstream_headers if k.lower() not in ("transfer-encoding", "content-length", "connection")]
        return _Response(int(status), reason[0] if reason else "", kept, payload)


async def _send(writer: asyncio.StreamWriter, response: _Response, cut: int | None = None) -> int:
    body = response.body if cut is None else response.body[:cut]
    lines = [f"HTTP/1.1 {response.status} {response.reason or 'Status'}", f"Content-Length: {len(response.body)}",
             "Connection: keep-alive"] + [f"{k}: {v}" for k, v in response.headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    writer.write(data)
    await writer.drain()
    return len(data)


def _dechunk(payload: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = payload.index(b"\r\n", pos)
        size = int(payload[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += payload[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


def _strip_logprobs(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body
    for choice in data.get("choices", []) if isinstance(data, dict) else []:
        choice.pop("logprobs", None)
    return json.dumps(data).encode()


def _shift_logprobs(body: bytes) -> bytes:
    """The answer with the alternatives of position i + 1 listed at position i (and the first's last),
    in either logprobs shape: what a server whose positions are off by one sends."""
    try:
        data = json.loads(body)
        lp = data["choices"][0]["logprobs"]
    except (ValueError, KeyError, IndexError, TypeError):
        return body
    entries = lp.get("content") if isinstance(lp, dict) else None
    if isinstance(entries, list) and entries:
        tops = [e.get("top_logprobs") for e in entries]
        for entry, top in zip(entries, tops[1:] + tops[:1]):
            entry["top_logprobs"] = top
    elif isinstance(lp, dict) and lp.get("top_logprobs"):
        lp["top_logprobs"] = lp["top_logprobs"][1:] + lp["top_logprobs"][:1]
    return json.dumps(data).encode()
