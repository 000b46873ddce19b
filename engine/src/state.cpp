// KV state files and buffers: the private-context cache.
//
// Layout (little endian): "CGKV", u32 version, model fingerprint
// (u32 n_vocab, u32 n_layer, u32 n_embd, u64 size, u64 n_params),
// u32 n_tokens, tokens, u64 blob size, blob from llama_state_seq_get_data,
// u64 checksum of every byte before it. The checksum binds the token list to the KV data, so a
// file spliced from two saves (one's tokens, another's cache) is refused instead of silently
// continuing text the cache does not hold. It guards against accidents, not forgery: an app that
// needs authenticity encrypts the bytes (cg_session_state_get/set) with a key of its own.
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace {

constexpr char     kMagic[4] = {'C', 'G', 'K', 'V'};
constexpr uint32_t kVersion = 3;  // 3: the attached adapter's tag
constexpr size_t   kChecksumSize = sizeof(uint64_t);

struct Fingerprint {
    uint32_t n_vocab, n_layer, n_embd;
    uint64_t size, n_params;
    uint64_t adapter;  // the session's adapter tag (0: none): KV data depends on the weights that wrote it
    bool operator==(const Fingerprint & o) const {
        return n_vocab == o.n_vocab && n_layer == o.n_layer && n_embd == o.n_embd && size == o.size &&
               n_params == o.n_params && adapter == o.adapter;
    }
};

Fingerprint fingerprint(const cg_session * s) {
    const cg_model * m = s->model;
    return {(uint32_t) llama_vocab_n_tokens(m->vocab), (uint32_t) llama_model_n_layer(m->model),
            (uint32_t) llama_model_n_embd(m->model), llama_model_size(m->model), llama_model_n_params(m->model),
            s->adapter_tag};
}

template <typename T>
void put(std::string & out, const T & v) {
    out.append(reinterpret_cast<const char *>(&v), sizeof v);
}

// Bounds-checked reader over the serialized bytes.
struct Reader {
    const uint8_t * buf;
    size_t size;
    size_t pos = 0;
    bool ok = true;
    template <typename T>
    T get() {
        T v{};
        if (pos + sizeof v > size) { ok = false; return v; }
        std::memcpy(&v, buf + pos, sizeof v);
        pos += sizeof v;
        return v;
    }
    const uint8_t * take(size_t n) {
        if (pos + n > size || pos + n < pos) { ok = false; return nullptr; }
        const uint8_t * p = buf + pos;
        pos += n;
        return p;
    }
};


// The whole serialized state of a sequence, checksum included.
int32_t serialize(cg_session * s, int32_t seq_id, std::string & out) {
    if (const int32_t rc = cg::check_seq(s, seq_id)) return rc;
    const auto & toks = s->seqs[seq_id];
    if (toks.empty()) return cg::fail(CG_ERR_INVALID_ARGUMENT, "sequence " + std::to_string(seq_id) + " is empty: prefill it before saving");

    std::string blob(llama_state_seq_get_size(s->ctx, seq_id), '\0');
    blob.resize(llama_state_seq_get_data(s->ctx, reinterpret_cast<uint8_t *>(&blob[0]), blob.size(), seq_id));

    out.assign(kMagic, 4);
    put(out, kVersion);
    const Fingerprint fp = fingerprint(s);
    put(out, fp.n_vocab); put(out, fp.n_layer); put(out, fp.n_embd); put(out, fp.size); put(out, fp.n_params);
    put(out, fp.adapter);
    put(out, (uint32_t) toks.size());
    out.append(reinterpret_cast<const char *>(toks.data()), toks.size() * sizeof(cg_token));
    put(out, (uint64_t) blob.size());
    out += blob;
    put(out, cg::checksum(reinterpret_cast<const uint8_t *>(out.data()), out.size()));
    return CG_OK;
}

constexpr size_t kHeaderSize = 4 + 4 + 3 * 4 + 3 * 8 + 4;  // through n_tokens

// Checks the fixed header (magic, version, model, token count against the window) and leaves r after it.
int32_t check_header(cg_session * s, int32_t seq_id, Reader & r, uint32_t & n_tokens, const std::string & where) {
    const uint8_t * magic = r.take(4);
    if (!magic || std::memcmp(magic, kMagic, 4) != 0) return cg::fail(CG_ERR_STATE, "not a cogenesis state" + where);
    const uint32_t version = r.get<uint32_t>();
    if (r.ok && version != kVersion) {
        return cg::fail(CG_ERR_STATE, "unsupported state version " + std::to_string(version) + " (this engine reads " +
                                          std::to_string(kVersion) + "; save the state again)" + where);
    }
    Fingerprint fp;
    fp.n_vocab = r.get<uint32_t>(); fp.n_layer = r.get<uint32_t>(); fp.n_embd = r.get<uint32_t>();
    fp.size = r.get<uint64_t>(); fp.n_params = r.get<uint64_t>(); fp.adapter = r.get<uint64_t>();
    const Fingerprint ours = fingerprint(s);
    if (r.ok && !(fp == ours)) {
        const bool adapter_only = fp.adapter != ours.adapter && (Fingerprint{fp.n_vocab, fp.n_layer, fp.n_embd, fp.size, fp.n_params, ours.adapter} == ours);
        return cg::fail(CG_ERR_STATE, (adapter_only ? "the state was saved with another LoRA adapter attached (or none)"
                                                    : "the state was saved with a different model") + where);
    }
    n_tokens = r.get<uint32_t>();
    if (!r.ok) return cg::fail(CG_ERR_STATE, "state is truncated or corrupt" + where);
    const int32_t others = cg::session_used(s) - (int32_t) s->seqs[seq_id].size();
    if ((int64_t) others + n_tokens > s->n_ctx) {
        return cg::fail(CG_ERR_CONTEXT_OVERFLOW, "the cached prefix has " + std::to_string(n_tokens) +
                                                     " tokens but the context window n_ctx is " + std::to_string(s->n_ctx) + where);
    }
    return CG_OK;
}

// Validates serialized bytes and loads them into seq_id. where: " (state file '...')" or "".
int32_t deserialize(cg_session * s, int32_t seq_id, const uint8_t * data, size_t size, const std::string & where) {
    Reader r{data, size};
    uint32_t n_tokens = 0;
    if (const int32_t rc = check_header(s, seq_id, r, n_tokens, where)) return rc;
    const uint8_t * tok_bytes = r.take((size_t) n_tokens * sizeof(cg_token));
    const uint64_t blob_size = r.get<uint64_t>();
    const uint8_t * blob = r.take(blob_size);
    const size_t body_size = r.pos;
    const uint64_t stored = r.get<uint64_t>();
    if (!r.ok || !tok_bytes || !blob || r.pos != size) return cg::fail(CG_ERR_STATE, "state is truncated or corrupt" + where);
    if (stored != cg::checksum(data, body_size)) {
        return cg::fail(CG_ERR_STATE, "state checksum mismatch: its tokens and KV data do not belong together "
                                      "(corrupt, or spliced from two saves)" + where);
    }
    llama_memory_seq_rm(llama_get_memory(s->ctx), seq_id, -1, -1);
    s->seqs[seq_id].clear();
    s->output_rows.clear();
    if (llama_state_seq_set_data(s->ctx, blob, blob_size, seq_id) == 0) {
        return cg::fail(CG_ERR_STATE, "llama.cpp rejected the saved KV state" + where);
    }
    s->seqs[seq_id].resize(n_tokens);
    std::memcpy(s->seqs[seq_id].data(), tok_bytes, (size_t) n_tokens * sizeof(cg_token));
    return CG_OK;
}

}  // namespace

