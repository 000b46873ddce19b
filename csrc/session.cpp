// Binding of cg_session: prefill, batched decode, logits, KV state files.
#include "handles.h"

#include <cstring>
#include <string>
#include <string_view>
#include <thread>

namespace cgpy {

namespace {

using SessionPtr = std::shared_ptr<SessionHandle>;

SessionPtr create(std::shared_ptr<ModelHandle> model, int32_t n_ctx, int32_t n_batch, int32_t n_ubatch, int32_t n_threads,
                  int32_t n_threads_batch, int32_t n_seq_max, int32_t flash_attn, int32_t n_outputs_max) {
    cg_session_params p = cg_session_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_ubatch = n_ubatch;
    if (n_threads) p.n_threads = n_threads;
    p.n_threads_batch = n_threads_batch ? n_threads_batch : p.n_threads;
    p.n_seq_max = n_seq_max;
    p.flash_attn = flash_attn;
    p.n_outputs_max = n_outputs_max;
    auto h = std::make_shared<SessionHandle>();
    h->model = std::move(model);
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_session_init(h->model->ptr, p, &h->ptr);
    }
    check(rc);
    return h;
}

// Run an engine call on the session with the GIL released.
template <typename Call>
void run_nogil(SessionHandle & s, Call call) {
    SessionLease lease(s);
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = call(s.ptr);
    }
    check(rc);
}

}  // namespace

