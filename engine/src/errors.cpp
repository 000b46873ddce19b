// Error reporting: the calling thread's last error, and llama.cpp's error log lines routed to it.
#include "internal.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

thread_local std::string t_error;
thread_local std::string t_llama_errors;

// llama.cpp logs through one global callback. Keep this thread's error lines
// so a failed load can say why; print everything only when asked to.
void log_callback(ggml_log_level level, const char * text, void *) {
    static const bool verbose = std::getenv("COGENESIS_VERBOSE") != nullptr;
    if (verbose) std::fputs(text, stderr);
    static thread_local bool last_was_error = false;
    const bool is_error = level == GGML_LOG_LEVEL_ERROR ||
                          (level == GGML_LOG_LEVEL_CONT && last_was_error);
    if (level != GGML_LOG_LEVEL_CONT) last_was_error = level == GGML_LOG_LEVEL_ERROR;
    if (!is_error) return;
    t_llama_errors += text;
    if (t_llama_errors.size() > 2048) t_llama_errors.erase(0, t_llama_errors.size() - 2048);
}

}  // namespace

namespace cg {

int32_t fail(int32_t status, const std::string & message) {
    t_error = message;
    return status;
}

void clear_error() { t_error.clear(); }

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

std::string take_llama_errors() {
    std::string out;
    out.swap(t_llama_errors);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

}  // namespace cg

extern "C" const char * cg_last_error(void) { return t_error.c_str(); }

