// Internal definitions shared by the engine's translation units.
#pragma once

#include "cogenesis.h"
#include "llama.h"

#include <atomic>
#include <string>
#include <vector>

namespace cg {

// Record `message` as this thread's last error and return `status`.
int32_t fail(int32_t status, const std::string & message);
void    clear_error();

// Initialize llama.cpp's backend and route its log once per process.
void ensure_backend();
// Recent llama.cpp error log lines emitted on this thread (for error messages).
std::string take_llama_errors();

double now_ms();

// Copy `n` items into a caller buffer of `capacity` and return the count needed.
template <typename T>
int32_t copy_out(const T * src, int32_t n, T * dst, int32_t capacity) {
    for (int32_t i = 0; i < n && i < capacity; ++i) dst[i] = src[i];
    return n;
}

}  // namespace cg

struct cg_model {
    llama_model *       model = nullptr;
    const llama_vocab * vocab = nullptr;
    double              load_ms = 0.0;
};

struct cg_session {
    cg_model *       model = nullptr;
    llama_context *  ctx = nullptr;
    llama_batch      batch{};
    int32_t          n_outputs_max = 0;   // logits rows one decode may produce
    int32_t          n_ctx = 0;
    int32_t          n_batch = 0;        // tokens the llama_batch holds
    int32_t          n_seq_max = 0;
    std::vector<std::vector<cg_token>> seqs;  // tokens held in the KV cache, per sequence
    std::vector<int32_t> output_rows;         // logits row -> batch index of the last evaluation
    std::vector<cg_token_data> candidates;    // scratch buffer for sampling
    std::atomic<bool> cancel{false};
};

namespace cg {
// Total tokens in the KV cache across sequences (they share one window).
int32_t session_used(const cg_session * s);

// Base of the built-in samplers: one small object with apply / accept / reset.
struct Sampler {
    virtual ~Sampler() = default;
    virtual void apply(cg_token_data_array * cur) = 0;
    virtual void accept(cg_token) {}
    virtual void reset() {}
    // Fast path for a chain's first link: read the dense row x of n scores
    // (token i scores x[i]) and fill cur, whose buffer holds n entries, without
    // the caller building n candidates first. Return false to decline.
    virtual bool apply_dense(const float * x, int32_t n, cg_token_data_array * cur) {
        (void) x; (void) n; (void) cur;
        return false;
    }
};

// Wrap a built-in sampler in a cg_sampler handle that owns it.
cg_sampler * wrap_sampler(Sampler * s);
// The built-in sampler behind a handle, or nullptr for a custom one.
Sampler * builtin_sampler(const cg_sampler * s);
}  // namespace cg
