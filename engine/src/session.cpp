// Sessions: one llama context (KV cache) with several token sequences.
#include "internal.h"

#include <algorithm>
#include <thread>

namespace {

bool abort_requested(void * data) {
    return static_cast<cg_session *>(data)->cancel.load(std::memory_order_relaxed);
}

int32_t check_room(const cg_session * s, int32_t n_new, const char * what) {
    const int32_t used = cg::session_used(s);
    if ((int64_t) used + n_new > s->n_ctx) {
        return cg::fail(CG_ERR_CONTEXT_OVERFLOW,
                        std::string(what) + " of " + std::to_string(n_new) + " tokens does not fit in the context window: n_ctx is " +
                            std::to_string(s->n_ctx) + " and " + std::to_string(used) + " tokens are already cached");
    }
    return CG_OK;
}

// After a failed or aborted llama_decode, some ubatches may have landed in the
// KV cache: make our token lists agree with it again.
void resync_seqs(cg_session * s, const std::vector<std::vector<cg_token>> & incoming) {
    llama_memory_t mem = llama_get_memory(s->ctx);
    for (int32_t seq = 0; seq < s->n_seq_max; ++seq) {
        auto & toks = s->seqs[seq];
        const int32_t kv_len = llama_memory_seq_pos_max(mem, seq) + 1;
        const auto & add = incoming[seq];
        const int32_t old_len = (int32_t) toks.size();
        for (int32_t i = old_len; i < kv_len && i - old_len < (int32_t) add.size(); ++i) toks.push_back(add[i - old_len]);
        if ((int32_t) toks.size() > kv_len) toks.resize(std::max(kv_len, 0));
    }
}

// Evaluate the batch already filled in s->batch; tokens_by_seq lists what it appends to each sequence.
int32_t run_batch(cg_session * s, const std::vector<std::vector<cg_token>> & tokens_by_seq) {
    const int32_t rc = llama_decode(s->ctx, s->batch);
    if (rc != 0) {
        resync_seqs(s, tokens_by_seq);
        s->output_rows.clear();
        if (rc == 2) return cg::fail(CG_ERR_CANCELLED, "cancelled");
        if (rc == 1) return cg::fail(CG_ERR_CONTEXT_OVERFLOW, "no room left in the KV cache (n_ctx " + std::to_string(s->n_ctx) + ")");
        return cg::fail(CG_ERR_DECODE, "llama_decode failed with code " + std::to_string(rc));
    }
    for (int32_t seq = 0; seq < s->n_seq_max; ++seq) {
        s->seqs[seq].insert(s->seqs[seq].end(), tokens_by_seq[seq].begin(), tokens_by_seq[seq].end());
    }
    return CG_OK;
}

void batch_set(llama_batch & b, int32_t i, cg_token token, int32_t pos, int32_t seq_id, bool output) {
    b.token[i] = token;
    b.pos[i] = pos;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = seq_id;
    b.logits[i] = output;
}

}  // namespace

namespace cg {

int32_t prefill_reusing(cg_session * s, int32_t seq, const cg_token * tokens, int32_t n, int32_t max_reuse,
                        int32_t * n_reused) {
    const auto & cached = s->seqs[seq];
    int32_t reuse = 0;
    while (reuse < (int32_t) cached.size() && reuse < std::min(n, max_reuse) && cached[reuse] == tokens[reuse]) ++reuse;
    if (cg_session_seq_truncate(s, seq, reuse) != CG_OK) {  // a cache that cannot drop a tail starts over
        reuse = 0;
        cg_session_seq_truncate(s, seq, 0);
    }
    if (n_reused) *n_reused = reuse;
    return reuse < n ? cg_session_prefill(s, seq, tokens + reuse, n - reuse) : CG_OK;
}

}  // namespace cg

