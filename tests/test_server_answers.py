"""What real servers answer, read right (issue 32): bodies rebuilt from each server's documented format
or source, replayed by a server on 127.0.0.1, read by the real client (openai-python underneath)."""
import email.utils
import json
import time

import pytest

import cogenesis_device as cg
from cogenesis_device.errors import RemoteError
from cogenesis_device.remote import RemoteModel
from cogenesis_device.testing import ReplayServer
from contracts import legacy_completion, models

MODEL = "gpt-3.5-turbo-instruct"
PROBE_ANSWER = legacy_completion(MODEL, [" Paris", "."], [{" Paris": -0.26, " the": -2.76}, {".": -0.40, ",": -1.6}])


def _stream(deltas: list[dict], finish: str | None = "stop") -> str:
    """An OpenAI chat completion stream of the given deltas, its last chunk carrying finish."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    events = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def _server(**routes) -> ReplayServer:
    return ReplayServer({"GET /v1/models": (200, models(MODEL, owner="openai")), **routes})


def _remote(server, model, **options) -> RemoteModel:
    return RemoteModel(server.base_url, template=model, timeout=5, **{"max_retries": 0, **options})


def _completions(server) -> list[dict]:
    return [json.loads(b) for b in server.bodies if "prompt" in json.loads(b)]


# -- next-token scores ----------------------------------------------------------------------------


def test_openai_names_a_token_that_is_not_whole_utf8_by_its_bytes(model):
    """OpenAI's legacy completions name a token that ends inside a UTF-8 character 'bytes:\\xe2\\x80'
    (the escapes written out); it is those bytes, not that text."""
    body = legacy_completion(MODEL, ["bytes:\\xe2\\x80", "bytes:\\x99s"], [
        {"bytes:\\xe2\\x80": -0.1, " the": -2.5}, {"bytes:\\x99s": -0.2, "bytes: \\xe2": -3.0}])
    with _server(**{"POST /v1/completions": (200, body)}) as server, _remote(server, model) as remote:
        steps = remote.next_tokens("It", n=2, public=True).steps
    assert [s.token for s in steps] == [b"\xe2\x80", b"\x99s"]
    assert steps[0].top == {b"\xe2\x80": -0.1, " the": -2.5} and steps[1].top == {b"\x99s": -0.2, b" \xe2": -3.0}


def test_vllm_null_entries_are_positions_without_scores(model):
    """vLLM writes null token_logprobs and top_logprobs for a position it has no scores for
    (serving_completion.py, _create_completion_logprobs): valid, and that position has no scores."""
    body = legacy_completion(MODEL, [" Paris", "."], [{" Paris": -0.26}, {".": -0.40, ",": -1.6}])
    body["choices"][0]["logprobs"]["token_logprobs"][0] = None
    body["choices"][0]["logprobs"]["top_logprobs"][0] = None
    with _server(**{"POST /v1/completions": (200, body)}) as server, _remote(server, model) as remote:
        steps = remote.next_tokens("The capital of France is", n=2, public=True).steps
    assert [s.token for s in steps] == [" Paris", "."]
    assert steps[0].top == {} and steps[1].top == {".": -0.40, ",": -1.6}


def test_scores_are_asked_without_a_repeat_penalty_unless_the_server_refuses_the_field(model):
    """llama_cpp.server penalizes repeats (1.1) unless told otherwise, so its temperature-0 token is not
    its own best; every scoring request says repeat_penalty 1.0. OpenAI refuses fields it does not know:
    the client then goes on without it, and asks once."""
    refusal = {"error": {"message": "Unrecognized request argument supplied: repeat_penalty",
                         "type": "invalid_request_error", "param": None, "code": None}}

    def answer(request):
        return (400, refusal) if "repeat_penalty" in request else (200, PROBE_ANSWER)
    with _server(**{"POST /v1/completions": answer}) as server, _remote(server, model) as remote:
        for _ in range(2):
            assert [s.token for s in remote.next_tokens("The capital of France is", n=2, public=True).steps] == \
                [" Paris", "."]
    assert [b.get("repeat_penalty") for b in _completions(server)] == [1.0, None, None, None]
    with _server(**{"POST /v1/completions": (200, PROBE_ANSWER)}) as server, _remote(server, model) as remote:
        remote.next_tokens("The capital of France is", n=2, public=True)
    assert [b.get("repeat_penalty") for b in _completions(server)] == [1.0, 1.0]  # the probe, then the request


# -- the probe ------------------------------------------------------------------------------------


def _failing_then_answering(status: int, failures: int, body: dict, headers: dict | None = None):
    calls = []

    def answer(_request):
        calls.append(1)
        return (status, body, headers or {}) if len(calls) <= failures else (200, PROBE_ANSWER)
    return answer


@pytest.mark.parametrize("status, message", [
    (401, "Incorrect API key provided"),   # OpenAI's invalid_api_key
    (429, "Rate limit reached"),            # after the retries
    (503, "The server is overloaded"),      # after the retries
])
def test_a_probe_that_fails_is_an_error_and_nothing_is_remembered(model, status, message):
    """Before, the probe read any status as 'no logprobs at this top-k' and tried a smaller one: after
    a 401 or 503 it remembered 'no logprobs' (sketch for the session), after three 429s 'top 5'."""
    failures = 1 if status == 401 else 3
    answer = _failing_then_answering(status, failures, {"error": {"message": message, "type": "error"}},
                                     {"retry-after-ms": "10"})
    with _server(**{"POST /v1/completions": answer}) as server, _remote(server, model, max_retries=2) as remote:
        with pytest.raises(RemoteError, match=f"HTTP {status}: {message}") as err:
            remote.connect()
        assert err.value.status == status and len(_completions(server)) == failures
        caps = remote.connect()  # the server answers now: probed again, nothing was kept of the failure
    assert caps.max_top_k == 20 and caps.next_token_scores


def test_a_server_without_logprobs_is_asked_once(model):
    """Ollama's answer has no logprobs at all: that is the answer, not a fault to retry at three top-k
    values (before: 9 requests with max_retries=2)."""
    body = {"id": "cmpl-591", "object": "text_completion", "created": 1, "model": MODEL,
            "choices": [{"text": " Paris.", "index": 0, "finish_reason": "stop"}]}
    with _server(**{"POST /v1/completions": (200, body)}) as server, _remote(server, model, max_retries=2) as remote:
        caps = remote.connect()
    assert caps.max_top_k == 0 and not caps.next_token_scores and len(_completions(server)) == 1


@pytest.mark.parametrize("header", ["retry-after-ms", "retry-after http-date"])
def test_the_servers_retry_delay_is_honoured_in_every_form(model, header):
    """retry-after-ms (OpenAI's) and an HTTP-date Retry-After (RFC 9110): the retry waits as long.
    Before, both were ignored and the retry came after the 0.25 s backoff."""
    if header == "retry-after-ms":
        headers, wait = {"retry-after-ms": "1500"}, 1.5
    else:  # HTTP-dates have whole seconds: 3 s ahead is at least 2 s of waiting
        headers, wait = {"retry-after": email.utils.formatdate(time.time() + 3, usegmt=True)}, 2.0
    answer = _failing_then_answering(429, 1, {"error": {"message": "Rate limit reached"}}, headers)
    with _server(**{"POST /v1/completions": answer}) as server, _remote(server, model, max_retries=1) as remote:
        assert remote.connect().max_top_k == 20
    assert len(server.times) == 2 and server.times[1] - server.times[0] >= wait


# -- chat streams ---------------------------------------------------------------------------------


def test_a_reply_written_only_as_reasoning_is_read(model):
    """vLLM since PR 33402 and Ollama stream a reasoning model's thinking in delta.reasoning (before:
    reasoning_content); a reply with no content is its reasoning."""
    stream = _stream([{"role": "assistant", "content": ""}, {"reasoning": "1. Greet"}, {"reasoning": " the team"}])
    with _server(**{"POST /v1/chat/completions": (200, stream)}) as server, _remote(server, model) as remote:
        reply = remote.chat([{"role": "user", "content": "Outline a note."}], max_tokens=8, public=True)
    assert reply.text == "1. Greet the team" and reply.finish_reason == "stop"


def test_a_refusal_is_an_error_naming_it_and_sketch_falls_back_saying_so(model):
    """OpenAI streams a refusal in delta.refusal with no content; before, it read as an empty outline and
    sketch mode went on as if the remote had answered."""
    stream = _stream([{"role": "assistant", "refusal": ""}, {"refusal": "I'm sorry, I can't help with that."}])
    with _server(**{"POST /v1/chat/completions": (200, stream)}) as server, _remote(server, model) as remote:
        with pytest.raises(RemoteError, match="refused: I'm sorry, I can't help with that") as err:
            remote.chat([{"role": "user", "content": "Outline a note."}], max_tokens=8, public=True)
        assert err.value.kind == "refused" and len(server.bodies) == 1
        result = cg.CoGenerator(model, remote, mode="sketch").generate("Write a note to the team.", "I am Ada.",
                                                                        max_tokens=4)
    assert result.fallback and "refused: I'm sorry" in result.fallback_reason and result.outline is None


@pytest.mark.parametrize("event", [
    # OpenAI, llama.cpp's server, vLLM's current ErrorResponse: {"error": {...}}
    {"error": {"message": "This model's maximum context length is 2048 tokens", "type": "BadRequestError",
               "param": None, "code": 400}},
    # vLLM's older ErrorResponse, written as the event itself
    {"object": "error", "message": "This model's maximum context length is 2048 tokens", "type": "BadRequestError",
     "param": None, "code": 400},
])
def test_an_error_event_in_a_stream_is_the_servers_message_and_is_not_retried(model, event):
    stream = _stream([{"role": "assistant", "content": ""}, {"content": "1."}], finish=None)
    stream = stream.replace("data: [DONE]", f"data: {json.dumps(event)}\n\ndata: [DONE]")
    with _server(**{"POST /v1/chat/completions": (200, stream)}) as server, _remote(server, model, max_retries=2) as remote:
        with pytest.raises(RemoteError, match="maximum context length is 2048 tokens") as err:
            remote.chat([{"role": "user", "content": "Outline a note."}], max_tokens=8, public=True)
    assert err.value.kind == "status" and err.value.status == 400 and len(server.bodies) == 1


def test_a_model_that_refuses_max_tokens_gets_max_completion_tokens(model):
    """OpenAI's newer models answer 400 unsupported_parameter to max_tokens; the client sends
    max_completion_tokens from then on (other servers keep max_tokens, which they all read)."""
    refusal = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                    "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                         "param": "max_tokens", "code": "unsupported_parameter"}}

    def answer(request):
        return (400, refusal) if "max_tokens" in request else (200, _stream([{"content": "Hello"}]))
    with _server(**{"POST /v1/chat/completions": answer}) as server, _remote(server, model) as remote:
        for _ in range(2):
            assert remote.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, public=True).text == "Hello"
    sent = [json.loads(b) for b in server.bodies]
    assert [("max_tokens" in b, b.get("max_completion_tokens")) for b in sent] == [(True, None), (False, 8), (False, 8)]


def test_a_servers_retry_delay_is_capped_at_max_backoff(model):
    """A hostile or broken server asking for 100 s (openai-python honours up to 120 s) waits max_backoff
    instead: the bound the client had before openai-python did its retries. The gap is far below 100 s."""
    answer = _failing_then_answering(429, 1, {"error": {"message": "Rate limit reached"}}, {"retry-after": "100"})
    with _server(**{"POST /v1/completions": answer}) as server, \
            _remote(server, model, max_retries=1, max_backoff=0.5) as remote:
        assert remote.connect().max_top_k == 20
    assert len(server.times) == 2 and server.times[1] - server.times[0] < 10.0


# vLLM's /tokenize with messages (TokenizeChatRequest: add_generation_prompt defaults to true,
# add_special_tokens to false, since the template writes the BOS) and /detokenize (DetokenizeResponse
# {prompt}), in vllm/entrypoints/openai/protocol.py and serving_tokenization.py. Ids are Llama 3's.
LLAMA3 = {128000: "<|begin_of_text|>", 128006: "<|start_header_id|>", 882: "user", 128007: "<|end_header_id|>",
          271: "\n\n", 9906: "Hello", 128009: "<|eot_id|>", 78191: "assistant"}
LLAMA3_CHAT = [128000, 128006, 882, 128007, 271, 9906, 128009, 128006, 78191, 128007, 271]


def _vllm_routes(seen: list) -> dict:
    def tokenize(request):
        seen.append(("tokenize", request))
        tokens = LLAMA3_CHAT if "messages" in request else [128000] if request.get("add_special_tokens") else []
        return 200, {"count": len(tokens), "max_model_len": 8192, "tokens": tokens, "token_strs": None}

    def detokenize(request):
        seen.append(("detokenize", request))
        return 200, {"prompt": "".join(LLAMA3[t] for t in request["tokens"])}

    return {"GET /v1/models": (200, models("meta-llama/Llama-3.1-8B-Instruct")),
            "POST /tokenize": tokenize, "POST /detokenize": detokenize}


def test_vllm_renders_the_prompt_with_its_own_template_through_tokenize_and_detokenize():
    """Without template=, vLLM (no /apply-template) renders the messages: /tokenize with messages, then
    /detokenize, without the BOS that /v1/completions adds to the text again. Before, the client knew
    only llama.cpp's /apply-template and asked for template=, which users filled with the local
    model's ChatML."""
    seen = []
    with ReplayServer(_vllm_routes(seen)) as server, RemoteModel(server.base_url, timeout=5) as remote:
        prompt = remote.prompt([{"role": "user", "content": "Hello"}], public=True)
        assert remote.server_template() == "tokenize"
        again = remote.prompt([{"role": "user", "content": "Hello"}], public=True)
    assert prompt == again == ("<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\n")
    (_, chat), (_, empty), (_, text) = seen[:3]
    assert chat["messages"] == [{"role": "user", "content": "Hello"}] and chat["add_generation_prompt"] is True
    assert chat["model"] == "meta-llama/Llama-3.1-8B-Instruct" and empty["prompt"] == ""
    assert text["tokens"] == LLAMA3_CHAT[1:]
    # The BOS the tokenizer adds is asked once; the renderer found is remembered.
    assert [kind for kind, _ in seen] == ["tokenize", "tokenize", "detokenize"] + ["tokenize", "detokenize"] * 2
    assert sum(1 for body in server.bodies if "apply-template" in body) == 0


