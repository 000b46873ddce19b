// Vocabulary bridge: another tokenizer's token strings -> this model's token ids.
#include "internal.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <unordered_map>

struct cg_vocab_bridge {
    std::unordered_map<std::string, cg_token> by_bytes;  // local token bytes -> lowest id with them
    std::unordered_map<std::string, cg_token> specials;  // control-token text -> local id (exact match only)
    size_t                                    max_len = 0;
    std::mutex                                mu;
    std::unordered_map<std::string, cg_token> cache;     // remote token -> local id (or -1), bounded
};

// Entries the lookup cache may hold: a remote that names ever new tokens cannot grow it without bound.
constexpr size_t kMaxCached = 1 << 16;

extern "C" {

int32_t cg_vocab_bridge_init(const cg_model * model, cg_vocab_bridge ** out) {
    if (!model || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_vocab_bridge_init: NULL argument");
    auto * b = new cg_vocab_bridge;
    const int32_t n = cg_model_n_vocab(model);
    std::string piece;
    for (cg_token id = 0; id < n; ++id) {
        piece.resize(64);
        int32_t len = cg_token_to_piece(model, id, false, &piece[0], (int32_t) piece.size());
        if (len > (int32_t) piece.size()) {
            piece.resize(len);
            len = cg_token_to_piece(model, id, false, &piece[0], len);
        }
        if (len <= 0) {  // a control token: no text, but servers send its name as text
            piece.resize(64);
            len = cg_token_to_piece(model, id, true, &piece[0], (int32_t) piece.size());
            if (len > 0 && len <= (int32_t) piece.size()) b->specials.emplace(piece.substr(0, len), id);
            continue;
        }
        piece.resize(len);
        b->by_bytes.emplace(piece, id);
        b->max_len = std::max(b->max_len, piece.size());
    }
    // Other families' end-of-turn tokens, as vLLM, SGLang and OpenAI send them (text, not ids):
    // their mass belongs to this model's end of generation, not to a literal '<'.
    const cg_token eos = cg_model_token_eos(model);
    if (eos >= 0) {
        for (const char * name : {"<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<|end|>",
                                  "<end_of_turn>", "<eos>", "</s>", "<|eom_id|>", "<|return|>"}) {
            b->specials.emplace(name, eos);  // keeps this model's own id where it has the token
        }
    }
    *out = b;
    return CG_OK;
}

void cg_vocab_bridge_free(cg_vocab_bridge * bridge) { delete bridge; }

cg_token cg_vocab_bridge_lookup(cg_vocab_bridge * b, const char * text, int32_t len) {
    if (!text || len <= 0) return -1;
    std::string key(text, (size_t) len);
    {
        std::lock_guard<std::mutex> lock(b->mu);
        auto hit = b->cache.find(key);
        if (hit != b->cache.end()) return hit->second;
    }
    const auto special = b->specials.find(key);
    cg_token id = special != b->specials.end() ? special->second : -1;
    for (size_t n = std::min(key.size(), b->max_len); n > 0 && id < 0; --n) {
        auto it = b->by_bytes.find(key.substr(0, n));
        if (it != b->by_bytes.end()) id = it->second;
    }
    std::lock_guard<std::mutex> lock(b->mu);
    if (b->cache.size() >= kMaxCached) b->cache.clear();
    b->cache.emplace(std::move(key), id);
    return id;
}

int32_t cg_vocab_bridge_map(cg_vocab_bridge * b, const char * const * tokens, const int32_t * lens,
                            const float * logprobs, int32_t n, cg_token * out_ids, float * out_logprobs) {
    if (!b || n < 0 || (n > 0 && (!tokens || !lens || !logprobs || !out_ids || !out_logprobs))) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_vocab_bridge_map: NULL argument");
        return -1;
    }
    cg::RemoteMass mass;
    for (int32_t i = 0; i < n; ++i) {
        if (lens[i] <= 0) continue;
        const cg_token id = cg_vocab_bridge_lookup(b, tokens[i], lens[i]);
        if (id >= 0) mass.add(id, logprobs[i]);
    }
    return mass.write(out_ids, out_logprobs);
}

}  // extern "C"
