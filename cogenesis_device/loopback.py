"""Loopback stand-ins for the network: a real OpenAI-compatible server and a fault-injecting proxy.

LoopbackServer runs llama.cpp's own server (xllamacpp) or llama_cpp.server on 127.0.0.1 with a
registry model, in a child process. FaultProxy sits in front of it and adds round-trip delay, jitter
and faults (dropped connections, 5xx/429, garbage bodies, truncated bodies and streams, answers
without logprobs, stalls). ScriptedRemote plays a hostile remote. The demo, the tests and the
benchmarks use them; nothing here talks to anything but 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import secrets
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

from .registry import DEFAULT_MODEL, resolve_model

FAULTS = ("drop", "status", "garbage", "truncate", "strip_logprobs", "shift_logprobs", "stall")


SERVERS = ("llama.cpp", "llama-cpp-python")

# The child's first act: a thread that exits when stdin reaches EOF. The parent holds the write end,
# so the server goes away however the parent ends (even SIGKILL), on Linux and macOS alike.
_DIE_WITH_PARENT = (
    "import os, sys, threading\n"
    "threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()\n"
)

# Both servers bind port 0 themselves and report the address on the handshake pipe (the child's
# original stdout), so no other process can take the port first; their logs go to stderr. The model
# alias, which the parent's readiness check asks for, comes on stdin's first line, not in argv,
# where any local process could read it from the process list.
_HANDSHAKE = (
    "import json\n"
    "alias = sys.stdin.buffer.readline().decode().strip()\n"
    "handshake = os.fdopen(os.dup(1), 'w')\n"
    "os.dup2(2, 1)\n"
    "def report(address):\n"
    "    handshake.write(json.dumps({'address': address}) + '\\n')\n"
    "    handshake.flush()\n"
)
_DIE_WITH_PARENT = (
    "import os, sys, threading\n"
    "threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()\n"
)

# llama.cpp's own server (the xllamacpp wheel). argv: model path, n_ctx, n_parallel, threads.
_SERVE_LLAMA_CPP = "import os, sys\n" + _HANDSHAKE + _DIE_WITH_PARENT + (
    "import time, xllamacpp\n"
    "model, n_ctx, n_parallel, threads = sys.argv[1:5]\n"
    "p = xllamacpp.CommonParams()\n"
    "p.model.path, p.model_alias = model, {alias}\n"
    "p.hostnames, p.port = ['127.0.0.1'], 0\n"
    "p.n_ctx, p.n_parallel, p.kv_unified = int(n_ctx) * int(n_parallel), int(n_parallel), True\n"
    "p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(threads)\n"
    "p.endpoint_props = False\n"
    "server = xllamacpp.Server(p)\n"
    "report(server.listening_address)\n"
    "while True: time.sleep(3600)\n"
)

# llama-cpp-python's server (FastAPI + uvicorn) on a socket the child binds. argv: model path,
# n_ctx, threads.
_SERVE_LLAMA_CPP_PYTHON = "import os, sys\n" + _HANDSHAKE + _DIE_WITH_PARENT + (
    "import asyncio, socket, uvicorn\n"
    "from llama_cpp.server.app import create_app\n"
    "from llama_cpp.server.settings import ModelSettings, ServerSettings\n"
    "model, n_ctx, threads = sys.argv[1:4]\n"
    "sock = socket.socket()\n"
    "sock.bind(('127.0.0.1', 0))\n"
    # By default a new request aborts a streaming one; the server must queue them instead.
    "app = create_app(server_settings=ServerSettings(host='127.0.0.1', interrupt_requests=False),\n"
    "                 model_settings=[ModelSettings(model=model, model_alias=alias, n_ctx=int(n_ctx),\n"
    "                                               n_threads=int(threads), n_threads_batch=int(threads),\n"
    "                                               flash_attn=True, verbose=False)])\n"
    "report(f'http://127.0.0.1:{sock.getsockname()[1]}')\n"
    "asyncio.run(uvicorn.Server(uvicorn.Config(app, log_level='warning')).serve(sockets=[sock]))\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """A real OpenAI-compatible server on 127.0.0.1, in a child process that dies with its parent.

    server: "llama.cpp" (llama.cpp's own C++ server, from the xllamacpp wheel; the default) or
        "llama-cpp-python" (llama_cpp.server, a Python server that builds logprobs in Python).
    n_ctx: context tokens per concurrent request; n_parallel: requests served at once.
    The server serves the model under a name with a random suffix (`model_name`), and start() returns
    only once a GET /v1/models on its port answers with that name: the server is loaded, and it is
    this process's child, not another local process holding the port.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, server: str = "llama.cpp", n_ctx: int = 2048,
                 n_parallel: int = 2, n_threads: int | None = None, startup_timeout: float = 120.0):
        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")
        self.model_path = str(resolve_model(model))
        self.server = server
        self.n_ctx, self.n_parallel = n_ctx, n_parallel
        self.n_threads = n_threads or min(2, os.cpu_count() or 1)
        self.startup_timeout = startup_timeout
        self.model_name = f"{os.path.basename(self.model_path)}@{secrets.token_hex(8)}"
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LoopbackServer":
        self._log = tempfile.TemporaryFile()
        deadline = time.monotonic() + self.startup_timeout
        if self.server == "llama.cpp":
            command = [sys.executable, "-c", _SERVE_LLAMA_CPP, self.model_path, str(self.n_ctx), str(self.n_parallel),
                       str(self.n_threads)]
        else:
            command = [sys.executable, "-c", _SERVE_LLAMA_CPP_PYTHON, self.model_path, str(self.n_ctx),
                       str(self.n_threads)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.PIPE)
        self._process.stdin.write(self.model_name.encode() + b"\n")
        self._process.stdin.flush()
        self.port = self._read_port(deadline)
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._fail(f"the loopback server exited with status {self._process.returncode}")
            if self._answers():
                return self
            time.sleep(0.2)
        self._fail(f"the loopback server did not answer within {self.startup_timeout:g} s")

    def _read_port(self, deadline: float) -> int:
        """The port from the child's handshake line."""
        ready, _, _ = select.select([self._process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = self._process.stdout.readline() if ready else b""
        try:
            return int(urlparse(json.loads(line)["address"]).port)
        except (ValueError, KeyError, TypeError):
            self._fail("the loopback server did not report its address" + (" in time" if not ready else ""))

    def _answers(self) -> bool:
        """Whether GET /v1/models on the port lists this server's model name."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                listed = json.loads(response.read()).get("data", [])
        except (OSError, ValueError, AttributeError):
            return False
        return any(isinstance(m, dict) and m.get("id") == self.model_name for m in listed)

    def _fail(self, problem: str) -> None:
        tail = self.log_tail()  # read before stop() closes the log
        self.stop()
        raise RuntimeError(f"{problem}:\n{tail}")

    def log_tail(self, n: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")[-n:]

    def stop(self) -> None:
        if self._process is not None:
            self._process.stdin.close()  # EOF: the child exits on its own
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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


class ReplayServer:
    """An HTTP server on 127.0.0.1 that answers from a table, for contract tests and hostile remotes.

    routes: {"METHOD /path": answer}, where answer is (status, body) or a callable(request) -> (status,
    body) taking the parsed JSON request; a dict body is sent as JSON, a str body as an event stream
    (text/event-stream). Unknown routes answer 404. Every request body received is kept in `bodies`.
    """

    def __init__(self, routes: dict):
        import http.server

        self.routes = dict(routes)
        self.bodies: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _route(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("utf-8", "replace")
                if method == "POST":
                    server.bodies.append(body)
                answer = server.routes.get(f"{method} {self.path.split('?')[0]}")
                if answer is None:
                    status, payload = 404, {"error": {"message": f"no route {method} {self.path}"}}
                else:
                    status, payload = answer(json.loads(body) if body else {}) if callable(answer) else answer
                stream = isinstance(payload, str)
                data = (payload if stream else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class ScriptedRemote(ReplayServer):
    """An adversarial OpenAI-compatible remote on 127.0.0.1 that plays an attacker, for privacy tests.

    It answers /v1/completions with logprobs chosen by `script(prompt, n) -> steps`, where each step is
    (token, {token: logprob, ...}) and the top dict may be empty ("no scores"); a step list may be
    shorter than n. Every request body it receives is kept in `bodies`, which is what an attacker
    holds. /v1/models lists one model; the probe is answered by the script too.
    """

    def __init__(self, script):
        self.script = script
        super().__init__({"GET /v1/models": (200, {"object": "list", "data": [{"id": "attacker", "object": "model"}]}),
                          "POST /v1/completions": self._complete})

    def _complete(self, request: dict):
        n = int(request.get("max_tokens", 1))
        steps = list(self.script(request["prompt"], n))[:n] or [("", {})]
        tokens = [t for t, _ in steps]
        logprobs = {"tokens": tokens, "token_logprobs": [top.get(t, 0.0) if top else 0.0 for t, top in steps],
                    "top_logprobs": [top for _, top in steps], "text_offset": [0] * len(steps)}
        return 200, {"object": "text_completion", "model": "attacker", "choices": [
            {"index": 0, "text": "".join(tokens), "finish_reason": "length", "logprobs": logprobs}]}
