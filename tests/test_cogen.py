"""The engine's collaborative loop (cg_cogen) against a per-token reference written here, and its edges:
providers that fail, misbehave or are cancelled from another thread."""
import json
import math
import os
import threading
import time

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device.errors import InvalidParameterError
from reference import fuse_reference
from cogenesis_device.testing import FaultProxy
from cogenesis_device.remote import RemoteModel, TokenScores
from providers import SecondModelProvider
from reference import next_token_scores

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "context-aware", "dev.json")
DEMO = os.path.join(os.path.dirname(cg.__file__), "data", "demo.json")
N_TOKENS = 16
# The loop compared with the protocol on the text as written: no attribution placeholders, and the
# guard recording instead of redacting (both change what the remote continues, by design).
AS_WRITTEN = dict(attribution=False, privacy="audit")


def prompts(n=6):
    """The bundled demo, then the first dev samples (the paper's split: instruction before ': ')."""
    with open(DEMO) as f:
        demo = json.load(f)
    out = [(demo["instruction"], demo["context"])]
    if os.path.exists(DEV):
        with open(DEV) as f:
            out += [(s["conversations"][0]["value"].split(": ")[0], s["additional_profile"]) for s in json.load(f)[:n - 1]]
    return out


def per_token_reference(model, base_url, pieces, instruction, context, tokens, *, schedule=None):
    """Checks that `tokens` is what the paper's per-token protocol writes greedily: at each position the
    local scores (a fresh session fed the prompt, then one token at a time) fused by fuse_reference
    with the remote's top-20 for exactly that prefix (one raw HTTP request). Returns the largest gap,
    in nats, between the fused score of the chosen token and the best one (0 when it is the argmax)."""

    prompt = model.private_prompt(context, instruction)
    remote_prompt = model.apply_chat_template([{"role": "user", "content": instruction}])
    session = model.new_session(n_seq_max=1)
    session.prefill(np.asarray(prompt[:-1], dtype=np.int32))
    worst = 0.0
    for i, token in enumerate([prompt[-1], *tokens[:-1]]):
        session.decode([0], [token])
        row = session.logits(0)
        ids, lps = [], []
        if schedule is None or _native.schedule_consult(*schedule, i):
            scores = next_token_scores(base_url, remote_prompt + model.detokenize(tokens[:i]), pieces)
            ids, lps = list(scores), list(scores.values())
        fused = fuse_reference(row, ids, lps, weight=0.5, fill="mask", plausible=0.1)
        worst = max(worst, float(fused.max() - fused[tokens[i]]))
    return worst


def test_engine_loop_writes_what_the_per_token_protocol_writes(model, real_server, pieces):
    """Lookahead 1, 4 and 8: identical greedy text, and every token is the reference's argmax. Six
    prompts against llama.cpp's server, three against the slower llama_cpp.server."""
    with FaultProxy(real_server.base_url) as proxy, RemoteModel(proxy.base_url, template=model) as remote:
        remote.connect()
        for instruction, context in prompts(6 if real_server.server == "llama.cpp" else 3):
            _check_against_the_protocol(model, remote, proxy, real_server.base_url, pieces, instruction, context)


def _check_against_the_protocol(model, remote, proxy, base_url, pieces, instruction, context):
    """One prompt: the loop at lookahead 1, 4 and 8 against the per-token reference."""
    texts = {}
    for lookahead in (1, 4, 8):
        proxy.clear()
        result = cg.CoGenerator(model, remote, lookahead=lookahead, **AS_WRITTEN).generate(
            instruction, context, max_tokens=N_TOKENS, sampling=cg.SamplingParams.collaborative())
        assert not result.fallback, result.fallback_reason
        # Round trips and bytes are the HTTP traffic the proxy saw.
        assert result.stats.round_trips == len(proxy.records) == len(result.audit)
        assert result.stats.bytes_sent == sum(len(r.body) for r in proxy.records)
        texts[lookahead] = (result.tokens, result.stats.round_trips)
    assert texts[1][0] == texts[4][0] == texts[8][0]
    tokens, per_token_trips = texts[1]
    assert per_token_trips == len(tokens)
    assert texts[8][1] <= texts[4][1] <= per_token_trips
    gap = per_token_reference(model, base_url, pieces, instruction, context, tokens)
    assert gap < 1e-4, f"a token {gap:.3f} nats below the reference's choice for {instruction!r}"


