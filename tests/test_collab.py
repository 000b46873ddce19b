"""Collaborative generation end to end: the bundled model locally, llama_cpp.server as the remote."""
import json
import math
import os
import secrets
import threading
import time
import zlib

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device.eval import datasets, leakscan
from cogenesis_device.errors import InvalidParameterError, PrivacyBlockedError
from cogenesis_device.testing import FaultProxy
from reference import bridged_positions, next_token_scores
from test_remote import _frames, _reachable_text

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "context-aware", "dev.json")
CONTEXT = ("Name: Odalys Brennecke\nLocation: Tromsø, Norway\nOccupation: marine biologist\n"
           "Private: training for the Lofoten ultramarathon; allergic to shellfish; sister Ingrid Solheim.")
INSTRUCTION = "Write a short note inviting my colleagues to a team dinner"
GREEDY = dict(max_tokens=32, sampling=cg.SamplingParams.collaborative())


def dev_samples(n):
    if not os.path.exists(DEV):
        pytest.skip(f"{DEV} is absent: the paper's dev data is not on this machine")
    with open(DEV) as f:
        data = json.load(f)
    return [(s["conversations"][0]["value"].split(": ")[0], s["additional_profile"]) for s in data[:n]]


def _no_context_logprobs(model, tokens):
    """log p(token | the task without the context) of each token, from one fresh evaluation."""
    session = model.new_session()
    prompt = model.private_prompt("", INSTRUCTION)
    return [float(row[t] - row.max() - np.log(np.exp(row - row.max()).sum()))
            for row, t in zip(cg.LocalModel.teacher_forced_rows(session, prompt, tokens), tokens)]


@pytest.mark.parametrize("lookahead", [4, 8])
def test_batched_verification_scores_the_same_positions(model, remote, lookahead):
    """Batched scoring differs from one-at-a-time only by llama.cpp's batch-shape rounding on the
    main side; the no-context side of attribution, evaluated ahead in the same batch and rolled back
    where the run ends, scores each token as a fresh evaluation does; and a run's remote tokens cost
    one evaluation, not one each."""
    sequential = cg.CoGenerator(model, remote, lookahead=lookahead).generate(INSTRUCTION, CONTEXT, **GREEDY)
    batched = cg.CoGenerator(model, remote, lookahead=lookahead, batch_verify=True).generate(
        INSTRUCTION, CONTEXT, **GREEDY)
    assert batched.stats.round_trips < 32 and batched.stats.remote_tokens_accepted > 0
    common = 0
    for a, b in zip(sequential.attribution, batched.attribution):
        if a.token != b.token:
            break
        assert abs(a.local_p - b.local_p) < 0.05  # same position, same context: near-identical scores
        assert a.withheld == b.withheld
        common += 1
    assert common >= 8
    reference = _no_context_logprobs(model, batched.tokens)
    for info, expected in zip(batched.attribution, reference):
        assert abs(math.log(info.local_p) - info.context_nats - expected) < 0.01, info
    # One-at-a-time evaluates every token (both sequences in one batch); batched, a run takes two
    # evaluations: its first token while the request is in flight, then the remote's other tokens on
    # the main and the no-context sequence together.
    assert sequential.stats.local_decodes >= len(sequential.tokens) - 1
    assert batched.stats.local_decodes <= 2 * batched.stats.round_trips
    assert batched.stats.local_decodes < sequential.stats.local_decodes


def test_weight_one_is_the_local_model_alone(model, remote):
    # Both jobs evaluate the prompt's last token alone (the fused one first, the local one then reuses its
    # cache): llama.cpp's scores depend slightly on the batch shape, and a whole-prompt prefill flips a
    # near-tie of this model at token 28.
    model.forget(context=CONTEXT)
    fused = cg.CoGenerator(model, remote, fusion={"weight": 1.0}).generate(
        INSTRUCTION, CONTEXT, **GREEDY)
    alone = cg.CoGenerator(model, None).generate(INSTRUCTION, CONTEXT, **GREEDY)
    assert alone.stats.n_reused > 0 and alone.stats.round_trips == 0
    assert fused.tokens == alone.tokens and fused.text == alone.text
    assert fused.stats.round_trips > 0 and not fused.fallback
    # every token was fused with the remote's scores, and none of its choice came from them
    assert len(fused.attribution) == 32
    assert all(a.source == "fused" and a.weight == 1.0 and a.remote_share == 0.0 for a in fused.attribution)
    assert any(a.remote_p is not None for a in fused.attribution)
    assert all(a.source == "local" for a in alone.attribution)


