// Owning wrappers for engine handles, shared by the binding files.
// Python objects hold shared_ptrs so a model outlives its sessions and a
// session outlives its generations, whatever order Python frees them in.
#pragma once

#include "cogenesis.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace cgpy {

namespace py = pybind11;

// A non-OK engine status with its message; errors.cpp maps it to Python.
struct StatusError : std::runtime_error {
    int32_t status;
    StatusError(int32_t s, const std::string & message) : std::runtime_error(message), status(s) {}
};

inline void check(int32_t status) {
    if (status != CG_OK) throw StatusError(status, cg_last_error());
}

struct ModelHandle {
    cg_model * ptr = nullptr;
    ~ModelHandle() { cg_model_free(ptr); }
};

struct AdapterHandle {
    std::shared_ptr<ModelHandle> model;
    cg_adapter *                 ptr = nullptr;
    std::string                  path;
    ~AdapterHandle() { cg_adapter_free(ptr); }
};

struct SessionHandle {
    std::shared_ptr<ModelHandle>   model;
    std::shared_ptr<AdapterHandle> adapter;  // the attached one, kept loaded while attached
    cg_session *                   ptr = nullptr;
    std::atomic<bool>            busy{false};
    ~SessionHandle() { cg_session_free(ptr); }
};

struct SamplerHandle {
    cg_sampler *                 ptr = nullptr;
    std::shared_ptr<ModelHandle> model;  // kept alive for links that read its token texts
    ~SamplerHandle() { cg_sampler_free(ptr); }
};

// Marks a session in use for a scope: a session serves one thread at a time.
class SessionLease {
public:
    explicit SessionLease(SessionHandle & s) : s_(s) {
        if (s_.busy.exchange(true)) {
            throw std::runtime_error("this Session is in use (by another thread or an unfinished Generation); "
                                     "create one Session per thread");
        }
    }
    ~SessionLease() { s_.busy.store(false); }
    SessionLease(const SessionLease &) = delete;
    SessionLease & operator=(const SessionLease &) = delete;

private:
    SessionHandle & s_;
};

// Tokens in from Python: a C-contiguous int32 view (zero-copy for such numpy
// arrays; lists are converted). Read only during the call that receives it.
using TokenArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Hand a vector to numpy without copying: the array owns it from then on.
template <typename T>
py::array_t<T> to_numpy(std::vector<T> && v) {
    auto * owned = new std::vector<T>(std::move(v));
    py::capsule free_when_done(owned, [](void * p) { delete static_cast<std::vector<T> *>(p); });
    return py::array_t<T>({(py::ssize_t) owned->size()}, {(py::ssize_t) sizeof(T)}, owned->data(), free_when_done);
}

// One read-only field of a bound result struct: its name, member and docstring.
template <typename S, typename T>
struct Field {
    const char * name;
    T S::*       member;
    const char * doc = "";
};

// Binds each field read-only, and to_dict() with all of them (plus what `extra` adds): the
// field list is written once per struct, so the attributes and the dict cannot drift apart.
template <typename S, typename Extra, typename... T>
void def_fields(py::class_<S> & cls, Extra extra, Field<S, T>... fields) {
    (cls.def_readonly(fields.name, fields.member, fields.doc), ...);
    cls.def("to_dict", [=](const S & s) {
        py::dict d;
        ((d[fields.name] = s.*(fields.member)), ...);
        extra(s, d);
        return d;
    }, "The fields as a dict (for JSON).");
    cls.def("__repr__", [](const py::object & self) {
        return py::str("{}({})").format(py::type::of(self).attr("__name__"), self.attr("to_dict")());
    });
}

// A float parameter as Python reads it: the shortest decimal that is the same float (0.95f -> 0.95,
// not 0.949999988), so defaults compare and print as they are written in the engine.
inline double as_decimal(float x) {
    char text[32];
    for (int digits = 1; digits <= 9; ++digits) {  // 9 significant digits always round-trip a float
        std::snprintf(text, sizeof text, "%.*g", digits, x);
        if (std::strtof(text, nullptr) == x) break;
    }
    return std::strtod(text, nullptr);
}

// The engine's default parameters as dicts (the single source of defaults for the Python layer).
py::dict sampling_params_dict(const cg_sampling_params & p);
py::dict fusion_params_dict(const cg_fusion_params & p);

// Validated sampling parameters (seed None = random), shared by Sampler and FusionSampler.
cg_sampling_params sampling_params(float temperature, int32_t top_k, float top_p, float min_p, float repeat_penalty,
                                   int32_t repeat_last_n, std::optional<int64_t> seed, int32_t no_repeat_ngram,
                                   bool no_repeat_text);

inline std::string decode_utf8(const char * data, size_t n) {
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(data, (py::ssize_t) n, "replace"));
}

void register_errors(py::module_ & m);
void register_model(py::module_ & m);
void register_session(py::module_ & m);
void register_adapter(py::module_ & m);
void register_sampler(py::module_ & m);
void register_generation(py::module_ & m);
void register_fusion(py::module_ & m);
void register_gate(py::module_ & m);
void register_fusion_sampler(py::module_ & m);
void register_vocab_bridge(py::module_ & m);

struct GateHandle {
    cg_gate * ptr = nullptr;
    ~GateHandle() { cg_gate_free(ptr); }
};

// Float scores in from Python: zero-copy for C-contiguous float32 numpy arrays.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

struct BridgeHandle {
    std::shared_ptr<ModelHandle> model;
    cg_vocab_bridge *            ptr = nullptr;
    ~BridgeHandle() { cg_vocab_bridge_free(ptr); }
};

// A remote token's bytes: str (UTF-8), bytes, or OpenAI's `bytes` list of ints.
inline std::string as_bytes(const py::handle & token) {
    if (py::isinstance<py::bytes>(token)) return token.cast<std::string>();
    if (py::isinstance<py::str>(token)) return token.cast<std::string>();
    if (py::isinstance<py::list>(token)) {
        std::string s;
        for (auto b : token.cast<py::list>()) s.push_back((char) b.cast<int>());
        return s;
    }
    throw py::type_error("a token must be str, bytes or a list of byte values");
}

void register_cogen(py::module_ & m);

// "eos", "stop", "length", "context_full", "cancelled", or nullptr while running.
const char * finish_name(cg_finish_reason r);

cg_fusion_rule parse_fusion_rule(const std::string & name);
cg_sparse_fill parse_sparse_fill(const std::string & name);
const char * fusion_rule_name(int32_t rule);
const char * sparse_fill_name(int32_t fill);

}  // namespace cgpy
