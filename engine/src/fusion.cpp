// Logit fusion rules: dense local scores + a sparse remote distribution -> fused log-probabilities.
// The gate (gate.cpp) and the sampler link (fusion_sampler.cpp) build on cg::fuse_row.
#include "internal.h"
#include "simd.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kSentinel = -9999.0f;  // OpenAI's "not really a logprob"
constexpr int   kFeatureTopK = 20;

struct LocalStats {
    float   lse = 0.0f;      // log-sum-exp of the logits
    int32_t top = -1;        // argmax
    float   entropy = 0.0f;  // nats
};

int32_t invalid_score(const float * x, int32_t n, const char * what) {
    for (int32_t i = 0; i < n; ++i) {
        if (std::isnan(x[i]) || x[i] == INFINITY) {
            return cg::fail(CG_ERR_INVALID_ARGUMENT, std::string(what) + " score of token " + std::to_string(i) + " is " +
                                                         (std::isnan(x[i]) ? "NaN" : "+inf"));
        }
    }
    return cg::fail(CG_ERR_INVALID_ARGUMENT, std::string("all ") + what + " scores are -inf");
}

// Max, log-sum-exp and (if asked) entropy, in vectorizable passes. NaN or
// +inf anywhere makes the sum non-finite, which sends us to invalid_score.
int32_t local_stats(const float * x, int32_t n, const char * what, bool want_entropy, LocalStats & st) {
    const int32_t top = cg::argmax_first(x, n);
    const float mx = top >= 0 ? x[top] : NAN;
    if (!(mx > kNegInf && mx < INFINITY)) return invalid_score(x, n, what);
    double sum_xe = 0.0;
    const double sum = cg::sum_exp(x, n, mx, want_entropy ? &sum_xe : nullptr);
    if (!std::isfinite(sum)) return invalid_score(x, n, what);
    st.lse = mx + (float) std::log(sum);
    st.top = top;
    st.entropy = want_entropy ? (float) (std::log(sum) - sum_xe / sum) : 0.0f;
    return CG_OK;
}

// What the remote side says of an unlisted token i, given the local log-probability of i:
// base + slope * (x[i] - lse). Mask: -inf. Tail: an equal share of the rest (slope 0). Local:
// the rest in proportion to the local probabilities (slope 1, base = log rest - log of the local
// mass on unlisted tokens).
struct Fill {
    float base = kNegInf;
    float slope = 0.0f;
    float at(float local_lp) const { return slope == 0.0f || base == kNegInf ? base : base + slope * local_lp; }
};

float logaddexp(float a, float b) {
    const float m = std::max(a, b);
    return m == kNegInf ? kNegInf : m + std::log(std::exp(a - m) + std::exp(b - m));
}

}  // namespace

int32_t cg::prepare_remote(const cg_sparse_dist * d, int32_t n_vocab, int32_t fill_mode, cg::Remote & r) {
    r.items.clear();
    r.fill_mode = fill_mode;
    r.log_rest = kNegInf;
    if (!d || d->k == 0) return CG_OK;
    if (d->k < 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote top-k size is negative");
    if (d->k > n_vocab) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote top-k has " + std::to_string(d->k) + " entries but the vocabulary has " +
                                                     std::to_string(n_vocab) + " tokens");
    }
    if (!d->ids || !d->logprobs) return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote top-k ids or logprobs are NULL");
    for (int32_t j = 0; j < d->k; ++j) {
        const int32_t id = d->ids[j];
        float lp = d->logprobs[j];
        if (std::isnan(lp)) return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote logprob of token " + std::to_string(id) + " is NaN");
        if (lp > 1e-3f) {
            return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote logprob of token " + std::to_string(id) + " is " + std::to_string(lp) +
                                                         " (> 0: not a log-probability)");
        }
        if (lp <= kSentinel) continue;
        if (id < 0 || id >= n_vocab) {
            return cg::fail(CG_ERR_INVALID_ARGUMENT, "remote token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                                         std::to_string(n_vocab) + ")");
        }
        r.items.emplace_back(std::min(lp, 0.0f), id);
    }
    // Merge duplicate ids: their probabilities add up.
    std::sort(r.items.begin(), r.items.end(), [](const auto & a, const auto & b) { return a.second < b.second; });
    size_t w = 0;
    for (size_t i = 0; i < r.items.size(); ++i) {
        if (w > 0 && r.items[w - 1].second == r.items[i].second) {
            r.items[w - 1].first = std::min(logaddexp(r.items[w - 1].first, r.items[i].first), 0.0f);
        } else {
            r.items[w++] = r.items[i];
        }
    }
    r.items.resize(w);
    std::sort(r.items.begin(), r.items.end(), [](const auto & a, const auto & b) { return a.first > b.first; });

    double mass = 0.0;
    for (const auto & it : r.items) mass += std::exp((double) it.first);
    const double rest = 1.0 - mass;
    if (rest > 1e-7 && (int64_t) r.items.size() < n_vocab) r.log_rest = (float) std::log(rest);
    return CG_OK;
}

