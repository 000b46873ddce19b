"""Real OpenAI-compatible servers on 127.0.0.1: llama.cpp's own server (xllamacpp) or llama_cpp.server,
with a registry model, in a child process that exits with its parent. The demo, the tests and the
benchmarks use them as the "remote"; nothing here talks to anything but 127.0.0.1.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import urlparse

from ..errors import MissingDependencyError
from ..registry import DEFAULT_MODEL, resolve_model
from .reference import NO_EXTRA_BUFFERS

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
_SERVE_LLAMA_CPP_PYTHON = "import os, sys\n" + _HANDSHAKE + _DIE_WITH_PARENT + NO_EXTRA_BUFFERS + (
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
        # llama.cpp's server is an extra (llama_cpp.server comes with the test extra, and a child that
        # cannot import it fails with its log). Looked up, not imported: the server runs in the child.
        if server == "llama.cpp" and importlib.util.find_spec("xllamacpp") is None:
            raise MissingDependencyError("the loopback remote runs llama.cpp's server from the xllamacpp package, "
                                         "which is not installed: pip install 'cogenesis-device[demo]'")
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
