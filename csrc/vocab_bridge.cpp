// Binding of cg_vocab_bridge: remote token strings -> local token ids.
#include "handles.h"

#include <pybind11/stl.h>

namespace cgpy {

namespace {

std::shared_ptr<BridgeHandle> create(std::shared_ptr<ModelHandle> model) {
    auto h = std::make_shared<BridgeHandle>();
    h->model = std::move(model);
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_vocab_bridge_init(h->model->ptr, &h->ptr);
    }
    check(rc);
    return h;
}

py::tuple map(BridgeHandle & h, const py::sequence & tokens, const FloatArray & logprobs) {
    const size_t n = tokens.size();
    if ((size_t) logprobs.size() != n) throw py::value_error("tokens and logprobs differ in length");
    std::vector<std::string> owned;
    owned.reserve(n);
    for (const auto & t : tokens) owned.push_back(as_bytes(t));
    std::vector<const char *> ptrs;
    std::vector<int32_t> lens;
    for (const auto & s : owned) {
        ptrs.push_back(s.data());
        lens.push_back((int32_t) s.size());
    }
    std::vector<int32_t> ids(n);
    std::vector<float> lps(n);
    int32_t k;
    {
        py::gil_scoped_release nogil;
        k = cg_vocab_bridge_map(h.ptr, ptrs.data(), lens.data(), logprobs.data(), (int32_t) n, ids.data(), lps.data());
    }
    if (k < 0) check(CG_ERR_INVALID_ARGUMENT);
    ids.resize(k);
    lps.resize(k);
    return py::make_tuple(to_numpy(std::move(ids)), to_numpy(std::move(lps)));
}

}  // namespace

void register_vocab_bridge(py::module_ & m) {
    py::class_<BridgeHandle, std::shared_ptr<BridgeHandle>>(m, "VocabBridge",
        "Maps another tokenizer's tokens onto this model's vocabulary (longest-prefix match over the local\n"
        "tokens' bytes, cached).")
        .def(py::init(&create), py::arg("model"))
        .def("lookup", [](BridgeHandle & h, const py::handle & token) {
                const std::string s = as_bytes(token);
                return cg_vocab_bridge_lookup(h.ptr, s.data(), (int32_t) s.size());
            }, py::arg("token"), "Local id for one remote token (str, bytes or list of byte values), -1 if none.")
        .def("map", &map, py::arg("tokens"), py::arg("logprobs"),
             "Map a remote top-k to (local ids, logprobs): empty tokens, NaN and the -9999 sentinel are\n"
             "dropped; tokens landing on one local id have their probabilities added.");
}

}  // namespace cgpy
