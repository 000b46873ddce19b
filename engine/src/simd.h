// Small vector kernels over float rows, shared by samplers and fusion.
// GCC/Clang vector extensions: one source for SSE, AVX and NEON.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace cg {

typedef float   v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float * p) {
    v8f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// exp(x) for x <= 0 (callers pass x - max). Cephes' polynomial; relative
// error ~1e-7; -inf and anything below -87 give ~1e-38. Written so that the
// loops calling it vectorize.
inline float exp_nonpos(float x) {
    x = std::max(x, -87.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const int32_t bits = ((int32_t) n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

// Index of the first maximum (NaN never wins; -1 if n == 0). Four independent
// accumulators hide the latency of compare + select.
inline int32_t argmax_first(const float * x, int32_t n) {
    constexpr int32_t kWays = 4;
    v8f best[kWays];
    v8i at[kWays];
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int32_t w = 0; w < kWays; ++w) {
        best[w] = v8f{} - INFINITY;
        at[w] = v8i{} + INT32_MAX;
    }
    int32_t i = 0;
    for (; i + 8 * kWays <= n; i += 8 * kWays) {
        for (int32_t w = 0; w < kWays; ++w) {
            const v8f v = load8(x + i + 8 * w);
            const v8i gt = v > best[w];
            best[w] = gt ? v : best[w];
            at[w] = gt ? lane + (i + 8 * w) : at[w];
        }
    }
    float mx = -INFINITY;
    int32_t top = n > 0 ? 0 : -1;
    for (int32_t w = 0; w < kWays; ++w) {
        for (int32_t j = 0; j < 8; ++j) {
            if (best[w][j] > mx || (best[w][j] == mx && at[w][j] < top)) {
                mx = best[w][j];
                top = at[w][j];
            }
        }
    }
    for (; i < n; ++i) {
        if (x[i] > mx) {
            mx = x[i];
            top = i;
        }
    }
    return top;
}

// sum of exp(x[i] - shift) (and, if xe, of exp(d) * d with d = x[i] - shift
// clamped at -87), float lanes per block of 1024, blocks added in double:
// accurate to ~1e-7 over 262,144 terms.
inline double sum_exp(const float * x, int32_t n, float shift, double * xe = nullptr) {
    constexpr int32_t kLanes = 16, kBlock = 1024;
    double sum = 0.0, sum_xe = 0.0;
    for (int32_t b = 0; b < n; b += kBlock) {
        const int32_t end = std::min(n, b + kBlock);
        float acc[kLanes] = {0}, acc_xe[kLanes] = {0};
        int32_t i = b;
        for (; i + kLanes <= end; i += kLanes) {
            for (int32_t j = 0; j < kLanes; ++j) {
                const float d = std::max(x[i + j] - shift, -87.0f);
                const float e = exp_nonpos(d);
                acc[j] += e;
                if (xe) acc_xe[j] += e * d;
            }
        }
        for (; i < end; ++i) {
            const float d = std::max(x[i] - shift, -87.0f);
            const float e = exp_nonpos(d);
            acc[0] += e;
            if (xe) acc_xe[0] += e * d;
        }
        for (int32_t j = 0; j < kLanes; ++j) {
            sum += acc[j];
            sum_xe += acc_xe[j];
        }
    }
    if (xe) *xe = sum_xe;
    return sum;
}

}  // namespace cg
