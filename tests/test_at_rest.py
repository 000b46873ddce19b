"""Private data at rest: state files (checksum, size, encryption, deletion), pooled sessions scoped
to one private context, audit and eval logs that keep no private text unless asked."""
import hashlib
import json
import os

import numpy as np
import pytest

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device.errors import InvalidParameterError, StateError
from cogenesis_device.jsonl import KeyedLog
from cogenesis_device.privacy import EgressGuard

HEADER = 4 + 4 + 3 * 4 + 3 * 8 + 4  # magic, version, model fingerprint (and the adapter tag), token count
PARIS = "Q: Which city is the capital of France? A: The capital of France is"
TOKYO = "Q: Which city is the capital of Japan? A: The capital of Japan is"
CONTEXT = ("Private profile. Name: Dana Whitfield. Occupation: veterinary nurse in Leeds. Writes short, warm "
           "emails and signs them 'D.'. Allergic to penicillin.")


def _save(model, text, path):
    s = model.new_session()
    s.prefill(model.native.tokenize(text))
    s.save_state(str(path))
    return path.read_bytes()


def _greedy_next(model, session, text, n=3):
    gen = _native.Generation(session, model.native.tokenize(text), _native.Sampler(temperature=0), max_tokens=n)
    gen.run()
    return gen.text


def test_a_state_file_spliced_from_two_saves_is_refused(model, tmp_path):
    """One save's token list with another's KV data: before, it loaded and the model went on from the
    other prompt's cache (" Tokyo" after a France question)."""
    paris, tokyo = _save(model, PARIS, tmp_path / "paris.kv"), _save(model, TOKYO, tmp_path / "tokyo.kv")
    n = len(model.native.tokenize(PARIS))
    assert n == len(model.native.tokenize(TOKYO)) and len(paris) == len(tokyo)
    cut = HEADER + 4 * n  # the token list ends here; the KV data (and the checksum) follow
    spliced = tmp_path / "spliced.kv"
    spliced.write_bytes(paris[:cut] + tokyo[cut:])
    with pytest.raises(StateError, match="checksum"):
        model.new_session().load_state(str(spliced))
    flipped = bytearray(paris)
    flipped[len(paris) // 2] ^= 0x01
    (tmp_path / "flipped.kv").write_bytes(bytes(flipped))
    with pytest.raises(StateError, match="checksum"):
        model.new_session().load_state(str(tmp_path / "flipped.kv"))
    restored = model.new_session()
    restored.load_state(str(tmp_path / "paris.kv"))  # the real one still loads, and continues its own prompt
    assert "Paris" in _greedy_next(model, restored, PARIS)


def test_a_state_file_larger_than_the_session_is_refused_unread(model, tmp_path):
    """Before, the whole file was read into memory first, whatever its size."""
    good = _save(model, PARIS, tmp_path / "good.kv")
    small = _native.Session(model.native, n_ctx=64)
    huge = tmp_path / "huge.kv"
    with open(huge, "wb") as f:  # a valid header, then a sparse hole: no disk used, and never read
        f.write(good[:HEADER])
        f.truncate(small.state_max_size + 1)
    with pytest.raises(StateError, match="larger than this session can hold"):
        small.load_state(str(huge))
    assert small.seq_len() == 0


def test_state_bytes_round_trip_with_the_same_checks(model):
    s = model.new_session()
    s.prefill(model.native.tokenize(PARIS))
    data = s.state_bytes()
    assert data[:4] == b"CGKV" and len(data) <= s.state_max_size
    other = model.new_session()
    other.load_state_bytes(data)
    assert other.seq_tokens().tolist() == s.seq_tokens().tolist()
    with pytest.raises(StateError, match="checksum"):
        model.new_session().load_state_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])


def test_an_encrypted_state_file_holds_no_token_in_clear_and_needs_its_key(model, tmp_path):
    key = os.urandom(32)
    sealed, plain = tmp_path / "sealed.kv", tmp_path / "plain.kv"
    n = model.cache_prefix(CONTEXT, sealed, key=key)
    model.cache_prefix(CONTEXT, plain)
    assert os.stat(sealed).st_mode & 0o777 == 0o600 and sorted(os.listdir(tmp_path)) == ["plain.kv", "sealed.kv"]
    tokens = np.asarray(model.tokenize(CONTEXT), dtype="<i4").tobytes()
    assert tokens[:32] in plain.read_bytes()  # what a plain cache gives away ...
    data = sealed.read_bytes()
    assert not any(tokens[i:i + 16] in data for i in range(0, len(tokens) - 16, 4)) and b"CGKV" not in data
    prompt = CONTEXT + "\nWrite one sentence about your week."
    options = dict(max_tokens=12, sampling=cg.SamplingParams.greedy(), ignore_eos=True, scope="dana")
    from_sealed = model.generate(prompt, prefix_cache=sealed, cache_key=key, **options)
    from_plain = model.generate(prompt, prefix_cache=plain, **options)
    assert from_sealed.text == from_plain.text and from_sealed.stats.n_reused >= n - 1
    with pytest.raises(StateError, match="wrong key"):
        model.generate(prompt, prefix_cache=sealed, cache_key=os.urandom(32), **options)
    with pytest.raises(StateError, match="encrypted: pass its key"):
        model.generate(prompt, prefix_cache=sealed, **options)
    with pytest.raises(StateError, match="not encrypted"):
        model.generate(prompt, prefix_cache=plain, cache_key=key, **options)
    tampered = bytearray(data)
    tampered[-40] ^= 0x01
    sealed.write_bytes(bytes(tampered))
    with pytest.raises(StateError, match="altered"):
        model.generate(prompt, prefix_cache=sealed, cache_key=key, **options)
    with pytest.raises(InvalidParameterError, match="16, 24 or 32 bytes"):
        model.cache_prefix(CONTEXT, sealed, key=b"short")


