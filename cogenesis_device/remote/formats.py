"""What OpenAI-compatible servers answer, read by one parser: OpenAI's legacy logprob lists
(llama_cpp.server, vLLM, SGLang, OpenAI's instruct models) and the content list (llama.cpp's server),
chat replies and streams, and how a server names its tokens.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteError


class Retryable(Exception):
    """A fault worth another attempt: a malformed or incomplete answer, or a transient HTTP status."""

    def __init__(self, message: str, kind: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


@dataclass(frozen=True)
class TokenScores:
    """The remote's distribution at one position: its chosen token and the top alternatives.

    A token is its bytes when the server names it by id (read through the remote's tokenizer) or
    gives its bytes (llama.cpp), a control token is its name ('<|im_end|>'), and otherwise it is the
    text the server returns (OpenAI's legacy shape). An alternative that cannot be read as a token
    (a partial UTF-8 character sent as '' or U+FFFD) is left out; a chosen one is ''."""

    token: bytes | str
    logprob: float
    top: dict[bytes | str, float]


@dataclass(frozen=True)
class Continuation:
    """The remote's greedy or sampled continuation of a prompt, with scores at every position
    (no positions when its first choice is end-of-text)."""

    text: str
    steps: list[TokenScores]
    finish_reason: str


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str


@dataclass(frozen=True)
class RemoteCapabilities:
    """What the probe found at connect time."""

    model: str
    max_top_k: int  # largest `logprobs` the server accepted, up to the client's cap; 0 = none
    token_identity: str  # how the server names tokens: 'ids' (llama.cpp id, vLLM token_id:N), 'bytes' or 'text'
    positions_ok: bool  # logprobs at generated position i describe token i (checked against greedy choices)

    @property
    def next_token_scores(self) -> bool:
        """Whether the server supplies next-token scores (what logits mode needs)."""
        return self.max_top_k > 0 and self.positions_ok

    def missing(self) -> str:
        """What the server lacks for logits mode, in words ('' when nothing)."""
        if self.max_top_k == 0:
            return "returns no next-token logprobs on /v1/completions"
        return "" if self.positions_ok else "lists logprobs at the wrong positions"


def parse_json(raw) -> Any:
    try:
        return json.loads(raw.http_response.text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Retryable(f"the answer is not JSON ({exc})", "malformed") from None


def parse_completion(body: Any, n: int, tokenizer: Any = None, top_k: int | None = None) -> Continuation:
    """A /v1/completions answer with logprobs, in either shape servers use: OpenAI's legacy lists
    (`tokens`, `token_logprobs`, `top_logprobs` dicts; llama_cpp.server, vLLM, SGLang) or the content
    list of chat completions (`id`, `token`, `bytes`, `logprob`, `top_logprobs`; llama.cpp's server)."""
    try:
        choice = body["choices"][0]
        text, finish = choice.get("text", ""), choice.get("finish_reason") or "length"
    except (KeyError, IndexError, TypeError, AttributeError):
        raise Retryable("the answer has no choices[0]", "malformed") from None
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if isinstance(content, list):
        tops = [e.get("top_logprobs") if isinstance(e, dict) else None for e in content]
    elif isinstance(lp, dict) and isinstance(lp.get("tokens"), list) and isinstance(lp.get("top_logprobs"), list):
        tops = lp["top_logprobs"]
    elif lp is None and text.endswith("\ufffd") and finish == "length":
        # llama.cpp's server holds back the scores of tokens that end inside a UTF-8 character until the
        # character is complete (then it lists the character once, merged). When max_tokens stops it inside
        # one, the answer is text with no scores at all: valid, and without scores for these positions.
        return Continuation(text, [], finish)
    else:
        raise Retryable("the answer carries no logprobs", "missing_logprobs")
    if len(tops) > n and content is None:
        lp = _cut_at_unnamed_bytes(lp, n)
        tops = lp["top_logprobs"]
    # OpenAI: "up to logprobs+1 elements" (the sampled token is always listed). More is not an answer
    # to this request, and a hostile server's way to make the client work; checked before reading them.
    if len(tops) > n or (top_k is not None and any(hasattr(t, "__len__") and len(t) > top_k + 1 for t in tops)):
        raise Retryable(f"the logprobs list more than the {n} positions and {top_k} alternatives asked for",
                         "malformed")
    steps = _content_steps(content, tokenizer) if isinstance(content, list) else _legacy_steps(lp, tokenizer)
    if not steps and not text and finish == "stop":
        # The remote's first choice is end-of-text, which llama_cpp.server reports as no tokens at all:
        # a valid answer that carries no scores for this position.
        return Continuation("", [], finish)
    if not steps and content == [] and text:
        raise Retryable("the answer's logprobs list no tokens for its text", "missing_logprobs")
    return Continuation(text, steps, finish)


def _cut_at_unnamed_bytes(lp: dict, n: int) -> dict:
    """llama_cpp.server, stopped by max_tokens inside a UTF-8 character, generates on to the character's
    end and names each of its byte tokens '' (alone they decode to nothing). Tokens that cannot be told
    apart cannot be followed: the answer ends at the first of them, as llama.cpp's server ends one (no
    scores for those positions). Anything else listing more than n positions is left for the caller to
    refuse."""
    tokens = lp["tokens"]
    first = next((i for i, token in enumerate(tokens[:n + 1]) if token == ""), None)
    if first is None or len(tokens) - first > 4 or any(token != "" for token in tokens[first:]):
        return lp
    return {key: value[:first] if isinstance(value, list) else value for key, value in lp.items()}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Retryable("a logprob is not a number", "malformed") from None


def _legacy_steps(lp: dict, tokenizer: Any) -> list[TokenScores]:
    tokens, token_lps, tops = lp["tokens"], lp.get("token_logprobs") or [], lp["top_logprobs"]
    if len(tops) != len(tokens) or len(token_lps) != len(tokens):
        raise Retryable(f"the logprobs list {len(tokens)} tokens, {len(tops)} distributions and {len(token_lps)} "
                         "logprobs", "missing_logprobs")
    steps = []
    for token, token_lp, top in zip(tokens, token_lps, tops):
        if not isinstance(token, str) or not (top is None or isinstance(top, dict)):
            raise Retryable("a logprobs entry is not a token -> logprob mapping", "malformed")
        # vLLM writes null for a position it has no scores for (token_logprobs: [null], top_logprobs: [null]):
        # a position without scores, as an empty top list is.
        scores: dict[bytes | str, float] = {}
        for name, value in (top or {}).items():
            _add(scores, _named_token(str(name), tokenizer), _number(value))
        steps.append(TokenScores(_named_token(token, tokenizer) or "",
                                 math.nan if token_lp is None else _number(token_lp), scores))
    return steps


def _content_steps(content: list, tokenizer: Any) -> list[TokenScores]:
    steps = []
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("top_logprobs"), list):
            raise Retryable("a logprobs content entry has no top_logprobs list", "malformed")
        scores: dict[bytes | str, float] = {}
        own_bytes = None  # the chosen token's bytes as listed among the alternatives
        for alt in entry["top_logprobs"]:
            if not isinstance(alt, dict):
                raise Retryable("a top_logprobs entry is not an object", "malformed")
            key = _content_token(alt, tokenizer, check=True)
            _add(scores, key, _number(alt.get("logprob")))
            if alt.get("id") is not None and alt.get("id") == entry.get("id"):
                own_bytes = _bytes(alt)
        entry_bytes = _bytes(entry)
        if own_bytes is None and tokenizer is not None and isinstance(entry.get("id"), int):
            own_bytes = _piece(tokenizer, entry["id"])
        if entry_bytes is not None and own_bytes is not None and entry_bytes != own_bytes:
            # llama.cpp's server lists the tokens of a UTF-8 character as one entry with the last one's
            # scores: the positions from here on are unknown, so the answer ends before them.
            break
        steps.append(TokenScores(_content_token(entry, tokenizer) or "", _number(entry.get("logprob")), scores))
    return steps


# A control token the server names by id without its bytes, when the remote's tokenizer is unknown:
# the only control token a completion ends on is its end of text, which the bridge maps to the local one.
_UNNAMED_CONTROL_TOKEN = "<|endoftext|>"


def _content_token(entry: dict, tokenizer: Any, check: bool = False) -> bytes | str | None:
    """A content-list token: by id through the remote's tokenizer, else its bytes, else its text.
    check: compare the tokenizer's bytes with the server's (alternatives are never merged entries)."""
    token_id, raw = entry.get("id"), _bytes(entry)
    if tokenizer is not None and isinstance(token_id, int) and not isinstance(token_id, bool):
        piece = _piece(tokenizer, token_id)
        if check and raw and piece != raw:
            raise RemoteError(f"the remote's tokenizer is not the server's: token {token_id} is {raw!r} there and "
                              f"{piece!r} here; pass the remote's own family as template=", kind="config")
        return piece or tokenizer.token_to_piece(token_id, special=True)
    if raw is not None:
        return raw or (_UNNAMED_CONTROL_TOKEN if token_id is not None else None)
    token = entry.get("token")
    return _named_token(token, tokenizer) if isinstance(token, str) else None


def _named_token(token: str, tokenizer: Any) -> bytes | str | None:
    """A token the server names by text: vLLM's 'token_id:N' through the remote's tokenizer, OpenAI's
    'bytes:\\xe2\\x80' (a token that is not whole UTF-8) as its bytes; None for text that names no token
    (a partial UTF-8 character sent as '' or U+FFFD)."""
    if token.startswith("bytes:"):
        return _escaped_bytes(token[len("bytes:"):])
    if token.startswith("token_id:"):
        if tokenizer is None:
            raise RemoteError("the server names tokens by id (token_id:N) and the remote's tokenizer is unknown: "
                              "pass template= a LocalModel of the remote's family", kind="unsupported")
        try:
            token_id = int(token[len("token_id:"):])
        except ValueError:
            raise Retryable(f"the server named a token {token!r}", "malformed") from None
        return _piece(tokenizer, token_id) or tokenizer.token_to_piece(token_id, special=True)
    return None if not token or "\ufffd" in token else token


_BYTE_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _escaped_bytes(text: str) -> bytes:
    """OpenAI's name of a token that is not whole UTF-8: its bytes, each non-ASCII one as a \\xNN
    escape ('bytes:\\xe2\\x80'), the others as themselves ('bytes: \\xe2')."""
    out, at = bytearray(), 0
    for escape in _BYTE_ESCAPE.finditer(text):
        out += text[at:escape.start()].encode("utf-8")
        out.append(int(escape.group(1), 16))
        at = escape.end()
    out += text[at:].encode("utf-8")
    return bytes(out)


def _piece(tokenizer: Any, token_id: int) -> bytes:
    if not 0 <= token_id < tokenizer.n_vocab:
        raise RemoteError(f"the server named token {token_id}, which the remote's tokenizer does not have "
                          f"({tokenizer.n_vocab} tokens)", kind="config")
    return tokenizer.token_to_piece(token_id)


def _bytes(entry: dict) -> bytes | None:
    raw = entry.get("bytes")
    if raw is None:
        return None
    try:
        return bytes(raw)
    except (TypeError, ValueError):
        raise Retryable("a token's bytes are not a list of bytes", "malformed") from None


def _add(scores: dict, key: bytes | str | None, logprob: float) -> None:
    """Adds a token's probability; two entries naming one token (bytes of one UTF-8 string) share it."""
    if key is None:
        return
    held = scores.get(key)
    scores[key] = logprob if held is None else max(held, logprob) + math.log1p(math.exp(-abs(held - logprob)))


def parse_text_completion(body: Any) -> ChatReply:
    """A /v1/completions answer read for its text only (a base model's reply to a plain-text prompt)."""
    try:
        choice = body["choices"][0]
        text, finish = choice["text"], choice.get("finish_reason") or "length"
    except (KeyError, IndexError, TypeError, AttributeError):
        raise Retryable("the answer has no choices[0].text", "malformed") from None
    if not isinstance(text, str):
        raise Retryable("the answer's text is not a string", "malformed")
    return ChatReply(text, finish)


def read_chat_chunks(chunks: list[dict]) -> ChatReply:
    """A chat completion stream, as the chunks openai-python's stream reader decoded (each as a dict).

    The reply is the answer (`delta.content`), or, from a reasoning model that wrote no answer, its
    reasoning (`delta.reasoning_content`: vLLM before PR 33402, SGLang, llama.cpp; `delta.reasoning`:
    vLLM since, Ollama). A refusal (`delta.refusal`, OpenAI) is a RemoteError of kind 'refused' naming
    it; an error event without an `error` field (vLLM's older ErrorResponse: `object: "error"`) one of
    kind 'status' with the server's message."""
    content, reasoning, refusal, finish = [], [], [], None
    for chunk in chunks:
        if chunk.get("object") == "error" or ("choices" not in chunk and isinstance(chunk.get("message"), str)):
            raise RemoteError(f"the server reported an error in the stream: {str(chunk.get('message'))[:300]}",
                              kind="status", status=chunk.get("code") if isinstance(chunk.get("code"), int) else None)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise Retryable("a stream event is not a chat completion chunk", "malformed")
        if not choices:  # a usage-only chunk (OpenAI, vLLM, SGLang and llama.cpp send one on request)
            continue
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise Retryable("a stream event's delta is not an object", "malformed")
        content.append(_text(delta.get("content")))
        reasoning.append(_text(delta.get("reasoning_content")) or _text(delta.get("reasoning")))
        refusal.append(_text(delta.get("refusal")))
        finish = choice.get("finish_reason") or finish
    if "".join(refusal):
        raise RemoteError(f"the remote refused: {''.join(refusal)[:300]}", kind="refused")
    if finish is None:
        raise Retryable("the stream ended before its last event", "truncated")
    return ChatReply("".join(content) or "".join(reasoning), finish)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def token_identity(body: Any) -> str:
    """How an answer names its tokens: 'ids', 'bytes' or 'text'."""
    lp = body["choices"][0]["logprobs"]
    if isinstance(lp.get("content"), list):
        first = lp["content"][0] if lp["content"] else {}
        return "ids" if isinstance(first.get("id"), int) else "bytes" if "bytes" in first else "text"
    return "ids" if any(str(t).startswith("token_id:") for t in lp["tokens"]) else "text"
