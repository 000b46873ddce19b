"""The private-context cache: KV state saved to a file and restored."""
import os

import pytest

import cogenesis_device as cg

from cogenesis_device import _native
from cogenesis_device.errors import ContextOverflowError, MissingFileError, StateError

CONTEXT = (
    "Private profile. Name: Dana Whitfield. Occupation: veterinary nurse in Leeds. "
    "Writes short, warm emails and signs them 'D.'. Allergic to penicillin. "
) * 6
INSTRUCTION = "\nWrite a two-sentence note to a colleague about swapping the Friday shift."


def greedy():
    return _native.Sampler(temperature=0)


def test_restored_prefix_generates_what_a_fresh_prefill_does(model, tmp_path):
    prefix = model.native.tokenize(CONTEXT)
    prompt = model.native.tokenize(CONTEXT + INSTRUCTION)
    assert prompt[: len(prefix) - 1].tolist() == prefix[:-1].tolist()
    path = str(tmp_path / "ctx.kv")

    writer = model.new_session()
    writer.prefill(prefix)
    writer.save_state(path)
    # It holds the private context's tokens: readable by this user only, and no temporary file left.
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["ctx.kv"]

    restored = model.new_session()
    restored.load_state(path)
    assert restored.seq_tokens().tolist() == prefix.tolist()
    from_cache = _native.Generation(restored, prompt, greedy(), max_tokens=48)
    from_cache.run()

    again = model.new_session()
    again.prefill(prefix)
    from_prefill = _native.Generation(again, prompt, greedy(), max_tokens=48)
    from_prefill.run()

    assert from_cache.tokens.tolist() == from_prefill.tokens.tolist()
    assert from_cache.text == from_prefill.text
    reused = from_cache.timings.n_reused
    assert reused >= len(prefix) - 1
    assert from_cache.timings.n_prompt - reused < len(prompt) - len(prefix) + 2


def test_local_model_prefix_cache_api(model, tmp_path):
    path = tmp_path / "ctx.kv"
    n = model.cache_prefix(CONTEXT, path)
    assert n == len(model.tokenize(CONTEXT))
    out = model.generate(CONTEXT + INSTRUCTION, prefix_cache=path, max_tokens=16, ignore_eos=True,
                         sampling=cg.SamplingParams.greedy())
    assert out.stats.n_reused >= n - 1
    assert out.stats.n_generated == 16


def test_state_file_errors(model, tmp_path):
    s = model.new_session()
    with pytest.raises(MissingFileError, match="state file not found"):
        s.load_state(str(tmp_path / "missing.kv"))

    garbage = tmp_path / "garbage.kv"
    garbage.write_bytes(b"hello, not a state" * 10)
    with pytest.raises(StateError, match="not a cogenesis state"):
        s.load_state(str(garbage))

    good = tmp_path / "good.kv"
    s.prefill(model.native.tokenize(CONTEXT))
    s.save_state(str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.kv"
    truncated.write_bytes(data[: len(data) - 100])
    fresh = model.new_session()
    with pytest.raises(StateError, match="truncated or corrupt"):
        fresh.load_state(str(truncated))
    assert fresh.seq_len() == 0

    tiny = _native.Session(model.native, n_ctx=32)
    with pytest.raises(ContextOverflowError, match="n_ctx is 32"):
        tiny.load_state(str(good))

    empty = model.new_session()
    with pytest.raises(ValueError, match="empty"):
        empty.save_state(str(tmp_path / "empty.kv"))


@pytest.mark.slow
def test_state_from_another_model_is_refused(model, gemma_path, tmp_path):
    s = model.new_session()
    s.prefill(model.native.tokenize("some context"))
    path = str(tmp_path / "smol.kv")
    s.save_state(path)
    gemma = _native.Model(str(gemma_path))
    with pytest.raises(StateError, match="different model"):
        _native.Session(gemma, n_ctx=256).load_state(path)
