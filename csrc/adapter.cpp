// Binding of cg_adapter: a LoRA adapter loaded for a Model (attached with Session.set_adapter).
#include "handles.h"

namespace cgpy {

namespace {

std::shared_ptr<AdapterHandle> load(std::shared_ptr<ModelHandle> model, const std::string & path) {
    auto h = std::make_shared<AdapterHandle>();
    h->model = std::move(model);
    h->path = path;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_adapter_load(h->model->ptr, path.c_str(), &h->ptr);
    }
    check(rc);
    return h;
}

}  // namespace

void register_adapter(py::module_ & m) {
    py::class_<AdapterHandle, std::shared_ptr<AdapterHandle>>(m, "Adapter",
        "A LoRA adapter in GGUF, loaded once for a Model and attached to its sessions (Session.set_adapter).")
        .def(py::init(&load), py::arg("model"), py::arg("path"),
             "Load the adapter at path for model. Raises MissingFileError, or ModelLoadError for a file that is\n"
             "not a GGUF LoRA adapter of this model's architecture and shapes.")
        .def_property_readonly("path", [](const AdapterHandle & a) { return a.path; });
}

}  // namespace cgpy
