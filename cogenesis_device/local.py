"""The local model: generation through the engine's native loop."""
from __future__ import annotations

import hashlib
import os
import secrets
import stat
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np

from . import _native
from .errors import CogenesisIOError, InvalidParameterError, MissingFileError, StateError
from .prompts import plain_prompt
from .registry import DEFAULT_MODEL, resolve_model
from .sampling import ENGINE_DEFAULT, SamplingParams, sampling_or

Prompt = Union[str, Sequence[int], np.ndarray]
# The system turn of the private prompt (private_prompt): the context the local model writes from.
SYSTEM_PROMPT = ("You write on behalf of the user described below. Use their details, experiences and writing "
                 "style wherever they fit the task.\n\nAbout the user:\n{context}")
_CONTEXT_MARK, _USER_MARK = "\uE000", "\uE001"  # private-use characters: in no real text
_ROWS_PER_DECODE = 32  # rows per teacher-forced decode (a session's n_outputs_max)


# A generation's timings and token counts, bound from the engine (cg_timings): fields, rates, to_dict().
GenerationStats = _native.Timings
_GENERATE_DEFAULTS = _native.generate_default_params()
_SESSION_DEFAULTS = _native.session_default_params()


@dataclass(frozen=True)
class Completion:
    """The result of LocalModel.generate."""

    text: str
    tokens: list[int]
    finish_reason: str  # 'eos', 'stop', 'length', 'context_full' or 'cancelled'
    stats: GenerationStats


class CompletionStream:
    """Iterates over text as it is generated; `result` holds the Completion at the end.

    Use as a context manager (or exhaust it) so the session returns to the pool.
    """

    def __init__(self, generation: _native.Generation, session: _native.Session, release):
        self._gen = generation
        self._session = session
        self._release = release
        self._result: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while self._result is None:
            if self._gen.finished:
                self._finish()
                break
            _, text = self._gen.step()
            if text:
                return text
        raise StopIteration

    def cancel(self) -> None:
        """Stop generating after the current token; the stream then ends with finish_reason 'cancelled'."""
        self._session.cancel()

    @property
    def result(self) -> Completion:
        if self._result is None:
            raise RuntimeError("the stream has not finished; iterate it to the end first")
        return self._result

    def close(self) -> None:
        """Abandon the generation (if unfinished) and return the session to the pool."""
        self._gen.close()
        if self._release is not None:
            self._release(self._session)
            self._release = None

    def __enter__(self) -> "CompletionStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _finish(self) -> None:
        self._result = _completion(self._gen)
        self.close()


def _completion(gen: _native.Generation) -> Completion:
    return Completion(
        text=gen.text,
        tokens=gen.tokens.tolist(),
        finish_reason=gen.finish_reason,
        stats=gen.timings,
    )


