// KV state files: the private-context cache.
//
// Layout (little endian): "CGKV", u32 version, model fingerprint
// (u32 n_vocab, u32 n_layer, u32 n_embd, u64 size, u64 n_params),
// u32 n_tokens, tokens, u64 blob size, blob from llama_state_seq_get_data.
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

namespace {

constexpr char     kMagic[4] = {'C', 'G', 'K', 'V'};
constexpr uint32_t kVersion = 1;

struct Fingerprint {
    uint32_t n_vocab, n_layer, n_embd;
    uint64_t size, n_params;
    bool operator==(const Fingerprint & o) const {
        return n_vocab == o.n_vocab && n_layer == o.n_layer && n_embd == o.n_embd && size == o.size &&
               n_params == o.n_params;
    }
};

Fingerprint fingerprint(const cg_model * m) {
    return {(uint32_t) llama_vocab_n_tokens(m->vocab), (uint32_t) llama_model_n_layer(m->model),
            (uint32_t) llama_model_n_embd(m->model), llama_model_size(m->model), llama_model_n_params(m->model)};
}

template <typename T>
void put(std::string & out, const T & v) {
    out.append(reinterpret_cast<const char *>(&v), sizeof v);
}

// Bounds-checked reader over the file contents.
struct Reader {
    const std::string & buf;
    size_t pos = 0;
    bool ok = true;
    template <typename T>
    T get() {
        T v{};
        if (pos + sizeof v > buf.size()) { ok = false; return v; }
        std::memcpy(&v, buf.data() + pos, sizeof v);
        pos += sizeof v;
        return v;
    }
    const char * take(size_t n) {
        if (pos + n > buf.size() || pos + n < pos) { ok = false; return nullptr; }
        const char * p = buf.data() + pos;
        pos += n;
        return p;
    }
};

}  // namespace

extern "C" {

int32_t cg_session_state_save(cg_session * s, int32_t seq_id, const char * path) {
    if (!path) return cg::fail(CG_ERR_INVALID_ARGUMENT, "state path must not be NULL");
    if (seq_id < 0 || seq_id >= s->n_seq_max) return cg::fail(CG_ERR_INVALID_ARGUMENT, "sequence id out of range");
    const auto & toks = s->seqs[seq_id];
    if (toks.empty()) return cg::fail(CG_ERR_INVALID_ARGUMENT, "sequence " + std::to_string(seq_id) + " is empty: prefill it before saving");

    std::string blob(llama_state_seq_get_size(s->ctx, seq_id), '\0');
    blob.resize(llama_state_seq_get_data(s->ctx, reinterpret_cast<uint8_t *>(&blob[0]), blob.size(), seq_id));

    std::string out(kMagic, 4);
    put(out, kVersion);
    const Fingerprint fp = fingerprint(s->model);
    put(out, fp.n_vocab); put(out, fp.n_layer); put(out, fp.n_embd); put(out, fp.size); put(out, fp.n_params);
    put(out, (uint32_t) toks.size());
    out.append(reinterpret_cast<const char *>(toks.data()), toks.size() * sizeof(cg_token));
    put(out, (uint64_t) blob.size());
    out += blob;

    // Write a new private file (0600: it holds the private context's tokens) with a unique name beside
    // the target, then rename, so a crash never leaves half a cache and nothing else can open it first.
    std::string tmp = std::string(path) + ".XXXXXX";
    const int fd = mkstemp(&tmp[0]);
    if (fd < 0) return cg::fail(CG_ERR_IO, std::string("cannot write state file '") + path + "': " + std::strerror(errno));
    size_t written = 0;
    while (written < out.size()) {
        const ssize_t n = ::write(fd, out.data() + written, out.size() - written);
        if (n <= 0) break;
        written += (size_t) n;
    }
    const bool ok = written == out.size() && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok || std::rename(tmp.c_str(), path) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        return cg::fail(CG_ERR_IO, std::string("cannot write state file '") + path + "': " + std::strerror(err));
    }
    return CG_OK;
}

int32_t cg_session_state_load(cg_session * s, int32_t seq_id, const char * path) {
    if (!path) return cg::fail(CG_ERR_INVALID_ARGUMENT, "state path must not be NULL");
    if (seq_id < 0 || seq_id >= s->n_seq_max) return cg::fail(CG_ERR_INVALID_ARGUMENT, "sequence id out of range");
    std::ifstream f(path, std::ios::binary);
    if (!f) return cg::fail(CG_ERR_FILE_NOT_FOUND, std::string("state file not found: '") + path + "'");
    const std::string buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const std::string where = std::string(" (state file '") + path + "')";

    Reader r{buf};
    const char * magic = r.take(4);
    if (!magic || std::memcmp(magic, kMagic, 4) != 0) return cg::fail(CG_ERR_STATE, "not a cogenesis state file" + where);
    if (r.get<uint32_t>() != kVersion) return cg::fail(CG_ERR_STATE, "unsupported state file version" + where);
    Fingerprint fp;
    fp.n_vocab = r.get<uint32_t>(); fp.n_layer = r.get<uint32_t>(); fp.n_embd = r.get<uint32_t>();
    fp.size = r.get<uint64_t>(); fp.n_params = r.get<uint64_t>();
    if (r.ok && !(fp == fingerprint(s->model))) return cg::fail(CG_ERR_STATE, "the state was saved with a different model" + where);
    const uint32_t n_tokens = r.get<uint32_t>();
    const char * tok_bytes = r.take((size_t) n_tokens * sizeof(cg_token));
    const uint64_t blob_size = r.get<uint64_t>();
    const char * blob = r.take(blob_size);
    if (!r.ok || !tok_bytes || !blob || r.pos != buf.size()) return cg::fail(CG_ERR_STATE, "state file is truncated or corrupt" + where);

    const int32_t others = cg::session_used(s) - (int32_t) s->seqs[seq_id].size();
    if ((int64_t) others + n_tokens > s->n_ctx) {
        return cg::fail(CG_ERR_CONTEXT_OVERFLOW, "the cached prefix has " + std::to_string(n_tokens) +
                                                     " tokens but the context window n_ctx is " + std::to_string(s->n_ctx) + where);
    }
    llama_memory_seq_rm(llama_get_memory(s->ctx), seq_id, -1, -1);
    s->seqs[seq_id].clear();
    s->output_rows.clear();
    if (llama_state_seq_set_data(s->ctx, reinterpret_cast<const uint8_t *>(blob), blob_size, seq_id) == 0) {
        return cg::fail(CG_ERR_STATE, "llama.cpp rejected the saved KV state" + where);
    }
    s->seqs[seq_id].resize(n_tokens);
    std::memcpy(s->seqs[seq_id].data(), tok_bytes, (size_t) n_tokens * sizeof(cg_token));
    return CG_OK;
}

}  // extern "C"
