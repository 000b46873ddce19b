"""The remote's scores read straight from the HTTP answer, without the product's client: the
references that tests compare the product with. The server runs the bundled model, so its token ids
are the local ones. And fusion as a float64 numpy specification of what the engine computes."""
import json
import math
import urllib.request

import numpy as np

from cogenesis_device.fusion import FEATURE_TOP_K, SENTINEL, log_softmax, remote_dense


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


def features_reference(local, remote_ids, remote_logprobs, fill: str = "mask") -> np.ndarray:
    """The gate's 8 input features, as the engine computes them."""
    ll = log_softmax(np.asarray(local))
    p_local = np.exp(ll)
    dense, listed, fill_lp = remote_dense(remote_ids, remote_logprobs, len(ll), fill, ll)
    ranked = sorted(listed.items(), key=lambda kv: -kv[1])
    q = np.exp(np.array([v for _, v in ranked]))
    qn = q / q.sum()
    m = min(FEATURE_TOP_K, len(ranked))
    remote_top_ids = [i for i, _ in ranked[:m]]
    local_top_ids = np.argsort(-ll, kind="stable")[:m].tolist()
    union = remote_top_ids + [i for i in local_top_ids if i not in remote_top_ids]
    pu = p_local[union] / p_local[union].sum()
    qu = np.exp(dense[union])
    qu = qu / qu.sum()
    mid = 0.5 * (pu + qu)
    with np.errstate(divide="ignore", invalid="ignore"):
        js = 0.5 * np.nansum(np.where(pu > 0, pu * np.log(pu / mid), 0.0)) + \
             0.5 * np.nansum(np.where(qu > 0, qu * np.log(qu / mid), 0.0))
    local_top = int(np.argmax(ll))
    return np.array([
        -(p_local[p_local > 0] * ll[p_local > 0]).sum(),
        -(qn * np.log(qn)).sum(),
        p_local[local_top],
        q[0],
        len(set(local_top_ids) & set(remote_top_ids)) / m,
        js,
        p_local[ranked[0][0]],
        np.exp(dense[local_top]),
    ])


def gate_reference(features: np.ndarray, mean, std, w1, b1, w2, b2) -> float:
    std = np.where(np.asarray(std) > 0, std, 1.0)
    z = (np.asarray(features, dtype=np.float64) - mean) / std
    return float(1.0 / (1.0 + np.exp(-(np.asarray(w2) @ np.tanh(np.asarray(w1) @ z + b1) + b2))))


def fuse_reference(
    local, remote_ids, remote_logprobs, *, rule: str = "weighted", fill: str = "mask", weight: float = 0.5,
    alpha: float = 1.0, plausible: float = 0.0, local_noctx=None, gate_arrays: dict | None = None,
) -> np.ndarray:
    """What fuse() computes, in float64 numpy: the specification the native code is tested against."""
    ll = log_softmax(np.asarray(local))
    if len(remote_ids) == 0 or all(lp <= SENTINEL for lp in remote_logprobs):
        return ll
    fused = _fuse_rule(ll, remote_ids, remote_logprobs, local, rule, fill, weight, alpha, local_noctx, gate_arrays)
    if plausible > 0:
        fused = np.where(ll >= ll.max() + np.log(plausible), fused, -np.inf)
        if np.isneginf(fused).all():  # the remote listed nothing plausible: local-only step
            return ll
    return fused


def _fuse_rule(ll, remote_ids, remote_logprobs, local, rule, fill, weight, alpha, local_noctx, gate_arrays):
    rd, _, _ = remote_dense(remote_ids, remote_logprobs, len(ll), fill, ll)
    if rule == "max":
        return np.maximum(ll, rd)
    if rule == "context_delta":
        if alpha == 0:
            return rd
        ln = log_softmax(np.asarray(local_noctx))
        with np.errstate(invalid="ignore"):
            out = rd + alpha * (ll - ln)
        out[np.isneginf(ll) | np.isneginf(ln)] = -np.inf
        return out
    if rule == "gate":
        weight = gate_reference(features_reference(local, remote_ids, remote_logprobs, fill), **gate_arrays)
    if weight == 1.0:
        return ll
    if weight == 0.0:
        return rd
    return weight * ll + (1.0 - weight) * rd