def test_weight_zero_follows_the_remote_alone(model, remote, loopback_server, pieces):
    # The paper's fusion (no plausibility limit) and the text as written (no attribution placeholders).
    # No repetition control either: the reference below is the remote's greedy text as it is.
    fused = cg.CoGenerator(model, remote, fusion={"weight": 0.0, "plausible": 0.0}, lookahead=1,
                           attribution=False).generate(INSTRUCTION, CONTEXT, max_tokens=12,
                                                       sampling=cg.SamplingParams.collaborative(no_repeat_ngram=0))
    # The reference: the remote's top token, one raw HTTP request at a time, on the same public prompt.
    public, tokens = model.apply_chat_template([{"role": "user", "content": INSTRUCTION}]), []
    for _ in range(12):
        scores = next_token_scores(loopback_server.base_url, public + model.detokenize(tokens), pieces)
        tokens.append(max(scores, key=scores.get))
    assert fused.tokens == tokens
    assert all(a.remote_share == 1.0 for a in fused.attribution)


def test_remote_failure_mid_generation_falls_back_to_local(model, remote, proxy):
    remote.connect()
    proxy.clear()
    proxy.inject("drop", count=50, after=2)
    result = cg.CoGenerator(model, remote, lookahead=2).generate(INSTRUCTION, CONTEXT, **GREEDY)
    assert result.fallback and "kind: connection" in result.fallback_reason
    assert result.stats.n_tokens == 32 and result.finish_reason == "length"
    sources = [a.source for a in result.attribution]
    assert sources[0] == "fused" and sources[-1] == "local"
    assert sources == sorted(sources)  # fused first, local only after the failure ('fused' < 'local')
    assert len(proxy.records) == 2 + 3  # two answered calls, then one call with its 3 attempts


def test_sketch_writes_the_text_not_the_outline():
    """Found by the Gemma eval: with the remote's outline fenced at the end of the local prompt, the local
    model copied it as its answer ("<outline>\n1. Introduction\n2. Menu ...") on 7 of the first 40 dev
    samples, 7 of the 9 that got an outline. The task now comes after the fence. Dev sample 3_7_4, with
    its canaries planted as the eval plants them, and the outline Gemma 3 gave it."""
    from cogenesis_device.testing import ReplayServer
    from contracts import chat_stream

    if not os.path.exists(DEV):
        pytest.skip(f"{DEV} is absent: the paper's dev data is not on this machine")
    sample = next(s for s in datasets.load(DEV) if s.tid == "3_7_4")
    context, _ = leakscan.plant_canaries(sample.context, seed=zlib.crc32(sample.tid.encode()))
    outline = ["1. Introduction\n", "2. Menu\n", "3. Price\n", "4. Appetizers\n", "5. Desserts\n", "6. Drinks"]
    routes = {"GET /v1/models": (200, {"object": "list", "data": [{"id": "planner", "object": "model"}]}),
              "POST /v1/chat/completions": (200, chat_stream("planner", outline, usage=True))}
    model = cg.LocalModel(n_ctx=4096, n_threads=2)  # as `cogenesis eval`: the prompt is 2,298 tokens
    with ReplayServer(routes) as server, cg.RemoteModel(server.base_url, template=model, timeout=10) as remote:
        result = cg.CoGenerator(model, remote, mode="sketch").generate(
            sample.instruction, context, max_tokens=24, sampling=cg.SamplingParams.collaborative())
    assert result.outline.splitlines()[:2] == ["1. Introduction", "2. Menu"] and not result.fallback
    assert result.text.strip() and "outline>" not in result.text and "Introduction" not in result.text


