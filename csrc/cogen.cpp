// Binding of cg_cogen: the collaborative loop, with a Python object as its remote provider.
#include "handles.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

namespace cgpy {

namespace {

// One answer, kept in the layout cg_remote_step points into until the engine releases it.
struct Answer {
    std::vector<std::string>              tokens;
    std::vector<std::vector<std::string>> top_text;
    std::vector<std::vector<const char *>> top_ptrs;
    std::vector<std::vector<int32_t>>     top_lens;
    std::vector<std::vector<float>>       top_lps;
    std::vector<cg_remote_step>           steps;
};

// Adapts a Python provider (submit / wait / release) to cg_remote_provider. The engine calls it
// with the GIL released, so every callback takes the GIL. A RemoteError becomes a fallback to
// local-only; any other exception (a privacy block, a bug) ends the generation and is re-raised.
struct PyProvider {
    py::object                                provider;
    int64_t                                   next_handle = 1;
    std::unordered_map<int64_t, py::object>   requests;  // handle -> what the provider's submit returned
    std::unordered_map<int64_t, Answer>       answers;
    py::object                                raised;    // the exception to re-raise, if any

    static void write(char * error, int32_t capacity, const std::string & message) {
        if (!error || capacity <= 0) return;
        const size_t n = std::min(message.size(), (size_t) capacity - 1);
        std::memcpy(error, message.data(), n);
        error[n] = '\0';
    }

    int32_t failed(py::error_already_set & e, char * error, int32_t capacity) {
        py::object remote_error = py::module_::import("cogenesis_device.errors").attr("RemoteError");
        if (e.matches(remote_error)) {
            const py::object kind = py::getattr(e.value(), "kind", py::none());
            write(error, capacity, py::str(e.value()).cast<std::string>() +
                                       (kind.is_none() ? "" : " (kind: " + py::str(kind).cast<std::string>() + ")"));
            return CG_ERR_DECODE;
        }
        raised = e.value();
        write(error, capacity, py::str(e.value()).cast<std::string>());
        return CG_ERR_REFUSED;
    }

    static int32_t submit(void * user, const cg_remote_request * r, int64_t * handle, char * error, int32_t capacity) {
        auto * self = static_cast<PyProvider *>(user);
        py::gil_scoped_acquire gil;
        try {
            std::vector<int32_t> tokens(r->tokens, r->tokens + r->n_tokens);
            std::vector<uint8_t> may_leave(r->may_leave, r->may_leave + r->n_tokens);
            py::object request = self->provider.attr("submit")(
                decode_utf8(r->text, (size_t) r->text_len), to_numpy(std::move(tokens)),
                to_numpy(std::move(may_leave)).attr("astype")("bool"), r->n_steps, r->top_k, r->context_bits);
            *handle = self->next_handle++;
            self->requests.emplace(*handle, std::move(request));
            return CG_OK;
        } catch (py::error_already_set & e) {
            return self->failed(e, error, capacity);
        }
    }

    static int32_t wait(void * user, int64_t handle, const cg_remote_step ** steps, int32_t * n_steps, char * error,
                        int32_t capacity) {
        auto * self = static_cast<PyProvider *>(user);
        py::gil_scoped_acquire gil;
        try {
            py::object answer = self->provider.attr("wait")(self->requests.at(handle));
            Answer & a = self->answers[handle];
            for (const py::handle step : answer) {
                const py::dict top = step.attr("top").cast<py::dict>();
                a.tokens.push_back(as_bytes(step.attr("token")));
                a.top_text.emplace_back();
                a.top_lps.emplace_back();
                for (const auto & kv : top) {
                    a.top_text.back().push_back(as_bytes(kv.first));
                    a.top_lps.back().push_back(kv.second.cast<float>());
                }
            }
            const size_t n = a.tokens.size();
            a.top_ptrs.resize(n);
            a.top_lens.resize(n);
            a.steps.resize(n);
            for (size_t i = 0; i < n; ++i) {
                for (const auto & t : a.top_text[i]) {
                    a.top_ptrs[i].push_back(t.data());
                    a.top_lens[i].push_back((int32_t) t.size());
                }
                cg_remote_step & s = a.steps[i];
                s = cg_remote_step{};
                s.token = a.tokens[i].data();
                s.token_len = (int32_t) a.tokens[i].size();
                s.token_id = -1;
                s.n_top = (int32_t) a.top_text[i].size();
                s.top_text = a.top_ptrs[i].data();
                s.top_len = a.top_lens[i].data();
                s.top_logprobs = a.top_lps[i].data();
            }
            *steps = a.steps.data();
            *n_steps = (int32_t) n;
            return CG_OK;
        } catch (py::error_already_set & e) {
            return self->failed(e, error, capacity);
        }
    }

