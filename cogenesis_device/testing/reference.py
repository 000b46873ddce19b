"""llama-cpp-python's own Llama, built the way the engine loads its models, for side-by-side checks.

The engine loads weights without llama.cpp's extra buffer types (cg_model_params.use_extra_bufts): on
a CPU with AMX, llama.cpp's AMX matrix multiply segfaults on the first decode (measured here with
llama-cpp-python 0.3.36 alone, SmolLM2 Q4_1; llama.cpp issue 20824). llama-cpp-python has no option
for it, so its default model parameters are patched: in this process by reference_llama(), and in
llama_cpp.server's child process (servers.py) by running NO_EXTRA_BUFFERS, which therefore imports
nothing of this package.
"""
from __future__ import annotations

import os

NO_EXTRA_BUFFERS = (
    "import llama_cpp.llama as _llama\n"
    "_default_params = _llama.llama_cpp.llama_model_default_params\n"
    "def _params_without_extra_buffers():\n"
    "    params = _default_params()\n"
    "    params.use_extra_bufts = False\n"
    "    return params\n"
    "if not getattr(_llama.llama_cpp.llama_model_default_params, 'no_extra_buffers', False):\n"
    "    _params_without_extra_buffers.no_extra_buffers = True\n"
    "    _llama.llama_cpp.llama_model_default_params = _params_without_extra_buffers\n"
)


def reference_llama(path: str | os.PathLike, **kwargs):
    """llama_cpp.Llama over path (kwargs are Llama's), its weights in the buffers the engine uses."""
    import llama_cpp

    exec(NO_EXTRA_BUFFERS, {})
    return llama_cpp.Llama(str(path), **kwargs)
