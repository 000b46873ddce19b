"""The `cogenesis` console script: text to stdout, stats to stderr, clean errors."""
import collections
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import cogenesis_device as cg


def run_cli(*args, stdin=None, env=None):
    exe = shutil.which("cogenesis")
    cmd = [exe] if exe else [sys.executable, "-m", "cogenesis_device.cli"]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def test_generate_streams_text_and_reports_stats(model):
    proc = run_cli("generate", "Name a fruit.", "-n", "12", "--temp", "0", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    expected = model.generate("Name a fruit.", chat=True, max_tokens=12, sampling=cg.SamplingParams.greedy())
    assert proc.stdout == expected.text + "\n"
    assert "finish=" in proc.stderr and "tok/s" in proc.stderr and "first token" in proc.stderr


def test_generate_reads_the_prompt_from_stdin_and_raw_mode(model):
    proc = run_cli("generate", "--raw", "-n", "8", "--temp", "0", stdin="The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == model.generate("The capital of France is", max_tokens=8,
                                         sampling=cg.SamplingParams.greedy()).text + "\n"


@pytest.mark.parametrize(
    "args, status, message",
    [   # out of range: a usage error of argparse (status 2) naming the flag; before, --temp -1 sampled greedily
        (["--top-p", "2"], 2, "argument --top-p: must be between 0 and 1, got 2"),
        (["--temp", "nan"], 2, "argument --temp: 'nan' is not a finite number"),
        (["--temp", "-1"], 2, "argument --temp: must be 0 or more, got -1"),
        (["--n-ctx", "0"], 2, "argument --n-ctx: must be at least 1, got 0"),
        (["-n", "-5"], 2, "argument -n/--max-tokens: must be at least 1, got -5"),
        (["-m", "/nonexistent/model.gguf"], 1, "model file not found"),
    ],
)
def test_bad_input_is_a_one_line_error(args, status, message):
    proc = run_cli("generate", "Hi", "-n", "2", *args)
    assert proc.returncode == status
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("prompt", ["", " \n"])
def test_an_empty_prompt_is_refused(prompt):
    """Before, an empty prompt (an empty file on stdin, say) generated 128 tokens of nothing asked."""
    proc = run_cli("generate", stdin=prompt)
    assert proc.returncode == 1 and "the prompt is empty" in proc.stderr and proc.stdout == ""


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`cogenesis generate ... | head -c 5`: before, a BrokenPipeError traceback. Now the generation
    stops and the command ends as one killed by SIGPIPE does (status 141), with no traceback."""
    exe = shutil.which("cogenesis")
    cmd = [exe] if exe else [sys.executable, "-m", "cogenesis_device.cli"]
    writer = subprocess.Popen(cmd + ["generate", "-n", "200", "--temp", "0", "Write a long story about a cat."],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = writer.stdout.read(5)
    writer.stdout.close()  # the reader goes away
    _, err = writer.communicate(timeout=300)
    assert len(first) == 5 and writer.returncode == 141 and b"Traceback" not in err and b"Error" not in err


def test_version_names_the_package_the_engine_and_llama_cpp():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == (f"cogenesis {cg.__version__} (engine {cg.__engine_version__}, "
                                   "llama-cpp-python 0.3.36)")


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from cogenesis_device.cli import main

    parsers, silent = [], []
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):  # the parser main() builds, taken before it parses
        parsers.append(self)
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            main([])
    finally:
        argparse.ArgumentParser.parse_args = original
    todo = list(parsers)
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += action.choices.values()
            elif not action.help:
                silent.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert parsers and silent == []


def test_models_lists_the_registry():
    proc = run_cli("models")
    assert proc.returncode == 0
    assert "smollm2-135m-instruct" in proc.stdout and "gemma3-270m" in proc.stdout


def test_demo_runs_both_modes_on_a_loopback_remote():
    """The first thing a user runs: both modes write text that does not loop (no word 4-gram more than
    twice; before, sketch mode wrote one sentence four times), and each says which private facts the
    text used and that none of them reached the remote."""
    proc = run_cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert "--- sketch mode ---" in proc.stdout and "--- logits mode ---" in proc.stdout
    assert "[logits] privacy (redact):" in proc.stderr and "round trips" in proc.stderr
    assert "fallback" not in proc.stderr
    for section in proc.stdout.split("--- ")[1:]:
        mode, _, text = section.partition(" ---\n")
        w = re.findall(r"\w+", text.lower())
        grams = collections.Counter(tuple(w[i:i + 4]) for i in range(len(w) - 3))
        assert len(w) > 40 and max(grams.values()) <= 2, (mode, grams.most_common(3))
        assert f"[{mode.split()[0]}] private facts in the text: " in proc.stderr
    assert proc.stderr.count("Sent to the remote: none of them") == 2


@pytest.mark.slow
def test_demo_serves_a_remote_of_another_family(gemma_path):
    """--remote: the loopback serves that model, and its prompts and tokens are its own (Gemma 3 is a
    base model of another vocabulary: plain-text prompts, its tokenizer for the lookahead check)."""
    proc = run_cli("demo", "--remote", "gemma3-270m", "-n", "24", "--remote-timeout", "120",
                   env={"COGENESIS_CACHE_DIR": str(gemma_path.parent.parent)})
    assert proc.returncode == 0, proc.stderr
    assert "loopback OpenAI-compatible server as the remote (gemma3-270m)" in proc.stderr
    assert "--- sketch mode ---" in proc.stdout and "--- logits mode ---" in proc.stdout
    assert "fallback" not in proc.stderr and "round trips" in proc.stderr
    assert proc.stderr.count("Sent to the remote: none of them") == 2


def test_run_streams_the_text_and_writes_the_audit(tmp_path, loopback_server):
    context = tmp_path / "profile.txt"
    context.write_text("Name: Odalys Brennecke\nI run a small bakery in Tromsø and bake rye bread every dawn.")
    audit = tmp_path / "audit.jsonl"
    proc = run_cli("run", "Write a two-line shop announcement", "--context-file", str(context),
                   "--remote-url", loopback_server.base_url, "-n", "16", "--audit", str(audit),
                   "--draft", "Odalys here:")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Odalys here:") and "[logits] finish=" in proc.stderr
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    # Without record_bodies the audit holds each body's hash and findings, not the body.
    assert records and "Odalys" not in audit.read_text() and all(r["body"] == "" and r["body_sha256"] for r in records)
    assert any(r["action"] == "redacted" for r in records)


def test_private_text_can_stay_out_of_the_process_list(tmp_path, loopback_server):
    """The context from standard input and the draft from a file: nothing private in argv. Private
    text given in argv works, with a warning that names the safe way."""
    draft = tmp_path / "draft.txt"
    draft.write_text("Odalys here:")
    context = "Name: Odalys Brennecke\nI run a small bakery in Tromsø."
    args = ["run", "Write a two-line shop announcement", "--remote-url", loopback_server.base_url, "-n", "4"]
    safe = run_cli(*args, "--context-file", "-", "--draft-file", str(draft), stdin=context)
    assert safe.returncode == 0, safe.stderr
    assert safe.stdout.startswith("Odalys here:") and "warning" not in safe.stderr
    exposed = run_cli(*args, "--context", context)
    assert exposed.returncode == 0, exposed.stderr
    assert "warning: --context is visible to other users in the process list" in exposed.stderr
    assert "prefer --context-file" in exposed.stderr


def test_run_renders_with_the_servers_template_or_says_which_it_assumed(loopback_server, python_server):
    """--template auto: llama.cpp's server renders its own template (no warning); llama_cpp.server
    cannot, so the local model's is used and the warning says so. Before, the local model's ChatML went
    to any server without a word, a Llama 3 on vLLM included."""
    args = ["run", "Write a two-line shop announcement", "--context", "Name: Odalys", "-n", "4", "--mode", "logits"]
    rendered = run_cli(*args, "--remote-url", loopback_server.base_url)
    assert rendered.returncode == 0 and "chat template" not in rendered.stderr, rendered.stderr
    assumed = run_cli(*args, "--remote-url", python_server.base_url)
    assert assumed.returncode == 0, assumed.stderr
    assert "the server does not render its chat template" in assumed.stderr and "fallback" not in assumed.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "Hi", "--context-file", "/nonexistent/profile.txt"], "cannot read the context file"),
    (["run", "--context", "x"], "no instruction"),
    (["run", "   ", "--context", "x"], "the instruction is empty"),
    (["demo", "--remote", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_run_bad_input_is_a_one_line_error(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_context_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    context = tmp_path / "profile.txt"
    context.write_bytes("Name: Odalys Brennecke\nLocation: Tromsø".encode("latin-1"))
    proc = run_cli("run", "Hi", "--context-file", str(context))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not UTF-8 text" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_context_files_that_cannot_serve_are_one_line_errors(tmp_path):
    """An empty context file, and one too long for the window, are named before anything is sent; a
    run under --privacy audit is warned that private spans go out as they are."""
    empty, long = tmp_path / "empty.txt", tmp_path / "long.txt"
    empty.write_text("  \n")
    long.write_text("Name: Odalys Brennecke. I bake rye bread in Tromsø every dawn. " * 60)
    for path, message in ((empty, "is empty"), (long, "more than the context window of 256")):
        proc = run_cli("run", "Hi", "--context-file", str(path), "--n-ctx", "256", "--remote-url", "http://127.0.0.1:9/v1")
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    audit = run_cli("run", "Hi", "--privacy", "audit", "--context-file", str(tmp_path / "missing.txt"))
    assert "warning: --privacy audit sends private spans as they are" in audit.stderr


def test_the_remote_under_evaluation_judges_only_when_trusted_explicitly(tmp_path, capsys):
    from cogenesis_device.cli import main

    assert main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--judge", "remote"]) == 1
    assert "add --trust-judge" in capsys.readouterr().err


def test_strict_makes_a_fallback_to_the_local_model_a_failure(tmp_path):
    """A remote that cannot be reached: the text is the local model's alone. Before, the command ended
    with status 0 and no way to ask otherwise; --strict makes it status 3, and the fallback is named
    on stderr either way."""
    from cogenesis_device.testing.servers import free_port

    args = ["run", "Write a two-line shop announcement", "--context", "I run a bakery.", "-n", "4",
            "--remote-url", f"http://127.0.0.1:{free_port()}/v1"]
    lenient, strict = run_cli(*args), run_cli(*args, "--strict")
    assert lenient.returncode == 0 and strict.returncode == 3, (lenient.stderr, strict.stderr)
    for proc in (lenient, strict):
        assert "fallback: " in proc.stderr and "connection failed" in proc.stderr and proc.stdout.strip()
    zero = run_cli(*args, "--remote-timeout", "0")
    assert zero.returncode == 2 and "argument --remote-timeout: must be more than 0, got 0" in zero.stderr