void register_session(py::module_ & m) {
    const cg_session_params d = cg_session_default_params();
    m.def("session_default_params", [] {
        const cg_session_params p = cg_session_default_params();
        py::dict out;
        out["n_ctx"] = p.n_ctx;
        out["n_batch"] = p.n_batch;
        out["n_ubatch"] = p.n_ubatch;
        out["n_threads"] = p.n_threads;
        out["n_threads_batch"] = p.n_threads_batch;
        out["n_seq_max"] = p.n_seq_max;
        out["flash_attn"] = p.flash_attn;
        out["n_outputs_max"] = p.n_outputs_max;
        return out;
    }, "cg_session_default_params(): a session's defaults (n_threads: this machine's cores).");
    py::class_<SessionHandle, SessionPtr>(m, "Session",
        "One llama context (KV cache) over a Model, holding up to n_seq_max token sequences that share the\n"
        "n_ctx window. Use a Session from one thread at a time; create one per thread.")
        .def(py::init(&create), py::arg("model"), py::kw_only(), py::arg("n_ctx") = d.n_ctx, py::arg("n_batch") = d.n_batch,
             py::arg("n_ubatch") = d.n_ubatch, py::arg("n_threads") = 0, py::arg("n_threads_batch") = 0,
             py::arg("n_seq_max") = d.n_seq_max, py::arg("flash_attn") = d.flash_attn, py::arg("n_outputs_max") = d.n_outputs_max,
             "n_threads=0 uses every core; n_threads_batch=0 follows n_threads; flash_attn: -1 auto, 0 off, 1 on;\n"
             "n_outputs_max: most logits rows one decode() may return (each costs n_vocab floats of compute buffer).")
        .def_property_readonly("n_ctx", [](const SessionHandle & s) { return cg_session_n_ctx(s.ptr); })
        .def_property_readonly("n_seq_max", [](const SessionHandle & s) { return cg_session_n_seq_max(s.ptr); })
        .def("prefill", [](SessionHandle & s, const TokenArray & tokens, int32_t seq_id) {
                const int32_t * d = tokens.data();
                const int32_t n = (int32_t) tokens.size();
                run_nogil(s, [&](cg_session * p) { return cg_session_prefill(p, seq_id, d, n); });
            }, py::arg("tokens"), py::kw_only(), py::arg("seq_id") = 0,
             "Append and evaluate tokens on a sequence (GIL released). Row 0 of logits() then scores the next token.")
        .def("decode", [](SessionHandle & s, const TokenArray & seq_ids, const TokenArray & tokens) {
                if (seq_ids.size() != tokens.size()) throw py::value_error("seq_ids and tokens must have the same length");
                const int32_t * ids = seq_ids.data();
                const int32_t * d = tokens.data();
                const int32_t n = (int32_t) tokens.size();
                run_nogil(s, [&](cg_session * p) { return cg_session_decode(p, ids, d, n); });
            }, py::arg("seq_ids"), py::arg("tokens"),
             "Append tokens[i] to sequence seq_ids[i], all in one batch (GIL released). Row i of logits() follows entry i.")
        .def("logits", [](SessionHandle & s, int32_t row) {
                const float * src = cg_session_logits(s.ptr, row);
                if (!src) throw StatusError(CG_ERR_INVALID_ARGUMENT, cg_last_error());
                std::vector<float> copy(src, src + cg_model_n_vocab(s.model->ptr));
                return to_numpy(std::move(copy));
            }, py::arg("row") = 0,
             "Scores of one row of the last evaluation, as a float32 array owned by the caller (a copy: the\n"
             "engine's buffer is overwritten by the next evaluation).")
        .def("seq_len", [](const SessionHandle & s, int32_t seq_id) {
                const int32_t n = cg_session_seq_len(s.ptr, seq_id);
                if (n < 0) throw StatusError(CG_ERR_INVALID_ARGUMENT, cg_last_error());
                return n;
            }, py::arg("seq_id") = 0)
        .def("seq_tokens", [](const SessionHandle & s, int32_t seq_id) {
                const int32_t n = cg_session_seq_len(s.ptr, seq_id);
                if (n < 0) throw StatusError(CG_ERR_INVALID_ARGUMENT, cg_last_error());
                std::vector<int32_t> toks(n);
                cg_session_seq_tokens(s.ptr, seq_id, toks.data(), n);
                return to_numpy(std::move(toks));
            }, py::arg("seq_id") = 0, "Tokens held in the KV cache for the sequence.")
        .def("truncate", [](SessionHandle & s, int32_t n_keep, int32_t seq_id) {
                run_nogil(s, [&](cg_session * p) { return cg_session_seq_truncate(p, seq_id, n_keep); });
            }, py::arg("n_keep"), py::kw_only(), py::arg("seq_id") = 0,
             "Keep the first n_keep tokens of the sequence (roll back the rest).")
        .def("set_adapter", [](SessionHandle & s, std::shared_ptr<AdapterHandle> adapter, float scale) {
                const cg_adapter * a = adapter ? adapter->ptr : nullptr;
                run_nogil(s, [&](cg_session * p) { return cg_session_set_adapter(p, a, scale); });
                s.adapter = std::move(adapter);
            }, py::arg("adapter"), py::arg("scale") = 1.0f,
             "Attach a LoRA Adapter of this session's Model with a scale (1: as trained), replacing any attached\n"
             "one; None detaches. A change clears the session's KV cache: cached tokens were computed with the\n"
             "old weights. State files record the adapter and refuse to load under another.")
        .def_property_readonly("adapter", [](const SessionHandle & s) { return s.adapter; },
             "The attached Adapter, or None.")
        .def("save_state", [](SessionHandle & s, const std::string & path, int32_t seq_id) {
                run_nogil(s, [&](cg_session * p) { return cg_session_state_save(p, seq_id, path.c_str()); });
            }, py::arg("path"), py::kw_only(), py::arg("seq_id") = 0,
             "Write the sequence's KV state and tokens to a file (atomically).")
        .def("load_state", [](SessionHandle & s, const std::string & path, int32_t seq_id) {
                run_nogil(s, [&](cg_session * p) { return cg_session_state_load(p, seq_id, path.c_str()); });
            }, py::arg("path"), py::kw_only(), py::arg("seq_id") = 0,
             "Replace the sequence with a saved state. Raises StateError if the file is corrupt or from another model.")
        .def("state_bytes", [](SessionHandle & s, int32_t seq_id) {
                std::string buf;
                size_t written = 0;
                run_nogil(s, [&](cg_session * p) {
                    buf.resize(cg_session_state_size(p, seq_id));
                    return cg_session_state_get(p, seq_id, reinterpret_cast<uint8_t *>(&buf[0]), buf.size(), &written);
                });
                return py::bytes(buf.data(), written);
            }, py::kw_only(), py::arg("seq_id") = 0,
             "The sequence's KV state and tokens as bytes (what save_state writes), for storing or encrypting\n"
             "the cache yourself. They hold the private context: keep them as carefully as the context.")
        .def("load_state_bytes", [](SessionHandle & s, const py::bytes & data, int32_t seq_id) {
                std::string_view view = data;
                run_nogil(s, [&](cg_session * p) {
                    return cg_session_state_set(p, seq_id, reinterpret_cast<const uint8_t *>(view.data()), view.size());
                });
            }, py::arg("data"), py::kw_only(), py::arg("seq_id") = 0,
             "Replace the sequence with a state from state_bytes(). Raises StateError if it is corrupt, spliced or\n"
             "from another model.")
        .def_property_readonly("state_max_size", [](const SessionHandle & s) { return cg_session_state_max_size(s.ptr); },
             "The largest state this session can hold, in bytes (larger files are refused unread).")
        .def("cancel", [](SessionHandle & s) { cg_session_cancel(s.ptr); },
             "Stop the running prefill or generation soon. Safe from any thread.");
}

}  // namespace cgpy
