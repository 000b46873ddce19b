// Logit fusion: dense local scores + a sparse remote distribution -> fused log-probabilities.
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

// The remote top-k after validation: unique ids sorted by logprob, and the
// log of the mass it leaves to unlisted tokens.
struct Remote {
    std::vector<std::pair<float, int32_t>> items;  // (logprob, id), descending
    int32_t fill_mode = CG_FILL_MASK;
    float   log_rest = kNegInf;  // log(1 - sum p_topk); -inf when (nearly) nothing is left
    bool    empty() const { return items.empty(); }
};

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

int32_t prepare_remote(const cg_sparse_dist * d, int32_t n_vocab, int32_t fill_mode, Remote & r) {
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

// The fill of this step: for CG_FILL_LOCAL it needs the local scores x (log-sum-exp lse).
Fill step_fill(const Remote & r, const float * x, int32_t n, float lse) {
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

float remote_lp(const Remote & r, const Fill & fill, const float * x, float lse, int32_t id) {
    for (const auto & it : r.items) {
        if (it.second == id) return it.first;
    }
    return fill.at(x[id] - lse);
}

cg_fusion_features features(const float * x, int32_t n, const LocalStats & st, const Remote & r, const Fill & fill) {
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

int32_t check_params(const cg_fusion_params * p, const cg_gate * gate, const float * local_noctx) {
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

// out = fused log-probabilities; returns the argmax.
int32_t fuse_dense(const cg_fusion_params & p, float w, const float * x, float lse, const float * y, float lse_y,
                   int32_t n, const Remote & r, const Fill & fill, float * out) {
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

int32_t fuse(const cg_fusion_params * p, const cg_gate * gate, const float * local, const float * local_noctx,
             int32_t n_vocab, const Remote & r, float * out, cg_fusion_info * info) {
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

// The fusion link: gathers the candidates into a dense row, fuses, scatters back.
struct FusionLink : cg::Sampler {
    cg_fusion_params   params;
    const cg_gate *    gate;
    int32_t            n_vocab;
    Remote             remote;
    bool               has_remote = false;
    std::vector<float> noctx, row, fused;
    cg_fusion_info     info{};

    FusionLink(const cg_fusion_params & p, const cg_gate * g, int32_t n)
        : params(p), gate(g), n_vocab(n), row(n), fused(n) {
        info.chosen = info.local_top = info.remote_top = info.fused_top = -1;
    }

    // Fuse row x with the remote set for this step (if any), which it consumes.
    int32_t fuse_step(const float * x) {
        static const Remote kNone;
        const int32_t rc = fuse(&params, gate, x, noctx.empty() ? nullptr : noctx.data(), n_vocab,
                                has_remote ? remote : kNone, fused.data(), &info);
        has_remote = false;
        return rc;
    }

    void apply(cg_token_data_array * cur) override {
        cg_token_data * d = cur->data;
        // As the first link it sees the whole vocabulary in order; otherwise
        // tokens missing from the candidates count as -inf.
        const bool in_order = (int32_t) cur->size == n_vocab && d[0].id == 0 && d[n_vocab - 1].id == n_vocab - 1;
        if (in_order) {
            for (int32_t i = 0; i < n_vocab; ++i) row[i] = d[i].logit;
        } else {
            std::fill(row.begin(), row.end(), kNegInf);
            for (size_t i = 0; i < cur->size; ++i) {
                if (d[i].id >= 0 && d[i].id < n_vocab) row[d[i].id] = d[i].logit;
            }
        }
        if (fuse_step(row.data()) != CG_OK) {  // the message stays in cg_last_error
            cur->size = 0;
            return;
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

struct cg_gate {
    int32_t            n_hidden = 0;
    std::vector<float> mean, std_, w1, b1, w2;
    float              b2 = 0.0f;
};

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

int32_t cg_gate_init(int32_t n_hidden, const float * mean, const float * std_, const float * w1, const float * b1,
                     const float * w2, float b2, cg_gate ** out) {
    if (!out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_gate_init: out must not be NULL");
    *out = nullptr;
    if (n_hidden <= 0 || n_hidden > 4096) return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate n_hidden must be in [1, 4096]");
    if (!mean || !std_ || !w1 || !b1 || !w2) return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate arrays must not be NULL");
    const int32_t nf = CG_GATE_N_FEATURES;
    auto * g = new cg_gate;
    g->n_hidden = n_hidden;
    g->mean.assign(mean, mean + nf);
    g->std_.assign(std_, std_ + nf);
    g->w1.assign(w1, w1 + (size_t) n_hidden * nf);
    g->b1.assign(b1, b1 + n_hidden);
    g->w2.assign(w2, w2 + n_hidden);
    g->b2 = b2;
    for (float v : g->w1) {
        if (!std::isfinite(v)) { delete g; return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate weights must be finite"); }
    }
    *out = g;
    return CG_OK;
}

int32_t cg_gate_load(const char * path, cg_gate ** out) {
    if (!path || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_gate_load: NULL argument");
    *out = nullptr;
    std::ifstream f(path);
    if (!f) return cg::fail(CG_ERR_FILE_NOT_FOUND, std::string("gate file not found: '") + path + "'");
    std::string magic;
    int32_t version = 0, nf = 0, nh = 0;
    f >> magic >> version >> nf >> nh;
    const std::string where = std::string(" (gate file '") + path + "')";
    if (!f || magic != "cogenesis-gate" || version != 1) return cg::fail(CG_ERR_INVALID_ARGUMENT, "not a cogenesis gate file" + where);
    if (nf != CG_GATE_N_FEATURES) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate expects " + std::to_string(nf) + " features, the engine computes " +
                                                     std::to_string(CG_GATE_N_FEATURES) + where);
    }
    if (nh <= 0 || nh > 4096) return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate hidden size out of range" + where);
    std::vector<float> v((size_t) 2 * nf + (size_t) nh * nf + 2 * nh + 1);  // mean, std, W1, b1, w2, b2
    for (float & x : v) f >> x;
    if (!f) return cg::fail(CG_ERR_INVALID_ARGUMENT, "gate file is truncated or has a non-number" + where);
    const float * p = v.data();
    const float * mean = p; p += nf;
    const float * sd = p; p += nf;
    const float * w1 = p; p += (size_t) nh * nf;
    const float * b1 = p; p += nh;
    const float * w2 = p; p += nh;
    return cg_gate_init(nh, mean, sd, w1, b1, w2, *p, out);
}

void cg_gate_free(cg_gate * gate) { delete gate; }

float cg_gate_weight(const cg_gate * g, const struct cg_fusion_features * features) {
    float f[CG_GATE_N_FEATURES];
    std::memcpy(f, features, sizeof f);
    for (int32_t j = 0; j < CG_GATE_N_FEATURES; ++j) {
        const float sd = g->std_[j] > 0.0f ? g->std_[j] : 1.0f;
        f[j] = (f[j] - g->mean[j]) / sd;
    }
    double o = g->b2;
    for (int32_t h = 0; h < g->n_hidden; ++h) {
        double a = g->b1[h];
        for (int32_t j = 0; j < CG_GATE_N_FEATURES; ++j) a += (double) g->w1[(size_t) h * CG_GATE_N_FEATURES + j] * f[j];
        o += g->w2[h] * std::tanh(a);
    }
    return (float) (1.0 / (1.0 + std::exp(-o)));
}

int32_t cg_fuse(const struct cg_fusion_params * params, const cg_gate * gate, const float * local,
                const float * local_noctx, int32_t n_vocab, const cg_sparse_dist * remote, float * out,
                struct cg_fusion_info * info) {
    if (int32_t rc = check_params(params, gate, local_noctx)) return rc;
    if (!local || !out || n_vocab <= 0) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_fuse: local and out must hold n_vocab > 0 floats");
    Remote r;
    if (int32_t rc = prepare_remote(remote, n_vocab, params->fill, r)) return rc;
    return fuse(params, gate, local, local_noctx, n_vocab, r, out, info);
}

cg_sampler * cg_sampler_init_fusion(const struct cg_fusion_params * params, const cg_gate * gate, int32_t n_vocab) {
    // The no-context scores arrive with each step, so do not demand them here.
    static const float kPlaceholder = 0.0f;
    if (check_params(params, gate, &kPlaceholder)) return nullptr;
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
    if (int32_t rc = prepare_remote(remote, f->n_vocab, f->params.fill, f->remote)) return rc;
    f->has_remote = !f->remote.empty();
    if (local_noctx) f->noctx.assign(local_noctx, local_noctx + f->n_vocab);
    return CG_OK;
}

int32_t cg_fusion_sampler_last_info(const cg_sampler * fusion, struct cg_fusion_info * out) {
    FusionLink * f = fusion_link(fusion);
    if (!f || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "not a fusion sampler");
    *out = f->info;
    return CG_OK;
}

bool cg_schedule_consult(int32_t p, int32_t k, int32_t t, int32_t step) {
    if (step < 0) return false;
    if (step < p) return true;
    if (k + t <= 0) return false;
    return (step - std::max(p, 0)) % (k + t) >= k;
}

}  // extern "C"