namespace {

// The fill of this step: for CG_FILL_LOCAL it needs the local scores x (log-sum-exp lse).
Fill step_fill(const cg::Remote & r, const float * x, int32_t n, float lse) {
    Fill f;
    if (r.fill_mode == CG_FILL_MASK || r.log_rest == kNegInf) return f;
    if (r.fill_mode == CG_FILL_TAIL) {
        f.base = r.log_rest - (float) std::log((double) n - (double) r.items.size());
        return f;
    }
    // Local mass on the unlisted tokens: all minus the listed ones, or, where that cancels (the
    // listed tokens hold nearly everything), summed directly.
    double listed = 0.0;
    for (const auto & it : r.items) listed += std::exp((double) x[it.second] - lse);
    double unlisted = 1.0 - listed;
    if (unlisted < 1e-6) {
        std::vector<int32_t> ids;
        for (const auto & it : r.items) ids.push_back(it.second);
        std::sort(ids.begin(), ids.end());
        unlisted = 0.0;
        size_t j = 0;
        for (int32_t i = 0; i < n; ++i) {
            if (j < ids.size() && ids[j] == i) { ++j; continue; }
            unlisted += std::exp((double) x[i] - lse);
        }
    }
    if (!(unlisted > 0.0)) return f;  // the local model puts nothing outside the listed tokens
    f.base = r.log_rest - (float) std::log(unlisted);
    f.slope = 1.0f;
    return f;
}

// The m best (logit, id) of x, descending, by a single pass with insertion.
std::vector<std::pair<float, int32_t>> local_top(const float * x, int32_t n, int32_t m) {
    std::vector<std::pair<float, int32_t>> best;
    best.reserve(m + 1);
    for (int32_t i = 0; i < n; ++i) {
        if ((int32_t) best.size() == m && x[i] <= best.back().first) continue;
        auto pos = std::upper_bound(best.begin(), best.end(), x[i], [](float v, const auto & p) { return v > p.first; });
        best.insert(pos, {x[i], i});
        if ((int32_t) best.size() > m) best.pop_back();
    }
    return best;
}

float remote_lp(const cg::Remote & r, const Fill & fill, const float * x, float lse, int32_t id) {
    for (const auto & it : r.items) {
        if (it.second == id) return it.first;
    }
    return fill.at(x[id] - lse);
}

cg_fusion_features features(const float * x, int32_t n, const LocalStats & st, const cg::Remote & r, const Fill & fill) {
    cg_fusion_features f{};
    f.local_entropy = st.entropy;
    double mass = 0.0;
    for (const auto & it : r.items) mass += std::exp((double) it.first);
    double h = 0.0;
    for (const auto & it : r.items) {
        const double q = std::exp((double) it.first) / mass;
        if (q > 0) h -= q * std::log(q);
    }
    f.remote_entropy = (float) h;
    f.local_top_p = std::exp(x[st.top] - st.lse);
    f.remote_top_p = std::exp(r.items[0].first);

    const int32_t m = std::min<int32_t>(kFeatureTopK, (int32_t) r.items.size());
    const auto ltop = local_top(x, n, m);
    std::vector<int32_t> union_ids;
    int32_t common = 0;
    for (int32_t j = 0; j < m; ++j) union_ids.push_back(r.items[j].second);
    for (const auto & lt : ltop) {
        if (std::find(union_ids.begin(), union_ids.begin() + m, lt.second) != union_ids.begin() + m) ++common;
        else union_ids.push_back(lt.second);
    }
    f.overlap = (float) common / (float) m;

    // Jensen-Shannon divergence on the union, each side renormalized there.
    std::vector<double> p(union_ids.size()), q(union_ids.size());
    double sp = 0.0, sq = 0.0;
    for (size_t i = 0; i < union_ids.size(); ++i) {
        p[i] = std::exp((double) x[union_ids[i]] - st.lse);
        const float lq = remote_lp(r, fill, x, st.lse, union_ids[i]);
        q[i] = lq == kNegInf ? 0.0 : std::exp((double) lq);
        sp += p[i];
        sq += q[i];
    }
    double js = 0.0;
    for (size_t i = 0; i < union_ids.size(); ++i) {
        const double pi = sp > 0 ? p[i] / sp : 0.0, qi = sq > 0 ? q[i] / sq : 0.0, mi = 0.5 * (pi + qi);
        if (pi > 0) js += 0.5 * pi * std::log(pi / mi);
        if (qi > 0) js += 0.5 * qi * std::log(qi / mi);
    }
    f.divergence = (float) js;
    f.local_p_of_remote_top = std::exp(x[r.items[0].second] - st.lse);
    const float lq = remote_lp(r, fill, x, st.lse, st.top);
    f.remote_p_of_local_top = lq == kNegInf ? 0.0f : std::exp(lq);
    return f;
}

}  // namespace