    static int32_t vet(void * user, const char * text, int32_t text_len, int32_t n_new) {
        auto * self = static_cast<PyProvider *>(user);
        py::gil_scoped_acquire gil;
        // A guard that cannot answer, or answers nonsense, withholds: the text it was asked about then
        // never leaves (an exception is reported as unraisable, not lost).
        try {
            const py::object at = self->provider.attr("vet")(py::bytes(text, (size_t) text_len), n_new);
            if (!py::isinstance<py::int_>(at)) return 0;
            const long long offset = at.cast<long long>();
            return offset == -1 ? -1 : (int32_t) std::clamp<long long>(offset, 0, text_len);
        } catch (py::error_already_set & e) {
            e.discard_as_unraisable("cogenesis remote provider vet");
            return 0;
        } catch (...) {
            return 0;
        }
    }

    static void release(void * user, int64_t handle) {
        auto * self = static_cast<PyProvider *>(user);
        py::gil_scoped_acquire gil;
        auto it = self->requests.find(handle);
        if (it != self->requests.end()) {
            try {
                self->provider.attr("release")(it->second);
            } catch (py::error_already_set & e) {
                e.discard_as_unraisable("cogenesis remote provider release");
            }
            self->requests.erase(it);
        }
        self->answers.erase(handle);
    }
};

struct CoGenerationHandle {
    std::shared_ptr<SessionHandle> session;
    std::shared_ptr<BridgeHandle>  bridge;
    std::shared_ptr<GateHandle>    gate;
    std::shared_ptr<ModelHandle>   remote_vocab;
    std::unique_ptr<PyProvider>    provider;
    cg_cogen *                     ptr = nullptr;
    bool                           leased = false;