extern "C" {

struct cg_session_params cg_session_default_params(void) {
    const int32_t hw = (int32_t) std::max(1u, std::thread::hardware_concurrency());
    cg_session_params p;
    p.n_ctx = 2048;
    p.n_batch = 512;
    p.n_ubatch = 256;  // prefills as fast as 512 on 2 cores with half the compute buffer
    p.n_threads = hw;
    p.n_threads_batch = hw;
    p.n_seq_max = 1;
    p.flash_attn = 1;  // no score matrix in the compute buffer (16 vs 51 MiB at 512-token ubatches)
    p.n_outputs_max = 32;
    return p;
}

int32_t cg_session_init(cg_model * model, struct cg_session_params p, cg_session ** out) {
    if (!model || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_session_init: model and out must not be NULL");
    *out = nullptr;
    if (p.n_ctx <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_ctx must be > 0, got " + std::to_string(p.n_ctx));
    if (p.n_batch <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_batch must be > 0, got " + std::to_string(p.n_batch));
    if (p.n_ubatch <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_ubatch must be > 0, got " + std::to_string(p.n_ubatch));
    if (p.n_threads <= 0 || p.n_threads_batch <= 0) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_threads and n_threads_batch must be > 0");
    }
    if (p.n_seq_max <= 0 || p.n_seq_max > 64) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_seq_max must be in [1, 64], got " + std::to_string(p.n_seq_max));
    }
    if (p.n_outputs_max < p.n_seq_max || p.n_outputs_max > p.n_batch) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "n_outputs_max must be in [n_seq_max, n_batch], got " + std::to_string(p.n_outputs_max));
    }
    if (p.flash_attn < -1 || p.flash_attn > 1) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "flash_attn must be -1 (auto), 0 (off) or 1 (on)");
    }
    cg::ensure_backend();

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) p.n_ctx;
    cp.n_batch = (uint32_t) std::min(p.n_batch, p.n_ctx);
    cp.n_ubatch = (uint32_t) std::min(p.n_ubatch, (int32_t) cp.n_batch);
    cp.n_seq_max = (uint32_t) p.n_seq_max;
    cp.n_threads = p.n_threads;
    cp.n_threads_batch = p.n_threads_batch;
    cp.kv_unified = true;  // all sequences share the n_ctx window
    cp.no_perf = true;
    cp.flash_attn_type = (llama_flash_attn_type) p.flash_attn;
    // The compute buffer is sized for the most logits rows one batch can ask
    // for: n_vocab floats each (96 MiB for 512 rows of SmolLM2). Prefill asks
    // for one row, so only cg_session_decode needs more.
    cp.n_outputs_max = (uint32_t) p.n_outputs_max;

    auto * s = new cg_session;
    cp.abort_callback = abort_requested;
    cp.abort_callback_data = s;
    cg::take_llama_errors();
    s->ctx = llama_init_from_model(model->model, cp);
    if (!s->ctx) {
        delete s;
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "failed to create a llama context (n_ctx " + std::to_string(p.n_ctx) +
                                                     "): " + cg::take_llama_errors());
    }
    s->model = model;
    // llama.cpp pads the window; enforce the size the caller asked for.
    s->n_ctx = std::min(p.n_ctx, (int32_t) llama_n_ctx(s->ctx));
    s->n_batch = (int32_t) cp.n_batch;
    s->n_seq_max = p.n_seq_max;
    s->seqs.resize(p.n_seq_max);
    s->n_outputs_max = p.n_outputs_max;
    s->batch = llama_batch_init(s->n_batch, 0, 1);
    s->candidates.resize(llama_vocab_n_tokens(model->vocab));
    *out = s;
    cg::clear_error();
    return CG_OK;
}

void cg_session_free(cg_session * s) {
    if (!s) return;
    llama_batch_free(s->batch);
    llama_free(s->ctx);
    delete s;
}

int32_t cg_session_n_ctx(const cg_session * s) { return s->n_ctx; }
int32_t cg_session_n_seq_max(const cg_session * s) { return s->n_seq_max; }

