"""RemoteModel against the real servers on 127.0.0.1 (llama.cpp's, and llama_cpp.server), through the
fault-injecting proxy."""
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device.errors import PrivacyBlockedError, RemoteError
from cogenesis_device.testing import free_port
from cogenesis_device.privacy import EgressGuard
from cogenesis_device.remote import RemoteModel

HAIKU = [{"role": "user", "content": "Write a haiku about rain."}]


def test_probe_finds_what_the_server_supports(real_server):
    with RemoteModel(real_server.base_url) as remote:
        caps = remote.connect()
    assert caps.model == real_server.model_name
    assert caps.max_top_k == 20  # neither server has an upper bound; 20 is the client's cap
    assert caps.positions_ok and caps.next_token_scores and caps.missing() == ""
    # llama.cpp names tokens by id (and bytes); llama_cpp.server by text only
    assert caps.token_identity == ("ids" if real_server.server == "llama.cpp" else "text")


# llama.cpp's server is a newer llama.cpp than the local engine's, and its kernels round differently:
# its logprobs for the bundled model differ from the local ones by up to about 0.3 nats (measured:
# 0.27 at most over this test's positions). A position off by one differs by several nats.
BUILD_TOLERANCE = {"llama.cpp": 0.4, "llama-cpp-python": 0.01}


@pytest.mark.parametrize("path", ["ids", "bytes or text"])
def test_next_token_scores_match_the_same_model_run_locally(real_server, model, pieces, path):
    """The ids path reads tokens through the remote's tokenizer; the other path reads the bytes
    llama.cpp sends, or the text llama_cpp.server sends. Either way, at every position of a
    12-token continuation, every listed token and score is the local model's own after the same prefix."""
    if path == "ids" and real_server.server != "llama.cpp":
        pytest.skip("llama_cpp.server does not name tokens by id")
    with RemoteModel(real_server.base_url, template=model, tokenizer=model if path == "ids" else None) as remote:
        prompt = remote.prompt(HAIKU)
        continuation = remote.next_tokens(prompt, n=12, public=True)
    assert len(continuation.steps) == 12
    session = model.new_session()
    tokens = model.tokenize(prompt, parse_special=True)
    session.prefill(np.asarray(tokens[:-1], dtype=np.int32))
    for step in continuation.steps:
        session.decode([0], [tokens[-1]])
        row = session.logits(0).astype(np.float64)
        local = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert len(step.top) == 20 and step.logprob == max(step.top.values())  # greedy: its own best
        for token, logprob in step.top.items():
            assert abs(local[pieces[_as_bytes(token)]] - logprob) < BUILD_TOLERANCE[real_server.server]
        tokens.append(pieces[_as_bytes(step.token)])  # the same prefix as the server's next position
    assert continuation.text.encode() == b"".join(_as_bytes(s.token) for s in continuation.steps)


def _as_bytes(token) -> bytes:
    return token if isinstance(token, bytes) else token.encode()


@pytest.mark.parametrize("tokenizer", ["remote's", None])
def test_an_immediate_end_of_text_is_an_answer(real_server, model, tokenizer):
    """When the remote's first choice is end-of-text, llama.cpp lists it (id, no bytes) with its scores:
    read as the end-of-turn token, by name through the remote's tokenizer or as the generic end of text
    without it. llama_cpp.server answers "no tokens, finish stop": an answer without scores. Neither is
    a fault to retry (before, the second sent a logits run into local-only fallback)."""
    from cogenesis_device.testing import FaultProxy

    with FaultProxy(real_server.base_url) as proxy, \
            RemoteModel(proxy.base_url, template=model, tokenizer=model if tokenizer else None) as remote:
        prompt = remote.prompt([{"role": "user", "content": "What is 2+2? Answer with a number only."}]) + "4"
        answer = remote.next_tokens(prompt, n=8, top_k=20, public=True)
        assert sum(b"2+2" in r.body for r in proxy.records) == 1  # answered once, not retried
    assert answer.text == "" and answer.finish_reason == "stop"
    if real_server.server == "llama-cpp-python":
        assert answer.steps == []
        return
    end = b"<|im_end|>" if tokenizer else "<|endoftext|>"
    [step] = answer.steps
    assert step.token == end and step.top[end] == step.logprob == max(step.top.values())