    ~CoGenerationHandle() {
        py::gil_scoped_release nogil;  // freeing releases the request in flight (the provider takes the GIL)
        close_nogil();
    }
    void release_lease() {
        if (leased) session->busy.store(false);
        leased = false;
    }
    void close_nogil() {
        cg_cogen_free(ptr);
        ptr = nullptr;
        release_lease();
    }
    void close() {
        py::gil_scoped_release nogil;
        close_nogil();
    }
    bool finished() const { return !ptr || cg_cogen_finish_reason(ptr) != CG_FINISH_NONE; }
    void require_open() const {
        if (!ptr) throw py::value_error("this CoGeneration is closed");
    }
    // After an engine call: re-raise what the provider raised, then any engine error.
    void check_call(int32_t rc) {
        if (provider && provider->raised) {
            py::object raised = std::move(provider->raised);
            provider->raised = py::object();
            PyErr_SetObject((PyObject *) Py_TYPE(raised.ptr()), raised.ptr());
            throw py::error_already_set();
        }
        check(rc);
    }
};

std::shared_ptr<CoGenerationHandle> start(
    std::shared_ptr<SessionHandle> session, const TokenArray & prompt, std::optional<TokenArray> noctx_prompt,
    const std::string & public_prefix, py::object provider, std::shared_ptr<BridgeHandle> bridge,
    std::shared_ptr<ModelHandle> remote_vocab, int32_t max_tokens, int32_t lookahead, int32_t remote_top_k,
    bool overlap, bool batch_verify, std::optional<std::tuple<int32_t, int32_t, int32_t>> schedule,
    const std::vector<std::string> & stop, const std::string & rule, const std::string & fill, float weight,
    float alpha, float plausible, std::shared_ptr<GateHandle> gate, float temperature, int32_t top_k, float top_p,
    float min_p, float repeat_penalty, int32_t repeat_last_n, std::optional<int64_t> seed, int32_t no_repeat_ngram,
    bool no_repeat_text, bool attribution,
    float threshold, float min_logprob, float budget_bits, int32_t window) {
    auto h = std::make_shared<CoGenerationHandle>();
    h->session = std::move(session);
    h->bridge = std::move(bridge);
    h->gate = std::move(gate);
    h->remote_vocab = std::move(remote_vocab);
    cg_cogen_params p = cg_cogen_default_params();
    p.max_tokens = max_tokens;
    p.lookahead = lookahead;
    p.top_k = remote_top_k;
    p.overlap = overlap;
    p.batch_verify = batch_verify;
    if (schedule) std::tie(p.schedule_p, p.schedule_k, p.schedule_t) = *schedule;
    std::vector<const char *> stops;
    for (const auto & s : stop) stops.push_back(s.c_str());
    p.stop = stops.data();
    p.n_stop = (int32_t) stops.size();
    p.attribution.enabled = attribution;
    p.attribution.threshold = threshold;
    p.attribution.min_logprob = min_logprob;
    p.attribution.budget_bits = budget_bits;
    p.attribution.window = window;
    p.fusion.rule = parse_fusion_rule(rule);
    p.fusion.fill = parse_sparse_fill(fill);
    p.fusion.weight = weight;
    p.fusion.alpha = alpha;
    p.fusion.plausible = plausible;
    p.gate = h->gate ? h->gate->ptr : nullptr;
    p.sampling = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, no_repeat_ngram,
                                 no_repeat_text);
    p.bridge = h->bridge ? h->bridge->ptr : nullptr;
    p.remote_vocab = h->remote_vocab ? h->remote_vocab->ptr : nullptr;
    cg_remote_provider prov{};
    if (!provider.is_none()) {
        h->provider = std::make_unique<PyProvider>();
        h->provider->provider = std::move(provider);
        const bool vets = py::hasattr(h->provider->provider, "vet") && !h->provider->provider.attr("vet").is_none();
        prov = cg_remote_provider{&PyProvider::submit, &PyProvider::wait, &PyProvider::release, h->provider.get(),
                                  vets ? &PyProvider::vet : nullptr};
    }
    if (h->session->busy.exchange(true)) {
        throw std::runtime_error("this Session is in use (by another thread or an unfinished generation)");
    }
    h->leased = true;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_cogen_init(h->session->ptr, prompt.data(), (int32_t) prompt.size(),
                           noctx_prompt ? noctx_prompt->data() : nullptr, noctx_prompt ? (int32_t) noctx_prompt->size() : 0,
                           public_prefix.c_str(), &p, h->provider ? &prov : nullptr, &h->ptr);
    }
    if (rc != CG_OK) h->close();
    check(rc);
    return h;
}

py::tuple step(CoGenerationHandle & h) {
    h.require_open();
    cg_cogen_token t{};
    const char * text = nullptr;
    int32_t len = 0;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_cogen_next(h.ptr, &t, &text, &len);
    }
    std::string released(text ? text : "", (size_t) len);
    if (rc != CG_OK || h.finished()) h.release_lease();  // a finished generation no longer touches the session
    h.check_call(rc);
    return py::make_tuple(t, decode_utf8(released.data(), released.size()));
}

}  // namespace

