"""``tpc profile`` and ``tpc gate`` on a grid-family artifact (Qwen2.5-VL tiny): a picture of one compiled grid,
the largest by default, ``--grid`` for another; the grid, its image tokens and the kept count are reported."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from importlib import resources

import jsonschema
import pytest
import yaml

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import UsageError
from tpc.profiling.profiler import ProfileConfig, profile_grid

FAST = ["--runs", "2", "--warmup", "0", "--new-tokens", "3", "--prompt-tokens", "8", "-q"]


@pytest.fixture(scope="module")
def qwen_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen-profile") / "qwen"
    compile_model(CompileSettings(model="qwen2.5-vl-tiny", output=out, ratio=0.75, target="ort"))
    return out


@pytest.fixture(scope="module")
def profiles(qwen_artifact, tmp_path_factory):
    """Profile JSON of the default grid and of --grid 12x20 (written by the CLI)."""
    import contextlib
    import io

    from tpc.cli import main

    root = tmp_path_factory.mktemp("qwen-profiles")
    paths = {}
    for name, extra in (("default", []), ("12x20", ["--grid", "12x20"])):
        paths[name] = root / f"{name}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["profile", str(qwen_artifact), *FAST, *extra, "--json", str(paths[name])])
            except SystemExit as exc:
                assert exc.code in (0, None)
    return paths


def _schema():
    return json.loads(resources.files("tpc.profiling").joinpath("profile.schema.json").read_text())


def test_default_profile_runs_the_largest_grid(profiles):
    document = json.loads(profiles["default"].read_text())
    jsonschema.validate(document, _schema())
    assert document["visual_tokens"] == {
        "before": 64,
        "after": 16,
        "grid": [16, 16],
        "graph": "vision_16x16",
        "image_size": [224, 224],  # the grid's exact pixel size: no resize
    }
    assert document["artifact"]["keep"] == 16 and document["config"]["grid"] is None
    assert document["metrics"]["vision_ms"]["n"] == 2


def test_grid_option_profiles_another_compiled_grid(profiles):
    document = json.loads(profiles["12x20"].read_text())
    jsonschema.validate(document, _schema())
    tokens = document["visual_tokens"]
    assert (tokens["grid"], tokens["graph"], tokens["before"], tokens["after"]) == ([12, 20], "vision_12x20", 60, 15)
    assert tokens["image_size"] == [168, 280] and "resized_to" not in tokens
    assert document["config"]["grid"] == "12x20" and document["artifact"]["keep"] == 15


def test_profile_table_names_the_grid_and_an_image_size_resizes(qwen_artifact, capsys):
    code, out, err = run_cli(["profile", str(qwen_artifact), *FAST[:-1], "--grid", "vision_20x12"], capsys)
    assert code == 0, err
    text = " ".join(out.split())  # the terminal table wraps long lines
    assert "grid 20x12 patches (vision_20x12, picture 280x168 px): 60 image tokens, 15 kept" in text
    code, out, err = run_cli(["profile", str(qwen_artifact), *FAST[:-1], "--image-size", "300x500"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "grid 12x20 patches (vision_12x20, picture 300x500 px, resized to 168x280): 60 image tokens" in text


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--grid", "5x5"], "--grid 5x5: not a compiled grid of this artifact; compiled: 12x20, 20x12, 16x16"),
        (["--grid", "16"], "expected HxW in patches"),
        (["--grid", "16x16", "--image-size", "224x224"], "does not combine with --image"),
    ],
)
def test_bad_grid_choices_are_one_line_errors(qwen_artifact, capsys, extra, message):
    code, _, err = run_cli(["profile", str(qwen_artifact), *FAST, *extra], capsys)
    assert code == 2 and message in err


def test_grid_rule_without_an_artifact():
    runtime = {"grid_vision": {"grids": {"vision_20x12": [20, 12], "vision_12x20": [12, 20], "vision_8x8": [8, 8]}}}
    assert profile_grid(runtime, None) == (20, 12)  # equal areas: the larger (h, w)
    assert profile_grid(runtime, "vision_8x8") == (8, 8)
    with pytest.raises(UsageError, match="applies to artifacts with one vision graph per image grid"):
        profile_grid({"image_size": 336}, "8x8")
    with pytest.raises(UsageError, match="does not combine"):
        ProfileConfig(grid="8x8", image="none").validate()


def test_gates_on_a_grid_profile(profiles, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    budget = {
        "min_runs": 2,
        "gates": [
            {"check": "visual_tokens.after <= 15"},
            {"check": "kv_cache_bytes <= 1.0 * reference"},  # fewer kept tokens, a shorter KV cache
            {"metric": "ttft_ms", "max": 1e6},
        ],
    }
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump(budget))
    argv = ["gate", str(profiles["12x20"]), "--budget", str(tmp_path / "budget.yaml")]
    argv += ["--reference", str(profiles["default"]), "--junit", str(tmp_path / "j.xml")]
    code, out, err = run_cli([*argv, "--summary", str(tmp_path / "summary.md")], capsys)
    assert code == 0, out + err
    assert "3/3 gates passed" in err and "warning" not in err
    junit = ET.parse(tmp_path / "j.xml").getroot()
    described = [p.get("value") for p in junit.iter("property")]
    assert any("keep 16 at grid 16x16" in value for value in described), described  # the reference
    assert "qwen2.5-vl-tiny / received / keep 15 at grid 12x20, 2 runs" in (tmp_path / "summary.md").read_text()
    failing = dict(budget, gates=[{"check": "visual_tokens.before <= 59"}])
    (tmp_path / "fail.yaml").write_text(yaml.safe_dump(failing))
    code, out, err = run_cli(["gate", str(profiles["12x20"]), "--budget", str(tmp_path / "fail.yaml")], capsys)
    assert code == 1


def test_a_baseline_of_another_grid_is_flagged(profiles):
    from tpc.gates.evaluate import configuration_warnings

    mine, other = (json.loads(profiles[name].read_text()) for name in ("12x20", "default"))
    (warning,) = configuration_warnings(mine, other, None)
    assert "grid 16x16 vs 12x20" in warning


def test_reprofile_measures_the_same_grid(profiles):
    from tpc.cli.gate import _measure_again

    again = _measure_again(json.loads(profiles["12x20"].read_text()), "profile")
    assert again["visual_tokens"]["grid"] == [12, 20] and again["config"]["grid"] == "12x20"
