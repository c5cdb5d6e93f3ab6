import copy
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

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


def test_ratio_to_reference_and_regression_to_baseline():
    budget = parse_budget(
        {
            "gates": [
                {"check": "ttft_p50 <= 0.5 * reference"},
                {"check": "ttft_ms regression <= 10 %"},
                {"check": "decode_tokens_per_s regression <= 10%"},
            ]
        }
    )
    assert [g.against for g in budget.gates] == ["reference", "baseline", "baseline"]
    base = fake_profile(ttft=100, rate=20)
    results = evaluate(budget, fake_profile(ttft=45, rate=19), baseline=base, reference=base)
    assert [r.passed for r in results] == [True, True, True]
    results = evaluate(budget, fake_profile(ttft=60, rate=17), baseline=base, reference=base)
    assert [r.passed for r in results] == [False, True, False]
    worse = evaluate(budget, fake_profile(ttft=115, rate=20), baseline=base, reference=base)
    assert not worse[1].passed and worse[1].limit == pytest.approx(15.0, rel=0.05)


def test_reference_and_baseline_in_one_budget():
    """Pruned vs unpruned (same job) and this build vs the last release: each gate uses its own profile."""
    budget = parse_budget(
        {
            "gates": [
                {"name": "half of unpruned", "check": "ttft_p50 <= 0.5 * reference"},
                {"name": "prefill", "metric": "prefill_ms", "max_ratio_to_reference": 0.7},
                {"name": "no regression", "check": "ttft_ms.p90 regression <= 10 %"},
                {"name": "no prefill regression", "metric": "prefill_ms", "max_regression_pct": 10},
            ]
        }
    )
    pruned = fake_profile(ttft=40, prefill=20)
    unpruned = fake_profile(ttft=120, prefill=60)  # --reference: ratio 0, measured in the same job
    release = fake_profile(ttft=38, prefill=19)  # --baseline: the same configuration, last release
    results = evaluate(budget, pruned, baseline=release, reference=unpruned)
    assert [r.against for r in results] == ["reference", "reference", "baseline", "baseline"]
    assert [r.compared for r in results] == [
        unpruned["metrics"]["ttft_ms"]["p50"],
        unpruned["metrics"]["prefill_ms"]["p50"],
        release["metrics"]["ttft_ms"]["p90"],
        release["metrics"]["prefill_ms"]["p50"],
    ]
    assert all(r.passed for r in results)
    # the regression is measured against the release (+5 %), not against the unpruned model (-66 %)
    assert results[2].limit == pytest.approx(100 * (40 - 38) / 38, rel=1e-6)
    assert "x reference" in results[0].detail and "vs baseline" in results[2].detail
    # a slower build than the release fails the regression gates only
    slower = evaluate(budget, fake_profile(ttft=50, prefill=25), baseline=release, reference=unpruned)
    assert [r.passed for r in slower] == [True, True, False, False]
    compared = {"reference": "ref.json (m / fastervlm / keep 576)", "baseline": "rel.json (m / fastervlm / keep 64)"}
    suite = ET.fromstring(junit_xml(slower, compared=compared)).find("testsuite")
    against = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in suite.findall("testcase")
    }
    assert against["half of unpruned"]["compared_against"] == "reference"
    assert against["half of unpruned"]["reference_profile"] == compared["reference"]
    assert against["no regression"]["compared_against"] == "baseline"
    assert "rel.json" in suite.find("testcase[@name='no regression']/failure").text
    markdown = markdown_summary(slower, pruned, compared)
    assert "reference (ratio gates): `ref.json" in markdown and "baseline (regression gates): `rel.json" in markdown
    assert "| no regression | `ttft_ms.p90` |" in markdown and "| baseline | **FAIL** |" in markdown


def test_a_gate_without_its_profile_names_the_flag():
    budget = parse_budget({"gates": [{"check": "ttft_p50 <= 0.5 * reference"}, {"check": "ttft_ms regression <= 5 %"}]})
    with pytest.raises(GateError, match="pass --reference PROFILE.json"):
        evaluate(budget, fake_profile(), baseline=fake_profile())
    with pytest.raises(GateError, match="pass --baseline PROFILE.json"):
        evaluate(budget, fake_profile(), reference=fake_profile())
    skipped = evaluate(budget, fake_profile(), reference=fake_profile(ttft=300), skip_missing=True)
    assert [(r.passed, r.skipped) for r in skipped] == [(True, False), (True, True)]
    assert "no --baseline profile" in skipped[1].detail
    assert ET.fromstring(junit_xml(skipped)).find("testsuite").get("skipped") == "1"
    with pytest.raises(GateError, match="the reference has 3 measured runs"):
        evaluate(
            parse_budget({"min_runs": 5, "gates": [{"check": "ttft_ms <= 1 * reference"}]}),
            fake_profile(),
            reference=fake_profile(runs=3),
        )