def test_sketch_mode_sends_only_the_public_instruction(model, remote, proxy):
    remote.connect()
    proxy.clear()
    result = cg.CoGenerator(model, remote, mode="sketch", outline_tokens=48).generate(
        INSTRUCTION, CONTEXT, max_tokens=24, sampling=cg.SamplingParams.collaborative())
    # The 135M remote often answers in prose: then the text is written without an outline, and says so.
    assert (result.outline is not None or result.outline_note) and result.text and not result.fallback
    [request] = proxy.records
    sent = json.loads(request.body)["messages"][0]["content"]
    assert INSTRUCTION in sent and "Odalys" not in sent and result.stats.round_trips == 1


def test_stream_yields_the_text_of_the_result(model, remote):
    """The pieces, joined, are the generated tokens as the model's own detokenizer writes them; one
    piece per token (and at most one more: text held back at the end), not one block at the end."""
    stream = cg.CoGenerator(model, remote).stream(INSTRUCTION, CONTEXT, max_tokens=16,
                                                  sampling=cg.SamplingParams.collaborative())
    pieces = list(stream)
    result = stream.result
    assert len(result.tokens) == 16 and len(result.tokens) <= len(pieces) <= len(result.tokens) + 1
    assert "".join(pieces) == model.detokenize(result.tokens) == result.text
    assert result.stats.first_token_ms > 0 and not result.fallback


def test_the_local_model_decodes_while_a_request_is_in_flight(model):
    """overlap=True evaluates the pending token between sending a request and reading its answer. Seen
    from the server, which holds each request 100 ms: the generating thread's CPU time grows while it
    holds one (it computes), and with overlap=False it does not (it waits). The text is the same."""
    from providers import SecondModelProvider

    from cogenesis_device.testing import ScriptedRemote

    provider = SecondModelProvider(model)  # the remote: the same model without the context, scripted
    clock = time.pthread_getcpuclockid(threading.get_ident())  # this thread runs the engine's loop
    busy: list[float] = []  # per request: CPU seconds of the generating thread while the server held it

    def script(prompt, n):
        held = time.clock_gettime(clock)
        time.sleep(0.1)
        busy.append(time.clock_gettime(clock) - held)
        name = lambda t: model.native.token_to_piece(t).decode("utf-8", "replace")  # noqa: E731
        return [(name(token), {name(t): lp for t, lp in top}) for token, _, top in provider.continue_text(prompt, n)]

    runs = {}
    with ScriptedRemote(script) as server, cg.RemoteModel(server.base_url, template=model, timeout=30) as remote:
        remote.connect()
        for overlap in (True, False):
            busy.clear()
            result = cg.CoGenerator(model, remote, lookahead=1, overlap=overlap).generate(
                INSTRUCTION, CONTEXT, max_tokens=4, sampling=cg.SamplingParams.collaborative())
            assert not result.fallback and result.stats.round_trips == len(busy) == 4
            runs[overlap] = result.tokens, list(busy)
    assert runs[True][0] == runs[False][0]
    with_overlap, without = runs[True][1], runs[False][1]
    # a decode costs tens of ms of CPU here; the request reaches the server a few ms after it starts
    assert sum(b > 0.002 for b in with_overlap) >= len(with_overlap) // 2, with_overlap
    assert max(without) < 0.001, without


def test_cancel_from_another_thread_stops_a_generation_waiting_on_the_remote(model, remote, proxy):
    """CoStream.cancel() from another thread, while the loop waits on a request that takes 5 s: the
    request is aborted, the stream ends at once as 'cancelled', and the session goes back to the pool
    with the user's cache kept and its no-context sequence empty."""
    remote.connect()
    proxy.clear()
    proxy.rtt_ms = 5000.0
    # overlap=False: the loop goes straight into the provider's wait once the request is sent (with
    # overlap, a cancel can also land in the decode that runs meanwhile, a path that needs no abort)
    stream = cg.CoGenerator(model, remote, lookahead=1, overlap=False).stream(
        INSTRUCTION, CONTEXT, max_tokens=4, sampling=cg.SamplingParams.collaborative())
    cancelled_at = []

    def cancel_once_sent():
        while not proxy.records:
            time.sleep(0.005)
        time.sleep(0.2)  # the loop is waiting on the answer by now
        cancelled_at.append(time.monotonic())
        stream.cancel()

    canceller = threading.Thread(target=cancel_once_sent)
    canceller.start()
    pieces = list(stream)
    returned = time.monotonic()
    canceller.join()
    result = stream.result
    assert result.finish_reason == "cancelled" and not result.fallback, result.fallback_reason
    assert pieces == [] and result.tokens == [] and len(proxy.records) == 1  # no retry, no second request
    assert returned - cancelled_at[0] < 1.0  # not after the answer (5 s)
    with model.pooled_session(scope=model.scope_for(CONTEXT)) as session:
        assert session.seq_len() > 0 and session.seq_len(seq_id=1) == 0


