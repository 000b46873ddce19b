// Binding of cg_generation: a pull-based token loop (GIL released per step).
#include "handles.h"

#include <cstdio>

#include <pybind11/stl.h>

namespace cgpy {

const char * finish_name(cg_finish_reason r) {
    switch (r) {
        case CG_FINISH_EOS:          return "eos";
        case CG_FINISH_STOP:         return "stop";
        case CG_FINISH_LENGTH:       return "length";
        case CG_FINISH_CONTEXT_FULL: return "context_full";
        case CG_FINISH_CANCELLED:    return "cancelled";
        default:                     return nullptr;
    }
}

namespace {

// A generation leases its session from start until it finishes or is closed.
struct GenerationHandle {
    std::shared_ptr<SessionHandle> session;
    std::shared_ptr<SamplerHandle> sampler;
    cg_generation *                ptr = nullptr;
    bool                           leased = false;

    ~GenerationHandle() { close(); }

    void release_lease() {
        if (leased) session->busy.store(false);
        leased = false;
    }
    void close() {
        cg_generation_free(ptr);
        ptr = nullptr;
        release_lease();
    }
    bool finished() const { return !ptr || cg_generation_finish_reason(ptr) != CG_FINISH_NONE; }
    void require_open() const {
        if (!ptr) throw py::value_error("this Generation is closed");
    }
};

std::shared_ptr<GenerationHandle> start(std::shared_ptr<SessionHandle> session, const TokenArray & prompt,
                                        std::shared_ptr<SamplerHandle> sampler, int32_t max_tokens,
                                        const std::vector<std::string> & stop, bool ignore_eos, int32_t seq_id) {
    auto g = std::make_shared<GenerationHandle>();
    g->session = std::move(session);
    g->sampler = std::move(sampler);
    if (g->session->busy.exchange(true)) {
        throw std::runtime_error("this Session is in use (by another thread or an unfinished Generation)");
    }
    g->leased = true;
    std::vector<const char *> stops;
    for (const auto & s : stop) stops.push_back(s.c_str());
    cg_generate_params p = cg_generate_default_params();
    p.seq_id = seq_id;
    p.max_tokens = max_tokens;
    p.stop = stops.data();
    p.n_stop = (int32_t) stops.size();
    p.ignore_eos = ignore_eos;
    const int32_t * d = prompt.data();
    const int32_t n = (int32_t) prompt.size();
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_generation_init(g->session->ptr, d, n, g->sampler->ptr, &p, &g->ptr);
    }
    if (rc != CG_OK) g->release_lease();
    check(rc);
    if (g->finished()) g->release_lease();
    return g;
}

py::tuple step(GenerationHandle & g) {
    g.require_open();
    cg_token tok = -1;
    const char * text = nullptr;
    int32_t len = 0;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_generation_next(g.ptr, &tok, &text, &len);
    }
    if (rc != CG_OK || g.finished()) g.release_lease();
    check(rc);
    return py::make_tuple(tok, decode_utf8(text, (size_t) len));
}

void run(GenerationHandle & g) {
    g.require_open();
    int32_t rc = CG_OK;
    {
        py::gil_scoped_release nogil;
        while (rc == CG_OK && cg_generation_finish_reason(g.ptr) == CG_FINISH_NONE) {
            rc = cg_generation_next(g.ptr, nullptr, nullptr, nullptr);
        }
    }
    g.release_lease();
    check(rc);
}

double prefill_tokens_per_s(const cg_timings & t) {
    return t.prefill_ms > 0 ? (t.n_prompt - t.n_reused) / t.prefill_ms * 1000.0 : 0.0;
}

double decode_tokens_per_s(const cg_timings & t) {
    return t.decode_ms > 0 ? t.n_decoded / t.decode_ms * 1000.0 : 0.0;
}

}  // namespace

