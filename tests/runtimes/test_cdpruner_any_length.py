"""CDPruner at the LLM input on UNPRUNED multi-crop pictures (LLaVA-NeXT): a span's length follows its picture's
aspect ratio, so ONE selector takes the span length and the quota as the lengths of ``image_rows`` and
``keep_rows``; its greedy MAP is an ONNX Loop of ``len(keep_rows)`` steps. End to end against the naive
DPP at each span length, the compile-time check, and the TensorRT plan and static check of that graph.

R = 0.99 keeps at most 30 rows of a span: the naive reference recomputes determinants (its cost grows as
keep^2 * n) and the tiny preset's 64-wide embeddings have rank 64, past which every gain is rounding noise.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tests.runtimes.test_input_selection import PROMPTS, _capture, _picture
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.methods.llm_input import input_keep, input_reference
from tpc.runtimes.compiled_model import CompiledModel

RATIO = 0.99


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("any-length") / "next-cdpruner"
    settings = CompileSettings(
        model="llava-next-tiny", output=out, method="cdpruner", ratio=RATIO, target="onnx", verify=False
    )
    compile_model(settings, lambda stage: None)
    return out, CompiledModel.load(out)


def test_a_tall_and_a_wide_picture_in_one_batch_keep_what_the_naive_dpp_keeps(compiled):
    _, model = compiled
    selection = model.runtime["input_selection"]
    assert selection["method"] == "cdpruner" and selection["spans"] == {}
    assert selection["any_length"]["graph"] == "select_input"
    calls = _capture(model)
    pictures = [_picture(700, 300, 4), _picture(300, 700, 5)]  # tall, wide
    result = model.generate(PROMPTS, pictures, max_new_tokens=2, stop_at_eos=False)
    assert len({int(n) for n in result.image_tokens}) == 2 and len(calls) == 2  # two span lengths, one graph
    reference = input_reference("cdpruner")
    for name, feeds, outputs in calls:
        n, keep = len(feeds["image_rows"]), len(feeds["keep_rows"])
        assert name == "select_input" and keep == input_keep(n, RATIO) and outputs[3].shape == (1, keep)
        embeds = torch.from_numpy(feeds["inputs_embeds"])
        image = torch.stack([embeds[b, s : s + n] for b, s in enumerate(feeds["image_start"].tolist())])
        want = reference(image, embeds, torch.from_numpy(feeds["text_mask"]), keep, **selection["parameters"])
        assert np.array_equal(outputs[3], want.numpy()), n
        row = [b for b, count in enumerate(result.image_tokens) if int(count) == n][0]
        assert np.array_equal(result.input_kept_indices[row][:keep], outputs[3][0])


def test_the_compile_check_is_exact_on_the_first_picks_and_catches_a_short_loop(compiled):
    """At the longest span (2928 rows, quota 30) the first 16 picks equal the naive DPP and the full quota
    contains them; a selector that runs one step too few fails both (checked on spans of up to 101 rows)."""
    from tpc.compiler.verify_input import verify_input_selectors

    _, model = compiled
    plan = model.runtime["input_selection"]
    results = verify_input_selectors(model.graphs, plan, 64, crop_tokens=576)
    assert [r["image_tokens"] for r in results] == [577, 1465, 2928]
    assert all(r["passed"] for r in results), results
    assert (results[-1]["keep"], results[-1]["exact_keep"], results[-1]["full_quota_ok"]) == (30, 16, True)

    class OneStepShort:
        def run_graph(self, name, feeds):
            return model.graphs.run_graph(name, {**feeds, "keep_rows": feeds["keep_rows"][:-1]})

    small = {**plan, "ratio": 0.8, "any_length": {**plan["any_length"], "max_image_tokens": 101}}
    assert all(r["passed"] for r in verify_input_selectors(model.graphs, small, 64, crop_tokens=576))
    short = verify_input_selectors(OneStepShort(), small, 64, crop_tokens=576)[-1]  # 101 rows, quota 21
    assert short["exact_keep"] == 16 and not short["passed"]
    assert not short["indices_equal"] and not short["full_quota_ok"]


def test_tensorrt_plan_profiles_the_lengths_and_the_loop_passes_the_check(compiled):
    from tpc.compiler.trt_check import check_graph
    from tpc.compiler.trt_plan import input_engines
    from tpc.errors import UsageError

    out, model = compiled
    runtime = {**model.runtime, "hidden_size": 64}
    (profile,) = input_engines(runtime, 2, 3500, 600)["select_input"]
    shapes = profile["shapes"]
    assert shapes["image_rows"] == {"min": [1], "opt": [2928], "max": [2928]}
    assert shapes["keep_rows"] == {"min": [1], "opt": [30], "max": [30]}
    manifest = json.loads((out / "manifest.json").read_text())
    graph = onnx.load(str(out / manifest["graphs"]["select_input"]["file"]))  # plain ONNX (--target onnx)
    report = check_graph(graph, "select_input", [profile])
    assert report.blockers == [] and report.ops["Loop"] == 1, report.blockers
    assert [w for w in report.warnings if "Loop" in w] == []  # the trip count is Shape(keep_rows)
    greedy = [n for n in graph.graph.node if n.op_type == "Loop"][0]
    assert greedy.input[1] == "" and len(greedy.attribute[0].g.output) == 4  # counted, no scan output
    wide = {**runtime, "input_selection": {**runtime["input_selection"], "ratio": 0.5}}
    wide["input_selection"]["any_length"] = {"graph": "select_input", "max_image_tokens": 8829}
    with pytest.raises(UsageError, match="TopK takes at most 3840"):
        input_engines(wide, 2, 9000, 600)