def test_a_draft_is_private_redacted_or_blocked(model, remote, proxy):
    canary = "Qv" + secrets.token_hex(6)
    draft = f"Dear team, my locker code is {canary} and"
    remote.connect()
    proxy.clear()
    result = cg.CoGenerator(model, remote, lookahead=4).generate(INSTRUCTION, CONTEXT, draft=draft, **GREEDY)
    assert result.text.startswith(draft)
    assert all(canary not in r.body.decode() for r in proxy.records) and result.audit_summary()["redacted_spans"] > 0
    with pytest.raises(PrivacyBlockedError, match="policy is 'block'"):
        cg.CoGenerator(model, remote, privacy="block").generate(INSTRUCTION, CONTEXT, draft=draft, **GREEDY)


@pytest.mark.parametrize("mode", ["logits", "sketch"])
@pytest.mark.parametrize("entry", ["generate an instruction", "stream a private request"])
def test_a_block_refusal_keeps_no_frame_that_holds_the_private_text(model, proxy, mode, entry):
    """Issue 29: under 'block' the refusal's traceback held the job's frames (CoStream._logits, _sketch,
    CoGenerator.generate...), whose locals are the context, the request and the draft: crash reporters
    that capture frame locals would ship them."""
    secret = "Qv" + secrets.token_hex(6)
    context = f"{CONTEXT}\nLocker code: {secret}"
    draft = f"Dear team, my locker code is {secret} and"  # logits mode sends it: the request refused there
    # Sketch mode sends only the outline request, whose text is the public instruction; what it can
    # still refuse is what the app configured: here a deployment fine-tuned for this user, named after her.
    name = "ft:smollm2:odalys-brennecke" if mode == "sketch" else None
    with cg.RemoteModel(proxy.base_url, model=name, template=model, max_retries=0) as remote:
        generator = cg.CoGenerator(model, remote, mode=mode, privacy="block")
        with pytest.raises(PrivacyBlockedError, match="policy is 'block'") as refusal:
            if entry == "generate an instruction":
                generator.generate(INSTRUCTION, context, draft=draft, **GREEDY)
            else:
                request = f"{INSTRUCTION}, and remind them that my locker code is {secret}"
                list(generator.stream(request=request, context=context, draft=draft, **GREEDY))
    error = refusal.value
    assert error.__cause__ is None and error.__context__ is None
    # The library's frames (the caller's own, which hold what it passed, aside), closures included.
    holding = [f.f_code.co_name for f in _frames(error) if "cogenesis_device" in f.f_code.co_filename
               and any(secret in text for text in _reachable_text(f.f_locals))]
    assert holding == []


def test_no_canary_or_private_span_leaves_over_20_dev_samples(model, remote, proxy):
    """Checked by the independent scan (leakscan): canaries in many surface forms, the profile's facts,
    and any 4 consecutive words of the context that the public text does not hold."""
    samples = dev_samples(20)
    remote.connect()
    redacted = 0
    for i, (instruction, profile) in enumerate(samples):
        canaries = ["Zq" + secrets.token_hex(5) for _ in range(3)]
        context = (f"{profile}\nPassword hint: {canaries[0]}\nNeighbour: {canaries[1]} Vandermeer\n"
                   f"Email: {canaries[2]}@example.org")
        context, planted = leakscan.plant_canaries(context, seed=i)
        facts = planted + leakscan.profile_facts(profile, instruction)
        draft = f"{canaries[1]} Vandermeer, " if i % 2 else ""  # half the jobs start writing private text
        proxy.clear()
        for mode in ("logits", "sketch"):
            generator = cg.CoGenerator(model, remote, mode=mode, lookahead=8, outline_tokens=24)
            result = generator.generate(instruction, context, draft=draft, max_tokens=12,
                                        sampling=cg.SamplingParams.collaborative())
            redacted += result.audit_summary()["redacted_spans"]
        # what the user and we chose to send: the instruction, also inside our outline request
        public = leakscan.simplify(instruction + "\n" + cg.collab.OUTLINE_PROMPT.format(instruction=instruction))
        words = leakscan.simplify(context).split()
        passages = {" ".join(words[k:k + 4]) for k in range(len(words) - 3)}
        passages = {p for p in passages if f" {p} " not in f" {public} "}
        bodies = [r.body.decode() for r in proxy.records]
        assert leakscan.leaked(facts, bodies) == []
        for body in bodies:
            assert not any(c.lower() in body.lower() for c in canaries)
            sent = f" {leakscan.sent_text([body])} "
            assert [p for p in passages if f" {p} " in sent] == []
    assert redacted > 0  # the guard had work to do, so the check above means something


