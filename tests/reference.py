"""The remote's scores read straight from the HTTP answer, without the product's client: the
references that tests compare the product with. The server runs the bundled model, so its token ids
are the local ones."""
import json
import math
import urllib.request


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def next_token_scores(base_url: str, prompt: str, pieces: dict[bytes, int], top_k: int = 20) -> dict[int, float]:
    """The remote's top_k at the next position as local id -> logprob ({} when it lists none).
    llama.cpp's content list names tokens by id; llama_cpp.server's legacy dicts by text, looked up
    in `pieces` (local token bytes -> lowest id); duplicates add their probabilities."""
    body = post(f"{base_url}/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": top_k})
    logprobs = body["choices"][0]["logprobs"]
    if "content" in logprobs:
        entries = [(e["id"], e["logprob"]) for e in (logprobs["content"][0]["top_logprobs"] if logprobs["content"] else [])]
    else:
        tops = logprobs["top_logprobs"]
        entries = [(pieces.get(text.encode()), lp) for text, lp in (tops[0].items() if tops else ()) if text]
    merged: dict[int, float] = {}
    for token, logprob in entries:
        if token is not None:
            merged[token] = merged.get(token, 0.0) + math.exp(logprob)
    return {token: math.log(min(p, 1.0)) for token, p in merged.items()}


def longest_prefix(data: bytes, pieces: dict[bytes, int]) -> int:
    """The local token whose bytes are the longest prefix of `data` (the lowest id among equal bytes)."""
    return next(pieces[data[:n]] for n in range(len(data), 0, -1) if data[:n] in pieces)


def bridged_positions(answer: dict, pieces: dict[bytes, int]) -> list[tuple[bytes, dict[int, float]]]:
    """What llama.cpp's server listed at each position of a /completions answer, for a remote with
    another tokenizer: per position, the bytes of the token it chose, and {local id: probability}
    with each listed token mapped to the local token that is the longest prefix of its bytes, and
    the probabilities of tokens landing on one id added. Control tokens (an id without bytes) are
    left out. The positions end where an entry's bytes are not those of its token among the
    alternatives (llama.cpp lists the tokens of one UTF-8 character as one entry)."""
    positions = []
    for entry in answer["choices"][0]["logprobs"]["content"]:
        own = bytes(entry["bytes"])
        alternatives = entry["top_logprobs"]
        listed = next((bytes(a["bytes"]) for a in alternatives if a["id"] == entry["id"]), None)
        if listed is not None and listed != own:
            break
        merged: dict[int, float] = {}
        for alternative in alternatives:
            data = bytes(alternative["bytes"])
            if data and alternative["logprob"] > -9999:
                token = longest_prefix(data, pieces)
                merged[token] = merged.get(token, 0.0) + math.exp(alternative["logprob"])
        positions.append((own, {token: min(p, 1.0) for token, p in merged.items()}))
    return positions