def test_an_answer_that_stops_inside_a_character_is_an_answer(real_server, model):
    """Asked for fewer tokens than the next character takes (an emoji is 4 byte tokens here), llama.cpp's
    server answers its text with `logprobs: null`: it holds scores back until a character is complete.
    llama_cpp.server instead generates past max_tokens to the character's end and lists each byte token
    of it named ''. Either is an answer without scores for those positions, not a fault: retried, it came
    back the same, and a logits run went local-only for good (3 of 150 dev jobs did, llama.cpp's server;
    llama_cpp.server's answer was refused as listing more positions than asked)."""
    from cogenesis_device.testing import FaultProxy

    with FaultProxy(real_server.base_url) as proxy, RemoteModel(proxy.base_url, template=model) as remote:
        for n in (1, 2):
            answer = remote.next_tokens("Party time! \U0001F389\U0001F389\U0001F389\U0001F389", n=n, top_k=5,
                                        public=True)
            assert answer.finish_reason == "length" and len(answer.steps) <= n
            assert all(step.token for step in answer.steps)  # no position whose token is unnamed
        assert sum(b"Party time" in r.body for r in proxy.records) == 2  # answered at once, never retried


def test_chat_completion_is_the_models_greedy_reply(remote, proxy, loopback_server, model):
    """The reply read from the stream is what the same model writes greedily for the prompt the server
    renders (read raw from its /apply-template), run locally. The prompt is one where every one of the
    8 tokens leads by more than 1 nat (checked below), far above the 0.27 nats by which the server's
    newer kernels round differently, so greedy decoding cannot differ between the two builds."""
    from reference import post

    messages = [{"role": "user", "content": "Name the first three letters of the alphabet."}]
    reply = remote.chat(messages, max_tokens=8, public=True)
    sent = json.loads(proxy.records[-1].body)
    assert sent["messages"] == messages and sent["max_tokens"] == 8 and sent["stream"] is True
    rendered = post(f"{loopback_server.base_url.removesuffix('/v1')}/apply-template", {"messages": messages})["prompt"]
    prompt = model.tokenize(rendered, parse_special=True)
    session = model.new_session()
    session.prefill(np.asarray(prompt[:-1], dtype=np.int32))
    token, greedy = prompt[-1], []
    for _ in range(8):
        session.decode([0], [token])
        row = session.logits(0).astype(np.float64)
        first, second = np.sort(row)[-2:][::-1]
        assert first - second > 1.0  # logits differ as log-probabilities do
        token = int(np.argmax(row))
        assert not model.native.is_eog(token)
        greedy.append(token)
    assert reply.text == model.detokenize(greedy) and reply.finish_reason == "length"


@pytest.mark.parametrize("fault, params", [
    ("drop", {}),
    ("status", {"status": 503}),
    ("status", {"status": 429, "retry_after": 0.2}),
    ("status", {"status": 408}),
    ("status", {"status": 409}),
    ("garbage", {}),
    ("truncate", {}),
    ("strip_logprobs", {}),
])
def test_a_transient_fault_is_retried_and_the_answer_is_right(remote, proxy, fault, params):
    prompt = remote.prompt(HAIKU)
    expected = remote.next_tokens(prompt, n=3, public=True).text
    proxy.clear()
    proxy.inject(fault, **params)
    start = time.monotonic()
    assert remote.next_tokens(prompt, n=3, public=True).text == expected
    assert [r.fault for r in proxy.records] == [fault, None]
    if "retry_after" in params:  # Retry-After is honoured, not the 10 ms backoff
        assert time.monotonic() - start >= 0.2


def test_backoff_between_attempts_grows_exponentially(proxy, model):
    """After a malformed answer (which the HTTP client takes as an answer), attempt n waits
    backoff * 2**(n-1), scaled by a random factor in [0.5, 1): the lower bounds are what no scheduling
    noise can break, and they grow 1, 2, 4."""
    backoff = 0.15
    with RemoteModel(proxy.base_url, template=model, max_retries=3, backoff=backoff, max_backoff=5.0) as remote:
        remote.connect()
        proxy.clear()
        proxy.inject("garbage", count=3)
        assert remote.next_tokens(remote.prompt(HAIKU), n=1, public=True).steps
    times = [r.received for r in proxy.records]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3 and [r.fault for r in proxy.records] == ["garbage"] * 3 + [None]
    assert all(gap >= 0.5 * backoff * 2 ** n for n, gap in enumerate(gaps)), gaps
    assert gaps[2] > gaps[0]


