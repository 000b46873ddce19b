"""A C program that uses only cogenesis.h, built by CMake: embedding without Python."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cogenesis_device as cg

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"


def build_example(build_dir: Path, *extra) -> Path:
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT / "engine"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython_EXECUTABLE={sys.executable}", *gen, *extra],
        check=True, capture_output=True, text=True,
    )
    subprocess.run(["cmake", "--build", str(build_dir), "-j", "2"], check=True, capture_output=True, text=True)
    return build_dir / "cogenesis_example"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    if not (ROOT / "engine" / "CMakeLists.txt").exists():
        pytest.skip("engine sources are not available (installed package only)")
    return build_example(tmp_path_factory.mktemp("engine-build"))


def run(exe, model, *args, env=None):
    return subprocess.run([str(exe), str(model.path), PROMPT, "24", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_c_program_generates_what_python_does(example, model, tmp_path):
    expected = model.generate(PROMPT, max_tokens=24, sampling=cg.SamplingParams.greedy()).text
    plain = run(example, model)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == expected
    assert "generated=24" in plain.stderr

    state = tmp_path / "prompt.kv"
    cached = run(example, model, str(state))
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == expected
    n_prompt = len(model.tokenize(PROMPT))
    assert f"reused={n_prompt - 1}" in cached.stderr
    assert state.stat().st_size > 0


INSTRUCTION = "Write a short note inviting my colleagues to a team dinner"
CONTEXT = "Name: Odalys Brennecke\nLocation: Tromsø, Norway\nPrivate: sister Ingrid Solheim; allergic to shellfish."


def collaborate_in_python(model, max_tokens, lookahead):
    """What the C app computes, through the bindings: the same prompts, loop and provider (in Python)."""
    from cogenesis_device import _native
    from providers import SecondModelProvider

    provider = SecondModelProvider(model)
    with model.pooled_session() as session:
        co = _native.CoGeneration(
            session, model.private_prompt(CONTEXT, INSTRUCTION), noctx_prompt=model.private_prompt("", INSTRUCTION),
            public_prefix=model.apply_chat_template([{"role": "user", "content": INSTRUCTION}]), provider=provider,
            remote_vocab=model.native, max_tokens=max_tokens, lookahead=lookahead, temperature=0.0)
        text, withheld = "", 0
        while not co.finished:
            token, piece = co.step()
            text += piece
            withheld += token.token >= 0 and token.withheld
        return text, co.stats, withheld


def collaborate_in_c(exe, model, max_tokens, lookahead, env=None):
    from cogenesis_device.local import SYSTEM_PROMPT

    return subprocess.run([str(exe.parent / "cogenesis_collaborate"), str(model.path), INSTRUCTION,
                           SYSTEM_PROMPT.format(context=CONTEXT), str(max_tokens), str(lookahead)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_c_app_with_a_c_provider_collaborates_as_python_does(example, model):
    """The app's provider, written in C, is a second model without the private context."""
    text, stats, withheld = collaborate_in_python(model, 24, 4)
    proc = collaborate_in_c(example, model, 24, 4)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == text and text
    assert f"generated={stats.n_generated} " in proc.stderr and f"withheld={withheld} " in proc.stderr
    assert f"requests={stats.n_requests} accepted={stats.n_accepted} provider_requests={stats.n_requests} " in proc.stderr
    assert 0 < stats.n_requests < 24 and "fallback" not in proc.stderr


def test_c_program_reports_a_bad_model_file(example, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("no")
    proc = subprocess.run([str(example), str(bogus), PROMPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not a GGUF file" in proc.stderr


@pytest.mark.asan
def test_c_programs_are_clean_under_address_sanitizer(model, tmp_path):
    """The C programs (generation, collaboration, the fusion/bridge and provider fuzzers), built with
    -fsanitize=address."""
    if not (ROOT / "engine" / "CMakeLists.txt").exists():
        pytest.skip("engine sources are not available (installed package only)")
    exe = build_example(tmp_path / "asan-build", "-DCOGENESIS_ASAN=ON")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23")
    proc = run(exe, model, str(tmp_path / "asan.kv"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in proc.stderr
    assert proc.stdout == model.generate(PROMPT, max_tokens=24, sampling=cg.SamplingParams.greedy()).text

    fuzz = subprocess.run([str(exe.parent / "cogenesis_fusion_fuzz"), "2000", str(model.path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert fuzz.returncode == 0, fuzz.stderr[-3000:]
    assert fuzz.stdout.startswith("ok ")
    calls, errors = map(int, fuzz.stdout.split()[1:])
    assert calls > 2000 and 0 < errors < calls

    collab = collaborate_in_c(exe, model, 16, 4, env=env)
    assert collab.returncode == 0 and "ERROR: AddressSanitizer" not in collab.stderr, collab.stderr[-3000:]
    assert collab.stdout == collaborate_in_python(model, 16, 4)[0]

    # A provider answering garbage: malformed steps, out-of-range ids, NaN logprobs, failures, refusals.
    providers = subprocess.run([str(exe.parent / "cogenesis_provider_fuzz"), str(model.path), "40"],
                               capture_output=True, text=True, timeout=600, env=env)
    assert providers.returncode == 0, providers.stderr[-3000:]
    generations, fallbacks, refusals = map(int, providers.stdout.split()[1:])
    assert generations == 40 and fallbacks > 0 and refusals > 0
