"""The vocabulary bridge: remote token strings -> local ids by longest-prefix match."""
import math

import numpy as np
import pytest

from cogenesis_device import _native
from cogenesis_device.fusion import VocabBridge


@pytest.fixture(scope="module")
def bridge(model):
    return VocabBridge(model.native)


@pytest.fixture(scope="module")
def pieces(model):
    return {i: model.native.token_to_piece(i) for i in range(model.n_vocab)}


def test_own_tokens_map_to_tokens_with_the_same_bytes(bridge, pieces):
    ids = range(0, len(pieces), 7)
    for i in ids:
        if pieces[i]:
            assert pieces[bridge.lookup(pieces[i])] == pieces[i]


def test_longest_prefix_match(bridge, pieces):
    by_bytes = {}
    for i, p in pieces.items():
        by_bytes.setdefault(p, i)
    for text in [" Parisxyzzy", " internationalization!!", "Hello, world", "zzzzqqqq", " 2026-11-22"]:
        data = text.encode()
        got = bridge.lookup(text)
        expected = next(by_bytes[data[:n]] for n in range(len(data), 0, -1) if data[:n] in by_bytes)
        assert got == expected
        assert data.startswith(pieces[got])


def test_bytes_str_and_openai_byte_lists_agree(bridge):
    assert bridge.lookup("Hi") == bridge.lookup(b"Hi") == bridge.lookup([72, 105])
    assert bridge.lookup("") == -1 and bridge.lookup(b"") == -1


def test_partial_utf8_maps_to_a_byte_prefix(bridge, pieces):
    euro = "€".encode()  # 3 bytes; a server may send the first two alone
    got = bridge.lookup(euro[:2])
    assert got >= 0 and euro[:2].startswith(pieces[got])


def test_map_merges_drops_and_sorts(bridge):
    tokens = [" Paris", " Paris", "", "London", " Berlin", "Rome"]
    logprobs = np.array([math.log(0.2), math.log(0.3), math.log(0.1), -9999.0, math.log(0.05), float("nan")],
                        dtype=np.float32)
    ids, lps = bridge.map(tokens, logprobs)
    assert ids.tolist() == [bridge.lookup(" Paris"), bridge.lookup(" Berlin")]
    np.testing.assert_allclose(np.exp(lps), [0.5, 0.05], rtol=1e-5)


@pytest.mark.slow
def test_cross_tokenizer_mapping_from_gemma(model, bridge, gemma_path, pieces):
    """Each Gemma token maps to the local token whose bytes are the longest prefix of its bytes (the
    lowest id among equal bytes), computed here from the local vocabulary; map() returns those ids,
    with the probabilities of Gemma tokens landing on one id added."""
    gemma = _native.Model(str(gemma_path), vocab_only=True)
    text = " The committee approved the unprecedented reorganization yesterday. Ünïcödé ✓ 東京"
    gemma_tokens = gemma.tokenize(text, add_special=False)
    remote_pieces = [gemma.token_to_piece(int(t)) for t in gemma_tokens]
    assert b"".join(remote_pieces) == text.encode()
    by_bytes = {}
    for i, p in pieces.items():
        by_bytes.setdefault(p, i)
    expected = [next(by_bytes[p[:n]] for n in range(len(p), 0, -1) if p[:n] in by_bytes) for p in remote_pieces]
    assert [bridge.lookup(p) for p in remote_pieces] == expected
    assert any(pieces[e] != p for e, p in zip(expected, remote_pieces))  # some map onto a strict prefix
    logprobs = np.log(np.linspace(0.04, 0.001, len(remote_pieces))).astype(np.float32)
    ids, lps = bridge.map(remote_pieces, logprobs)
    merged = {}
    for e, lp in zip(expected, logprobs.astype(np.float64)):
        merged[e] = merged.get(e, 0.0) + math.exp(lp)
    assert sorted(ids.tolist()) == sorted(merged)
    np.testing.assert_allclose(np.exp(lps), [merged[i] for i in ids.tolist()], rtol=1e-5)


def test_end_of_turn_names_sent_as_text_map_to_the_end_of_generation(bridge, model):
    """vLLM, SGLang and OpenAI send special tokens as text; their mass must not land on a literal '<'."""
    native = model.native
    for name in ("<|eot_id|>", "<|endoftext|>", "<|im_end|>", "</s>", "<end_of_turn>"):
        token = bridge.lookup(name)
        assert token >= 0 and native.is_eog(token), name
    assert native.token_to_piece(bridge.lookup("<|im_start|>")) == b""  # this model's own control token
    assert native.token_to_piece(bridge.lookup("<")) == b"<"  # a real '<' is still a '<'
    ids, _ = bridge.map(["<|eot_id|>", "<"], np.log(np.array([0.7, 0.2], np.float32)))
    assert native.is_eog(int(ids[0])) and native.token_to_piece(int(ids[1])) == b"<"