def test_a_json_schema_response_format_constrains_the_reply(remote, proxy):
    """OpenAI's and vLLM's dialect, which llama.cpp's server also reads: the reply follows the schema."""
    from cogenesis_device.eval.data_build import SCHEMAS, response_format

    remote.connect()
    proxy.clear()
    reply = remote.chat([{"role": "user", "content": "List two writing tasks for a nurse, as JSON."}], max_tokens=120,
                        response_format=response_format("tasks", "json_schema"), public=True)
    sent = json.loads(proxy.records[-1].body)
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMAS["tasks"]
    if reply.finish_reason == "stop":  # a reply cut by max_tokens is a prefix of valid JSON
        tasks = json.loads(reply.text)["tasks"]
        assert tasks and all(set(t) >= {"title", "description"} for t in tasks)
    else:
        assert "".join(reply.text.split()).startswith('{"tasks":[{"title":"')


def test_the_fault_proxy_adds_the_round_trip_time_it_is_given(proxy):
    """The collaboration benchmark's simulated network: each request takes at least rtt - jitter."""
    import urllib.request

    def timed() -> float:
        start = time.monotonic()
        with urllib.request.urlopen(f"{proxy.base_url}/models", timeout=10) as response:
            response.read()
        return time.monotonic() - start

    baseline = min(timed() for _ in range(3))
    proxy.rtt_ms, proxy.jitter_ms = 120.0, 40.0
    delayed = [timed() for _ in range(5)]
    assert all(d >= 0.080 for d in delayed) and min(delayed) > baseline + 0.06, (baseline, delayed)


@pytest.mark.parametrize("fault, params, kind", [
    ("drop", {}, "connection"),
    ("status", {"status": 500}, "status"),
    ("garbage", {}, "malformed"),
    ("truncate", {}, "connection"),
    ("strip_logprobs", {}, "missing_logprobs"),
])
def test_a_persistent_fault_ends_in_a_remote_error_after_bounded_retries(remote, proxy, fault, params, kind):
    remote.connect()
    proxy.clear()
    proxy.inject(fault, count=3, **params)
    with pytest.raises(RemoteError) as err:
        remote.next_tokens(remote.prompt(HAIKU), n=2, public=True)
    assert err.value.kind == kind and err.value.attempts == 3
    assert len(proxy.records) == 3 and str(remote.base_url) in str(err.value)


def test_a_truncated_chat_stream_is_detected(remote, proxy):
    remote.connect()
    proxy.inject("truncate", count=3)
    with pytest.raises(RemoteError, match="stream ended") as err:
        remote.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, public=True)
    assert err.value.kind == "truncated"


def test_a_client_error_is_not_retried(remote, proxy):
    remote.connect()
    proxy.clear()
    proxy.inject("status", count=3, status=400)
    with pytest.raises(RemoteError, match="HTTP 400") as err:
        remote.next_tokens(remote.prompt(HAIKU), public=True)
    assert err.value.attempts == 1 and len(proxy.records) == 1


def _frames(error: BaseException):
    seen, todo = [], [error]
    while todo:
        e = todo.pop()
        tb = e.__traceback__
        while tb is not None:
            seen.append(tb.tb_frame)
            tb = tb.tb_next
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return seen


@pytest.mark.parametrize("fault", ["client error", "blocked"])
def test_errors_keep_no_request_body(remote, proxy, fault):
    """A 4xx RemoteError chained the HTTP error, which holds the request; a PrivacyBlockedError's
    traceback held the guard's frames, whose locals are the body before redaction. Crash reporters
    that capture chained exceptions and frame locals would ship the private text."""
    secret = "Odalys Brennecke lives at 14 Rue des Lilas"
    remote.connect()
    proxy.clear()
    if fault == "client error":
        proxy.inject("status", count=1, status=400)
        guard = EgressGuard([])
        expected = RemoteError
    else:
        guard = EgressGuard([secret], policy="block")
        expected = PrivacyBlockedError
    with pytest.raises(expected) as err:
        remote.next_tokens(remote.prompt(HAIKU) + secret, guard=guard)
    error = err.value
    assert error.__cause__ is None and error.__context__ is None
    # No frame of the guard or the transport, where the body before redaction is a local.
    inside = [f.f_code.co_name for f in _frames(error)
              if f.f_code.co_filename.endswith("privacy.py") or f.f_code.co_name == "handle_async_request"]
    assert inside == []
    # Nor is the text reachable from the locals of the library's frames that remain, closures included
    # (the caller's own frames, which hold the prompt they passed, aside); the message names spans by
    # kind and length only.
    library = [f for f in _frames(error) if "cogenesis_device" in f.f_code.co_filename
               and f.f_code.co_name not in ("next_tokens", "_wait")]
    assert "Odalys" not in str(error) and "Brennecke" not in str(error)
    assert not any("Odalys" in text for f in library for text in _reachable_text(f.f_locals))
    if fault == "blocked":
        assert "verbatim (42 chars)" in str(error)