int32_t cg::check_fusion_params(const cg_fusion_params * p, const cg_gate * gate, const float * local_noctx) {
    if (!p) return cg::fail(CG_ERR_INVALID_ARGUMENT, "fusion params must not be NULL");
    if (p->rule < CG_FUSION_WEIGHTED || p->rule > CG_FUSION_GATE) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "unknown fusion rule " + std::to_string(p->rule));
    }
    if (p->fill != CG_FILL_MASK && p->fill != CG_FILL_TAIL && p->fill != CG_FILL_LOCAL) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "unknown sparse fill " + std::to_string(p->fill) + " (0 mask, 1 tail, 2 local)");
    }
    if (!(p->weight >= 0.0f && p->weight <= 1.0f)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "fusion weight must be in [0, 1], got " + std::to_string(p->weight));
    }
    if (!(p->alpha >= 0.0f && p->alpha <= FLT_MAX)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "fusion alpha must be a finite number >= 0, got " + std::to_string(p->alpha));
    }
    if (!(p->plausible >= 0.0f && p->plausible <= 1.0f)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "fusion plausible must be in [0, 1], got " + std::to_string(p->plausible));
    }
    if (p->rule == CG_FUSION_GATE && !gate) return cg::fail(CG_ERR_INVALID_ARGUMENT, "the gate rule needs a gate");
    if (p->rule == CG_FUSION_CONTEXT_DELTA && !local_noctx) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "the context-delta rule needs the local no-context scores");
    }
    return CG_OK;
}

namespace {

// out = fused log-probabilities; returns the argmax.
int32_t fuse_dense(const cg_fusion_params & p, float w, const float * x, float lse, const float * y, float lse_y,
                   int32_t n, const cg::Remote & r, const Fill & fill, float * out) {
    switch (p.rule) {
        case CG_FUSION_MAX:
            for (int32_t i = 0; i < n; ++i) out[i] = std::max(x[i] - lse, fill.at(x[i] - lse));
            for (const auto & it : r.items) out[it.second] = std::max(x[it.second] - lse, it.first);
            break;
        case CG_FUSION_CONTEXT_DELTA: {
            const float a = p.alpha;
            // A token masked (-inf) on either local side stays impossible.
            auto delta = [&](int32_t i, float base) {
                if (a == 0.0f) return base;
                if (x[i] == kNegInf || y[i] == kNegInf) return kNegInf;
                return base + a * ((x[i] - lse) - (y[i] - lse_y));
            };
            for (int32_t i = 0; i < n; ++i) out[i] = delta(i, fill.at(x[i] - lse));
            for (const auto & it : r.items) out[it.second] = delta(it.second, it.first);
            break;
        }
        default: {  // weighted and gate; w = 1 and w = 0 avoid 0 * -inf
            const float v = 1.0f - w;
            if (w == 1.0f) {
                for (int32_t i = 0; i < n; ++i) out[i] = x[i] - lse;
            } else if (w == 0.0f) {
                for (int32_t i = 0; i < n; ++i) out[i] = fill.at(x[i] - lse);
                for (const auto & it : r.items) out[it.second] = it.first;
            } else if (fill.slope != 0.0f && fill.base != kNegInf) {
                // w*l + v*(base + l) = l + v*base: unlisted tokens keep the local order and ratios.
                const float vb = v * fill.base;
                for (int32_t i = 0; i < n; ++i) out[i] = (x[i] - lse) + vb;
                for (const auto & it : r.items) out[it.second] = w * (x[it.second] - lse) + v * it.first;
            } else {
                const float vf = v * fill.base;
                for (int32_t i = 0; i < n; ++i) out[i] = w * (x[i] - lse) + vf;
                for (const auto & it : r.items) out[it.second] = w * (x[it.second] - lse) + v * it.first;
            }
        }
    }
    return cg::argmax_first(out, n);
}

}  // namespace

