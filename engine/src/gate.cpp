// The fusion gate: a small MLP over vocabulary-independent features of a step -> the local weight.
#include "internal.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

struct cg_gate {
    int32_t            n_hidden = 0;
    std::vector<float> mean, std_, w1, b1, w2;
    float              b2 = 0.0f;
};

extern "C" {

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

}  // extern "C"