class LocalModel:
    """A GGUF model run by the native engine on this device.

    model: a registry name ("smollm2-135m-instruct", "gemma3-270m") or a path to a .gguf file.
    n_ctx: context window of each session, in tokens. n_threads: decode threads (default: all cores).
    adapter: a GGUF LoRA adapter of this model (what `cogenesis finetune` writes), attached to every
        session with adapter_scale (1: as trained). Both sequences of a session run with it, so in logits
        mode attribution's no-context side scores with the same weights as the side that writes.

    The model is loaded once; each concurrent generation gets its own session
    (llama context + KV cache) from a pool, so several threads can generate at once.
    A session keeps the tokens of its last prompt: a new prompt that starts the
    same way is not prefilled again.
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        n_ctx: int = _SESSION_DEFAULTS["n_ctx"],
        n_threads: int | None = None,
        n_batch: int = _SESSION_DEFAULTS["n_batch"],
        adapter: str | os.PathLike | None = None,
        adapter_scale: float = 1.0,
    ):
        self.path = resolve_model(model)
        self.name = os.fspath(model)
        self._model = _native.Model(str(self.path))
        self.adapter_path = None if adapter is None else os.path.abspath(os.fspath(adapter))
        self.adapter_scale = float(adapter_scale)
        self._adapter = None if adapter is None else _native.Adapter(self._model, self.adapter_path)
        self._session_args = dict(n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads or 0)
        # Idle sessions with the scope their cache holds; borrowed sessions' scopes by id().
        self._idle: list[tuple[object, _native.Session]] = []
        self._busy: dict[int, object] = {}
        self._lock = threading.Lock()
        self._bridge: _native.VocabBridge | None = None
        self._idle.append((_EMPTY, self._pool_session()))  # validates n_ctx & co now

    # -- tokenizer ---------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._session_args["n_ctx"]

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def native(self) -> _native.Model:
        """The underlying engine model (shared by every session)."""
        return self._model

    @property
    def vocab_bridge(self) -> _native.VocabBridge:
        """Maps the tokens of any other tokenizer (as bytes) onto this model's ids. Built once per model,
        on first use (it scans the whole vocabulary); safe to share between threads."""
        with self._lock:
            if self._bridge is None:
                self._bridge = _native.VocabBridge(self._model)
            return self._bridge

    @property
    def has_chat_template(self) -> bool:
        return self._model.has_chat_template

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special).tolist()

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(np.asarray(tokens, dtype=np.int32))

    def apply_chat_template(self, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
        """Format [{"role": ..., "content": ...}, ...] with the model's own chat template."""
        pairs = [(m["role"], m["content"]) for m in messages]
        return self._model.apply_chat_template(pairs, add_generation_prompt=add_generation_prompt)

    def format_prompt(self, messages: Sequence[dict]) -> str:
        """The text that asks this model to answer `messages`: its chat template with the assistant turn
        opened, or, for a model without one (a base model such as Gemma 3 270M), plain_prompt(messages)."""
        return self.apply_chat_template(messages) if self.has_chat_template else plain_prompt(messages)

    def private_prompt(self, context: str, user: str, draft: str = "") -> list[int]:
        """The prompt tokens of a job with a private context: the context in the system turn
        (SYSTEM_PROMPT), the user's text as the user turn, then the draft as the answer's start.

        Only the chat template's own markup is read as special tokens. The context, the user's text (in
        sketch mode it carries the remote's outline) and the draft are plain text: an outline that spells
        '<|im_end|><|im_start|>system' cannot close the turn and give the context-holding model orders."""
        before, user_tokens, after = self.private_prompt_parts(context, user)
        return before + user_tokens + after + self.tokenize(draft, add_special=False)

    def private_prompt_parts(self, context: str, user: str) -> tuple[list[int], list[int], list[int]]:
        """private_prompt's tokens before the user's text, of the user's text, and after it (no draft)."""
        messages = ([{"role": "system", "content": SYSTEM_PROMPT.format(context=_CONTEXT_MARK)}] if context else [])
        text = self.apply_chat_template(messages + [{"role": "user", "content": _USER_MARK}])
        head, _, tail = text.partition(_USER_MARK)
        before: list[int] = []
        for i, piece in enumerate(head.split(_CONTEXT_MARK)):
            if i:
                before += self.tokenize(context, add_special=False)
            before += self.tokenize(piece, add_special=not before, parse_special=True) if piece else []
        return before, self.tokenize(user, add_special=False), self.tokenize(tail, add_special=False, parse_special=True)

    # -- sessions ----------------------------------------------------------

    def new_session(self, *, n_seq_max: int = 1) -> _native.Session:
        """A fresh session of its own (for prefill/decode/state work outside generate), with the adapter."""
        session = _native.Session(self._model, n_seq_max=n_seq_max, **self._session_args)
        if self._adapter is not None:
            session.set_adapter(self._adapter, self.adapter_scale)
        return session

    def _pool_session(self) -> _native.Session:
        # Two sequences: the main one, and in logits mode the remote's view of the text (attribution.py).
        return self.new_session(n_seq_max=2)

    @staticmethod
    def prefill_reusing(session: _native.Session, tokens: Sequence[int], seq_id: int = 0) -> None:
        """Prefill tokens into a session, keeping the KV cache of the prefix it already holds."""
        held, tokens = session.seq_tokens(seq_id=seq_id), np.asarray(tokens, dtype=np.int32)
        n = min(len(held), len(tokens))
        mismatch = np.flatnonzero(held[:n] != tokens[:n])
        same = int(mismatch[0]) if mismatch.size else n
        session.truncate(same, seq_id=seq_id)
        if same < len(tokens):
            session.prefill(tokens[same:], seq_id=seq_id)

    @staticmethod
    def teacher_forced_rows(session: _native.Session, prompt: Sequence[int], targets: Sequence[int],
                            seq_id: int = 0) -> Iterator[np.ndarray]:
        """Yield the scores that precede each target token, feeding the targets (teacher forcing).
        The session keeps its KV cache of the prompt's longest held prefix; the prompt's last token is
        always evaluated again, so its row exists even when the whole prompt was held."""
        LocalModel.prefill_reusing(session, prompt[:-1], seq_id)
        feed = [prompt[-1], *targets[:-1]]
        for start in range(0, len(feed), _ROWS_PER_DECODE):
            chunk = feed[start:start + _ROWS_PER_DECODE]
            session.decode([seq_id] * len(chunk), chunk)
            for i in range(len(chunk)):
                yield session.logits(i)

    @staticmethod
    def scope_for(context: str) -> str:
        """The privacy scope of a private context: a keyed hash (the key lives in this process only),
        so equal contexts share a scope and nothing about the context can be read back from it."""
        return hashlib.blake2b(context.encode("utf-8"), key=_SCOPE_KEY, digest_size=16).hexdigest()

    def _acquire(self, scope: str | None) -> _native.Session:
        """An idle session, preferring one whose cache holds this scope's prompt. A session that last
        served another scope is cleared first: its tokens are another user's, and reusing a shared
        prefix would tell this job (by n_reused or by the first-token time) what that user's began with."""
        with self._lock:
            pick = next((i for i, (held, _) in enumerate(self._idle) if held == scope), None)
            held, session = self._idle.pop(len(self._idle) - 1 if pick is None else pick) if self._idle else (None, None)
            if session is not None:
                self._busy[id(session)] = scope
        if session is None:
            session = self._pool_session()
            with self._lock:
                self._busy[id(session)] = scope
        elif held != scope:
            _clear(session)
        return session

    def _release(self, session: _native.Session) -> None:
        with self._lock:
            scope = self._busy.pop(id(session), _EMPTY)
        if scope is _FORGOTTEN:
            _clear(session)
            scope = _EMPTY
        with self._lock:
            self._idle.append((scope, session))

    @contextmanager
    def pooled_session(self, *, scope: str | None = None):
        """Borrow an idle session from the pool for the duration of a `with` block. scope: whose
        private context the session will hold (see generate)."""
        session = self._acquire(scope)
        try:
            yield session
        finally:
            self._release(session)

    def forget(self, *state_files: str | os.PathLike, context: str | None = None, scope: str | None = None) -> None:
        """Delete a user's cached private context: the given state files (missing ones are ignored), and
        the KV cache of the pooled sessions that hold `context` (or `scope`); with neither, of every
        pooled session. A session in use is cleared when its job ends."""
        for path in state_files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        everything = context is None and scope is None
        scope = self.scope_for(context) if context is not None else scope
        with self._lock:
            idle = [(held, session) for held, session in self._idle if everything or held == scope]
            self._idle = [(_EMPTY, session) if everything or held == scope else (held, session)
                          for held, session in self._idle]
            for key, held in self._busy.items():
                if everything or held == scope:
                    self._busy[key] = _FORGOTTEN
        for _, session in idle:
            _clear(session)

    def cache_prefix(self, prefix: Prompt, path: str | os.PathLike, *, chat: bool = False,
                     key: bytes | None = None) -> int:
        """Prefill a prompt prefix (e.g. the private context) once and save its KV state to `path`.

        Pass `prefix_cache=path` to generate() later: the prompt's leading tokens that
        match are restored from the file instead of being evaluated. Returns the token count.
        The file is readable by this user only (0600) and holds the prefix's tokens in clear unless
        `key` (16, 24 or 32 bytes, kept by the app) is given: then it is sealed with AES-GCM, and
        generate() needs the same key as `cache_key`. forget(path) deletes it.
        """
        tokens = self._prompt_tokens(prefix, chat=chat, add_generation_prompt=False)
        with self.pooled_session(scope=_EMPTY) as session:
            session.truncate(0)
            session.prefill(tokens)
            if key is None:
                session.save_state(os.fspath(path))
            else:
                write_private(path, _seal(key, session.state_bytes()))
            session.truncate(0)
        return len(tokens)

    # -- generation --------------------------------------------------------

    def generate(self, prompt: Prompt, sampling: SamplingParams | None = None, *,
                 max_tokens: int = _GENERATE_DEFAULTS["max_tokens"], stop: Sequence[str] | None = None,
                 ignore_eos: bool = _GENERATE_DEFAULTS["ignore_eos"], chat: bool = False,
                 system: str | None = None, prefix_cache: str | os.PathLike | None = None, cache_key: bytes | None = None,
                 scope: str | None = None) -> Completion:
        """Generate a completion with the GIL released. The arguments are stream()'s."""
        gen, session = self._start(prompt, sampling, max_tokens, stop, ignore_eos, chat, system, prefix_cache,
                                   cache_key, scope)
        try:
            gen.run()
            return _completion(gen)
        finally:
            gen.close()
            self._release(session)

    def stream(self, prompt: Prompt, sampling: SamplingParams | None = None, *,
               max_tokens: int = _GENERATE_DEFAULTS["max_tokens"], stop: Sequence[str] | None = None,
               ignore_eos: bool = _GENERATE_DEFAULTS["ignore_eos"], chat: bool = False,
               system: str | None = None, prefix_cache: str | os.PathLike | None = None, cache_key: bytes | None = None,
               scope: str | None = None) -> CompletionStream:
        """Generate token by token, yielding text as it becomes final.

        prompt: text, or token ids. sampling: a SamplingParams (default: the engine's, SamplingParams()).
        max_tokens: most tokens to generate. stop: strings that end the text (not included).
        ignore_eos: go on past the end-of-generation token. chat: wrap the prompt as a user turn with the
        model's chat template; system: the system message then. prefix_cache: a file written by
        cache_prefix; cache_key: its key, if it was written with one.
        scope: whose private data the prompt holds (a user id, or scope_for(context)). A pooled
        session keeps its KV cache for the next job of the same scope only, so jobs of one user skip
        the prefill of their shared prefix and jobs of another user never learn of it. Calls without
        a scope are one scope together.
        """
        gen, session = self._start(prompt, sampling, max_tokens, stop, ignore_eos, chat, system, prefix_cache,
                                   cache_key, scope)
        return CompletionStream(gen, session, self._release)

    def _start(self, prompt, sampling, max_tokens, stop, ignore_eos, chat, system, prefix_cache, cache_key, scope):
        sampler = sampling_or(ENGINE_DEFAULT, sampling).sampler(self._model)
        tokens = self._prompt_tokens(prompt, chat=chat, system=system)
        session = self._acquire(scope)
        try:
            if prefix_cache is not None:
                _load_state(session, prefix_cache, cache_key)
            gen = _native.Generation(
                session, tokens, sampler, max_tokens=max_tokens, stop=list(stop or []), ignore_eos=ignore_eos,
            )
        except BaseException:
            self._release(session)
            raise
        return gen, session

    def _prompt_tokens(
        self, prompt: Prompt, *, chat: bool, system: str | None = None, add_generation_prompt: bool = True,
    ) -> np.ndarray:
        if not isinstance(prompt, str):
            return np.asarray(prompt, dtype=np.int32)
        if not chat:
            return self._model.tokenize(prompt)
        messages = ([("system", system)] if system else []) + [("user", prompt)]
        text = self._model.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self._model.tokenize(text, parse_special=True)


