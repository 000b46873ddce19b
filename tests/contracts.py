"""Response bodies written from each server's documented format, for the contract tests. Each fixture
cites the doc or source file its shape comes from. Token strings and ids are the bundled SmolLM2's
(" Paris" is id 7042, "." 30, " the" 260, " London" 4528, "\n" 198), so that what the client reads
can be checked against the local vocabulary."""
import json


def chat_stream(model: str, pieces: list[str], *, usage: bool, extra: dict | None = None) -> str:
    """An OpenAI-style chat completion stream: role chunk, content chunks, finish, optional usage-only
    chunk (choices: []), [DONE]."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, **(extra or {})}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        events.append({**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


OUTLINE = ["1. Greet the team\n", "2. Give the date\n", "3. Ask them to reply"]


def legacy_completion(model: str, tokens: list[str], tops: list[dict]) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model, "choices": [{
        "index": 0, "text": "".join(t for t in tokens if not t.startswith("token_id:")), "finish_reason": "length",
        "logprobs": {"text_offset": list(range(len(tokens))), "token_logprobs": [top[t] for t, top in zip(tokens, tops)],
                     "tokens": tokens, "top_logprobs": tops}}],
        "usage": {"prompt_tokens": 6, "completion_tokens": len(tokens), "total_tokens": 6 + len(tokens)}}


def models(*ids: str, owner: str = "vllm") -> dict:
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 1, "owned_by": owner} for i in ids]}


SERVERS = {
    # vLLM: CompletionLogProbs (text_offset, token_logprobs, tokens, top_logprobs) in
    # vllm/entrypoints/openai/protocol.py, filled by serving_completion.py _create_completion_logprobs,
    # which decodes each token alone: a partial UTF-8 byte token comes out as U+FFFD. LoRA adapters are
    # listed in /v1/models beside the base model (docs: "Serving LoRA adapters").
    "vllm": {
        "routes": {
            "GET /v1/models": (200, models("meta-llama/Llama-3.1-8B-Instruct", "sql-lora")),
            "POST /v1/completions": (200, legacy_completion("meta-llama/Llama-3.1-8B-Instruct", [" Paris", "."], [
                {" Paris": -0.26, " the": -2.76, "\ufffd": -3.9, " London": -4.29},
                {".": -0.40, ",": -1.6, "\ufffd": -2.5}])),
            "POST /v1/chat/completions": (200, chat_stream("meta-llama/Llama-3.1-8B-Instruct", OUTLINE, usage=True)),
        },
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "identity": "text", "top_k": 20, "mode": "logits",
        "steps": [(" Paris", {" Paris": -0.26, " the": -2.76, " London": -4.29}), (".", {".": -0.40, ",": -1.6})],
    },
    # vLLM with --return-tokens-as-token-ids (or the request field return_tokens_as_token_ids): the same
    # shape, tokens as "token_id:N" (serving_completion.py, protocol.py). Read through the remote's tokenizer.
    "vllm-token-ids": {
        "routes": {
            "GET /v1/models": (200, models("HuggingFaceTB/SmolLM2-135M-Instruct")),
            "POST /v1/completions": (200, legacy_completion("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                            ["token_id:7042", "token_id:30"], [
                {"token_id:7042": -0.26, "token_id:260": -2.76, "token_id:4528": -4.29},
                {"token_id:30": -0.40, "token_id:198": -1.6}])),
        },
        "identity": "ids", "top_k": 20, "mode": "logits",
        "steps": [(b" Paris", {b" Paris": -0.26, b" the": -2.76, b" London": -4.29}), (b".", {b".": -0.40, b"\n": -1.6})],
    },
    # SGLang: the OpenAI legacy shape from python/sglang/srt/entrypoints/openai/serving_completions.py
    # (to_openai_style_logprobs -> LogProbs: text_offset, token_logprobs, tokens, top_logprobs); chat
    # streams end with a usage chunk when stream_options.include_usage is set (serving_chat.py).
    "sglang": {
        "routes": {
            "GET /v1/models": (200, models("Qwen/Qwen2.5-7B-Instruct", owner="sglang")),
            "POST /v1/completions": (200, legacy_completion("Qwen/Qwen2.5-7B-Instruct", [" Paris", "."], [
                {" Paris": -0.26, " the": -2.76, " London": -4.29}, {".": -0.40, ",": -1.6}])),
            "POST /v1/chat/completions": (200, chat_stream("Qwen/Qwen2.5-7B-Instruct", OUTLINE, usage=True)),
        },
        "identity": "text", "top_k": 20, "mode": "logits",
        "steps": [(" Paris", {" Paris": -0.26, " the": -2.76, " London": -4.29}), (".", {".": -0.40, ",": -1.6})],
    },
    # OpenAI, a chat model: /v1/completions answers 404 "This is a chat model and not supported in the
    # v1/completions endpoint" (API reference, error codes); /v1/models lists every model of the account;
    # chat streams end with a usage chunk under stream_options.include_usage (API reference, chat chunk).
    "openai-chat": {
        "routes": {
            "GET /v1/models": (200, models("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", owner="openai")),
            "POST /v1/completions": (404, {"error": {
                "message": "This is a chat model and not supported in the v1/completions endpoint. "
                           "Did you mean to use v1/chat/completions?",
                "type": "invalid_request_error", "param": "model", "code": None}}),
            "POST /v1/chat/completions": (200, chat_stream("gpt-4o-mini", OUTLINE, usage=True,
                                                           extra={"system_fingerprint": "fp_1"})),
        },
        "model": "gpt-4o-mini",
        "identity": "text", "top_k": 0, "mode": "sketch",
        "missing": "returns no next-token logprobs",
    },
    # Ollama's OpenAI compatibility (docs/openai.md): /v1/completions takes model, prompt, ... and its
    # answer has no logprobs; /v1/models lists every pulled model.
    "ollama": {
        "routes": {
            "GET /v1/models": (200, models("llama3.2:latest", "qwen2.5:3b", owner="library")),
            "POST /v1/completions": (200, {"id": "cmpl-591", "object": "text_completion", "created": 1,
                                           "model": "llama3.2:latest", "system_fingerprint": "fp_ollama",
                                           "choices": [{"text": " Paris.", "index": 0, "finish_reason": "stop"}]}),
            "POST /v1/chat/completions": (200, chat_stream("llama3.2:latest", OUTLINE, usage=False,
                                                           extra={"system_fingerprint": "fp_ollama"})),
        },
        "model": "llama3.2:latest",
        "identity": "text", "top_k": 0, "mode": "sketch",
        "missing": "returns no next-token logprobs",
    },
    # Text Generation Inference: /v1/completions (router/src/lib.rs CompletionRequest has no logprobs
    # field; CompletionComplete carries "logprobs": null) and the Messages API stream.
    "tgi": {
        "routes": {
            "GET /v1/models": (200, models("tgi", owner="tgi")),
            "POST /v1/completions": (200, {"id": "", "object": "text_completion", "created": 1, "model": "tgi",
                                           "system_fingerprint": "2.4.1-native", "choices": [
                                               {"index": 0, "text": " Paris.", "logprobs": None,
                                                "finish_reason": "length"}],
                                           "usage": {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}}),
            "POST /v1/chat/completions": (200, chat_stream("tgi", OUTLINE, usage=False,
                                                           extra={"system_fingerprint": "2.4.1-native"})),
        },
        "identity": "text", "top_k": 0, "mode": "sketch",
        "missing": "returns no next-token logprobs",
    },
    # llama.cpp's server (tools/server/server.cpp, completion_token_output::probs_to_json): a content list
    # of {id, token, bytes, logprob, top_logprobs}; the tokens of a UTF-8 character that spans several
    # tokens come as one entry with the last token's id and scores (recorded from the real server with
    # the bundled model: 10 tokens, 5 entries). The positions after the merged entry are not known.
    "llama.cpp-merged-utf8": {
        "routes": {
            "GET /v1/models": (200, models("SmolLM2-135M-Instruct.Q4_1.gguf", owner="llamacpp")),
            "POST /v1/completions": (200, {"choices": [{"text": " \"お", "index": 0, "finish_reason": "length",
                "logprobs": {"content": [
                    {"id": 476, "token": " \"", "bytes": [32, 34], "logprob": -1.2,
                     "top_logprobs": [{"id": 476, "token": " \"", "bytes": [32, 34], "logprob": -1.2},
                                      {"id": 216, "token": " ", "bytes": [32], "logprob": -1.9}]},
                    {"id": 228, "token": "お", "bytes": [227, 129, 138], "logprob": -0.1,
                     "top_logprobs": [{"id": 228, "token": "", "bytes": [138], "logprob": -0.1},
                                      {"id": 237, "token": "", "bytes": [147], "logprob": -3.0}]}]}}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}}),
        },
        "identity": "ids", "top_k": 20, "mode": "logits",
        "steps": [(b" \"", {b" \"": -1.2, b" ": -1.9})],
    },
}
