// The fusion link of the sampler chain: fuses the candidates with the remote's top-k set for the step.
#include "internal.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kRuledOut = -1e30f;  // a ruled-out token's local score inside the fusion: finite, so w * x stays a number

// The fusion link: gathers the candidates into a dense row, fuses, scatters back.
struct FusionLink : cg::Sampler {
    cg_fusion_params   params;
    const cg_gate *    gate;
    int32_t            n_vocab;
    cg::Remote         remote;
    bool               has_remote = false;
    std::vector<float> noctx, row, fused;
    std::vector<int32_t> ruled_out;  // tokens an earlier link set to -inf this step
    cg_fusion_info     info{};

    static float log_sum_exp(const std::vector<float> & x) {
        const float mx = *std::max_element(x.begin(), x.end());
        return mx + (float) std::log(cg::sum_exp(x.data(), (int32_t) x.size(), mx, nullptr));
    }

    FusionLink(const cg_fusion_params & p, const cg_gate * g, int32_t n)
        : params(p), gate(g), n_vocab(n), row(n), fused(n) {
        info.chosen = info.local_top = info.remote_top = info.fused_top = -1;
    }

    // Fuse row x with the remote set for this step (if any), which it consumes.
    int32_t fuse_step(const float * x) {
        static const cg::Remote kNone;
        const int32_t rc = cg::fuse_row(&params, gate, x, noctx.empty() ? nullptr : noctx.data(), n_vocab,
                                has_remote ? remote : kNone, fused.data(), &info);
        has_remote = false;
        return rc;
    }

    // After an earlier link (no-repeat n-gram): a token it ruled out (-inf, or missing from the
    // candidates) stays out whatever the remote says of it, and the plausibility limit counts from
    // the best token still allowed. When the remote listed only ruled-out tokens (mask fill), the step
    // is the local model's, as when it listed nothing plausible.
    void apply(cg_token_data_array * cur) override {
        cg_token_data * d = cur->data;
        const bool in_order = (int32_t) cur->size == n_vocab && d[0].id == 0 && d[n_vocab - 1].id == n_vocab - 1;
        if (in_order) {
            for (int32_t i = 0; i < n_vocab; ++i) row[i] = d[i].logit;
        } else {
            std::fill(row.begin(), row.end(), kNegInf);
            for (size_t i = 0; i < cur->size; ++i) {
                if (d[i].id >= 0 && d[i].id < n_vocab) row[d[i].id] = d[i].logit;
            }
        }
        ruled_out.clear();
        for (int32_t i = 0; i < n_vocab; ++i) {
            if (row[i] == kNegInf) {
                ruled_out.push_back(i);
                row[i] = kRuledOut;
            }
        }
        if (fuse_step(row.data()) != CG_OK) {  // the message stays in cg_last_error
            cur->size = 0;
            return;
        }
        if (!ruled_out.empty()) {
            for (const int32_t i : ruled_out) fused[i] = kNegInf;
            info.fused_top = cg::argmax_first(fused.data(), n_vocab);
            if (info.fused_top < 0 || fused[info.fused_top] == kNegInf) {  // nothing allowed was listed
                const float lse = log_sum_exp(row);
                for (int32_t i = 0; i < n_vocab; ++i) fused[i] = row[i] - lse;
                for (const int32_t i : ruled_out) fused[i] = kNegInf;
                info.fused_top = info.local_top;
                info.consulted = false;
                info.overruled = true;
                info.weight = 1.0f;
            }
        }
        if (in_order) {
            for (int32_t i = 0; i < n_vocab; ++i) d[i].logit = fused[i];
        } else {
            for (size_t i = 0; i < cur->size; ++i) {
                if (d[i].id >= 0 && d[i].id < n_vocab) d[i].logit = fused[d[i].id];
            }
        }
        cur->sorted = false;
    }
    // First in the chain: fuse straight from the dense row. Where unlisted
    // tokens come out -inf (mask fill), only the listed ones become candidates.
    bool apply_dense(const float * x, int32_t n, cg_token_data_array * cur) override {
        if (n != n_vocab) return false;
        const int32_t rc = fuse_step(x);
        cur->selected = -1;
        cur->sorted = false;
        if (rc != CG_OK) {
            cur->size = 0;
            return true;
        }
        const bool weighted = params.rule == CG_FUSION_WEIGHTED || params.rule == CG_FUSION_GATE;
        const bool sparse = info.consulted && params.fill == CG_FILL_MASK && params.rule != CG_FUSION_MAX &&
                            !(weighted && info.weight == 1.0f);
        size_t m = 0;
        if (sparse) {
            for (const auto & it : remote.items) {
                if (fused[it.second] > kNegInf) cur->data[m++] = {it.second, fused[it.second], 0.0f};
            }
        } else {
            for (int32_t i = 0; i < n; ++i) cur->data[m++] = {i, fused[i], 0.0f};
        }
        cur->size = m;
        return true;
    }
    void accept(cg_token t) override { info.chosen = t; }
    void reset() override {
        has_remote = false;
        info = cg_fusion_info{};
        info.chosen = info.local_top = info.remote_top = info.fused_top = -1;
    }
};