def _reachable_text(values: dict, depth: int = 3):
    """repr of every value reachable from a frame's locals through containers and closure cells."""
    todo = [(v, depth) for v in values.values()]
    while todo:
        value, left = todo.pop()
        yield repr(value)
        if left == 0:
            continue
        if isinstance(value, dict):
            todo += [(v, left - 1) for v in value.values()]
        elif isinstance(value, (list, tuple, set)):
            todo += [(v, left - 1) for v in value]
        for cell in getattr(value, "__closure__", None) or ():
            todo.append((cell.cell_contents, left - 1))


def test_free_text_outside_a_job_needs_a_guard_or_a_statement_that_it_is_public(remote, proxy):
    """Before, a call without a job's guard went through the model's context-free guard: anything was
    sent, and recorded as clean."""
    remote.connect()
    proxy.clear()
    private = [{"role": "user", "content": "Remind Odalys Brennecke about her appointment."}]
    with pytest.raises(RemoteError, match="guard=.*public=True"):
        remote.chat(private, max_tokens=4)
    with pytest.raises(RemoteError, match="guard=.*public=True"):
        remote.next_tokens("Odalys Brennecke is", n=1)
    assert proxy.records == []
    assert remote.chat(HAIKU, max_tokens=4, public=True).text  # stated public: sent and recorded
    assert remote.guard.records[-1].endpoint == "/v1/chat/completions"


def test_headers_from_the_environment_pass_the_guard(proxy, model, monkeypatch):
    """openai-python turns OPENAI_ORG_ID into a header; before, headers never reached the guard."""
    monkeypatch.setenv("OPENAI_ORG_ID", "Odalys Brennecke")
    with RemoteModel(proxy.base_url, template=model, timeout=10.0, max_retries=0) as remote:
        remote.connect()
        proxy.clear()
        guard = EgressGuard("Name: Odalys Brennecke\nCity: Tromsø")
        with pytest.raises(PrivacyBlockedError, match="header 'openai-organization' holds private text"):
            remote.chat(HAIKU, max_tokens=4, guard=guard)
        assert proxy.records == [] and guard.records[-1].action == "blocked"


def test_an_oversized_answer_is_refused_without_reading_it_all(model):
    from cogenesis_device.testing import ReplayServer

    models = {"object": "list", "data": [{"id": f"model-{i:06d}", "object": "model"} for i in range(5000)]}
    with ReplayServer({"GET /v1/models": (200, models)}) as server:
        with RemoteModel(server.base_url, template=model, max_retries=0, max_response_bytes=4096) as remote:
            with pytest.raises(RemoteError, match="max_response_bytes=4096"):
                remote.connect()
        with pytest.raises(RemoteError, match="max_response_bytes must be at least 1024"):
            RemoteModel(server.base_url, max_response_bytes=10)


def test_a_slow_server_times_out(proxy, model):
    with RemoteModel(proxy.base_url, template=model, timeout=0.5, max_retries=1, backoff=0.01) as slow:
        slow.connect()
        proxy.inject("stall", count=2, seconds=3.0)
        start = time.monotonic()
        with pytest.raises(RemoteError, match="within 0.5 s") as err:
            slow.next_tokens(slow.prompt(HAIKU), public=True)
        assert err.value.kind == "timeout" and err.value.attempts == 2
        assert time.monotonic() - start < 2.5


def test_connection_refused_is_named():
    with RemoteModel(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff=0.01) as nowhere:
        with pytest.raises(RemoteError, match="connection failed") as err:
            nowhere.connect()
        assert err.value.kind == "connection" and err.value.attempts == 2


def test_concurrent_requests_share_pooled_connections(remote, proxy):
    remote.connect()
    prompt = remote.prompt(HAIKU)
    proxy.clear()
    for _ in range(2):
        futures = [remote.submit_next_tokens(prompt, n=2, public=True) for _ in range(4)]
        texts = {f.result(timeout=60).text for f in futures}
        assert len(texts) == 1
    assert len(proxy.records) == 8
    assert proxy.connections <= 4  # the second round reuses the first round's connections


