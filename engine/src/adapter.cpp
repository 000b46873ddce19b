// LoRA adapters: loaded once per model (llama.cpp's llama_adapter_lora), attached to sessions with a scale.
#include "internal.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

struct cg_adapter {
    llama_adapter_lora * lora = nullptr;
    const cg_model *     model = nullptr;
    uint64_t             tag = 0;  // hash of the file's bytes: which adapter a state file was written with
};

namespace {

// A hash of the file's bytes, read 1 MiB at a time so the file is never held in memory whole
// (llama.cpp reads it again just after; that read comes from the page cache). False on a read error.
bool file_hash(const char * path, uint64_t * out) {
    std::ifstream file(path, std::ios::binary);
    std::vector<char> chunk(1 << 20);
    uint64_t h = 0;
    while (file.read(chunk.data(), (std::streamsize) chunk.size()) || file.gcount() > 0) {
        const uint64_t pair[2] = {h, cg::checksum(reinterpret_cast<const uint8_t *>(chunk.data()), (size_t) file.gcount())};
        h = cg::checksum(reinterpret_cast<const uint8_t *>(pair), sizeof pair);
    }
    *out = h;
    return file.eof() && !file.bad();
}

}  // namespace

extern "C" {

int32_t cg_adapter_load(cg_model * model, const char * path, cg_adapter ** out) {
    if (!model || !path || !out) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_adapter_load: NULL argument");
    *out = nullptr;
    if (int32_t rc = cg::check_gguf_file(path, "adapter")) return rc;
    uint64_t tag = 0;
    if (!file_hash(path, &tag)) return cg::fail(CG_ERR_IO, std::string("cannot read adapter file '") + path + "'");
    cg::ensure_backend();
    llama_adapter_lora * lora = llama_adapter_lora_init(model->model, path);
    if (!lora) {
        // llama.cpp logs why (another architecture, tensor shapes that do not match the model's, ...).
        const std::string why = cg::take_llama_errors();
        return cg::fail(CG_ERR_MODEL_LOAD, std::string("'") + path + "' is not a LoRA adapter for this model" +
                                               (why.empty() ? "" : ": " + why));
    }
    auto * a = new cg_adapter;
    a->lora = lora;
    a->model = model;
    a->tag = tag | 1;  // never 0, which means "no adapter"
    *out = a;
    return CG_OK;
}

void cg_adapter_free(cg_adapter * adapter) {
    if (!adapter) return;
    llama_adapter_lora_free(adapter->lora);
    delete adapter;
}

int32_t cg_session_set_adapter(cg_session * s, const cg_adapter * adapter, float scale) {
    if (!s) return cg::fail(CG_ERR_INVALID_ARGUMENT, "cg_session_set_adapter: NULL session");
    if (adapter && adapter->model != s->model) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "the adapter was loaded for another model than the session's");
    }
    if (adapter && !(std::isfinite(scale) && scale != 0.0f)) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "the adapter scale must be a finite non-zero number (detach with NULL), got " +
                                                     std::to_string(scale));
    }
    uint64_t tag = 0;
    if (adapter) {
        uint32_t bits;
        std::memcpy(&bits, &scale, sizeof bits);
        tag = cg::checksum(reinterpret_cast<const uint8_t *>(&bits), sizeof bits) ^ adapter->tag;
        tag |= 1;
    }
    if (tag == s->adapter_tag) return CG_OK;
    llama_adapter_lora * lora = adapter ? adapter->lora : nullptr;
    const int32_t rc = adapter ? llama_set_adapters_lora(s->ctx, &lora, 1, &scale) : llama_set_adapters_lora(s->ctx, nullptr, 0, nullptr);
    if (rc != 0) return cg::fail(CG_ERR_MODEL_LOAD, "llama.cpp could not attach the adapter to the session");
    // What the KV cache holds was computed with the old weights: a prefix reused from it would mix the two.
    for (int32_t seq = 0; seq < s->n_seq_max; ++seq) cg_session_seq_truncate(s, seq, 0);
    s->adapter_tag = tag;
    return CG_OK;
}

}  // extern "C"
