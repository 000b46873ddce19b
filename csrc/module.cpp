// The _native extension module: one register_* per bound class.
#include "handles.h"

PYBIND11_MODULE(_native, m) {
    m.doc() = "Native core of cogenesis-device (bindings over engine/include/cogenesis.h).";
    m.attr("__engine_version__") = cg_version();
    m.attr("PLACEHOLDER") = CG_PLACEHOLDER;
    cgpy::register_errors(m);
    cgpy::register_model(m);
    cgpy::register_session(m);
    cgpy::register_adapter(m);
    cgpy::register_sampler(m);
    cgpy::register_generation(m);
    cgpy::register_gate(m);
    cgpy::register_fusion(m);
    cgpy::register_fusion_sampler(m);
    cgpy::register_vocab_bridge(m);
    cgpy::register_cogen(m);
}