int32_t cg::fuse_row(const cg_fusion_params * p, const cg_gate * gate, const float * local, const float * local_noctx,
             int32_t n_vocab, const cg::Remote & r, float * out, cg_fusion_info * info) {
    LocalStats st, st_noctx;
    const bool gated = p->rule == CG_FUSION_GATE && !r.empty();
    if (int32_t rc = local_stats(local, n_vocab, "local", gated, st)) return rc;
    cg_fusion_info inf{};
    inf.local_top = st.top;
    inf.chosen = -1;
    inf.remote_top = -1;
    inf.weight = 1.0f;
    if (r.empty()) {  // local-only step
        for (int32_t i = 0; i < n_vocab; ++i) out[i] = local[i] - st.lse;
        inf.fused_top = st.top;
    } else {
        inf.consulted = true;
        inf.remote_top = r.items[0].second;
        if (p->rule == CG_FUSION_CONTEXT_DELTA) {
            if (int32_t rc = local_stats(local_noctx, n_vocab, "local no-context", false, st_noctx)) return rc;
        }
        const Fill fill = step_fill(r, local, n_vocab, st.lse);
        float w = p->weight;
        if (p->rule == CG_FUSION_GATE) {
            inf.features = features(local, n_vocab, st, r, fill);
            w = cg_gate_weight(gate, &inf.features);
        }
        inf.weight = p->rule == CG_FUSION_WEIGHTED || p->rule == CG_FUSION_GATE ? w : std::nanf("");
        inf.fused_top = fuse_dense(*p, w, local, st.lse, local_noctx, st_noctx.lse, n_vocab, r, fill, out);
        if (p->plausible > 0.0f) {
            // Only tokens the local model itself might write stay candidates (see cg_fusion_params).
            const float cutoff = local[st.top] + std::log(p->plausible);
            for (int32_t i = 0; i < n_vocab; ++i) {
                if (local[i] < cutoff) out[i] = kNegInf;
            }
            inf.fused_top = cg::argmax_first(out, n_vocab);
            if (inf.fused_top < 0 || out[inf.fused_top] == kNegInf) {  // nothing the remote listed is plausible
                for (int32_t i = 0; i < n_vocab; ++i) out[i] = local[i] - st.lse;
                inf.fused_top = st.top;
                inf.consulted = false;
                inf.overruled = true;
                inf.weight = 1.0f;
            }
        }
    }
    if (info) *info = inf;
    return CG_OK;
}


extern "C" {

struct cg_fusion_params cg_fusion_default_params(void) {
    cg_fusion_params p;
    p.rule = CG_FUSION_WEIGHTED;
    p.fill = CG_FILL_MASK;
    p.weight = 0.5f;
    p.alpha = 1.0f;
    p.plausible = 0.0f;
    return p;
}

int32_t cg_fuse(const struct cg_fusion_params * params, const cg_gate * gate, const float * local,
                const float * local_noctx, int32_t n_vocab, const cg_sparse_dist * remote, float * out,
                struct cg_fusion_info * info) {
    if (int32_t rc = cg::check_fusion_params(params, gate, local_noctx)) return rc;
    if (!local || !out || n_vocab <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_fuse: local and out must hold n_vocab > 0 floats");
    cg::Remote r;
    if (int32_t rc = cg::prepare_remote(remote, n_vocab, params->fill, r)) return rc;
    return cg::fuse_row(params, gate, local, local_noctx, n_vocab, r, out, info);
}

bool cg_schedule_consult(int32_t p, int32_t k, int32_t t, int32_t step) {
    if (step < 0) return false;
    if (step < p) return true;
    if (k + t <= 0) return false;
    return (step - std::max(p, 0)) % (k + t) >= k;
}

}  // extern "C"