def test_old_baseline_ratio_gates_say_how_to_migrate():
    for old in ({"check": "ttft_p50 <= 0.5 * baseline"}, {"metric": "ttft_ms", "max_ratio_to_baseline": 0.5}):
        with pytest.raises(GateError, match="ambiguous") as info:
            parse_budget({"gates": [old]})
        message = str(info.value)
        assert "--reference" in message and "--baseline" in message and "\n" not in message
        assert "reference" in message.split("write", 1)[1]
    with pytest.raises(GateError, match="'ttft_p50 <= 0.5 \\* reference'"):
        parse_check("ttft_p50 <= 0.5 * baseline")
    # budgets without ratio gates read as before
    assert parse_budget({"gates": [{"check": "ttft_ms regression <= 10 %"}]}).needs_baseline


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
    with pytest.raises(GateError, match="--reference"):
        evaluate(parse_budget({"gates": [{"check": "ttft_ms <= 0.5 * reference"}]}), fake_profile())


def test_check_grammar():
    g = parse_check("ttft_ms.p90 <= 1.25 * reference")
    assert (g.metric, g.op, g.bound, g.relative) == ("ttft_ms.p90", "<=", 1.25, "ratio")
    g = parse_check("prefill_ms regression <= 5 %")
    assert (g.relative, g.bound) == ("regression", 5.0)
    g = parse_check("ttft_ms regression <= -5 %")  # must improve on the last release by 5 %
    assert (g.relative, g.bound, g.against) == ("regression", -5.0, "baseline")
    for bad in ("ttft_ms <= 5 %", "ttft_ms <= 0.5 * release", "ttft_ms regression <= 5 % * reference"):
        with pytest.raises(GateError):
            parse_check(bad)


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


def test_gate_cli_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    (tmp_path / "p.json").write_text(json.dumps(fake_profile(ttft=45)))
    (tmp_path / "b.json").write_text(json.dumps(fake_profile(ttft=100)))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"gates": [{"check": "ttft_p50 <= 0.5 * reference"}]}))
    (tmp_path / "fail.yaml").write_text(yaml.safe_dump({"gates": [{"metric": "ttft_ms", "max": 10}]}))
    (tmp_path / "bad.yaml").write_text("gates: [unclosed")
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump({"gates": [{"metric": "nope_ms", "max": 10}]}))
    base = ["gate", str(tmp_path / "p.json"), "--reference", str(tmp_path / "b.json"), "-q"]
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


PNG = Path(__file__).resolve().parents[2] / "examples" / "assets" / "demo.png"


