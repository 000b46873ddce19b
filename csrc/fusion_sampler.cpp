// Binding of a sampler chain whose first link fuses local and remote scores.
#include "handles.h"

#include <pybind11/stl.h>

namespace cgpy {

namespace {

struct FusionSamplerHandle : SamplerHandle {
    cg_sampler *                link = nullptr;  // owned by the chain in ptr
    std::shared_ptr<GateHandle> gate;            // kept alive for the link
    int32_t                     n_vocab = 0;
};

std::shared_ptr<FusionSamplerHandle> create(std::shared_ptr<ModelHandle> model, const std::string & rule,
                                            const std::string & fill, float weight, float alpha, float plausible,
                                            std::shared_ptr<GateHandle> gate, float temperature, int32_t top_k,
                                            float top_p, float min_p, float repeat_penalty, int32_t repeat_last_n,
                                            std::optional<int64_t> seed, int32_t no_repeat_ngram, bool no_repeat_text) {
    cg_fusion_params p = cg_fusion_default_params();
    p.rule = parse_fusion_rule(rule);
    p.fill = parse_sparse_fill(fill);
    p.weight = weight;
    p.alpha = alpha;
    p.plausible = plausible;
    const cg_sampling_params sp = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                                                  no_repeat_ngram, no_repeat_text);
    auto h = std::make_shared<FusionSamplerHandle>();
    h->model = model;
    h->gate = std::move(gate);
    h->n_vocab = cg_model_n_vocab(model->ptr);
    check(cg_sampler_init_fusion_chain(model->ptr, &p, h->gate ? h->gate->ptr : nullptr, &sp, &h->ptr, &h->link));
    return h;
}

void set_remote(FusionSamplerHandle & h, const TokenArray & ids, const FloatArray & logprobs,
                std::optional<FloatArray> local_noctx) {
    if (ids.size() != logprobs.size()) throw py::value_error("ids and logprobs differ in length");
    if (local_noctx && local_noctx->size() != h.n_vocab) throw py::value_error("local_noctx must hold n_vocab scores");
    const cg_sparse_dist dist{ids.data(), logprobs.data(), (int32_t) ids.size()};
    check(cg_fusion_sampler_set_remote(h.link, &dist, local_noctx ? local_noctx->data() : nullptr));
}

}  // namespace

void register_fusion_sampler(py::module_ & m) {
    const cg_fusion_params f = cg_fusion_default_params();
    const cg_sampling_params d = cg_sampling_default_params();
    py::class_<FusionSamplerHandle, SamplerHandle, std::shared_ptr<FusionSamplerHandle>>(m, "FusionSampler",
        "A Sampler whose chain is the collaborative one (cg_sampler_init_fusion_chain): no-repeat n-gram on the\n"
        "local scores, then the fusion link (set_remote() before a step fuses that step; a step without it is\n"
        "local-only), then the usual chain (penalties, top-k, top-p, min-p, temperature, dist/greedy).")
        .def(py::init(&create), py::arg("model"), py::kw_only(), py::arg("rule") = fusion_rule_name(f.rule),
             py::arg("fill") = sparse_fill_name(f.fill), py::arg("weight") = f.weight, py::arg("alpha") = f.alpha,
             py::arg("plausible") = f.plausible, py::arg("gate") = nullptr, py::arg("temperature") = d.temperature,
             py::arg("top_k") = d.top_k, py::arg("top_p") = d.top_p, py::arg("min_p") = d.min_p,
             py::arg("repeat_penalty") = d.repeat_penalty, py::arg("repeat_last_n") = d.repeat_last_n,
             py::arg("seed") = py::none(), py::arg("no_repeat_ngram") = d.no_repeat_ngram,
             py::arg("no_repeat_text") = d.no_repeat_text)
        .def("set_remote", &set_remote, py::arg("ids"), py::arg("logprobs"), py::arg("local_noctx") = py::none(),
             "The remote top-k for the next step (copied), and the local no-context scores for context_delta.")
        .def("last_info", [](const FusionSamplerHandle & h) {
                cg_fusion_info info{};
                check(cg_fusion_sampler_last_info(h.link, &info));
                return info;
            }, "Attribution of the last step: weight, local/remote/fused top tokens, chosen token, features.");
}

}  // namespace cgpy
