"""`cogenesis bench`: the latency suite on the bundled model, its row schema, its plot and its errors.
Speed itself is never asserted (these machines are noisy); what each row says it measured is."""
import json
import statistics
import xml.etree.ElementTree as ET

import pytest

from cogenesis_device.bench import TESTS, markdown_table
from cogenesis_device.bench.suite import PROTOCOLS
from test_cli import run_cli

SCHEMA = ("model", "size", "threads", "test", "unit", "mean", "sd", "n", "samples")
RTTS = (0.0, 40.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    plot = tmp_path_factory.mktemp("bench") / "rtt.svg"
    proc = run_cli("bench", "-p", "48", "-n", "8", "-r", "2", "-t", "1", "--rtts", ",".join(f"{x:g}" for x in RTTS),
                   "--collab-tokens", "6", "-o", "json", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr, plot


def test_every_test_of_the_suite_gives_rows_in_one_schema(report, model):
    data, stderr, _ = report
    rows = data["rows"]
    assert [r["test"] for r in rows][:2] == ["pp48", "tg8"]
    for r in rows:
        assert all(key in r for key in SCHEMA), r
        assert (r["model"], r["size"], r["threads"]) == (model.path.name, model.path.stat().st_size, 1)
        assert r["n"] == len(r["samples"]) == 2
        assert r["mean"] == pytest.approx(statistics.fmean(r["samples"]))
        assert r["sd"] == pytest.approx(statistics.stdev(r["samples"]))
        assert all(x > 0 for x in r["samples"]), r
        assert f"{r['test']}:" in stderr  # progress, row by row, on stderr
    tests = {r["test"].split(",")[0].split()[0] for r in rows}
    assert len(rows) == 2 + 3 + 1 + len(RTTS) * len(PROTOCOLS) and {"pp48", "tg8", "first", "fusion", "logits"} == tests
    assert data["config"]["tests"] == list(TESTS) and data["system"]["cpus"] >= 1


def test_the_cached_first_token_rows_measure_what_they_name(report):
    cached = {r["path"]: r for r in report[0]["rows"] if "path" in r}
    assert set(cached) == {"prefilled", "state file", "pooled session"}
    assert cached["prefilled"]["reused_tokens"] == [0]  # evaluated the whole context
    # Restored from the file, or found in the same user's pooled session: all 48 context tokens.
    assert cached["state file"]["reused_tokens"] == cached["pooled session"]["reused_tokens"] == [48]


def test_the_collab_rows_went_through_the_remote_at_each_rtt(report):
    collab = [r for r in report[0]["rows"] if "rtt_ms" in r]
    assert sorted({r["rtt_ms"] for r in collab}) == list(RTTS)
    for r in collab:
        assert r["fallbacks"] == 0 and r["tokens"] > 0, r
        if r["protocol"] == "local only":
            assert r["round_trips"] == 0
        elif r["protocol"] == "per-token (paper)":
            assert r["round_trips"] >= r["tokens"]  # one request per token
        if r["protocol"] == "per-token (paper)" and r["rtt_ms"] > 0:
            # Without overlap, every token after the first waits for its own round trip through the
            # delaying proxy: the rate cannot pass one token per RTT.
            assert max(r["samples"]) <= 1000 / r["rtt_ms"], r


def test_the_plot_draws_one_line_per_protocol_over_the_rtts(report):
    root = ET.parse(report[2]).getroot()
    ns = {"svg": "http://www.w3.org/2000/svg"}
    lines = root.findall("svg:polyline", ns)
    assert sorted(line.find("svg:title", ns).text for line in lines) == sorted(PROTOCOLS)
    assert all(len(line.get("points").split()) == len(RTTS) for line in lines)


def test_markdown_output_is_a_table_row_per_measurement(report):
    rows = report[0]["rows"]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| model | size | threads | test | value |" and len(table) == 2 + len(rows)
    assert table[2].startswith(f"| {rows[0]['model']} | ") and table[2].endswith(" tok/s |")
    proc = run_cli("bench", "--tests", "fusion", "-r", "2", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == table[0] and "fusion step" in out[2] and "mean ± sd over 2 repetitions" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--tests", "pp,warp"], "tests must be some of pp, tg, cached, fusion, collab"),
    (["-t", "0"], "threads must be at least 1"),
    (["-t", "two"], "expected comma-separated numbers, got 'two'"),
    (["--rtts", "-5"], "RTTs must be 0 ms or more"),
    (["-r", "0"], "argument -r/--repetitions: must be at least 1, got 0"),
    (["--tests", "pp", "--plot", "x.svg"], "--plot draws the collab test"),
    (["--plot", "/nonexistent/dir/x.svg"], "no such directory"),
    (["--tests", "collab", "--plot", "/tmp"], "/tmp is a directory"),
    (["-m", "/nonexistent/model.gguf", "--tests", "pp"], "model file not found"),
    (["-m", "gemma3-270m", "--tests", "pp,collab"], "has no chat template: leave collab out"),
])
def test_bad_arguments_are_named(args, message):
    proc = run_cli("bench", *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
