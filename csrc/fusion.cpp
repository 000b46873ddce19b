// Binding of cg_fuse (numpy in, numpy out) and the P/K/T schedule.
#include "handles.h"

#include <pybind11/stl.h>

namespace cgpy {

cg_fusion_rule parse_fusion_rule(const std::string & name) {
    if (name == "weighted") return CG_FUSION_WEIGHTED;
    if (name == "max") return CG_FUSION_MAX;
    if (name == "context_delta") return CG_FUSION_CONTEXT_DELTA;
    if (name == "gate") return CG_FUSION_GATE;
    throw StatusError(CG_ERR_INVALID_ARGUMENT, "unknown fusion rule '" + name + "' (weighted, max, context_delta, gate)");
}

cg_sparse_fill parse_sparse_fill(const std::string & name) {
    if (name == "mask") return CG_FILL_MASK;
    if (name == "tail") return CG_FILL_TAIL;
    if (name == "local") return CG_FILL_LOCAL;
    throw StatusError(CG_ERR_INVALID_ARGUMENT, "unknown sparse fill '" + name + "' (mask, tail, local)");
}

const char * fusion_rule_name(int32_t rule) {
    switch (rule) {
        case CG_FUSION_WEIGHTED: return "weighted";
        case CG_FUSION_MAX: return "max";
        case CG_FUSION_CONTEXT_DELTA: return "context_delta";
        case CG_FUSION_GATE: return "gate";
    }
    return "?";
}

const char * sparse_fill_name(int32_t fill) {
    switch (fill) {
        case CG_FILL_MASK: return "mask";
        case CG_FILL_TAIL: return "tail";
        case CG_FILL_LOCAL: return "local";
    }
    return "?";
}

py::dict fusion_params_dict(const cg_fusion_params & p) {
    py::dict d;
    d["rule"] = fusion_rule_name(p.rule);
    d["fill"] = sparse_fill_name(p.fill);
    d["weight"] = as_decimal(p.weight);
    d["alpha"] = as_decimal(p.alpha);
    d["plausible"] = as_decimal(p.plausible);
    return d;
}

namespace {

// The gate's eight features by name, in the gate's order.
py::dict fusion_features_dict(const cg_fusion_features & f) {
    static const std::pair<const char *, float cg_fusion_features::*> kFeatures[] = {
        {"local_entropy", &cg_fusion_features::local_entropy},
        {"remote_entropy", &cg_fusion_features::remote_entropy},
        {"local_top_p", &cg_fusion_features::local_top_p},
        {"remote_top_p", &cg_fusion_features::remote_top_p},
        {"overlap", &cg_fusion_features::overlap},
        {"divergence", &cg_fusion_features::divergence},
        {"local_p_of_remote_top", &cg_fusion_features::local_p_of_remote_top},
        {"remote_p_of_local_top", &cg_fusion_features::remote_p_of_local_top},
    };
    py::dict feats;
    for (const auto & [name, member] : kFeatures) feats[name] = f.*member;
    return feats;
}

py::tuple fuse(const FloatArray & local, const TokenArray & remote_ids, const FloatArray & remote_logprobs,
               const std::string & rule, const std::string & fill, float weight, float alpha, float plausible,
               std::optional<FloatArray> local_noctx, std::shared_ptr<GateHandle> gate, std::optional<py::array> out) {
    const py::ssize_t n = local.size();
    if (local.ndim() != 1) throw py::value_error("local must be a 1-D array of n_vocab scores");
    if (remote_ids.size() != remote_logprobs.size()) throw py::value_error("remote_ids and remote_logprobs differ in length");
    if (local_noctx && local_noctx->size() != n) throw py::value_error("local_noctx must have the same length as local");
    py::array_t<float> result;
    if (out) {
        // Written in place: the caller's float32 C-contiguous array of n floats.
        auto arr = py::array_t<float, py::array::c_style>::ensure(*out);
        if (!arr || arr.size() != n || !arr.writeable() || arr.ptr() != out->ptr()) {
            throw py::value_error("out must be a writable C-contiguous float32 array of len(local)");
        }
        result = arr;
    } else {
        result = py::array_t<float>(n);
    }
    cg_fusion_params p = cg_fusion_default_params();
    p.rule = parse_fusion_rule(rule);
    p.fill = parse_sparse_fill(fill);
    p.weight = weight;
    p.alpha = alpha;
    p.plausible = plausible;
    const cg_sparse_dist dist{remote_ids.data(), remote_logprobs.data(), (int32_t) remote_ids.size()};
    const float * noctx = local_noctx ? local_noctx->data() : nullptr;
    float * dst = result.mutable_data();
    cg_fusion_info info{};
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_fuse(&p, gate ? gate->ptr : nullptr, local.data(), noctx, (int32_t) n, &dist, dst, &info);
    }
    check(rc);
    return py::make_tuple(result, info);
}

}  // namespace

