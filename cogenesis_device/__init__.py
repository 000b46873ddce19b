"""cogenesis-device: personalized writing on the device.

A small local GGUF model sees the user's private context; a large remote model
sees only the public instruction (CoGenesis, arXiv 2403.03129).
"""
import llama_cpp as _llama_cpp

# llama_cpp's ctypes layer has now loaded libllama.so.0; importing the
# extension binds it to that same library (one libllama per process).
_REQUIRED_LLAMA_CPP = "0.3.36"
if _llama_cpp.__version__ != _REQUIRED_LLAMA_CPP:
    raise ImportError(
        f"cogenesis-device was built against llama-cpp-python=={_REQUIRED_LLAMA_CPP}, "
        f"but {_llama_cpp.__version__} is installed"
    )

from . import errors  # noqa: E402
from ._native import __engine_version__  # noqa: E402
from .local import Completion, CompletionStream, GenerationStats, LocalModel  # noqa: E402
from .registry import DEFAULT_MODEL, MODELS, resolve_model  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "CompletionStream",
    "DEFAULT_MODEL",
    "GenerationStats",
    "LocalModel",
    "MODELS",
    "errors",
    "resolve_model",
]