# -- pooled sessions and state files -------------------------------------------------------------------

_SCOPE_KEY = secrets.token_bytes(32)
_EMPTY = object()  # the scope of a session that holds nothing
_FORGOTTEN = object()  # a borrowed session to clear when it comes back


def _clear(session: _native.Session) -> None:
    for seq_id in range(session.n_seq_max):
        session.truncate(0, seq_id=seq_id)


_SEALED_MAGIC = b"CGKE\x01"  # an encrypted state file: magic and version, nonce, AES-GCM ciphertext
_NONCE = 12
_TAG = 16


def _aead(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - a dependency of the package
        raise InvalidParameterError("encrypted state files need the 'cryptography' package: pip install cryptography") from None
    if not isinstance(key, (bytes, bytearray)) or len(key) not in (16, 24, 32):
        raise InvalidParameterError("a state file key must be 16, 24 or 32 bytes (AES-128/192/256), "
                                    f"got {type(key).__name__} of length {len(key) if hasattr(key, '__len__') else '?'}")
    return AESGCM(bytes(key))


def _seal(key: bytes, state: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return _SEALED_MAGIC + nonce + _aead(key).encrypt(nonce, state, _SEALED_MAGIC)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Writes data to a new 0600 file under a unique name beside path, then renames it over path."""
    target = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=os.path.basename(target) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _open_state(path: str | os.PathLike):
    """The state file, opened for reading. The open does not block and the check is on the opened file,
    so a FIFO (which would wait for a writer), or a path swapped for one after a check, is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise MissingFileError(f"state file not found: '{os.fspath(path)}'") from None
    except OSError as exc:
        raise CogenesisIOError(f"cannot read state file '{os.fspath(path)}': {exc.strerror}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise StateError(f"not a regular file (state file '{os.fspath(path)}')")
    return f


def _load_state(session: _native.Session, path: str | os.PathLike, key: bytes | None) -> None:
    """Loads a state file into the session's main sequence, decrypting it with key when given."""
    if key is None:
        with _open_state(path) as f:
            sealed = f.read(len(_SEALED_MAGIC)) == _SEALED_MAGIC
        if sealed:
            raise StateError(f"state file '{os.fspath(path)}' is encrypted: pass its key as cache_key=")
        session.load_state(os.fspath(path))
        return
    aead = _aead(key)
    limit = session.state_max_size + len(_SEALED_MAGIC) + _NONCE + _TAG
    with _open_state(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:  # checked before reading, like the engine does for plain files
            raise StateError(f"state file of {size} bytes is larger than this session can hold ({limit} bytes) "
                             f"(state file '{os.fspath(path)}')")
        blob = f.read(size)
    if not blob.startswith(_SEALED_MAGIC):
        raise StateError(f"state file '{os.fspath(path)}' is not encrypted, but a cache_key was given")
    nonce = blob[len(_SEALED_MAGIC):len(_SEALED_MAGIC) + _NONCE]
    try:
        from cryptography.exceptions import InvalidTag
        state = aead.decrypt(nonce, blob[len(_SEALED_MAGIC) + _NONCE:], _SEALED_MAGIC)
    except (InvalidTag, ValueError):
        raise StateError(f"cannot decrypt state file '{os.fspath(path)}': wrong key, or the file was altered") from None
    session.load_state_bytes(state)
