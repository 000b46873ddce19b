"""A C program that uses only cogenesis.h, built by CMake: embedding without Python."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    expected = model.generate(PROMPT, max_tokens=24, temperature=0).text
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


def test_c_program_reports_a_bad_model_file(example, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("no")
    proc = subprocess.run([str(example), str(bogus), PROMPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not a GGUF file" in proc.stderr


@pytest.mark.asan
def test_c_programs_are_clean_under_address_sanitizer(model, tmp_path):
    """The generation example and the fusion/bridge fuzzer, built with -fsanitize=address."""
    if not (ROOT / "engine" / "CMakeLists.txt").exists():
        pytest.skip("engine sources are not available (installed package only)")
    exe = build_example(tmp_path / "asan-build", "-DCOGENESIS_ASAN=ON")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23")
    proc = run(exe, model, str(tmp_path / "asan.kv"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in proc.stderr
    assert proc.stdout == model.generate(PROMPT, max_tokens=24, temperature=0).text

    fuzz = subprocess.run([str(exe.parent / "cogenesis_fusion_fuzz"), "2000", str(model.path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert fuzz.returncode == 0, fuzz.stderr[-3000:]
    assert fuzz.stdout.startswith("ok ")
    calls, errors = map(int, fuzz.stdout.split()[1:])
    assert calls > 2000 and 0 < errors < calls