void register_fusion(py::module_ & m) {
    const cg_fusion_params d = cg_fusion_default_params();
    m.def("fusion_default_params", [] { return fusion_params_dict(cg_fusion_default_params()); },
          "cg_fusion_default_params(): the fusion rule's defaults.");
    py::class_<cg_fusion_info> info(m, "FusionInfo", "How one fused step was chosen.");
    def_fields(info, [](const cg_fusion_info & i, py::dict & out) { out["features"] = fusion_features_dict(i.features); },
        Field<cg_fusion_info, float>{"weight", &cg_fusion_info::weight, "the local side's weight"},
        Field<cg_fusion_info, int32_t>{"local_top", &cg_fusion_info::local_top, "the local model's top token"},
        Field<cg_fusion_info, int32_t>{"remote_top", &cg_fusion_info::remote_top, "the remote's top token (-1: none)"},
        Field<cg_fusion_info, int32_t>{"fused_top", &cg_fusion_info::fused_top, "the fused distribution's top token"},
        Field<cg_fusion_info, int32_t>{"chosen", &cg_fusion_info::chosen, "the token sampled (-1 from cg_fuse)"},
        Field<cg_fusion_info, bool>{"consulted", &cg_fusion_info::consulted, "remote scores took part"},
        Field<cg_fusion_info, bool>{"overruled", &cg_fusion_info::overruled,
                                    "no listed remote token was plausible: the step is local-only"});
    info.def_property_readonly("features", [](const cg_fusion_info & i) { return fusion_features_dict(i.features); },
                               "The gate's eight features by name (fusion.FEATURE_NAMES order).");
    m.def("fuse", &fuse, py::arg("local"), py::arg("remote_ids"), py::arg("remote_logprobs"), py::kw_only(),
          py::arg("rule") = fusion_rule_name(d.rule), py::arg("fill") = sparse_fill_name(d.fill), py::arg("weight") = d.weight,
          py::arg("alpha") = d.alpha, py::arg("plausible") = d.plausible, py::arg("local_noctx") = py::none(),
          py::arg("gate") = nullptr, py::arg("out") = py::none(),
          "Fuse dense local logits with a sparse remote top-k (ids, logprobs) into log-probabilities.\n"
          "Returns (fused, info). float32 C-contiguous inputs are read in place and `out`, if given, is\n"
          "written in place; all are used only during the call (GIL released).\n"
          "rule: weighted | max | context_delta | gate; fill: mask (-inf) | tail (remaining mass shared equally) |\n"
          "local (remaining mass shared in proportion to the local probabilities).\n"
          "plausible: keep only tokens whose local probability is at least plausible * the local top-1's\n"
          "(0 = off, the paper's fusion); a step where no listed remote token is left is local-only.");
    m.def("schedule_consult", &cg_schedule_consult, py::arg("p"), py::arg("k"), py::arg("t"), py::arg("step"),
          "The paper's P/K/T schedule: consult on steps < p, then skip k and consult t in each cycle.");
}

}  // namespace cgpy
