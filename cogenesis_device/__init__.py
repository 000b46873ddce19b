"""cogenesis-device: personalized writing on the device.

A small local GGUF model sees the user's private context; a large remote model sees only the public
instruction (CoGenesis, arXiv 2403.03129).

Importing the package loads nothing heavy: each name below is imported on first use (the engine with
LocalModel, openai-python with RemoteModel or CoGenerator). The library logs retries and fallbacks
through `logging` under the name "cogenesis_device", silent unless the application configures logging.
"""
import importlib
import importlib.util
import logging

from . import errors  # noqa: F401 (in __all__, which is built below)
from ._libllama import load_libllama
from ._version import __version__  # noqa: F401 (in __all__)

load_libllama()  # before the extension loads: it binds to llama-cpp-python's libllama (about 10 ms)

logging.getLogger(__name__).addHandler(logging.NullHandler())

# name -> the module that defines it
_EXPORTS = {
    "CoGenerator": "collab", "CoResult": "collab", "CoStats": "collab", "TokenInfo": "collab",
    "FusionConfig": "fusion",
    "Completion": "local", "CompletionStream": "local", "GenerationStats": "local", "LocalModel": "local",
    "EgressGuard": "privacy",
    "DEFAULT_MODEL": "registry", "MODELS": "registry", "resolve_model": "registry",
    "RemoteModel": "remote",
    "SamplingParams": "sampling",
    "__engine_version__": "_native",
}

__all__ = sorted([*_EXPORTS, "errors", "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError as exc:
        if importlib.util.find_spec(f"{__name__}._native") is None:  # every name needs the engine, or its layer does
            raise ImportError(
                "cogenesis_device._native is not built here. Install the package (pip install .) and import it from "
                "outside the source tree, or run the tests with `pytest` (not `python -m pytest`) from the "
                "checkout.") from exc
        raise
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__():
    return __all__
