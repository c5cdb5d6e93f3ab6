import copy
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.conftest import run_cli
from tpc.gates.budget import GateError, parse_budget, parse_check
from tpc.gates.evaluate import evaluate, merge_profiles, metric_value
from tpc.gates.reports import junit_xml, markdown_summary
from tpc.profiling.stats import summarize


def fake_profile(ttft=100.0, prefill=40.0, rate=20.0, runs=10, memory=500.0):
    def metric(v):
        return summarize([v * (1 + 0.01 * i) for i in range(runs)])

    return {
        "schema": "tpc.profile",
        "schema_version": 1,
        "config": {"runs": runs},
        "artifact": {"model": "m", "method": "fastervlm", "keep": 64},
        "device": {"execution_provider": "CPUExecutionProvider"},
        "metrics": {"ttft_ms": metric(ttft), "prefill_ms": metric(prefill), "decode_tokens_per_s": metric(rate)},
        "peak_memory_mb": memory,
        "kv_cache_bytes": 1024,
    }


def test_metric_names_resolve():
    p = fake_profile()
    assert metric_value(p, "ttft_ms", "p50") == p["metrics"]["ttft_ms"]["p50"]
    assert metric_value(p, "ttft_ms.p90", "p50") == p["metrics"]["ttft_ms"]["p90"]
    assert metric_value(p, "ttft_p99", "p50") == p["metrics"]["ttft_ms"]["p99"]
    assert metric_value(p, "decode_tokens_per_s", "p50") == p["metrics"]["decode_tokens_per_s"]["p50"]
    assert metric_value(p, "peak_memory_mb", "p50") == 500.0


def test_absolute_gates_pass_and_fail():
    budget = parse_budget(
        {
            "gates": [
                {"metric": "ttft_ms", "max": 150},
                {"metric": "decode_tokens_per_s", "min": 25},
                {"metric": "peak_memory_mb", "max": 600},
            ]
        }
    )
    results = evaluate(budget, fake_profile())
    assert [r.passed for r in results] == [True, False, True]


def test_relative_to_baseline_and_regression():
    budget = parse_budget(
        {
            "gates": [
                {"check": "ttft_p50 <= 0.5 * baseline"},
                {"check": "ttft_ms regression <= 10 %"},
                {"check": "decode_tokens_per_s regression <= 10%"},
            ]
        }
    )
    base = fake_profile(ttft=100, rate=20)
    assert [r.passed for r in evaluate(budget, fake_profile(ttft=45, rate=19), base)] == [True, True, True]
    assert [r.passed for r in evaluate(budget, fake_profile(ttft=60, rate=17), base)] == [False, True, False]
    worse = evaluate(budget, fake_profile(ttft=115, rate=20), base)
    assert not worse[1].passed and worse[1].limit == pytest.approx(15.0, rel=0.05)


def test_missing_metric_malformed_budget_too_few_runs_missing_baseline():
    with pytest.raises(GateError, match="not in the profile"):
        evaluate(parse_budget({"gates": [{"metric": "warp_ms", "max": 1}]}), fake_profile())
    for bad in [
        {},
        {"gates": []},
        {"gates": [{"metric": "ttft_ms"}]},
        {"gates": [{"metric": "x", "max": "fast"}]},
        {"gates": [{"check": "ttft_ms is small"}]},
        {"gates": [{"metric": "x", "max": 1, "min": 0}]},
        {"gates": [{"metric": "x", "max": 1}], "min_runs": -1},
        {"gatez": []},
        [1, 2],
    ]:
        with pytest.raises(GateError, match="malformed"):
            parse_budget(bad)
    with pytest.raises(GateError, match="at least 20"):
        evaluate(parse_budget({"min_runs": 20, "gates": [{"metric": "ttft_ms", "max": 1e9}]}), fake_profile(runs=10))
    with pytest.raises(GateError, match="--baseline"):
        evaluate(parse_budget({"gates": [{"check": "ttft_ms <= 0.5 * baseline"}]}), fake_profile())


def test_check_grammar():
    g = parse_check("ttft_ms.p90 <= 1.25 * baseline")
    assert (g.metric, g.op, g.bound, g.relative) == ("ttft_ms.p90", "<=", 1.25, "ratio")
    g = parse_check("prefill_ms regression <= 5 %")
    assert (g.relative, g.bound) == ("regression", 5.0)
    with pytest.raises(GateError):
        parse_check("ttft_ms <= 5 %")


def test_junit_is_well_formed_and_counts_failures():
    budget = parse_budget({"gates": [{"metric": "ttft_ms", "max": 150}, {"metric": "ttft_ms", "max": 50}]})
    results = evaluate(budget, fake_profile())
    root = ET.fromstring(junit_xml(results))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/failure")) == 1
    assert "**FAIL**" in markdown_summary(results, fake_profile())


def test_merge_pools_samples():
    merged = merge_profiles(fake_profile(runs=3), fake_profile(runs=4))
    assert merged["config"]["runs"] == 7 and merged["metrics"]["ttft_ms"]["n"] == 7


def test_gate_cli_exit_codes(tmp_path, capsys):
    import json

    (tmp_path / "p.json").write_text(json.dumps(fake_profile(ttft=45)))
    (tmp_path / "b.json").write_text(json.dumps(fake_profile(ttft=100)))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"gates": [{"check": "ttft_p50 <= 0.5 * baseline"}]}))
    (tmp_path / "fail.yaml").write_text(yaml.safe_dump({"gates": [{"metric": "ttft_ms", "max": 10}]}))
    (tmp_path / "bad.yaml").write_text("gates: [unclosed")
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump({"gates": [{"metric": "nope_ms", "max": 10}]}))
    base = ["gate", str(tmp_path / "p.json"), "--baseline", str(tmp_path / "b.json"), "-q"]
    code, _, err = run_cli(
        base
        + [
            "--budget",
            str(tmp_path / "ok.yaml"),
            "--junit",
            str(tmp_path / "j.xml"),
            "--summary",
            str(tmp_path / "s.md"),
        ],
        capsys,
    )
    assert code == 0, err
    ET.parse(tmp_path / "j.xml")
    assert "passed" in (tmp_path / "s.md").read_text()
    assert run_cli(base + ["--budget", str(tmp_path / "fail.yaml")], capsys)[0] == 1
    code, _, err = run_cli(base + ["--budget", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "malformed budget" in err
    code, _, err = run_cli(base + ["--budget", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "not in the profile" in err
    sweep = copy.deepcopy(fake_profile())
    sweep["schema"] = "tpc.profile.sweep"
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    code, _, err = run_cli(["gate", str(tmp_path / "sweep.json"), "--budget", str(tmp_path / "fail.yaml")], capsys)
    assert code == 2 and "not a tpc profile" in err