FusionLink * fusion_link(const cg_sampler * s) { return dynamic_cast<FusionLink *>(cg::builtin_sampler(s)); }

}  // namespace

extern "C" {

cg_sampler * cg_sampler_init_fusion(const struct cg_fusion_params * params, const cg_gate * gate, int32_t n_vocab) {
    // The no-context scores arrive with each step, so do not demand them here.
    static const float kPlaceholder = 0.0f;
    if (cg::check_fusion_params(params, gate, &kPlaceholder)) return nullptr;
    if (n_vocab <= 0) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "n_vocab must be > 0");
        return nullptr;
    }
    return cg::wrap_sampler(new FusionLink(*params, gate, n_vocab));
}

int32_t cg_fusion_sampler_set_remote(cg_sampler * fusion, const cg_sparse_dist * remote, const float * local_noctx) {
    FusionLink * f = fusion_link(fusion);
    if (!f) return cg::fail(CG_ERR_INVALID_ARGUMENT, "not a fusion sampler");
    if (f->params.rule == CG_FUSION_CONTEXT_DELTA && remote && remote->k > 0 && !local_noctx) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "the context-delta rule needs the local no-context scores");
    }
    if (int32_t rc = cg::prepare_remote(remote, f->n_vocab, f->params.fill, f->remote)) return rc;
    f->has_remote = !f->remote.empty();
    if (local_noctx) f->noctx.assign(local_noctx, local_noctx + f->n_vocab);
    return CG_OK;
}

int32_t cg_sampler_init_fusion_chain(const cg_model * model, const struct cg_fusion_params * fusion_params,
                                     const cg_gate * gate, const struct cg_sampling_params * sampling,
                                     cg_sampler ** chain, cg_sampler ** fusion) {
    if (!model || !fusion_params || !sampling || !chain || !fusion) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_sampler_init_fusion_chain: NULL argument");
    }
    *chain = *fusion = nullptr;
    if (sampling->no_repeat_ngram < 0) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "no_repeat_ngram must be >= 0 (0 disables), got " +
                                                     std::to_string(sampling->no_repeat_ngram));
    }
    cg_sampling_params rest_params = *sampling;
    rest_params.no_repeat_ngram = 0;  // it goes before the fusion link instead
    cg_sampler * rest = nullptr;
    if (int32_t rc = cg_sampler_init_from_params(model, &rest_params, &rest)) return rc;
    cg_sampler * no_repeat = cg::no_repeat_sampler(model, *sampling);
    cg_sampler * link = cg_sampler_init_fusion(fusion_params, gate, cg_model_n_vocab(model));
    if (!link) {
        cg_sampler_free(rest);
        cg_sampler_free(no_repeat);
        return CG_ERR_INVALID_ARGUMENT;
    }
    *chain = cg_sampler_chain_init();
    if (no_repeat) cg_sampler_chain_add(*chain, no_repeat);
    cg_sampler_chain_add(*chain, link);
    cg_sampler_chain_add(*chain, rest);
    *fusion = link;
    return CG_OK;
}

int32_t cg_fusion_sampler_last_info(const cg_sampler * fusion, struct cg_fusion_info * out) {
    FusionLink * f = fusion_link(fusion);
    if (!f || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "not a fusion sampler");
    *out = f->info;
    return CG_OK;
}

}  // extern "C"