void register_cogen(py::module_ & m) {
    py::class_<cg_cogen_token>(m, "CoToken", "One token of a collaborative generation and how it was chosen.")
        .def_readonly("token", &cg_cogen_token::token, "the token id (-1 when the step produced none)")
        .def_readonly("fused", &cg_cogen_token::fused, "remote scores took part (not local-only, not overruled)")
        .def_readonly("withheld", &cg_cogen_token::withheld, "requests carry a placeholder for it")
        .def_readonly("weight", &cg_cogen_token::weight, "the local side's weight (1 when local-only)")
        .def_readonly("local_logprob", &cg_cogen_token::local_logprob, "log p(token | context), local model")
        .def_readonly("remote_logprob", &cg_cogen_token::remote_logprob, "under the remote's top-k; NaN if unlisted")
        .def_readonly("context_nats", &cg_cogen_token::context_nats, "log-ratio with vs without the context; NaN if not scored");

    using S = cg_cogen_stats;
    py::class_<S> stats(m, "CoGenerationStats", "Statistics of one collaborative generation (ms and counts).");
    def_fields(stats, [](const S &, py::dict &) {},
        Field<S, double>{"prefill_ms", &S::prefill_ms, "the prompts (both sequences' first part) not already cached"},
        Field<S, double>{"first_token_ms", &S::first_token_ms, "init to the first token"},
        Field<S, double>{"decode_ms", &S::decode_ms, "evaluating generated tokens (and the no-context side with them)"},
        Field<S, double>{"sample_ms", &S::sample_ms, "fusion and the sampler chain"},
        Field<S, double>{"wait_ms", &S::wait_ms, "blocked in the provider's wait"},
        Field<S, double>{"attribution_ms", &S::attribution_ms, "scoring tokens without the context, deciding what may leave"},
        Field<S, double>{"total_ms", &S::total_ms, "init to the latest call"},
        Field<S, int32_t>{"n_prompt", &S::n_prompt, "prompt tokens"},
        Field<S, int32_t>{"n_reused", &S::n_reused, "prompt tokens found in the KV cache"},
        Field<S, int32_t>{"n_generated", &S::n_generated, "tokens generated (excluding a final end-of-generation token)"},
        Field<S, int32_t>{"n_requests", &S::n_requests, "requests submitted"},
        Field<S, int32_t>{"n_accepted", &S::n_accepted, "positions where the fused token was the remote's own"},
        Field<S, int32_t>{"n_asked", &S::n_asked, "positions asked of the remote, over all requests"},
        Field<S, int32_t>{"n_scored", &S::n_scored, "positions fused with the remote's scores (n_asked - n_scored were wasted)"},
        Field<S, int32_t>{"n_decodes", &S::n_decodes, "local evaluations after the prompts' (one batch each, both sequences)"},
        Field<S, int32_t>{"n_withheld", &S::n_withheld, "generated tokens withheld (as of the latest request)"},
        Field<S, float>{"context_bits", &S::context_bits, "context information in the tokens sent (latest request)"});

    const cg_cogen_params d = cg_cogen_default_params();
    m.def("cogen_default_params", [] {
        const cg_cogen_params p = cg_cogen_default_params();
        py::dict out;
        out["max_tokens"] = p.max_tokens;
        out["lookahead"] = p.lookahead;
        out["remote_top_k"] = p.top_k;
        out["overlap"] = p.overlap;
        out["batch_verify"] = p.batch_verify;
        out["attribution"] = p.attribution.enabled;
        out["threshold"] = as_decimal(p.attribution.threshold);
        out["min_logprob"] = as_decimal(p.attribution.min_logprob);
        out["budget_bits"] = as_decimal(p.attribution.budget_bits);
        out["window"] = p.attribution.window;
        out["fusion"] = fusion_params_dict(p.fusion);
        out["sampling"] = sampling_params_dict(p.sampling);
        return out;
    }, "cg_cogen_default_params(): the collaborative loop's defaults, with its fusion and sampling.");

    py::class_<CoGenerationHandle, std::shared_ptr<CoGenerationHandle>>(m, "CoGeneration",
        "The collaborative (logits-mode) loop in the engine. provider: an object with\n"
        "  submit(text, tokens, may_leave, n_steps, top_k, context_bits) -> request,\n"
        "  wait(request) -> steps (each with .token and .top, a dict of token -> logprob),\n"
        "  release(request);\n"
        "  and optionally vet(text: bytes, n_new) -> the byte offset of the first private span reaching\n"
        "  into the last n_new bytes, or -1 (the text guard's view of each new token; None: not asked).\n"
        "raising RemoteError turns the rest of the generation local-only; any other exception ends it.\n"
        "None generates local-only. The session is reserved until the generation finishes or close().")
        .def(py::init(&start), py::arg("session"), py::arg("prompt"), py::kw_only(), py::arg("noctx_prompt") = py::none(),
             py::arg("public_prefix") = "", py::arg("provider") = py::none(), py::arg("bridge") = nullptr,
             py::arg("remote_vocab") = nullptr, py::arg("max_tokens") = d.max_tokens, py::arg("lookahead") = d.lookahead,
             py::arg("remote_top_k") = d.top_k, py::arg("overlap") = d.overlap, py::arg("batch_verify") = d.batch_verify,
             py::arg("schedule") = py::none(), py::arg("stop") = std::vector<std::string>{},
             py::arg("rule") = fusion_rule_name(d.fusion.rule), py::arg("fill") = sparse_fill_name(d.fusion.fill),
             py::arg("weight") = d.fusion.weight, py::arg("alpha") = d.fusion.alpha, py::arg("plausible") = d.fusion.plausible,
             py::arg("gate") = nullptr, py::arg("temperature") = d.sampling.temperature, py::arg("top_k") = d.sampling.top_k,
             py::arg("top_p") = d.sampling.top_p, py::arg("min_p") = d.sampling.min_p,
             py::arg("repeat_penalty") = d.sampling.repeat_penalty, py::arg("repeat_last_n") = d.sampling.repeat_last_n,
             py::arg("seed") = py::none(), py::arg("no_repeat_ngram") = d.sampling.no_repeat_ngram,
             py::arg("no_repeat_text") = d.sampling.no_repeat_text, py::arg("attribution") = d.attribution.enabled, py::arg("threshold") = d.attribution.threshold,
             py::arg("min_logprob") = d.attribution.min_logprob, py::arg("budget_bits") = d.attribution.budget_bits,
             py::arg("window") = d.attribution.window)
        .def("step", &step,
             "Generate one token (GIL released; the provider's callbacks take it). Returns (CoToken, text):\n"
             "text is what became final (held back while it may start a stop string or a UTF-8 character).")
        .def("cancel", [](CoGenerationHandle & h) { cg_session_cancel(h.session->ptr); },
             "Stop at the next step; safe from any thread.")
        .def("close", &CoGenerationHandle::close, "Free the generation, release its request and session.")
        .def("__enter__", [](std::shared_ptr<CoGenerationHandle> h) { return h; })
        .def("__exit__", [](CoGenerationHandle & h, py::args) { h.close(); })
        .def_property_readonly("finished", &CoGenerationHandle::finished)
        .def_property_readonly("finish_reason", [](const CoGenerationHandle & h) -> py::object {
            if (!h.ptr) return py::none();
            const char * name = finish_name(cg_cogen_finish_reason(h.ptr));
            return name ? py::object(py::str(name)) : py::object(py::none());
        }, "None while running, then 'eos', 'stop', 'length', 'context_full' or 'cancelled'.")
        .def_property_readonly("text", [](const CoGenerationHandle & h) {
            h.require_open();
            int32_t len = 0;
            const char * t = cg_cogen_text(h.ptr, &len);
            return decode_utf8(t, (size_t) len);
        })
        .def_property_readonly("stats", [](const CoGenerationHandle & h) {
            h.require_open();
            return cg_cogen_get_stats(h.ptr);
        })
        .def_property_readonly("fallback_reason", [](const CoGenerationHandle & h) -> py::object {
            h.require_open();
            const char * r = cg_cogen_fallback_reason(h.ptr);
            return r[0] ? py::object(py::str(r)) : py::object(py::none());
        }, "Why generation went on local-only after a provider failure, or None.");
}

}  // namespace cgpy
