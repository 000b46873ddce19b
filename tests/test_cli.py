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
    "args, message",
    [
        (["--top-p", "2"], "top_p"),
        (["--temp", "nan"], "temperature"),
        (["-m", "/nonexistent/model.gguf"], "model file not found"),
        (["--n-ctx", "0"], "n_ctx"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message):
    proc = run_cli("generate", "Hi", "-n", "2", *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


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


@pytest.mark.parametrize("args, message", [
    (["run", "Hi", "--context-file", "/nonexistent/profile.txt"], "cannot read the context file"),
    (["run", "--context", "x"], "no instruction"),
    (["run", "Hi", "--remote-url", "http://127.0.0.1:9/v1", "--remote-timeout", "0"],
     "timeout must be a positive number of seconds, got 0"),
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