def test_the_schedule_consults_the_remote_on_its_steps_only(model, loopback_server, remote, pieces):
    instruction, context = prompts(1)[0]
    schedule = (3, 2, 1)  # every step below 3, then one of every 3
    result = cg.CoGenerator(model, remote, lookahead=4, fusion={"schedule": schedule}, **AS_WRITTEN).generate(
        instruction, context, max_tokens=N_TOKENS, sampling=cg.SamplingParams.collaborative())
    consulted = [_native.schedule_consult(*schedule, i) for i in range(len(result.tokens))]
    assert any(a.source == "fused" for a in result.attribution)
    assert all(a.source == "local" for a, c in zip(result.attribution, consulted) if not c)
    assert per_token_reference(model, loopback_server.base_url, pieces, instruction, context, result.tokens,
                               schedule=schedule) < 1e-4


def co_generation(model, session, provider, **options):

    instruction, context = prompts(1)[0]
    noctx = model.private_prompt("", instruction)
    prefix = model.apply_chat_template([{"role": "user", "content": instruction}])
    return _native.CoGeneration(session, model.private_prompt(context, instruction), noctx_prompt=noctx,
                                public_prefix=prefix, provider=provider, **{"temperature": 0.0, **options})


def run(co):
    tokens = []
    while not co.finished:
        token, _ = co.step()
        if token.token >= 0:
            tokens.append(token)
    return tokens


def test_a_provider_in_python_drives_the_engine_loop(model):
    provider = SecondModelProvider(model)
    with model.pooled_session() as session:
        co = co_generation(model, session, provider, max_tokens=16, lookahead=4)
        tokens = run(co)
        stats = co.stats
    assert len(tokens) == 16 and co.finish_reason == "length" and co.fallback_reason is None
    assert stats.n_requests == len(provider.requests) == provider.released
    assert 0 < stats.n_requests < 16 and stats.n_accepted > 0
    assert any(t.fused for t in tokens)
    # Every request carries the public prefix and the text as it may leave, never more.
    for text in provider.requests:
        assert "Holloway" not in text and "218-555-0147" not in text


class VettingProvider(SecondModelProvider):
    """A provider whose text guard answers `verdict` (a value or an exception) about every new token."""

    def __init__(self, model, verdict):
        super().__init__(model)
        self.verdict, self.asked = verdict, []

    def vet(self, text, n_new):
        self.asked.append((text, n_new))
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


@pytest.mark.parametrize("verdict, withheld", [(-1, False), (None, True), (2.5, True), (-7, True),
                                               (RuntimeError("the guard broke"), True)])
def test_a_guard_that_cannot_answer_withholds_and_the_generation_goes_on(model, verdict, withheld):
    provider = VettingProvider(model, verdict)
    with model.pooled_session() as session:
        co = co_generation(model, session, provider, max_tokens=8, lookahead=4)
        tokens = run(co)
    assert len(tokens) == 8 and co.finish_reason == "length" and co.fallback_reason is None
    # asked about the tokens attribution let pass, each time about the new bytes at the end of the text
    assert 0 < len(provider.asked) <= len(tokens)
    assert all(isinstance(t, bytes) and 0 < n <= len(t) for t, n in provider.asked)
    if not withheld:
        assert len(provider.asked) == len(tokens)
    assert all(t.withheld == withheld for t in tokens)
    assert all(text.endswith("[PRIVATE]") for text in provider.requests[1:]) == withheld


class FailingProvider(SecondModelProvider):
    def __init__(self, model, fail_at, error):
        super().__init__(model)
        self.fail_at, self.error = fail_at, error

    def wait(self, request):
        if len(self.requests) > self.fail_at:
            raise self.error
        return super().wait(request)


def test_a_remote_error_turns_the_rest_local_only_and_keeps_the_reason(model):
    provider = FailingProvider(model, 1, cg.errors.RemoteError("the line went dead", kind="connection"))
    with model.pooled_session() as session:
        co = co_generation(model, session, provider, max_tokens=16, lookahead=2)
        tokens = run(co)
    assert len(tokens) == 16 and co.finish_reason == "length"
    assert co.fallback_reason.startswith("the line went dead (kind: connection)")
    assert "local model only" in co.fallback_reason
    assert tokens[0].fused and not tokens[-1].fused
    assert provider.released == len(provider.requests) == 2


def test_any_other_provider_exception_ends_the_generation_and_is_raised(model):
    provider = FailingProvider(model, 1, PermissionError("blocked by policy"))
    with model.pooled_session() as session:
        co = co_generation(model, session, provider, max_tokens=16, lookahead=2)
        with pytest.raises(PermissionError, match="blocked by policy"):
            run(co)
        assert provider.released == len(provider.requests)
        co.close()
        # The session is free again, and its no-context sequence is empty.
        assert session.seq_len(seq_id=1) == 0


