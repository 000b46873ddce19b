// Small pieces the engine files share: the clock, sequence and token checks, the version.
#include "internal.h"

#include <chrono>
#include <cstring>
#include <string>

namespace cg {

// 64-bit hash over 8-byte words (a multiply-rotate mix, then a final avalanche): fast enough for
// hundreds of megabytes of KV data, and any changed, moved or swapped word changes it.
uint64_t checksum(const uint8_t * data, size_t n) {
    constexpr uint64_t k1 = 0x9E3779B97F4A7C15ull, k2 = 0xC2B2AE3D27D4EB4Full;
    uint64_t h = k2 ^ (uint64_t) n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, data + i, 8);
        h ^= w * k1;
        h = ((h << 31) | (h >> 33)) * k2;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, data + i, n - i);
    h ^= tail * k1;
    h ^= h >> 33; h *= k2; h ^= h >> 29; h *= k1; h ^= h >> 32;
    return h;
}

double now_ms() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

int32_t session_used(const cg_session * s) {
    int32_t used = 0;
    for (const auto & seq : s->seqs) used += (int32_t) seq.size();
    return used;
}

int32_t check_seq(const cg_session * s, int32_t seq_id) {
    if (seq_id < 0 || seq_id >= s->n_seq_max) {
        return fail(CG_ERR_INVALID_ARGUMENT, "sequence id " + std::to_string(seq_id) + " is out of range [0, " +
                                                 std::to_string(s->n_seq_max) + ")");
    }
    return CG_OK;
}

int32_t check_tokens(const cg_token * tokens, int32_t n, int32_t n_vocab) {
    for (int32_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            return fail(CG_ERR_INVALID_ARGUMENT, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary (size " +
                                                     std::to_string(n_vocab) + ")");
        }
    }
    return CG_OK;
}

}  // namespace cg

extern "C" const char * cg_version(void) { return CG_VERSION; }
