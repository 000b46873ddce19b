// Model loading, tokenizer and chat template.
#include "internal.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <sys/stat.h>

namespace cg {

int32_t check_gguf_file(const char * path, const char * what) {
    struct stat st {};
    if (stat(path, &st) != 0) {
        return fail(CG_ERR_FILE_NOT_FOUND, std::string(what) + " file not found: '" + path + "'");
    }
    if (!S_ISREG(st.st_mode)) {
        return fail(CG_ERR_MODEL_LOAD, std::string(what) + " path is not a regular file: '" + path + "'");
    }
    std::unique_ptr<FILE, int (*)(FILE *)> f(std::fopen(path, "rb"), std::fclose);
    if (!f) {
        return fail(CG_ERR_IO, std::string("cannot open ") + what + " file '" + path + "': " + std::strerror(errno));
    }
    char magic[4] = {0, 0, 0, 0};
    if (std::fread(magic, 1, 4, f.get()) != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        return fail(CG_ERR_MODEL_LOAD, std::string("not a GGUF file (bad magic bytes): '") + path + "'");
    }
    return CG_OK;
}

}  // namespace cg

extern "C" {

struct cg_model_params cg_model_default_params(void) {
    cg_model_params p;
    p.use_mmap = true;
    p.vocab_only = false;
    p.use_extra_bufts = false;
    return p;
}

int32_t cg_model_load(const char * path, struct cg_model_params params, cg_model ** out) {
    if (!path || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_model_load: path and out must not be NULL");
    *out = nullptr;
    if (int32_t rc = cg::check_gguf_file(path, "model")) return rc;
    cg::ensure_backend();

    const double t0 = cg::now_ms();
    llama_model_params lp = llama_model_default_params();
    lp.n_gpu_layers = 0;
    lp.load_mode = params.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    lp.vocab_only = params.vocab_only;
    lp.use_extra_bufts = params.use_extra_bufts;
    cg::take_llama_errors();
    llama_model * lm = llama_model_load_from_file(path, lp);
    if (!lm) {
        std::string why = cg::take_llama_errors();
        return cg::fail(CG_ERR_MODEL_LOAD, std::string("failed to load GGUF model '") + path +
                                               "' (corrupt, truncated or unsupported)" +
                                               (why.empty() ? "" : ": " + why));
    }
    auto * m = new cg_model;
    m->model = lm;
    m->vocab = llama_model_get_vocab(lm);
    m->load_ms = cg::now_ms() - t0;
    *out = m;
    cg::clear_error();
    return CG_OK;
}

void cg_model_free(cg_model * model) {
    if (!model) return;
    llama_model_free(model->model);
    delete model;
}

int32_t  cg_model_n_vocab(const cg_model * m) { return llama_vocab_n_tokens(m->vocab); }
int32_t  cg_model_n_ctx_train(const cg_model * m) { return llama_model_n_ctx_train(m->model); }
cg_token cg_model_token_bos(const cg_model * m) { return llama_vocab_bos(m->vocab); }
cg_token cg_model_token_eos(const cg_model * m) { return llama_vocab_eos(m->vocab); }
bool     cg_model_token_is_eog(const cg_model * m, cg_token t) { return llama_vocab_is_eog(m->vocab, t); }
double   cg_model_load_ms(const cg_model * m) { return m->load_ms; }
uint64_t cg_model_size(const cg_model * m) { return llama_model_size(m->model); }

int32_t cg_model_desc(const cg_model * m, char * buf, int32_t capacity) {
    char tmp[256];
    const int32_t n = llama_model_desc(m->model, tmp, sizeof tmp);
    return cg::copy_out(tmp, n < 0 ? 0 : n, buf, capacity);
}

int32_t cg_tokenize(const cg_model * m, const char * text, int32_t text_len, bool add_special,
                    bool parse_special, cg_token * out, int32_t capacity) {
    if (!text || text_len < 0) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_tokenize: text is NULL or has a negative length");
        return -1;
    }
    const int32_t n = llama_tokenize(m->vocab, text, text_len, out, capacity, add_special, parse_special);
    if (n == INT32_MIN) {
        cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_tokenize: text too long to tokenize");
        return -1;
    }
    return n < 0 ? -n : n;
}

int32_t cg_token_to_piece(const cg_model * m, cg_token token, bool special, char * buf, int32_t capacity) {
    if (cg::check_tokens(&token, 1, cg_model_n_vocab(m))) return -1;
    const int32_t n = llama_token_to_piece(m->vocab, token, buf, capacity, 0, special);
    return n < 0 ? -n : n;
}

int32_t cg_detokenize(const cg_model * m, const cg_token * tokens, int32_t n_tokens, bool special, char * buf,
                      int32_t capacity) {
    if (n_tokens > 0 && cg::check_tokens(tokens, n_tokens, cg_model_n_vocab(m))) return -1;
    const int32_t n = llama_detokenize(m->vocab, tokens, n_tokens, buf, capacity, false, special);
    return n < 0 ? -n : n;
}

bool cg_model_has_chat_template(const cg_model * m) { return llama_model_chat_template(m->model, nullptr) != nullptr; }

int32_t cg_chat_apply_template(const cg_model * m, const char * const * roles, const char * const * contents,
                               int32_t n_messages, bool add_generation_prompt, char * buf, int32_t capacity) {
    const char * tmpl = llama_model_chat_template(m->model, nullptr);
    if (!tmpl) {
        cg::fail(CG_ERR_NO_TEMPLATE, "the model has no chat template in its GGUF metadata; pass a raw prompt instead");
        return -1;
    }
    std::vector<llama_chat_message> msgs(n_messages > 0 ? n_messages : 0);
    for (int32_t i = 0; i < n_messages; ++i) {
        if (!roles[i] || !contents[i]) {
            cg::fail(CG_ERR_INVALID_ARGUMENT, "chat message " + std::to_string(i) + " has a NULL role or content");
            return -1;
        }
        msgs[i] = {roles[i], contents[i]};
    }
    const int32_t n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), add_generation_prompt, buf, capacity);
    if (n < 0) {
        cg::fail(CG_ERR_NO_TEMPLATE, "the model's chat template is not one llama.cpp can apply; pass a raw prompt instead");
        return -1;
    }
    return n;
}

}  // extern "C"