int32_t cg_session_prefill(cg_session * s, int32_t seq_id, const cg_token * tokens, int32_t n) {
    if (int32_t rc = cg::check_seq(s, seq_id)) return rc;
    if (!tokens || n <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "prefill needs at least one token");
    if (int32_t rc = check_room(s, n, "a prefill")) return rc;
    if (int32_t rc = cg::check_tokens(tokens, n, llama_vocab_n_tokens(s->model->vocab))) return rc;
    std::vector<std::vector<cg_token>> appended(s->n_seq_max);
    for (int32_t start = 0; start < n; start += s->n_batch) {
        const int32_t m = std::min(s->n_batch, n - start);
        const int32_t pos0 = (int32_t) s->seqs[seq_id].size();
        for (int32_t j = 0; j < m; ++j) {
            batch_set(s->batch, j, tokens[start + j], pos0 + j, seq_id, start + j == n - 1);
        }
        s->batch.n_tokens = m;
        appended[seq_id].assign(tokens + start, tokens + start + m);
        if (int32_t rc = run_batch(s, appended)) return rc;
        s->output_rows.assign(1, m - 1);
    }
    return CG_OK;
}

int32_t cg_session_decode(cg_session * s, const int32_t * seq_ids, const cg_token * tokens, int32_t n) {
    if (!seq_ids || !tokens || n <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "decode needs at least one token");
    if (n > s->n_outputs_max) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "decode of " + std::to_string(n) + " entries exceeds n_outputs_max " +
                                                     std::to_string(s->n_outputs_max) + " of this session");
    }
    if (int32_t rc = check_room(s, n, "a decode")) return rc;
    const int32_t n_vocab = llama_vocab_n_tokens(s->model->vocab);
    std::vector<std::vector<cg_token>> appended(s->n_seq_max);
    for (int32_t i = 0; i < n; ++i) {
        if (int32_t rc = cg::check_seq(s, seq_ids[i])) return rc;
        if (int32_t rc = cg::check_tokens(&tokens[i], 1, n_vocab)) return rc;
        auto & add = appended[seq_ids[i]];
        batch_set(s->batch, i, tokens[i], (int32_t) (s->seqs[seq_ids[i]].size() + add.size()), seq_ids[i], true);
        add.push_back(tokens[i]);
    }
    s->batch.n_tokens = n;
    if (int32_t rc = run_batch(s, appended)) return rc;
    s->output_rows.resize(n);
    for (int32_t i = 0; i < n; ++i) s->output_rows[i] = i;
    return CG_OK;
}

const float * cg_session_logits(cg_session * s, int32_t row) {
    if (row < 0 || row >= (int32_t) s->output_rows.size()) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "no logits row " + std::to_string(row) + " in the last evaluation");
        return nullptr;
    }
    return llama_get_logits_ith(s->ctx, s->output_rows[row]);
}

int32_t cg_session_seq_len(const cg_session * s, int32_t seq_id) {
    if (cg::check_seq(s, seq_id)) return -1;
    return (int32_t) s->seqs[seq_id].size();
}

int32_t cg_session_seq_tokens(const cg_session * s, int32_t seq_id, cg_token * out, int32_t capacity) {
    if (cg::check_seq(s, seq_id)) return -1;
    const auto & toks = s->seqs[seq_id];
    return cg::copy_out(toks.data(), (int32_t) toks.size(), out, capacity);
}

int32_t cg_session_seq_truncate(cg_session * s, int32_t seq_id, int32_t n_keep) {
    if (int32_t rc = cg::check_seq(s, seq_id)) return rc;
    auto & toks = s->seqs[seq_id];
    if (n_keep < 0 || n_keep > (int32_t) toks.size()) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "cannot keep " + std::to_string(n_keep) + " of " +
                                                     std::to_string(toks.size()) + " tokens");
    }
    if (n_keep == (int32_t) toks.size()) return CG_OK;
    if (!llama_memory_seq_rm(llama_get_memory(s->ctx), seq_id, n_keep, -1)) {
        return cg::fail(CG_ERR_STATE, "this model's KV cache cannot drop a partial sequence; truncate to 0 instead");
    }
    toks.resize(n_keep);
    s->output_rows.clear();
    return CG_OK;
}

void cg_session_cancel(cg_session * s) { s->cancel.store(true, std::memory_order_relaxed); }

}  // extern "C"