@pytest.fixture
def gate_files(tmp_path, monkeypatch):
    """A pruned profile, its reference (ratio 0, same job), a release baseline and budgets, as files."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    unpruned = fake_profile(ttft=120)
    unpruned["artifact"] = dict(unpruned["artifact"], keep=576)
    files = {
        "profile": fake_profile(ttft=40),
        "reference": unpruned,
        "baseline": fake_profile(ttft=38),
    }
    for name, document in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
    budget = {
        "gates": [
            {"name": "half of unpruned", "check": "ttft_p50 <= 0.5 * reference"},
            {"name": "no regression", "check": "ttft_ms.p90 regression <= 10 %"},
        ]
    }
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(budget))
    (tmp_path / "ratio.yaml").write_text(yaml.safe_dump({"gates": budget["gates"][:1]}))
    return tmp_path


def one_error_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unreadable_inputs_are_one_line_errors(gate_files, capsys):
    """Binary, non-UTF-8, missing, directory and malformed files as profile, budget, reference and baseline."""
    d = gate_files
    png = d / "picture.png"
    shutil.copy(PNG, png)
    (d / "latin1.json").write_bytes('{"schema": "tpc.profile", "note": "caf\xe9"}'.encode("latin-1"))
    (d / "latin1.yaml").write_bytes("gates:\n  - name: caf\xe9\n    metric: ttft_ms\n    max: 1\n".encode("latin-1"))
    (d / "broken.json").write_text('{"schema": "tpc.profile",')
    (d / "broken.yaml").write_text("gates: [unclosed")
    (d / "list.json").write_text("[1, 2]")
    (d / "dir.json").mkdir()
    good = {"profile": str(d / "profile.json"), "budget": str(d / "both.yaml")}

    def argv(**files):
        files = {**good, "reference": str(d / "reference.json"), "baseline": str(d / "baseline.json"), **files}
        extra = [x for role in ("reference", "baseline") for x in (f"--{role}", files[role])]
        return ["gate", files["profile"], "--budget", files["budget"], *extra, "-q"]

    for role in ("profile", "budget", "reference", "baseline"):
        json_or_yaml = "yaml" if role == "budget" else "json"
        cases = {
            str(png): "binary",
            str(d / f"latin1.{json_or_yaml}"): "not UTF-8",
            str(d / "absent.json"): "no such file",
            str(d / "dir.json"): "directory",
            str(d / f"broken.{json_or_yaml}"): "malformed budget" if role == "budget" else "not valid JSON",
        }
        if role != "budget":
            cases[str(d / "list.json")] = "not a tpc profile"
        for path, reason in cases.items():
            line = one_error_line(*run_cli(argv(**{role: path}), capsys)[:3:2], reason)
            assert role in line and Path(path).name in line
    one_error_line(*run_cli(["gate", str(png), "--budget", str(png)], capsys)[:3:2], "binary")


def test_reports_into_a_read_only_place_fail_before_gating(gate_files, readonly_dir, capsys):
    d = gate_files
    base = [
        "gate",
        str(d / "profile.json"),
        "--budget",
        str(d / "ratio.yaml"),
        "--reference",
        str(d / "reference.json"),
    ]
    for option in ("--junit", "--summary"):
        for target in (readonly_dir / "gates.out", readonly_dir / "sub" / "gates.out", readonly_dir):
            code, out, err = run_cli(base + [option, str(target)], capsys)
            one_error_line(code, err, "cannot write")
            assert "latency gates" not in out and "gates passed" not in err  # refused before evaluating
    assert not any(readonly_dir.iterdir())


def test_cli_reference_and_baseline(gate_files, capsys):
    d = gate_files
    profile, budget = str(d / "profile.json"), str(d / "both.yaml")
    ref, rel = ["--reference", str(d / "reference.json")], ["--baseline", str(d / "baseline.json")]
    reports = ["--junit", str(d / "j.xml"), "--summary", str(d / "s.md")]
    code, out, err = run_cli(["gate", profile, "--budget", budget, *ref, *rel, *reports], capsys)
    assert code == 0, err
    assert "2/2 gates passed" in err and "warning" not in err
    assert "reference" in out and "baseline" in out
    summary = (d / "s.md").read_text()
    assert "reference.json" in summary and "baseline.json" in summary
    cases = ET.parse(d / "j.xml").getroot().findall("testsuite/testcase")
    assert [c.find("properties/property").get("value") for c in cases] == ["reference", "baseline"]
    # the flag each gate's profile comes from, named when missing
    for given, missing in ((ref, "--baseline"), (rel, "--reference")):
        line = one_error_line(*run_cli(["gate", profile, "--budget", budget, *given], capsys)[:3:2], missing)
        assert "PROFILE.json" in line
    # the old mistake: the unpruned profile passed as --baseline is flagged
    code, _, err = run_cli(["gate", profile, "--budget", budget, *ref, "--baseline", ref[1], "-q"], capsys)
    assert code == 0 and "warning: the baseline is another configuration (keep 576 vs 64)" in err  # -66 %: passes
    # no release baseline yet: skipped on request, not passed silently
    code, _, err = run_cli(["gate", profile, "--budget", budget, *ref, "--skip-missing", *reports, "-q"], capsys)
    assert code == 0 and "1/2 gates passed, 1 skipped (no --baseline)" in err, err
    assert ET.parse(d / "j.xml").getroot().find("testsuite").get("skipped") == "1"


def test_cli_old_budget_says_how_to_migrate(gate_files, capsys):
    d = gate_files
    (d / "old.yaml").write_text(yaml.safe_dump({"gates": [{"check": "ttft_p50 <= 0.5 * baseline"}]}))
    argv = ["gate", str(d / "profile.json"), "--budget", str(d / "old.yaml"), "--baseline", str(d / "reference.json")]
    one_error_line(*run_cli(argv, capsys)[:3:2], "ambiguous", "'ttft_p50 <= 0.5 * reference'", "--reference")


def test_reprofile_without_the_artifact_is_an_error(gate_files, capsys):
    d = gate_files
    (d / "fail.yaml").write_text(yaml.safe_dump({"retries": 1, "gates": [{"metric": "ttft_ms", "max": 1}]}))
    argv = ["gate", str(d / "profile.json"), "--budget", str(d / "fail.yaml"), "--reprofile", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: --reprofile: the profile's artifact")


def test_examples_use_reference_and_baseline():
    root = Path(__file__).resolve().parents[2]
    budget = parse_budget(yaml.safe_load((root / "examples" / "gates.yaml").read_text()))
    assert budget.needs_reference and budget.needs_baseline
    workflow = yaml.safe_load((root / "examples" / "ci" / "tpc-latency-gate.yml").read_text())
    gate_step = next(s for s in workflow["jobs"]["gate"]["steps"] if s.get("name") == "Gate")
    assert "--reference reference.json" in gate_step["run"] and "--baseline" in gate_step["run"]


def test_reprofile_measures_the_profile_and_the_reference_again(artifacts, tmp_path, capsys, monkeypatch):
    from tpc.profiling.profiler import ProfileConfig
    from tpc.profiling.session import profile_artifact

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    config = ProfileConfig(runs=2, warmup=0, new_tokens=2, prompt_tokens=16)
    for name, ratio in (("profile", 0.89), ("reference", 0.0)):
        document = profile_artifact(str(artifacts(ratio, "ort")), config, quiet=True)
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
    impossible = {"retries": 1, "gates": [{"check": "ttft_ms <= 0.001 * reference"}]}
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(impossible))
    argv = ["gate", str(tmp_path / "profile.json"), "--budget", str(tmp_path / "budget.yaml")]
    argv += ["--reference", str(tmp_path / "reference.json"), "--reprofile", "--junit", str(tmp_path / "j.xml"), "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1, err
    assert "measuring the profile and the reference again (1/1)" in err
    assert "4 runs" in ET.parse(tmp_path / "j.xml").getroot().find("testsuite/properties/property").get("value")
