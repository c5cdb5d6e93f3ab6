"""Selection at the LLM input (DART, CDPruner) at compile: usage errors before any model loads,
refusals of what is not supported yet, a multi-crop composition compiled and verified per span
length, and the TensorRT plan's profile and static check of the ``select_input`` graph."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import UsageError

PROGRESS_LINE = re.compile(r"^compile \[\d+/\d+\]")


def _one_error_line(err: str, fragment: str) -> None:
    lines = [line for line in err.strip().splitlines() if line and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--method", "dart", "--ratio", "0.5", "--method-arg", "image_pivots=x"], "image_pivots='x': expected int"),
        (["--method", "dart", "--ratio", "0.5", "--method-arg", "image_pivots=0"], "image_pivots=0"),
        (["--method", "dart", "--ratio", "0.5", "--method-arg", "text_pivots=-1"], "text_pivots=-1"),
        (["--method", "dart", "--ratio", "0.5", "--method-arg", "nope=1"], "method dart has no parameter 'nope'"),
        (["--method", "cdpruner", "--ratio", "0.5", "--method-arg", "variant=foo"], "one of paper, openvino"),
        (["--method", "cdpruner", "--ratio", "0.5", "--method-arg", "relevance_weight=2"], "relevance_weight=2"),
        (["--method", "cdpruner", "--ratio", "0.5", "--method-arg", "split=3"], "split=3"),
        (["--method", "dart"], "give --ratio R"),
        (["--method", "dart", "--ratio", "1.5"], "--ratio 1.5 is outside [0, 1)"),
        (["--method", "dart", "--keep", "10"], "takes --ratio; --keep is pre-LLM"),
        (["--keep", "8", "--input-method", "nope", "--input-ratio", "0.5"], "unknown --input-method 'nope'"),
        (["--keep", "8", "--input-method", "dart"], "give --input-ratio R"),
        (["--keep", "8", "--input-ratio", "0.5"], "--input-method-arg/--input-ratio need --input-method"),
        (["--method", "dart", "--ratio", "0.5", "--input-method", "cdpruner"], "use it alone"),
        (
            ["--keep", "8", "--input-method", "dart", "--input-ratio", "0.5", "--input-method-arg", "text_pivots=q"],
            "--input-method-arg text_pivots='q': expected int",
        ),
        # not supported yet: one line, "not supported yet"
        (["--keep", "8", "--input-method", "dart", "--input-ratio", "0.5", "--llm-method", "fastv"], "--llm-method"),
        (["--method", "dart", "--ratio", "0.5", "--buckets", "8,16"], "--buckets is not supported yet"),
        (["--method", "dart", "--ratio", "0.5", "--dtype", "fp16"], "--dtype fp16/bf16 is not supported yet"),
        (["--method", "dart", "--ratio", "0.5", "--quantize", "int8"], "--quantize is not supported yet"),
    ],
)
def test_usage_errors_are_one_line_and_leave_nothing_behind(args, fragment, tmp_path, capsys):
    code, _, err = run_cli(["compile", "llava-tiny", *args, "-o", str(tmp_path / "out")], capsys)
    assert code == 2
    _one_error_line(err, fragment)
    assert "[1/" not in err  # refused before the model loads
    assert list(tmp_path.iterdir()) == []


class _UnprunedMultiCrop:
    """An adapter's answers for unpruned multi-crop pictures: no finite set of span lengths, the longest 2928."""

    def image_token_counts(self, keep, several_pictures=False):
        return None

    def max_image_tokens(self, keep):
        return 2928


def test_cdpruner_on_unpruned_multi_crop_pictures_plans_one_selector_for_any_length():
    """Spans whose length follows the aspect ratio get ONE selector for any length, CDPruner's as DART's (its
    greedy an ONNX Loop of len(keep_rows) steps); the arguments are checked at the longest span, before tracing."""
    from types import SimpleNamespace

    from tpc.compiler.input_stage import input_plan

    settings = SimpleNamespace(input_method="cdpruner", input_method_args={"variant": "openvino"}, input_ratio=0.5)
    plan = input_plan(settings, _UnprunedMultiCrop(), 576)
    assert plan["spans"] == {} and plan["any_length"] == {"graph": "select_input", "max_image_tokens": 2928}
    assert plan["parameters"] == {"variant": "openvino", "relevance_weight": 0.5, "split": 1}
    bad = SimpleNamespace(input_method="cdpruner", input_method_args={"relevance_weight": "2"}, input_ratio=0.5)
    with pytest.raises(UsageError, match="relevance_weight") as info:
        input_plan(bad, _UnprunedMultiCrop(), 576)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    """LLaVA-OneVision (no [CLS]): received attention keeps 4 tokens per crop, then CDPruner keeps 10 % of
    every picture's rows; one selector per crop count of the pinpoints. Compiled without the full
    verification (its crops-to-rows layout check takes a minute); the LLM-input check runs here."""
    from tpc.compiler.verify_input import verify_input_stage
    from tpc.models.families import make_adapter
    from tpc.models.presets import PRESETS, build_preset
    from tpc.runtimes.compiled_model import CompiledModel

    out = tmp_path_factory.mktemp("input") / "ov"
    settings = CompileSettings(
        model="llava-onevision-tiny",
        output=out,
        method="received",
        keep=4,
        input_method="cdpruner",
        input_ratio=0.9,
        target="onnx",
        verify=False,
    )
    compile_model(settings, lambda stage: None)
    manifest = json.loads((out / "manifest.json").read_text())
    compiled = CompiledModel.load(out)
    adapter = make_adapter(*build_preset(PRESETS["llava-onevision-tiny"]))
    return manifest, verify_input_stage(compiled.graphs, adapter, compiled.runtime)


def test_composition_compiles_one_selector_per_span_length_and_verifies_each(onevision):
    manifest, checked = onevision
    selection = manifest["input_selection"]
    spans = {int(n): span for n, span in selection["spans"].items()}
    assert len(spans) > 1 and all(n % 4 == 0 for n in spans)
    assert all(span["keep"] == max(1, -(-n // 10)) for n, span in spans.items())  # ceil(n * 0.1)
    assert {span["graph"] for span in spans.values()} <= set(manifest["graphs"])
    assert manifest["method"]["name"] == "received+cdpruner" and manifest["runtime"]["input_selection"] == selection
    assert sorted(r["image_tokens"] for r in checked["selectors"]) == sorted(spans)
    assert all(r["passed"] and r["indices_equal"] for r in checked["selectors"])
    assert checked["end_to_end"]["passed"] and checked["end_to_end"]["image_tokens"] == max(spans)


@pytest.mark.parametrize("method,ratio", [("dart", 0.75), ("cdpruner", 0.98)])
def test_trt_plan_profiles_the_input_selector_and_the_check_passes(method, ratio, tmp_path):
    out = tmp_path / "trt"
    settings = CompileSettings(
        model="llava-tiny", output=out, method=method, ratio=ratio, target="trt", verify=False, build_engines=False
    )
    compile_model(settings, lambda stage: None)
    manifest = json.loads((out / "manifest.json").read_text())
    shapes = manifest["trt_plan"]["engines"]["select_input"]["profiles"][0]["shapes"]
    assert set(shapes) == {"inputs_embeds", "attention_mask", "position_ids", "image_start", "text_mask"}
    assert shapes["attention_mask"]["min"] == [1, 577]  # the 576-row span and at least one other row
    report = {r["graph"]: r for r in manifest["trt_check"]}["select_input"]
    assert report["blockers"] == [], report  # TopK's K is a constant; ArgMax and the pairwise ranks pass
