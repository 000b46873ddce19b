// Binding of cg_model: loading, tokenizer, chat template.
#include "handles.h"

#include <pybind11/stl.h>

namespace cgpy {

namespace {

using ModelPtr = std::shared_ptr<ModelHandle>;

// Call a "returns bytes needed" engine function, growing the buffer once.
template <typename Fill>
std::string fill_string(Fill fill) {
    std::string out(256, '\0');
    int32_t n = fill(&out[0], (int32_t) out.size());
    if (n < 0) check(CG_ERR_INVALID_ARGUMENT);
    if (n > (int32_t) out.size()) {
        out.resize(n);
        n = fill(&out[0], n);
    }
    out.resize(n);
    return out;
}

ModelPtr load(const std::string & path, bool use_mmap, bool vocab_only) {
    auto h = std::make_shared<ModelHandle>();
    cg_model_params p = cg_model_default_params();
    p.use_mmap = use_mmap;
    p.vocab_only = vocab_only;
    int32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = cg_model_load(path.c_str(), p, &h->ptr);
    }
    check(rc);
    return h;
}

py::array_t<int32_t> tokenize(const ModelHandle & m, const std::string & text, bool add_special, bool parse_special) {
    std::vector<int32_t> toks(text.size() + 8);
    int32_t n = cg_tokenize(m.ptr, text.data(), (int32_t) text.size(), add_special, parse_special, toks.data(), (int32_t) toks.size());
    if (n < 0) check(CG_ERR_INVALID_ARGUMENT);
    if (n > (int32_t) toks.size()) {
        toks.resize(n);
        n = cg_tokenize(m.ptr, text.data(), (int32_t) text.size(), add_special, parse_special, toks.data(), n);
    }
    toks.resize(n);
    return to_numpy(std::move(toks));
}

}  // namespace

void register_model(py::module_ & m) {
    py::class_<ModelHandle, ModelPtr>(m, "Model", "A GGUF model loaded by the engine (shared by all its sessions).")
        .def(py::init(&load), py::arg("path"), py::kw_only(), py::arg("use_mmap") = true, py::arg("vocab_only") = false,
             "Load a GGUF file. Raises MissingFileError, or ModelLoadError for a file that is not a valid GGUF model.")
        .def_property_readonly("n_vocab", [](const ModelHandle & h) { return cg_model_n_vocab(h.ptr); })
        .def_property_readonly("n_ctx_train", [](const ModelHandle & h) { return cg_model_n_ctx_train(h.ptr); })
        .def_property_readonly("bos", [](const ModelHandle & h) { return cg_model_token_bos(h.ptr); })
        .def_property_readonly("eos", [](const ModelHandle & h) { return cg_model_token_eos(h.ptr); })
        .def_property_readonly("load_ms", [](const ModelHandle & h) { return cg_model_load_ms(h.ptr); },
                               "Wall time of the load, in milliseconds.")
        .def_property_readonly("size", [](const ModelHandle & h) { return cg_model_size(h.ptr); },
                               "Size of the weights in bytes.")
        .def_property_readonly("has_chat_template", [](const ModelHandle & h) { return cg_model_has_chat_template(h.ptr); })
        .def_property_readonly("desc", [](const ModelHandle & h) {
            return fill_string([&](char * b, int32_t c) { return cg_model_desc(h.ptr, b, c); });
        })
        .def("is_eog", [](const ModelHandle & h, int32_t t) { return cg_model_token_is_eog(h.ptr, t); }, py::arg("token"),
             "True if the token ends generation (EOS, EOT...).")
        .def("tokenize", &tokenize, py::arg("text"), py::kw_only(), py::arg("add_special") = true,
             py::arg("parse_special") = false,
             "Text -> int32 numpy array of token ids (the array owns its memory).")
        .def("token_to_piece", [](const ModelHandle & h, int32_t token, bool special) {
                std::string s = fill_string([&](char * b, int32_t c) { return cg_token_to_piece(h.ptr, token, special, b, c); });
                return py::bytes(s);
            }, py::arg("token"), py::kw_only(), py::arg("special") = false,
             "The raw bytes of one token (may be part of a UTF-8 character).")
        .def("detokenize", [](const ModelHandle & h, const TokenArray & tokens, bool special) {
                const int32_t * d = tokens.data();
                const int32_t n = (int32_t) tokens.size();
                std::string s = fill_string([&](char * b, int32_t c) { return cg_detokenize(h.ptr, d, n, special, b, c); });
                return decode_utf8(s.data(), s.size());
            }, py::arg("tokens"), py::kw_only(), py::arg("special") = false,
             "Token ids -> text (invalid UTF-8 is replaced).")
        .def("apply_chat_template", [](const ModelHandle & h, const std::vector<std::pair<std::string, std::string>> & msgs,
                                       bool add_generation_prompt) {
                std::vector<const char *> roles, contents;
                for (const auto & rc : msgs) {
                    roles.push_back(rc.first.c_str());
                    contents.push_back(rc.second.c_str());
                }
                std::string s = fill_string([&](char * b, int32_t c) {
                    const int32_t n = cg_chat_apply_template(h.ptr, roles.data(), contents.data(), (int32_t) msgs.size(),
                                                             add_generation_prompt, b, c);
                    if (n < 0) throw StatusError(CG_ERR_NO_TEMPLATE, cg_last_error());
                    return n;
                });
                return decode_utf8(s.data(), s.size());
            }, py::arg("messages"), py::kw_only(), py::arg("add_generation_prompt") = true,
             "Format [(role, content), ...] with the GGUF's chat template. Raises NoChatTemplateError if it has none.");
}

}  // namespace cgpy