def test_forget_deletes_the_cache_file_and_the_pooled_sessions_of_a_user(model, tmp_path):
    path = tmp_path / "dana.kv"
    model.cache_prefix(CONTEXT, path)
    prompt = CONTEXT + "\nWrite one sentence about your week."
    options = dict(max_tokens=2, sampling=cg.SamplingParams.greedy(), ignore_eos=True, scope="dana")
    model.generate(prompt, **options)
    assert model.generate(prompt, **options).stats.n_reused > 0  # the user's own cache serves the user
    model.forget(path, scope="dana")
    assert not path.exists()
    assert model.generate(prompt, **options).stats.n_reused == 0
    model.forget(path)  # a missing file is not an error; with no scope, every pooled session is cleared
    assert model.generate(prompt, **options).stats.n_reused == 0


def test_prefix_reuse_stays_within_one_private_context(model):
    """Before, a pooled session kept the last job's tokens for any next job: a job whose context began
    like another user's had that prefix "reused", visible in n_reused and the first-token time."""
    alice = CONTEXT + " Her sister Ingrid lives in Tromsø."
    mallory = CONTEXT + " Guessing the rest."  # shares the first sentences of Alice's context
    generator = cg.CoGenerator(model)  # no remote: the local model alone, through the pool
    instruction = "Write a short note about the weekend."
    generator.generate(instruction, alice, max_tokens=2)
    assert generator.generate(instruction, alice, max_tokens=2).stats.n_reused > 50  # same user: reused
    assert generator.generate(instruction, mallory, max_tokens=2).stats.n_reused == 0
    model.generate("Hello there, how are", scope="a", max_tokens=1)
    assert model.generate("Hello there, how are", scope="b", max_tokens=1).stats.n_reused == 0
    assert model.generate("Hello there, how are", scope="b", max_tokens=1).stats.n_reused > 0


def test_the_audit_log_keeps_hashes_and_findings_unless_bodies_are_asked_for(tmp_path):
    """Before, the JSONL stored every body; under 'audit' that is the private text as it was sent."""
    audit = tmp_path / "audit.jsonl"
    guard = EgressGuard("Name: Odalys Brennecke", policy="audit", audit_path=str(audit))
    body = json.dumps({"prompt": "Dear Odalys Brennecke"}).encode()
    sent, record = guard.check_body("POST", "/v1/completions", body)
    assert sent == body and record.action == "leaked" and record.body == ""
    assert record.body_sha256 == hashlib.sha256(body).hexdigest() and record.findings
    text = audit.read_text()
    assert "Odalys" not in text and json.loads(text)["body_sha256"] == record.body_sha256
    assert os.stat(audit).st_mode & 0o777 == 0o600
    kept = EgressGuard("Name: Odalys Brennecke", policy="audit", record_bodies=True)
    assert kept.check_body("POST", "/v1/completions", body)[1].body == body.decode()


def test_eval_logs_are_private_to_their_owner(tmp_path):
    log = KeyedLog(tmp_path / "generations.jsonl", lambda r: r["tid"])
    log.add({"tid": "1", "text": "Dear Ingrid, ..."})
    assert os.stat(tmp_path / "generations.jsonl").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("via", ["engine", "plain", "sealed"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_without_waiting(model, tmp_path, via):
    """A FIFO named as the cache: opening it for reading waits for a writer that never comes (before,
    the engine's load_state and LocalModel's check for a sealed file both hung)."""
    import threading

    fifo = tmp_path / "cache.kv"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            if via == "engine":
                model.new_session().load_state(str(fifo))
            else:
                key = b"k" * 32 if via == "sealed" else None
                model.generate("Hello", max_tokens=1, prefix_cache=fifo, cache_key=key, scope="fifo")
        except StateError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "loading a FIFO as a state file hung"
    assert outcome and "not a regular file" in outcome[0]