def test_to_html_colours_tokens_by_source(model, remote, tmp_path):
    result = cg.CoGenerator(model, remote).generate(INSTRUCTION, CONTEXT, max_tokens=12,
                                                    sampling=cg.SamplingParams.collaborative())
    page = result.to_html(str(tmp_path / "out.html"))
    assert page == (tmp_path / "out.html").read_text()
    assert page.count("<span style=\"background:rgba(") == len(result.attribution)
    assert "p_local=" in page and "logits mode" in page


def test_bad_arguments_are_named(model, remote):
    with pytest.raises(InvalidParameterError, match="mode"):
        cg.CoGenerator(model, remote, mode="telepathy")
    with pytest.raises(InvalidParameterError, match="lookahead"):
        cg.CoGenerator(model, remote, lookahead=0)
    with pytest.raises(InvalidParameterError, match="max_tokens"):
        cg.CoGenerator(model, remote).generate(INSTRUCTION, CONTEXT, max_tokens=0)
    with pytest.raises(InvalidParameterError, match="policy"):
        cg.CoGenerator(model, remote, privacy="whatever").generate(INSTRUCTION, CONTEXT, max_tokens=4)


class RecordingProxy(FaultProxy):
    """A FaultProxy that also keeps the body of every answer it forwards, as the server sent it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: list[bytes] = []

    async def _forward(self, *args):
        response = await super()._forward(*args)
        self.answers.append(response.body)
        return response


@pytest.fixture(scope="module")
def gemma_server(gemma_path):
    """llama.cpp's server with Gemma 3 270M (a base model, another tokenizer) on 127.0.0.1."""
    from cogenesis_device.testing import LoopbackServer

    with LoopbackServer(str(gemma_path), n_ctx=1024) as server:
        yield server


@pytest.mark.slow
def test_cross_tokenizer_remote_fuses_through_the_bridge(model, gemma_server, pieces):
    """Gemma 3 (262,144 tokens, base model) as the remote of SmolLM2 (49,152 tokens), checked against
    what the Gemma server answered (each answer as it crossed the proxy), mapped onto local ids in the
    test (longest byte prefix, reference.bridged_positions): every remote probability the result
    reports is the one listed for that token at that position, every fused token is a listed one, and a
    lookahead run goes on exactly while the chosen token has the bytes of the remote's own token."""
    with RecordingProxy(gemma_server.base_url) as proxy, \
            cg.RemoteModel(proxy.base_url, template="raw", max_top_k=10) as gemma:
        # Without attribution, each request's prompt is the instruction and the text as written: it
        # tells which generated token the answer's first position scores.
        generator = cg.CoGenerator(model, gemma, fusion={"weight": 0.2}, lookahead=4, attribution=False)
        assert generator.remote_tokenizer is None  # no shared tokenizer: cross-tokenizer mode
        gemma.connect()
        proxy.clear()
        proxy.answers.clear()
        result = generator.generate(INSTRUCTION, CONTEXT, max_tokens=12, sampling=cg.SamplingParams.collaborative())
    assert not result.fallback and result.stats.n_tokens == 12
    tokens = result.tokens
    assert all(r.path.endswith("/completions") for r in proxy.records) and len(proxy.answers) == len(proxy.records)
    written = {INSTRUCTION + "\n\n" + model.detokenize(tokens[:g]): g for g in range(len(tokens))}
    starts = [written[json.loads(r.body)["prompt"]] for r in proxy.records]
    assert starts[0] == 0 and starts == sorted(set(starts)) and len(starts) == result.stats.round_trips
    for k, (start, answer) in enumerate(zip(starts, proxy.answers)):
        end = starts[k + 1] if k + 1 < len(starts) else len(tokens)
        listed = bridged_positions(json.loads(answer), pieces)
        assert 1 <= end - start <= max(len(listed), 1)  # a run uses only positions the remote answered
        for j, (own, scores) in enumerate(listed[:end - start]):
            info = result.attribution[start + j]
            if info.remote_p is not None or info.source == "fused":
                assert info.token in scores, (start + j, info, scores)  # mask fill: only listed tokens
                assert info.remote_p == pytest.approx(scores[info.token], rel=1e-4), (start + j, info)
            is_own = model.native.token_to_piece(info.token) == own
            if j < end - start - 1:
                assert is_own, (start + j, info, own)  # the run went on: the remote's own token
            elif end < len(tokens) and j + 1 < len(listed):
                assert not is_own, (start + j, info, own)  # the run stopped: not the remote's token
    fused = [a for a in result.attribution if a.remote_p is not None]
    assert len(fused) >= 6  # most chosen tokens are listed by the remote, mapped onto local ids
    assert result.stats.round_trips < 12  # runs continued across aligned token boundaries


