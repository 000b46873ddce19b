// The generation loop: prefix reuse, prefill, then sample -> release text -> decode.
#include "internal.h"

#include <algorithm>
#include <cmath>

struct cg_generation {
    cg_session *             s = nullptr;
    cg_sampler *             sampler = nullptr;
    int32_t                  seq = 0;
    int32_t                  max_tokens = 0;
    bool                     ignore_eos = false;
    std::vector<cg_token>    tokens;           // generated tokens
    cg_token                 to_decode = -1;   // sampled but not yet evaluated
    cg::TextRelease          out;              // released text
    cg_finish_reason         finish = CG_FINISH_NONE;
    cg_timings               t{};
    double                   t_start = 0.0;
};

namespace {

void finish(cg_generation * g, cg_finish_reason why) {
    g->finish = why;
    g->out.flush();
}

}  // namespace

extern "C" {

struct cg_generate_params cg_generate_default_params(void) {
    cg_generate_params p;
    p.seq_id = 0;
    p.max_tokens = 128;
    p.stop = nullptr;
    p.n_stop = 0;
    p.ignore_eos = false;
    p.on_token = nullptr;
    p.user_data = nullptr;
    return p;
}

int32_t cg_generation_init(cg_session * s, const cg_token * prompt, int32_t n_prompt, cg_sampler * sampler,
                            const struct cg_generate_params * params, cg_generation ** out) {
    if (!s || !sampler || !params || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_generation_init: NULL argument");
    *out = nullptr;
    const int32_t seq = params->seq_id;
    if (int32_t rc = cg::check_seq(s, seq)) return rc;
    if (!prompt || n_prompt <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "the prompt is empty");
    if (params->max_tokens < 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "max_tokens must be >= 0, got " + std::to_string(params->max_tokens));
    if (params->n_stop < 0 || (params->n_stop > 0 && !params->stop)) return cg::fail(CG_ERR_INVALID_ARGUMENT, "invalid stop strings");
    const int32_t others = cg::session_used(s) - (int32_t) s->seqs[seq].size();
    if (others + n_prompt >= s->n_ctx) {
        return cg::fail(CG_ERR_CONTEXT_OVERFLOW, "the prompt has " + std::to_string(n_prompt) +
                                                     " tokens but the context window n_ctx is " + std::to_string(s->n_ctx) +
                                                     (others ? " (" + std::to_string(others) + " used by other sequences)" : "") +
                                                     "; it needs at least one free position to generate");
    }

    auto * g = new cg_generation;
    g->s = s;
    g->sampler = sampler;
    g->seq = seq;
    g->max_tokens = params->max_tokens;
    g->ignore_eos = params->ignore_eos;
    for (int32_t i = 0; i < params->n_stop; ++i) {
        if (params->stop[i] && params->stop[i][0]) g->out.stops.emplace_back(params->stop[i]);
    }
    g->t.load_ms = s->model->load_ms;
    g->t.n_prompt = n_prompt;
    g->t_start = cg::now_ms();
    s->cancel.store(false);

    const int32_t rc = cg::prefill_reusing(s, seq, prompt, n_prompt, n_prompt - 1, &g->t.n_reused);
    g->t.prefill_ms = cg::now_ms() - g->t_start;
    if (rc == CG_ERR_CANCELLED) {
        finish(g, CG_FINISH_CANCELLED);
    } else if (rc != CG_OK) {
        delete g;
        return rc;
    }
    cg_sampler_reset(sampler);
    for (int32_t i = 0; i < n_prompt; ++i) cg_sampler_accept(sampler, prompt[i]);
    *out = g;
    return CG_OK;
}

int32_t cg_generation_next(cg_generation * g, cg_token * token, const char ** text, int32_t * text_len) {
    g->out.released.clear();
    cg_token produced = -1;
    cg_session * s = g->s;

    if (g->finish == CG_FINISH_NONE && g->to_decode >= 0) {
        const double t0 = cg::now_ms();
        const int32_t rc = cg_session_decode(s, &g->seq, &g->to_decode, 1);
        g->t.decode_ms += cg::now_ms() - t0;
        g->t.n_decoded += rc == CG_OK;
        g->to_decode = -1;
        if (rc == CG_ERR_CANCELLED) finish(g, CG_FINISH_CANCELLED);
        else if (rc != CG_OK) return rc;
    }
    if (g->finish == CG_FINISH_NONE && s->cancel.load(std::memory_order_relaxed)) finish(g, CG_FINISH_CANCELLED);
    if (g->finish == CG_FINISH_NONE && (int32_t) g->tokens.size() >= g->max_tokens) finish(g, CG_FINISH_LENGTH);

    if (g->finish == CG_FINISH_NONE) {
        const double t0 = cg::now_ms();
        const cg_token tok = cg_sampler_sample(g->sampler, s, 0);
        g->t.sample_ms += cg::now_ms() - t0;
        if (tok < 0) return CG_ERR_DECODE;
        if (g->tokens.empty()) g->t.first_token_ms = cg::now_ms() - g->t_start;

        if (!g->ignore_eos && cg_model_token_is_eog(s->model, tok)) {
            finish(g, CG_FINISH_EOS);
        } else {
            produced = tok;
            g->tokens.push_back(tok);
            g->out.add(cg::token_piece(s->model, tok));
            if (g->out.stopped) {
                finish(g, CG_FINISH_STOP);
            } else {
                if ((int32_t) g->tokens.size() >= g->max_tokens) finish(g, CG_FINISH_LENGTH);
                else if (cg::session_used(s) + 1 > s->n_ctx) finish(g, CG_FINISH_CONTEXT_FULL);
                else g->to_decode = tok;
            }
        }
    }
    g->t.n_generated = (int32_t) g->tokens.size();
    if (token) *token = produced;
    if (text) *text = g->out.released.data();
    if (text_len) *text_len = (int32_t) g->out.released.size();
    return CG_OK;
}

enum cg_finish_reason cg_generation_finish_reason(const cg_generation * g) { return g->finish; }

const char * cg_generation_text(const cg_generation * g, int32_t * len) {
    if (len) *len = (int32_t) g->out.text.size();
    return g->out.text.data();
}

int32_t cg_generation_tokens(const cg_generation * g, cg_token * out, int32_t capacity) {
    return cg::copy_out(g->tokens.data(), (int32_t) g->tokens.size(), out, capacity);
}

struct cg_timings cg_generation_timings(const cg_generation * g) { return g->t; }

void cg_generation_free(cg_generation * g) { delete g; }

int32_t cg_generate(cg_session * s, const cg_token * prompt, int32_t n_prompt, cg_sampler * sampler,
                    const struct cg_generate_params * params, enum cg_finish_reason * finish_reason,
                    struct cg_timings * timings) {
    cg_generation * g = nullptr;
    if (int32_t rc = cg_generation_init(s, prompt, n_prompt, sampler, params, &g)) return rc;
    int32_t rc = CG_OK;
    while (g->finish == CG_FINISH_NONE) {
        cg_token tok;
        const char * text;
        int32_t len;
        if ((rc = cg_generation_next(g, &tok, &text, &len)) != CG_OK) break;
        if (params->on_token && (tok >= 0 || len > 0) && !params->on_token(tok, text, len, params->user_data)) {
            if (g->finish == CG_FINISH_NONE) finish(g, CG_FINISH_CANCELLED);
        }
    }
    if (finish_reason) *finish_reason = g->finish;
    if (timings) *timings = g->t;
    cg_generation_free(g);
    return rc;
}

}  // extern "C"
