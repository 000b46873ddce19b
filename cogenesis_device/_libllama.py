"""Load the libllama that llama-cpp-python ships, before the extension needs it.

The extension's DT_NEEDED entry is libllama.so.0 (the library's soname). Loading
llama_cpp/lib/libllama.so here, the very file llama_cpp's ctypes layer opens,
makes the dynamic loader bind the extension to it: one libllama per process,
whether or not the application also imports llama_cpp (which would then get the
same object back from dlopen). Loading it directly skips llama_cpp's Python
imports (about 12 MB and 0.2 s).
"""
import ctypes
import importlib.metadata
import importlib.util
from pathlib import Path

REQUIRED_VERSION = "0.3.36"


def libllama_path() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError(f"cogenesis-device needs llama-cpp-python=={REQUIRED_VERSION}: pip install llama-cpp-python=={REQUIRED_VERSION}")
    return Path(spec.origin).parent / "lib" / "libllama.so"


def load_libllama() -> ctypes.CDLL:
    version = importlib.metadata.version("llama-cpp-python")
    if version != REQUIRED_VERSION:
        raise ImportError(
            f"cogenesis-device was built against llama-cpp-python=={REQUIRED_VERSION}, but {version} is installed"
        )
    return ctypes.CDLL(str(libllama_path()))