@pytest.mark.slow
def test_lookahead_goes_on_across_tokenizers_when_the_remote_tokenizer_is_known(model, gemma_path, gemma_server):
    """Found by the Gemma eval (1.00 round trips per token): with the remote's GGUF as its template, as
    `cogenesis eval --remote-gguf` sets it, the remote's tokenizer is known and is another family's. The
    check that the remote's tokens are its own tokenization of their text compared its ids with local
    ids, so no run went past its first position. Now runs go on, and write what one request per token
    writes."""
    gemma_tokenizer = cg.LocalModel(str(gemma_path), n_ctx=256)
    results = {}
    with cg.RemoteModel(gemma_server.base_url, template=gemma_tokenizer) as gemma:
        for lookahead in (1, 8):
            generator = cg.CoGenerator(model, gemma, fusion={"weight": 0.2}, lookahead=lookahead, attribution=False)
            assert generator.remote_tokenizer is not None
            results[lookahead] = generator.generate(INSTRUCTION, CONTEXT, max_tokens=16,
                                                    sampling=cg.SamplingParams.collaborative())
    for result in results.values():
        assert not result.fallback and result.stats.n_tokens == 16, result.fallback_reason
    assert results[1].stats.round_trips == 16
    assert results[8].tokens == results[1].tokens
    assert results[8].stats.remote_tokens_accepted > 0
    assert results[8].stats.round_trips < 16, results[8].stats  # runs went on past their first position


@pytest.mark.slow
def test_a_base_model_remote_is_asked_in_plain_text(model, gemma_path, gemma_server):
    """Found by the Gemma eval: the remote-alone answer and sketch mode's outline went to the chat
    endpoint, and llama.cpp's server, without a chat template for a base model, fell back to ChatML:
    Gemma echoed the instruction between <|im_end|> markers. With template= a base model's GGUF, chat
    requests are the plain-text prompt (as logits mode sends it) to /v1/completions."""
    from cogenesis_device.local import plain_prompt

    messages = [{"role": "user", "content": INSTRUCTION}]
    with RecordingProxy(gemma_server.base_url) as proxy, \
            cg.RemoteModel(proxy.base_url, template=cg.LocalModel(str(gemma_path), n_ctx=256)) as gemma:
        assert gemma.base_model
        gemma.connect()
        proxy.clear()
        proxy.answers.clear()
        reply = gemma.chat(messages, max_tokens=24, public=True)
        sketch = cg.CoGenerator(model, gemma, mode="sketch").generate(INSTRUCTION, CONTEXT, max_tokens=8)
        with pytest.raises(cg.errors.RemoteError, match="response_format needs a chat model"):
            gemma.chat(messages, response_format={"type": "json_object"}, public=True)
    sent = [json.loads(r.body) for r in proxy.records]
    assert [r.path.endswith("/v1/completions") for r in proxy.records] == [True, True]
    assert sent[0]["prompt"] == plain_prompt(messages) and sent[0]["max_tokens"] == 24 and "logprobs" not in sent[0]
    assert sent[1]["prompt"].startswith("Plan a piece of writing") and INSTRUCTION in sent[1]["prompt"]
    assert reply.text == json.loads(proxy.answers[0])["choices"][0]["text"] and reply.text.strip()
    assert "<|im_" not in reply.text + (sketch.outline or "") and not sketch.fallback