def test_cancel_aborts_the_request_in_flight(remote, proxy):
    remote.connect()
    proxy.inject("stall", seconds=5.0)
    future = remote.submit_next_tokens(remote.prompt(HAIKU), n=2, public=True)
    time.sleep(0.3)
    assert future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=1)
    assert remote.next_tokens(remote.prompt(HAIKU), n=1, public=True).steps  # the model is still usable


def test_every_request_is_recorded_by_the_guard_it_ran_under(remote, proxy):
    neighbour = "My neighbour Zorvex Quillandor waters the plants."
    guard = EgressGuard(neighbour, public="Write a haiku about rain.", record_bodies=True)
    remote.next_tokens(remote.prompt(HAIKU) + "For Zorvex:", n=2, guard=guard)
    [record] = guard.records
    assert record.endpoint == "/v1/completions" and record.status == 200 and record.bytes_received > 0
    assert "Zorvex" not in record.body and "[PRIVATE]" in record.body
    assert proxy.records[-1].body.decode() == record.body  # what arrived is what was recorded
    with pytest.raises(PrivacyBlockedError):
        remote.next_tokens("Zorvex Quillandor", guard=EgressGuard(neighbour, policy="block"))


def test_configuration_errors_name_the_argument_and_the_variables(monkeypatch):
    for name in ("COGENESIS_REMOTE_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RemoteError, match="base_url=.*COGENESIS_REMOTE_BASE_URL or OPENAI_BASE_URL"):
        RemoteModel()
    with pytest.raises(RemoteError, match="api_key=.*OPENAI_API_KEY"):
        RemoteModel("https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with RemoteModel() as from_env:
        assert from_env.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("COGENESIS_REMOTE_BASE_URL", "http://127.0.0.1:8/v1")
    with RemoteModel() as preferred:
        assert preferred.base_url == "http://127.0.0.1:8/v1"


def test_plain_http_to_another_machine_is_refused_unless_allowed():
    """The instruction, the generated text and the API key would cross the network in clear."""
    with pytest.raises(RemoteError, match="plain http to another machine.*allow_insecure_http=True"):
        RemoteModel("http://api.example.com/v1", api_key="k")
    with pytest.raises(RemoteError, match="not http"):
        RemoteModel("ftp://api.example.com/v1", api_key="k")
    with RemoteModel("http://api.example.com/v1", api_key="k", allow_insecure_http=True) as allowed:
        assert allowed.base_url == "http://api.example.com/v1"  # no request is made here
    with RemoteModel("http://localhost:9/v1") as loopback:
        assert loopback.base_url == "http://localhost:9/v1"


def test_without_a_template_the_server_renders_the_prompt_or_the_error_asks_for_one(real_server, model):
    """llama.cpp's server renders messages with the model's own template (/apply-template, at the
    server root): the request passes the guard like any other, and mode="auto" then runs logits mode.
    llama_cpp.server has no such endpoint: the error asks for template=, and auto falls to sketch."""
    from reference import post

    with RemoteModel(real_server.base_url, tokenizer=model) as untemplated:
        if real_server.server == "llama-cpp-python":
            assert untemplated.server_template() is None
            with pytest.raises(RemoteError, match="template="):
                untemplated.prompt(HAIKU, public=True)
        else:
            expected = post(real_server.base_url.removesuffix("/v1") + "/apply-template", {"messages": HAIKU})["prompt"]
            assert untemplated.prompt(HAIKU, public=True) == expected and "Write a haiku about rain." in expected
            assert any(r.endpoint.endswith("/apply-template") for r in untemplated.guard.records)
        result = cg.CoGenerator(model, untemplated).generate("Write a haiku about rain.", "Name: Odalys",
                                                              max_tokens=4,
                                                              sampling=cg.SamplingParams.collaborative())
    assert result.mode == ("logits" if real_server.server == "llama.cpp" else "sketch"), result.mode_reason
    assert not result.fallback, result.fallback_reason


def test_a_template_is_checked_against_the_servers_own(loopback_server, python_server, model):
    """llama.cpp's server renders with the GGUF's template: the bundled model's own agrees with it, a
    Llama 3 template given by mistake is named in a warning. llama_cpp.server renders nothing, so there
    is nothing to compare, and no warning."""
    def llama3(messages):
        return "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                       for m in messages) + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    with RemoteModel(loopback_server.base_url, template=model) as same, \
            RemoteModel(loopback_server.base_url, template=llama3) as other, \
            RemoteModel(python_server.base_url, template=llama3) as unrendered:
        assert same.server_template() == "apply-template" and same.check_template() is None
        warning = other.check_template()
        assert warning and "<|start_header_id|>" in warning and "<|im_start|>" in warning
        assert unrendered.check_template() is None
        # Each check asks with a public message, recorded by the model's own guard.
        asked = [r.endpoint for r in unrendered.guard.records if r.method == "POST"]
        assert asked == ["/apply-template", "/tokenize"]


def test_the_loopback_server_dies_with_its_parent_even_on_sigkill(tmp_path):
    """A killed `cogenesis eval` must not leave a llama_cpp.server behind holding memory and a port."""
    script = ("import sys, time\n"
              "from cogenesis_device.testing import LoopbackServer\n"
              "server = LoopbackServer(n_ctx=256, n_threads=1).start()\n"
              "print(server._process.pid, server.port, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        server_pid, port = map(int, parent.stdout.readline().split())
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it is up and serving
    finally:
        parent.kill()
        parent.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        if _is_zombie(server_pid):
            break
        time.sleep(0.2)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("the loopback server outlived its parent by 30 s")


def test_loopback_servers_bind_their_own_port_and_keep_their_name_off_the_process_list(real_server):
    """Readiness is an answer naming the server's random model name, which only our child knows: it
    came on the child's stdin, not in its argv (before, both servers had it in argv, readable by any
    local process, and llama_cpp.server bound a port the parent had named and freed)."""
    pid = real_server._process.pid
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode("utf-8", "replace")
    assert real_server.model_name.split("@")[1] not in argv and str(real_server.port) not in argv
    assert real_server._answers()


def _is_zombie(pid: int) -> bool:
    """An exited child of init that has not been reaped yet counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_a_chat_stream_with_a_usage_only_last_chunk_is_read(model):
    """The usage chunk that OpenAI sends with stream_options={"include_usage": true} (and vLLM, SGLang,
    llama.cpp's server): "choices" is empty. Shape from the OpenAI API reference, chat completion chunk."""
    from cogenesis_device.testing import ReplayServer

    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"reasoning_content": "thinking..."}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    # A reasoning model that put everything in reasoning_content: that is the reply.
    only_reasoning = body.replace('"content": "Hello"', '"reasoning_content": "Hi"').replace(
        '"content": " there"', '"content": ""')
    for stream, text in ((body, "Hello there"), (only_reasoning, "Hithinking...")):
        routes = {"GET /v1/models": (200, {"object": "list", "data": [{"id": "m", "object": "model"}]}),
                  "POST /v1/chat/completions": (200, stream)}
        with ReplayServer(routes) as server, RemoteModel(server.base_url, template=model, max_retries=0) as remote:
            reply = remote.chat([{"role": "user", "content": "Hi"}], max_tokens=8, public=True)
        assert reply.text == text and reply.finish_reason == "stop"


def test_the_probe_refuses_a_server_whose_logprobs_are_off_by_one(proxy, model):
    """Each position's alternatives listed one position early: logits mode would fuse every token
    with the scores of the next. Before, the probe compared only logprobs, and the next position of
    its prompt is less certain than the first, so the shift passed."""
    proxy.inject("shift_logprobs", count=20)
    with RemoteModel(proxy.base_url, template=model, timeout=10.0, max_retries=0) as remote:
        caps = remote.connect()
        assert caps.max_top_k > 0 and not caps.positions_ok and not caps.next_token_scores
        assert caps.missing() == "lists logprobs at the wrong positions"
        with pytest.raises(RemoteError, match="logits mode needs next-token scores.*wrong positions"):
            cg.CoGenerator(model, remote, mode="logits").generate("Write a haiku about rain.", "", max_tokens=2)
    proxy.clear()
    with RemoteModel(proxy.base_url, template=model, timeout=10.0, max_retries=0) as honest:
        assert honest.connect().positions_ok  # the same server unshifted passes


def test_a_loopback_remote_without_its_server_package_names_the_extra(monkeypatch):
    """llama.cpp's server (xllamacpp) is the `demo` extra: without it, `cogenesis demo` ends in one line
    naming the install, not in a child process that dies on an ImportError."""
    from cogenesis_device.errors import MissingDependencyError
    from cogenesis_device.testing import LoopbackServer

    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # as if not installed: find_spec finds nothing
    with pytest.raises(MissingDependencyError, match=r"pip install 'cogenesis-device\[demo\]'"):
        LoopbackServer()
