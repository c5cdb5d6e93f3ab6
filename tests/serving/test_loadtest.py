"""`tpc loadtest` against a real `tpc serve` process: bounded, self-ending, and its report gates."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import run_cli
from tests.serving.conftest import HeldModel, serving
from tpc.serving.loadtest import LoadTestConfig, load_test, parse_rss, server_memory

BUDGET = """\
version: 1
min_runs: 10
gates:
  - metric: errors
    max: 0
  - metric: ttft_ms.p99
    max: 60000
  - metric: e2e_ms
    max: 60000
  - metric: requests_per_s
    min: {min_rps}
  - metric: server.rss_growth_second_half_pct
    max: 50
"""


@pytest.fixture
def served(bucketed_dir):
    """`tpc serve` in its own process on an OS-assigned port; yields its URL, then stops it with SIGINT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tpc.cli", "serve", str(bucketed_dir), "--port", "0", "--threads", "1"],
        stdout=subprocess.DEVNULL,  # uvicorn's access log
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    found = None
    try:
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if found:
                break
        assert found, "".join(lines)
        # keep reading its log so the pipe never fills
        threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        process.stderr.close()
    assert code == 0


def test_loadtest_report_passes_and_fails_tpc_gate(served, capsys, tmp_path):
    report = tmp_path / "load.json"
    code, out, err = run_cli(
        [
            "loadtest",
            served,
            "--requests",
            "12",
            "--concurrency",
            "3",
            "--max-tokens",
            "4",
            "--json",
            str(report),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert "12/12 requests answered, 0 errors" in out
    data = json.loads(report.read_text())
    assert (data["schema"], data["kind"], data["stopped_by"]) == ("tpc.profile", "loadtest", "requests")
    assert data["requests_sent"] == data["requests_ok"] == data["config"]["runs"] == 12
    assert data["errors"] == 0 and data["status_counts"] == {"200": 12}
    assert data["metrics"]["ttft_ms"]["n"] == data["metrics"]["e2e_ms"]["n"] == 12
    assert data["metrics"]["ttft_ms"]["p50"] <= data["metrics"]["e2e_ms"]["p50"]
    assert data["metrics"]["completion_tokens"]["max"] == 4
    assert data["server"]["rss_before_mb"] > 10 and len(data["server"]["rss_samples_mb"]) >= 3
    assert data["artifact"]["model"] == "llava-tiny"

    passing, failing = tmp_path / "pass.yaml", tmp_path / "fail.yaml"
    passing.write_text(BUDGET.format(min_rps=0.01))
    failing.write_text(BUDGET.format(min_rps=10**6))
    code, _, err = run_cli(["gate", str(report), "--budget", str(passing), "-q"], capsys)
    assert code == 0, err
    assert "5/5 gates passed" in err
    code, _, err = run_cli(["gate", str(report), "--budget", str(failing), "-q"], capsys)
    assert code == 1 and "4/5 gates passed" in err


def test_loadtest_ends_by_itself_when_the_server_never_answers(bucketed_model):
    held = HeldModel(bucketed_model)  # held at the first token for the whole run
    with serving(held, max_batch=2, queue_size=4) as url:
        start = time.monotonic()
        report = load_test(LoadTestConfig(url=url, requests=10**6, concurrency=2, duration_s=2.0, max_tokens=2))
        took = time.monotonic() - start
    assert took < 15
    assert report["stopped_by"] == "time" and report["requests_ok"] == 0
    assert report["errors"] == report["requests_sent"] >= 2
    assert report["metrics"] == {} and report["config"]["runs"] == 0
    assert "no answer within" in report["error_samples"][0]


def test_loadtest_refuses_remote_servers_and_reports_an_unreachable_one(capsys):
    code, _, err = run_cli(["loadtest", "http://10.20.30.40:8000", "--requests", "1"], capsys)
    assert code == 2 and "not a loopback address" in err and "--allow-remote" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["loadtest", "ftp://127.0.0.1", "--requests", "1"], capsys)
    assert code == 2 and "expected a server URL" in err
    code, _, err = run_cli(["loadtest", "http://127.0.0.1:1", "--requests", "1", "-q"], capsys)
    assert code == 2 and "did not list a model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["loadtest", "http://127.0.0.1:1", "--concurrency", "0"], capsys)
    assert code == 2 and "--concurrency" in err


def test_server_memory_compares_the_last_half_with_the_middle():
    page = "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2.097152e+08\n"
    assert parse_rss(page) == 200.0 and parse_rss("other 1\n") is None
    memory = server_memory([(0, 100.0), (50, 200.0), (100, 202.0), (190, 210.0), (200, 210.0)], 200)
    assert memory["rss_growth_pct"] == 110.0
    assert memory["rss_half_mb"] == 202.0
    assert memory["rss_growth_second_half_pct"] == pytest.approx(100 * 8 / 202, abs=1e-3)
    assert server_memory([], 10) == {"rss_samples_mb": []}