def test_closing_a_stream_midway_cancels_it_and_frees_the_session(model, remote):
    stream = cg.CoGenerator(model, remote, lookahead=4).stream(INSTRUCTION, CONTEXT, max_tokens=32,
                                                               sampling=cg.SamplingParams.collaborative())
    with stream:
        first = next(stream)
    result = stream.result
    assert result.finish_reason == "cancelled" and result.text.startswith(first) and 1 <= len(result.tokens) < 32
    stream.close()  # a second close changes nothing
    assert stream.result is result
    # Back in the pool with the user's cache kept for the user's next job, its no-context sequence empty.
    with model.pooled_session(scope=model.scope_for(CONTEXT)) as session:
        assert session.seq_len() > 0 and session.seq_len(seq_id=1) == 0


def test_a_server_naming_tokens_by_id_is_read_through_the_remote_tokenizer(model):
    """vLLM with return_tokens_as_token_ids answers 'token_id:N'; read as the remote's token bytes, the
    result is what a server sending text gives. The remote here is the same model, scripted."""
    from providers import SecondModelProvider

    from cogenesis_device.testing import ScriptedRemote

    provider = SecondModelProvider(model)
    names = {"token_id": lambda t: f"token_id:{t}",
             "text": lambda t: model.native.token_to_piece(t).decode("utf-8", "replace")}
    texts = {}
    for naming, name in names.items():
        def script(prompt, n, name=name):
            return [(name(token), {name(t): lp for t, lp in top}) for token, _, top in provider.continue_text(prompt, n)]

        with ScriptedRemote(script) as server, cg.RemoteModel(server.base_url, template=model, timeout=30) as remote:
            result = cg.CoGenerator(model, remote, lookahead=4, privacy="audit").generate(
                INSTRUCTION, CONTEXT, max_tokens=16, sampling=cg.SamplingParams.collaborative())
            assert remote.capabilities.token_identity == ("ids" if naming == "token_id" else "text")
        assert not result.fallback, result.fallback_reason
        assert result.stats.remote_tokens_accepted > 0 and any(a.source == "fused" for a in result.attribution)
        texts[naming] = result.text
    assert texts["token_id"] == texts["text"]


def test_a_request_the_guard_refuses_under_redact_falls_back_to_local(model, proxy):
    """Found by the Gemma eval (dev sample 11_13_3): with a plain-text remote prompt, a generated word after
    the instruction formed a span of the profile across the instruction's end, and the redacted text
    still held one, so the guard refused the request. That refusal ended the whole job (and the eval).
    Nothing was sent, as it should be; now the job goes on with the local model and says why."""
    context = ("Name: Ana Petrova\nWork: organizing evidence and citations for a journal article on sustainable "
               "agricultural practices; proofreading legal documents for clarity")
    instruction = "Generate a feature article on sustainable agricultural practices"
    plain = cg.RemoteModel(proxy.base_url, template="raw", max_retries=0)  # the prompt a base model gets
    proxy.clear()
    result = cg.CoGenerator(model, plain, mode="logits", privacy="redact").generate(
        instruction, context, draft="Sustainability", max_tokens=8, sampling=cg.SamplingParams.collaborative())
    assert result.fallback and "redaction left 1 private span" in result.fallback_reason
    assert "nothing of that request was sent" in result.fallback_reason
    assert result.text.startswith("Sustainability") and result.stats.n_tokens == 8
    assert [r.action for r in result.audit if r.endpoint.endswith("/completions")][-1] == "blocked"
    assert all("Sustainability" not in r.body.decode() for r in proxy.records)
    with pytest.raises(PrivacyBlockedError):  # under 'block' the same job still fails closed
        cg.CoGenerator(model, plain, mode="logits", privacy="block").generate(
            instruction, context, draft="Sustainability", max_tokens=8, sampling=cg.SamplingParams.collaborative())
    plain.close()
