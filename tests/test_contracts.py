"""Contract tests: the client against response bodies written from the documented formats of servers
that cannot run here (vLLM, SGLang, OpenAI, Ollama, TGI) and a recorded llama.cpp edge, replayed by a
scripted server on 127.0.0.1 (contracts.py cites each format's source)."""
import json

import pytest

import cogenesis_device as cg
from cogenesis_device.errors import RemoteError
from cogenesis_device.testing import ReplayServer
from cogenesis_device.remote import RemoteModel
from contracts import OUTLINE, SERVERS, models

INSTRUCTION = "Write a short note inviting my colleagues to a team dinner"


def _remote(server, spec, model):
    return RemoteModel(server.base_url, model=spec.get("model"), template=model, timeout=5, max_retries=0)


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_the_probe_reads_each_server(name, model):
    spec = SERVERS[name]
    with ReplayServer(spec["routes"]) as server, _remote(server, spec, model) as remote:
        caps = remote.connect()
    assert (caps.max_top_k, caps.token_identity, caps.next_token_scores) == (
        spec["top_k"], spec["identity"], spec["top_k"] > 0)
    assert spec.get("missing", "") in caps.missing()


@pytest.mark.parametrize("name", sorted(n for n, s in SERVERS.items() if "steps" in s))
def test_next_token_scores_are_read_as_documented(name, model):
    spec = SERVERS[name]
    with ReplayServer(spec["routes"]) as server, _remote(server, spec, model) as remote:
        answer = remote.next_tokens("The capital of France is", n=2, public=True)
        sent = json.loads(server.bodies[-1])
    assert [(s.token, s.top) for s in answer.steps] == [(t, pytest.approx(top)) for t, top in spec["steps"]]
    assert sent["max_tokens"] == 2 and sent["logprobs"] == 20 and sent["model"] == remote.model


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_auto_mode_uses_logits_where_scores_exist_and_sketch_elsewhere(name, model):
    spec = SERVERS[name]
    with ReplayServer(spec["routes"]) as server, _remote(server, spec, model) as remote:
        result = cg.CoGenerator(model, remote, lookahead=2).generate(INSTRUCTION, "Name: Odalys",
                                                                     max_tokens=4,
                                                                     sampling=cg.SamplingParams.collaborative())
    assert result.mode == spec["mode"] and result.mode_reason.startswith(f"auto: {spec['mode']} mode")
    if spec["mode"] == "sketch":
        assert spec["missing"] in result.mode_reason and result.outline == "".join(OUTLINE)
        assert not result.fallback
    else:
        assert result.stats.round_trips >= 1


@pytest.mark.parametrize("name", sorted(n for n, s in SERVERS.items() if s["mode"] == "sketch"))
def test_logits_mode_against_a_server_without_scores_names_what_is_missing(name, model):
    spec = SERVERS[name]
    with ReplayServer(spec["routes"]) as server, _remote(server, spec, model) as remote:
        with pytest.raises(RemoteError, match=f"logits mode needs next-token scores.*{spec['missing']}"):
            cg.CoGenerator(model, remote, mode="logits").generate(INSTRUCTION, "", max_tokens=4)


@pytest.mark.parametrize("name", ["vllm", "openai-chat", "ollama"])
def test_a_server_listing_several_models_needs_model_and_the_error_lists_them(name):
    spec = SERVERS[name]
    listed = [m["id"] for m in spec["routes"]["GET /v1/models"][1]["data"]]
    with ReplayServer(spec["routes"]) as server, RemoteModel(server.base_url, timeout=5) as remote:
        with pytest.raises(RemoteError, match="pass model=") as error:
            remote.connect()
    assert all(m in str(error.value) for m in listed)


def test_a_server_naming_tokens_by_id_needs_the_remote_tokenizer():
    spec = SERVERS["vllm-token-ids"]
    with ReplayServer(spec["routes"]) as server, RemoteModel(server.base_url, template="raw", timeout=5) as remote:
        with pytest.raises(RemoteError, match="token_id:N.*tokenizer"):
            remote.connect()


def test_a_tokenizer_that_is_not_the_servers_is_refused(gemma_path, model):
    """llama.cpp sends ids and bytes: a remote tokenizer whose bytes for an id differ is the wrong one."""
    spec = SERVERS["llama.cpp-merged-utf8"]
    gemma = cg.LocalModel(str(gemma_path), n_ctx=256)
    with ReplayServer(spec["routes"]) as server, RemoteModel(server.base_url, template=gemma, timeout=5) as remote:
        with pytest.raises(RemoteError, match="tokenizer is not the server's"):
            remote.connect()


def test_more_alternatives_than_asked_is_refused_before_it_is_read(model):
    """A hostile server that lists 5000 alternatives per position makes the client work; OpenAI's own
    limit is logprobs + 1 (the sampled token is always listed)."""
    from contracts import legacy_completion

    flood = {f"w{i}": -float(i) for i in range(5000)}
    routes = {"GET /v1/models": (200, models("m")),
              "POST /v1/completions": (200, legacy_completion("m", ["w0"], [flood]))}
    with ReplayServer(routes) as server, RemoteModel(server.base_url, template=model, timeout=5, max_retries=0,
                                                     max_top_k=20) as remote:
        with pytest.raises(RemoteError, match="more than the 2 positions and 20 alternatives"):
            remote.connect()


@pytest.mark.parametrize("tokens", [["w0", "w1", "w2"], ["w0", "", "", "", "", ""], ["w0", "", "w2"]],
                         ids=["named", "five unnamed", "unnamed then named"])
def test_more_positions_than_asked_is_refused_unless_they_end_a_character(model, tokens):
    """llama_cpp.server may end an answer with up to 4 unnamed byte tokens past max_tokens (the rest of a
    UTF-8 character; the answer is cut there). Any other answer longer than asked is refused."""
    from contracts import legacy_completion

    routes = {"GET /v1/models": (200, models("m")),
              "POST /v1/completions": (200, legacy_completion("m", tokens, [{t: -0.5} for t in tokens]))}
    with ReplayServer(routes) as server, RemoteModel(server.base_url, template=model, timeout=5, max_retries=0) as remote:
        with pytest.raises(RemoteError, match="more than the 2 positions"):
            remote.connect()


@pytest.mark.parametrize("body, problem", [({"choices": [{"text": 5}]}, "the answer's text is not a string"),
                                           ({"choices": []}, "the answer has no choices\\[0\\].text")])
def test_a_base_models_malformed_reply_is_named(body, problem):
    """A base model's chat reply is a plain completion's text; an answer without one is retried, then
    named."""
    routes = {"GET /v1/models": (200, models("m")), "POST /v1/completions": (200, body)}
    with ReplayServer(routes) as server, RemoteModel(server.base_url, template="raw", timeout=5, max_retries=1) as remote:
        with pytest.raises(RemoteError, match=f"after 2 attempt\\(s\\): {problem}"):
            remote.chat([{"role": "user", "content": "Write."}], max_tokens=8, public=True)
        assert len([b for b in server.bodies if b]) == 2 and all(json.loads(b)["prompt"] == "Write.\n\n"
                                                                for b in server.bodies if b)