void register_generation(py::module_ & m) {
    const cg_generate_params d = cg_generate_default_params();
    m.def("generate_default_params", [] {
        const cg_generate_params p = cg_generate_default_params();
        py::dict out;
        out["max_tokens"] = p.max_tokens;
        out["ignore_eos"] = p.ignore_eos;
        out["seq_id"] = p.seq_id;
        return out;
    }, "cg_generate_default_params(): a generation's defaults.");
    py::class_<cg_timings> timings(m, "Timings", "Timings of one generation (milliseconds) and token counts.");
    using T = cg_timings;
    def_fields(timings, [](const T & t, py::dict & out) {
            out["prefill_tokens_per_s"] = prefill_tokens_per_s(t);
            out["decode_tokens_per_s"] = decode_tokens_per_s(t);
        },
        Field<T, double>{"load_ms", &T::load_ms, "model load (once per model)"},
        Field<T, double>{"prefill_ms", &T::prefill_ms, "evaluating the prompt tokens not already cached"},
        Field<T, double>{"first_token_ms", &T::first_token_ms, "start of generation to the first token chosen"},
        Field<T, double>{"decode_ms", &T::decode_ms, "evaluating generated tokens"},
        Field<T, double>{"sample_ms", &T::sample_ms, "the sampler chain"},
        Field<T, int32_t>{"n_prompt", &T::n_prompt, "prompt tokens"},
        Field<T, int32_t>{"n_reused", &T::n_reused, "prompt tokens found in the KV cache (not prefilled again)"},
        Field<T, int32_t>{"n_generated", &T::n_generated, "tokens generated (excluding a final end-of-generation token)"},
        Field<T, int32_t>{"n_decoded", &T::n_decoded, "generated tokens evaluated (decode_ms covers these)"});
    timings
        .def_property_readonly("prefill_tokens_per_s", &prefill_tokens_per_s,
                               "prompt tokens evaluated (not reused) per second of prefill")
        .def_property_readonly("decode_tokens_per_s", &decode_tokens_per_s,
                               "generated tokens evaluated per second of decode: the package's one definition")
        .def("summary", [](const T & t) {
            char line[256];
            std::snprintf(line, sizeof line,
                          "prompt %d tok (%d cached), prefill %.0f ms, first token %.0f ms, %d tok generated, "
                          "decode %.1f tok/s, sampling %.1f ms", t.n_prompt, t.n_reused, t.prefill_ms,
                          t.first_token_ms, t.n_generated, decode_tokens_per_s(t), t.sample_ms);
            return std::string(line);
        }, "One line for people.");
    py::class_<GenerationHandle, std::shared_ptr<GenerationHandle>>(m, "Generation",
        "One generation on a Session: starting it reuses the cached prefix and prefills the rest; step()\n"
        "produces one token; run() goes to the end. The session is reserved until it finishes or close().")
        .def(py::init(&start), py::arg("session"), py::arg("prompt"), py::arg("sampler"), py::kw_only(),
             py::arg("max_tokens") = d.max_tokens, py::arg("stop") = std::vector<std::string>{},
             py::arg("ignore_eos") = d.ignore_eos, py::arg("seq_id") = d.seq_id)
        .def("step", &step,
             "Generate one token (GIL released). Returns (token, text): token is -1 when the call produced none;\n"
             "text is what became final (held back while it may start a stop string or a UTF-8 character).")
        .def("run", &run, "Generate to the end with the GIL released throughout.")
        .def("close", &GenerationHandle::close, "Free the generation and release its session.")
        .def_property_readonly("finished", &GenerationHandle::finished)
        .def_property_readonly("finish_reason", [](const GenerationHandle & g) -> py::object {
            if (!g.ptr) return py::none();
            const char * name = finish_name(cg_generation_finish_reason(g.ptr));
            return name ? py::object(py::str(name)) : py::object(py::none());
        }, "None while running, then 'eos', 'stop', 'length', 'context_full' or 'cancelled'.")
        .def_property_readonly("text", [](const GenerationHandle & g) {
            g.require_open();
            int32_t len = 0;
            const char * t = cg_generation_text(g.ptr, &len);
            return decode_utf8(t, (size_t) len);
        })
        .def_property_readonly("tokens", [](const GenerationHandle & g) {
            g.require_open();
            std::vector<int32_t> toks(cg_generation_tokens(g.ptr, nullptr, 0));
            cg_generation_tokens(g.ptr, toks.data(), (int32_t) toks.size());
            return to_numpy(std::move(toks));
        })
        .def_property_readonly("timings", [](const GenerationHandle & g) {
            g.require_open();
            return cg_generation_timings(g.ptr);
        }, "Timings (a copy, as of now).");
}

}  // namespace cgpy
