// Binding of the standard sampler chain built from sampling parameters.
#include "handles.h"

#include <pybind11/stl.h>

#include <optional>

namespace cgpy {

cg_sampling_params sampling_params(float temperature, int32_t top_k, float top_p, float min_p, float repeat_penalty,
                                   int32_t repeat_last_n, std::optional<int64_t> seed, int32_t no_repeat_ngram,
                                   bool no_repeat_text) {
    cg_sampling_params p = cg_sampling_default_params();
    p.no_repeat_ngram = no_repeat_ngram;
    p.no_repeat_text = no_repeat_text;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repeat_penalty = repeat_penalty;
    p.repeat_last_n = repeat_last_n;
    if (seed) {
        if (*seed < 0 || *seed >= (int64_t) CG_SEED_RANDOM) {
            throw StatusError(CG_ERR_INVALID_ARGUMENT, "seed must be in [0, 2**32 - 2], got " + std::to_string(*seed));
        }
        p.seed = (uint32_t) *seed;
    }
    return p;
}

py::dict sampling_params_dict(const cg_sampling_params & p) {
    py::dict d;
    d["temperature"] = as_decimal(p.temperature);
    d["top_k"] = p.top_k;
    d["top_p"] = as_decimal(p.top_p);
    d["min_p"] = as_decimal(p.min_p);
    d["repeat_penalty"] = as_decimal(p.repeat_penalty);
    d["repeat_last_n"] = p.repeat_last_n;
    d["no_repeat_ngram"] = p.no_repeat_ngram;
    d["no_repeat_text"] = p.no_repeat_text;
    d["seed"] = p.seed == CG_SEED_RANDOM ? py::object(py::none()) : py::object(py::int_(p.seed));
    return d;
}

namespace {

std::shared_ptr<SamplerHandle> create(std::shared_ptr<ModelHandle> model, float temperature, int32_t top_k, float top_p,
                                      float min_p, float repeat_penalty, int32_t repeat_last_n,
                                      std::optional<int64_t> seed, int32_t no_repeat_ngram, bool no_repeat_text) {
    const cg_sampling_params p = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                                                 no_repeat_ngram, no_repeat_text);
    auto h = std::make_shared<SamplerHandle>();
    h->model = std::move(model);
    check(cg_sampler_init_from_params(h->model ? h->model->ptr : nullptr, &p, &h->ptr));
    return h;
}

}  // namespace

void register_sampler(py::module_ & m) {
    const cg_sampling_params d = cg_sampling_default_params();
    m.def("sampling_default_params", [] { return sampling_params_dict(cg_sampling_default_params()); },
          "cg_sampling_default_params(): the sampler chain's defaults (seed None: random).");
    py::class_<SamplerHandle, std::shared_ptr<SamplerHandle>>(m, "Sampler",
        "The engine's sampler chain: penalties -> no-repeat n-gram -> top_k -> top_p -> min_p -> temperature ->\n"
        "dist (or greedy when temperature <= 0). Parameters are validated here; defaults are the engine's.")
        .def(py::init(&create), py::arg("model") = nullptr, py::kw_only(), py::arg("temperature") = d.temperature,
             py::arg("top_k") = d.top_k,
             py::arg("top_p") = d.top_p, py::arg("min_p") = d.min_p, py::arg("repeat_penalty") = d.repeat_penalty,
             py::arg("repeat_last_n") = d.repeat_last_n, py::arg("seed") = py::none(),
             py::arg("no_repeat_ngram") = d.no_repeat_ngram, py::arg("no_repeat_text") = d.no_repeat_text,
             "seed=None draws a random seed at every reset; a fixed seed makes each generation reproducible.\n"
             "no_repeat_ngram=n (>= 1) never completes an n-gram the generated text already holds (the\n"
             "prompt's n-grams may be repeated); 0 disables. no_repeat_text=True compares the n-grams' tokens\n"
             "by their text, lower-cased and without whitespace, leaving out whitespace-only tokens (it needs\n"
             "the model: its vocabulary).")
        .def("sample", [](SamplerHandle & h, const FloatArray & logits) {
                const float * d = logits.data();
                const int32_t n = (int32_t) logits.size();
                cg_token t;
                {
                    py::gil_scoped_release nogil;
                    t = cg_sampler_sample_logits(h.ptr, d, n);
                }
                if (t < 0) throw StatusError(CG_ERR_INVALID_ARGUMENT, cg_last_error());
                return t;
            }, py::arg("logits"),
             "Run the chain on one dense row of scores (read in place if float32 C-contiguous) and return the\n"
             "token it chose (accepted into the chain's state, e.g. penalties).")
        .def("reset", [](SamplerHandle & h) { cg_sampler_reset(h.ptr); }, "Reset the chain (re-seeds dist).");
}

}  // namespace cgpy
