"""Remotes that answer from a script on 127.0.0.1: ReplayServer replays documented bodies of other
servers (vLLM, SGLang, OpenAI, Ollama, TGI) for the contract tests; ScriptedRemote plays a remote that
answers what a script (an attacker, or a second model) decides.
"""
from __future__ import annotations

import json
import threading
import time

class ReplayServer:
    """An HTTP server on 127.0.0.1 that answers from a table, for contract tests and hostile remotes.

    routes: {"METHOD /path": answer}, where answer is (status, body) or (status, body, headers), or a
    callable(request) -> one of those taking the parsed JSON request; a dict body is sent as JSON, a
    str body as an event stream (text/event-stream). Unknown routes answer 404. Every request body
    received is kept in `bodies`, and the time.monotonic() it arrived in `times`.
    """

    def __init__(self, routes: dict):
        import http.server

        self.routes = dict(routes)
        self.bodies: list[str] = []
        self.times: list[float] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _route(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("utf-8", "replace")
                if method == "POST":
                    server.bodies.append(body)
                    server.times.append(time.monotonic())
                answer = server.routes.get(f"{method} {self.path.split('?')[0]}")
                if answer is None:
                    answer = (404, {"error": {"message": f"no route {method} {self.path}"}})
                elif callable(answer):
                    answer = answer(json.loads(body) if body else {})
                status, payload, headers = (*answer, {}) if len(answer) == 2 else answer
                stream = isinstance(payload, str)
                data = (payload if stream else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
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