extern "C" {

size_t cg_session_state_max_size(const cg_session * s) {
    // A full window of tokens plus its KV rows: per layer, a key and a value row of at most n_embd
    // f32 values per token (the cache is f16 and grouped-query heads are narrower, so this is a
    // generous bound), and 1 MiB for llama.cpp's own headers.
    const uint64_t n_ctx = (uint64_t) s->n_ctx;
    const uint64_t row = (uint64_t) llama_model_n_layer(s->model->model) * 2 * llama_model_n_embd(s->model->model) * 4;
    return (size_t) (64 + n_ctx * sizeof(cg_token) + n_ctx * row + (1u << 20) + kChecksumSize);
}

size_t cg_session_state_size(cg_session * s, int32_t seq_id) {
    if (seq_id < 0 || seq_id >= s->n_seq_max || s->seqs[seq_id].empty()) return 0;
    return kHeaderSize + s->seqs[seq_id].size() * sizeof(cg_token) + 8 +
           llama_state_seq_get_size(s->ctx, seq_id) + kChecksumSize;
}

int32_t cg_session_state_get(cg_session * s, int32_t seq_id, uint8_t * buf, size_t capacity, size_t * n_written) {
    if (!buf || !n_written) return cg::fail(CG_ERR_INVALID_ARGUMENT, "state buffer and n_written must not be NULL");
    std::string out;
    if (const int32_t rc = serialize(s, seq_id, out)) return rc;
    if (out.size() > capacity) {
        return cg::fail(CG_ERR_INVALID_ARGUMENT, "state buffer too small: " + std::to_string(out.size()) +
                                                     " bytes needed, " + std::to_string(capacity) + " given");
    }
    std::memcpy(buf, out.data(), out.size());
    *n_written = out.size();
    return CG_OK;
}

int32_t cg_session_state_set(cg_session * s, int32_t seq_id, const uint8_t * data, size_t size) {
    if (!data) return cg::fail(CG_ERR_INVALID_ARGUMENT, "state data must not be NULL");
    if (const int32_t rc = cg::check_seq(s, seq_id)) return rc;
    if (size > cg_session_state_max_size(s)) {
        return cg::fail(CG_ERR_STATE, "state of " + std::to_string(size) + " bytes is larger than this session can hold (" +
                                          std::to_string(cg_session_state_max_size(s)) + " bytes)");
    }
    return deserialize(s, seq_id, data, size, "");
}

int32_t cg_session_state_save(cg_session * s, int32_t seq_id, const char * path) {
    if (!path) return cg::fail(CG_ERR_INVALID_ARGUMENT, "state path must not be NULL");
    std::string out;
    if (const int32_t rc = serialize(s, seq_id, out)) return rc;

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
    if (const int32_t rc = cg::check_seq(s, seq_id)) return rc;
    const std::string where = std::string(" (state file '") + path + "')";
    // O_NONBLOCK: opening a FIFO (or a device) would otherwise wait for a writer; it is refused below.
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) return cg::fail(CG_ERR_FILE_NOT_FOUND, std::string("state file not found: '") + path + "'");
        return cg::fail(CG_ERR_IO, std::string("cannot read state file '") + path + "': " + std::strerror(errno));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return cg::fail(CG_ERR_STATE, "not a regular file" + where);
    }
    // The header first (is it ours, does it fit), then the size, before the rest is read: a huge
    // file is refused, not loaded into memory.
    uint8_t head[kHeaderSize];
    const ssize_t n_head = ::pread(fd, head, kHeaderSize, 0);
    Reader r{head, n_head > 0 ? (size_t) n_head : 0};
    uint32_t n_tokens = 0;
    if (const int32_t rc = check_header(s, seq_id, r, n_tokens, where)) {
        ::close(fd);
        return rc;
    }
    const size_t limit = cg_session_state_max_size(s);
    if ((uint64_t) st.st_size > limit) {
        ::close(fd);
        return cg::fail(CG_ERR_STATE, "state file of " + std::to_string((uint64_t) st.st_size) +
                                          " bytes is larger than this session can hold (" + std::to_string(limit) +
                                          " bytes)" + where);
    }
    std::string buf((size_t) st.st_size, '\0');
    size_t got = 0;
    while (got < buf.size()) {
        const ssize_t n = ::read(fd, &buf[got], buf.size() - got);
        if (n <= 0) break;
        got += (size_t) n;
    }
    ::close(fd);
    buf.resize(got);
    return deserialize(s, seq_id, reinterpret_cast<const uint8_t *>(buf.data()), buf.size(), where);
}

}  // extern "C"
