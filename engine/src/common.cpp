// Small pieces the engine files share: the clock, sequence and token checks, the version.
#include "internal.h"

#include <chrono>
#include <string>

namespace cg {

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