def test_a_template_of_another_family_is_named_in_a_warning(model, caplog):
    """template= the local SmolLM2 (ChatML) against vLLM serving Llama 3: the prompts would go out in
    markup the remote never saw, silently. check_template compares with the server's own rendering."""
    seen = []
    with ReplayServer(_vllm_routes(seen)) as server, RemoteModel(server.base_url, template=model,
                                                                 timeout=5) as remote:
        with caplog.at_level("WARNING", logger="cogenesis_device.remote"):
            warning = remote.check_template()
    assert warning and "<|im_start|>" in warning and "<|start_header_id|>" in warning
    assert warning in caplog.text


def test_a_server_that_cannot_render_is_named_and_remembered():
    """SGLang's /tokenize reads only a prompt (422 for messages), and it has no /apply-template: the
    error asks for template=, and the answer is remembered (no second round of requests)."""
    routes = {"GET /v1/models": (200, models("Qwen/Qwen2.5-7B-Instruct", owner="sglang")),
              "POST /tokenize": (422, {"object": "error", "message": "prompt: Field required", "code": 422})}
    with ReplayServer(routes) as server, RemoteModel(server.base_url, timeout=5, max_retries=0) as remote:
        assert remote.server_template() is None
        asked = len(server.bodies)
        with pytest.raises(RemoteError, match="template=") as err:
            remote.prompt([{"role": "user", "content": "Hello"}], public=True)
        assert err.value.kind == "config" and len(server.bodies) == asked == 2
