// Engine status codes -> the exception classes of cogenesis_device.errors.
#include "handles.h"

namespace cgpy {

namespace {

const char * exception_name(int32_t status) {
    switch (status) {
        case CG_ERR_INVALID_ARGUMENT: return "InvalidParameterError";
        case CG_ERR_FILE_NOT_FOUND:   return "MissingFileError";
        case CG_ERR_MODEL_LOAD:       return "ModelLoadError";
        case CG_ERR_CONTEXT_OVERFLOW: return "ContextOverflowError";
        case CG_ERR_STATE:            return "StateError";
        case CG_ERR_NO_TEMPLATE:      return "NoChatTemplateError";
        case CG_ERR_IO:               return "CogenesisIOError";
        case CG_ERR_CANCELLED:        return "CancelledError";
        case CG_ERR_REFUSED:          return "PrivacyBlockedError";
        default:                      return "DecodeError";
    }
}

}  // namespace

void register_errors(py::module_ &) {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const StatusError & e) {
            py::object cls = py::module_::import("cogenesis_device.errors").attr(exception_name(e.status));
            PyErr_SetString(cls.ptr(), e.what());
        }
    });
}

}  // namespace cgpy
