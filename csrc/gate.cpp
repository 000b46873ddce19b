// Binding of cg_gate: the learned, vocabulary-independent fusion gate.
#include "handles.h"

namespace cgpy {

namespace {

std::shared_ptr<GateHandle> load(const std::string & path) {
    auto g = std::make_shared<GateHandle>();
    check(cg_gate_load(path.c_str(), &g->ptr));
    return g;
}

std::shared_ptr<GateHandle> from_arrays(const FloatArray & mean, const FloatArray & std_, const FloatArray & w1,
                                        const FloatArray & b1, const FloatArray & w2, float b2) {
    const py::ssize_t nf = CG_GATE_N_FEATURES;
    const py::ssize_t nh = b1.size();
    if (mean.size() != nf || std_.size() != nf || w1.size() != nh * nf || w2.size() != nh) {
        throw py::value_error("gate arrays must have shapes mean/std (8,), w1 (n_hidden, 8), b1 (n_hidden,), w2 (n_hidden,)");
    }
    auto g = std::make_shared<GateHandle>();
    check(cg_gate_init((int32_t) nh, mean.data(), std_.data(), w1.data(), b1.data(), w2.data(), b2, &g->ptr));
    return g;
}

}  // namespace

void register_gate(py::module_ & m) {
    py::class_<GateHandle, std::shared_ptr<GateHandle>>(m, "Gate",
        "Learned fusion gate: w = sigmoid(w2 . tanh(W1 z + b1) + b2), z = (features - mean) / std, over the 8\n"
        "vocabulary-independent features of a step (see fuse(...)[1]['features']).")
        .def(py::init(&load), py::arg("path"), "Load a gate weights file (text format, see cogenesis.h).")
        .def_static("from_arrays", &from_arrays, py::arg("mean"), py::arg("std"), py::arg("w1"), py::arg("b1"),
                    py::arg("w2"), py::arg("b2"))
        .attr("N_FEATURES") = CG_GATE_N_FEATURES;
}

}  // namespace cgpy
