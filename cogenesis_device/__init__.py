"""cogenesis-device: personalized writing on the device.

A small local GGUF model sees the user's private context; a large remote model
sees only the public instruction (CoGenesis, arXiv 2403.03129).
"""
from ._libllama import load_libllama

load_libllama()

from . import errors  # noqa: E402

try:
    from ._native import __engine_version__  # noqa: E402
except ModuleNotFoundError as exc:  # pragma: no cover - depends on how it is run
    raise ImportError(
        "cogenesis_device._native is not built here. Install the package (pip install .) and import it from "
        "outside the source tree, or run the tests with `pytest` (not `python -m pytest`) from the checkout."
    ) from exc
from .collab import CoGenerator, CoResult, CoStats, TokenInfo  # noqa: E402
from .fusion import FusionConfig  # noqa: E402
from .local import Completion, CompletionStream, GenerationStats, LocalModel  # noqa: E402
from .privacy import EgressGuard  # noqa: E402
from .registry import DEFAULT_MODEL, MODELS, resolve_model  # noqa: E402
from .remote import RemoteModel  # noqa: E402
from .sampling import SamplingParams  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CoGenerator",
    "CoResult",
    "CoStats",
    "Completion",
    "CompletionStream",
    "DEFAULT_MODEL",
    "EgressGuard",
    "FusionConfig",
    "GenerationStats",
    "LocalModel",
    "MODELS",
    "RemoteModel",
    "SamplingParams",
    "TokenInfo",
    "errors",
    "resolve_model",
]