class MalformedProvider(SecondModelProvider):
    """Answers with NaN and positive logprobs, unknown and empty tokens, and more steps than asked."""

    def wait(self, request):
        steps = super().wait(request)
        junk = {"": -0.1, "\u00ff\u00fe never a token \u2603" * 3: -0.2, " the": float("nan"), " a": 5.0}
        return [TokenScores(s.token, s.logprob, {**s.top, **junk}) for s in steps] * 3


def test_malformed_scores_are_dropped_or_clamped_never_trusted(model):
    provider = MalformedProvider(model)
    with model.pooled_session() as session:
        co = co_generation(model, session, provider, max_tokens=12, lookahead=3)
        tokens = run(co)
    assert len(tokens) == 12 and co.fallback_reason is None
    assert all(math.isfinite(t.local_logprob) and 0 < t.weight <= 1 for t in tokens)


def test_cancel_from_another_thread_stops_a_provider_wait(model):
    started, proceed = threading.Event(), threading.Event()

    class SlowProvider(SecondModelProvider):
        def wait(self, request):
            started.set()
            proceed.wait(30)
            raise cg.errors.RemoteError("cancelled by the test", kind="cancelled")

    with model.pooled_session() as session:
        co = co_generation(model, session, SlowProvider(model), max_tokens=16, lookahead=4)

        def cancel():
            started.wait(30)
            co.cancel()
            proceed.set()

        thread = threading.Thread(target=cancel)
        thread.start()
        tokens = run(co)
        thread.join()
    assert co.finish_reason == "cancelled" and tokens == []
    assert co.fallback_reason is None  # a cancelled wait is not a remote failure


class AgreeingProvider(SecondModelProvider):
    """The same model with the same private context, `latency` seconds away: its tokens are the
    fused ones, so every one it writes is accepted."""

    def __init__(self, model, latency, prompt, public_prefix):
        super().__init__(model)
        self.latency, self.prompt, self.public_prefix, self.depths = latency, prompt, public_prefix, []

    def submit(self, text, tokens, may_leave, n_steps, top_k, context_bits):
        self.depths.append(n_steps)
        return text, n_steps

    def wait(self, request):
        time.sleep(self.latency)
        text, n_steps = request
        written = self.model.tokenize(text[len(self.public_prefix):], add_special=False)
        piece = self.model.native.token_to_piece
        return [TokenScores(piece(t), lp, {piece(k): v for k, v in top})
                for t, lp, top in self.continue_tokens(self.prompt + written, n_steps)]


class RejectedProvider(SecondModelProvider):
    """A remote whose own token is never the fused one: it always 'writes' a word the local model
    never would, and lists nothing else."""

    def __init__(self, model):
        super().__init__(model)
        self.depths = []

    def submit(self, text, tokens, may_leave, n_steps, top_k, context_bits):
        self.depths.append(n_steps)
        return text, n_steps

    def wait(self, request):
        return [TokenScores(b" zebra", -0.1, {b" zebra": -0.1})] * request[1]


def test_the_default_depth_follows_latency_and_acceptance(model):
    """lookahead=0 (the default): the first requests ask 2, 1 and 6 tokens to fit the latency line;
    then a remote 300 ms away whose every token is accepted is asked for more tokens at a time than
    any probe, and one whose tokens are never accepted for one."""

    instruction, context = prompts(1)[0]
    prefix = model.apply_chat_template([{"role": "user", "content": instruction}])
    agreeing = AgreeingProvider(model, 0.3, model.private_prompt(context, instruction), prefix)
    rejected = RejectedProvider(model)
    for provider in (agreeing, rejected):
        with model.pooled_session() as session:
            co = co_generation(model, session, provider, max_tokens=48, attribution=False)
            run(co)
            stats = co.stats
        assert provider.depths[:3] == [2, 1, 6] and stats.n_asked == sum(provider.depths)
        assert stats.n_accepted <= stats.n_scored <= stats.n_asked
    assert agreeing.depths[3] > 6 and len(agreeing.depths) > 3  # deeper than any probe (16 when the machine is quiet)
    assert set(rejected.depths[3:]) == {1} and len(rejected.depths) > 10


def test_bad_loop_arguments_are_named(model):
    with model.pooled_session() as session:
        with pytest.raises(InvalidParameterError, match="lookahead"):
            co_generation(model, session, None, lookahead=-1)
        with pytest.raises(InvalidParameterError, match="context_delta"):
            co_generation(model, session, SecondModelProvider(model), rule="context_delta")
        with pytest.raises(InvalidParameterError, match="window"):
            co_generation(model, session, SecondModelProvider(model), window=0)
