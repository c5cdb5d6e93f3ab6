"""DART inside the LLM (``dart-llm``): compiled artifacts against the eager reference on HF's own layers.

Pivots by the L1 norm of layer K-1's post-RoPE keys, cosines on the final-normed hidden states
entering layer K, DART's greedy, ORIGINAL positions: kept image tokens, greedy tokens and per-layer
KV lengths equal ``reference_generate`` (llava-tiny batch 1 and a left-padded batch 2 with different
prompts, after FasterVLM, and Qwen2.5-VL on a real picture with M-RoPE positions); the selector drops
planted duplicates first; the any-length selector (unpruned multi-crop pictures) equals the reference
at spans shorter than the pivots; bad arguments are one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.verify_llm import _reference_dart_select, expected_kv_lengths, verify_selectors
from tpc.errors import UsageError
from tpc.methods import METHODS
from tpc.methods.dart import dart_select, dart_select_any_length
from tpc.methods.in_llm import DART, LLM_METHODS, ORIGINAL, PruningPlan, plan_for_length
from tpc.methods.in_llm_reference import reference_generate
from tpc.runtimes.compiled_model import CompiledModel

PROMPTS = ["What is in the picture?", "Describe the colours you can see in this image, please."]
NEW_TOKENS = 5


def _scale_final_norm(model):
    """The tiny presets' final RMSNorm weight is all ones, which makes DART's cosines the same with or
    without it; a seeded non-uniform weight makes the norm count (in the compiled graphs and the reference)."""
    norm = model.model.language_model.norm
    with torch.no_grad():
        norm.weight.mul_(torch.exp(0.8 * torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(11))))
    return model


@pytest.fixture(scope="module")
def llava():
    """llava-tiny with a non-uniform final norm weight (``_scale_final_norm``)."""
    from tpc.models.llava import LlavaAdapter
    from tpc.models.presets import PRESETS, build_preset

    model, processor = build_preset(PRESETS["llava-tiny"])
    return LlavaAdapter(_scale_final_norm(model), processor)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Compile once per name; llava-tiny gets the ``llava`` fixture's final norm weight."""
    import tpc.models.loading as loading

    root = tmp_path_factory.mktemp("dart-llm")
    built = {}
    original = loading.build_preset

    def scaled(preset):
        model, processor = original(preset)
        return (_scale_final_norm(model) if preset.name == "llava-tiny" else model), processor

    def get(name: str, **settings):
        if name not in built:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(loading, "build_preset", scaled)
                built[name] = compile_model(CompileSettings(output=root / name, target="ort", **settings))
        return built[name]

    return get


@pytest.fixture(scope="module")
def alone(build):
    """llava-tiny, every visual token into the LLM, DART before decoder layer 2 removing 75 %."""
    return build("alone", model="llava-tiny", method="dart-llm", method_args={"layer": "2"}, ratio=0.75)


def _llava_reference(compiled, adapter, batch):
    runtime = compiled.runtime
    _, features, _ = METHODS.get("fastervlm").reference(adapter, torch.from_numpy(batch.pixel_values), runtime["keep"])
    ids = torch.from_numpy(batch.input_ids)
    with torch.no_grad():
        embeds = adapter.embedding_step()(ids, features)
    start = (ids == runtime["image_token_id"]).to(torch.int64).argmax(dim=1)
    plan = PruningPlan.from_dict(runtime["llm_pruning"])
    mask = torch.from_numpy(batch.attention_mask)
    return plan, reference_generate(adapter.model, embeds, mask, start, plan, NEW_TOKENS)


def _check_llava(root, adapter, images, prompts):
    compiled = CompiledModel.load(root, runtime="ort")
    result = compiled.generate(prompts, images, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    batch = compiled.encoder(prompts, images, max_new_tokens=NEW_TOKENS)
    plan, ref = _llava_reference(compiled, adapter, batch)
    (stage,) = plan.stages
    assert plan.method == "dart-llm" and stage.rule == DART and stage.positions == ORIGINAL
    assert result.token_ids == ref.tokens
    assert np.array_equal(result.llm_kept_indices, ref.kept[0].numpy())
    prompt_len = batch.input_ids.shape[1]
    assert result.kv_lengths == ref.kv_lengths == expected_kv_lengths(plan, prompt_len, NEW_TOKENS - 1)
    assert result.kv_lengths[stage.layer - 1] == prompt_len + NEW_TOKENS - 1  # before the stage: full
    assert result.kv_lengths[stage.layer] == prompt_len - (plan.image_tokens - stage.keep) + NEW_TOKENS - 1
    return compiled, result


@pytest.mark.parametrize("batch_size", [1, 2])
def test_alone_equals_the_eager_reference(alone, llava, demo_image, batch_size):
    images = [demo_image, demo_image.rotate(90, expand=True)][:batch_size]
    compiled, result = _check_llava(alone, llava, images, PROMPTS[:batch_size])  # sample 2: left-padded
    assert result.llm_kept_indices.shape == (batch_size, 144)  # ceil(576 * 0.25)
    verification = compiled.artifact.manifest["verification"]
    assert [r["kept"] for r in verification["llm_pruning"]] == [["exact"], ["exact"]]
    assert all(r["passed"] for r in verification["llm_pruning"] + verification["llm_selectors"])


def test_after_fastervlm_equals_the_eager_reference(build, llava, demo_image):
    root = build(
        "composed",
        model="llava-tiny",
        method="fastervlm",
        ratio=0.5,
        llm_method="dart-llm",
        llm_method_args={"layer": "1", "text_pivots": "2"},
        llm_ratio=0.5,
    )
    images = [demo_image, demo_image.rotate(90, expand=True)]
    compiled, result = _check_llava(root, llava, images, PROMPTS)
    assert compiled.artifact.manifest["method"]["name"] == "fastervlm+dart-llm"
    assert result.llm_kept_indices.shape == (2, 144)  # ceil(288 * 0.5) of the 288 FasterVLM kept


def test_planted_duplicates_are_dropped_first(alone):
    """The compiled selector alone (576 image rows, keep 144, 4 + 4 pivots): rows that copy an image pivot
    have cosine 1 with every pivot (all pivots share a direction u), the others point away from u. Every
    pivot takes the least similar rows, so the copies are kept only once nothing else is left."""
    compiled = CompiledModel.load(alone, runtime="ort")
    plan = PruningPlan.from_dict(compiled.runtime["llm_pruning"])
    n, keep, d = plan.image_tokens, plan.stages[0].keep, compiled.runtime["hidden_size"]
    g = torch.Generator().manual_seed(7)
    u = torch.randn(d, generator=g)
    for diverse in (300, 100):  # more diverse rows than the pool needs, then fewer
        t, starts = n + 12, torch.tensor([4, 7])
        normed = u + 0.1 * torch.randn(2, t, d, generator=g)  # text rows (and pivots) along u
        score = torch.rand(2, t, generator=g)  # key L1 norms
        mask = torch.ones(2, t, dtype=torch.int64)
        mask[1, :3] = 0
        duplicates, others = [], []
        for b, start in enumerate(starts.tolist()):
            order = torch.randperm(n - 4, generator=g) + 4
            score[b, start : start + 4] = torch.tensor([9.0, 8.0, 7.0, 6.0])  # the image pivots: rows 0..3
            away = order[:diverse]
            normed[b, start + away] = -u + 0.3 * torch.randn(diverse, d, generator=g)
            copies = order[diverse:]
            normed[b, start + copies] = normed[b, start].clone()  # exact copies of the first pivot
            duplicates.append(set(copies.tolist()))
            others.append(set(away.tolist()))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = torch.randn(2, t, d, generator=g)
        feeds = {
            "hidden": hidden.numpy(),
            "score": score.numpy(),
            "position_ids": positions.numpy(),
            "attention_mask": mask.numpy(),
            "image_start": starts.numpy(),
            "normed_hidden": normed.numpy(),
        }
        got = compiled.graphs.run_graph("select_1", feeds)
        want = _reference_dart_select(hidden, score, normed, positions, mask, starts, n, keep, plan.parameters)
        for g_out, w_out in zip(got, want, strict=True):
            np.testing.assert_array_equal(g_out, w_out.numpy())
        for b in range(2):
            kept = set(got[3][b].tolist())
            assert {0, 1, 2, 3} <= kept
            if diverse >= keep - 4:
                assert not kept & duplicates[b]  # no copy survives while diverse rows are left
            else:
                assert others[b] <= kept and len(kept & duplicates[b]) == keep - 4 - diverse


def test_qwen_with_mrope_positions_equals_the_eager_reference(build, tmp_path):
    """Qwen2.5-VL on a real picture's prompt: HF's own embeddings and ``get_rope_index`` positions
    [B,S,3] into the reference; kept image tokens and greedy tokens equal the compiled artifact's."""
    from tpc.models.presets import PRESETS, build_preset
    from tpc.models.qwen2_5_vl import QwenVLAdapter
    from tpc.models.qwen_reference import hf_inputs
    from tpc.runtimes.decoders import llm_plan_for

    root = build("qwen", model="qwen2.5-vl-tiny", method="dart-llm", ratio=0.5, image_sizes=[(168, 280)])
    qwen = QwenVLAdapter(*build_preset(PRESETS["qwen2.5-vl-tiny"]))
    model = CompiledModel.load(root)
    pixels = np.random.default_rng(21).integers(0, 256, size=(168, 280, 3), dtype=np.uint8)
    picture, prompt = Image.fromarray(pixels), PROMPTS[1]
    got = model.generate([prompt], [picture], max_new_tokens=NEW_TOKENS)

    inputs = hf_inputs(qwen.processor, picture, prompt)
    ids = inputs["input_ids"]
    with torch.no_grad():
        hf = qwen.model.model
        positions, _ = hf.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
        features = hf.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
        embeds = qwen.model.get_input_embeddings()(ids)
        is_image = ids[0] == qwen.text.image_token_id
        embeds[0, is_image] = features
    plan, _ = llm_plan_for(model.runtime, int(is_image.sum()))
    assert plan.method == "dart-llm" and plan.stages[0].keep == -(-plan.image_tokens // 2)
    start = torch.tensor([int(torch.nonzero(is_image)[0])])
    ref = reference_generate(
        qwen.model, embeds, torch.ones_like(ids), start, plan, NEW_TOKENS, positions=positions.permute(1, 2, 0)
    )
    eos = set(model.runtime["eos_token_ids"])
    ends = [i for i, t in enumerate(ref.tokens[0]) if t in eos]
    assert got.token_ids[0] == ref.tokens[0][: ends[0] + 1 if ends else None]  # tpc stops after EOS
    np.testing.assert_array_equal(got.llm_kept_indices[0], ref.kept[0][0].numpy())
    assert got.kv_lengths[plan.stages[0].layer] < got.kv_lengths[0]


@pytest.mark.parametrize("image_pivots,text_pivots", [(4, 4), (2, 0)])
def test_any_length_kernel_equals_the_fixed_one(image_pivots, text_pivots):
    """The quota from an input's length (unpruned multi-crop pictures) picks what the fixed-count kernel
    picks, also when the span is shorter than the image pivots or keeps fewer tokens than them."""
    g = torch.Generator().manual_seed(3)
    for n, keep in [(1, 1), (3, 1), (3, 2), (6, 3), (17, 5), (40, 30)]:
        image, text = torch.randn(2, n, 16, generator=g), torch.randn(2, 9, 16, generator=g)
        image[:, -1] = image[:, 0]  # a duplicated row
        text_mask = torch.ones(2, 9, dtype=torch.bool)
        text_mask[1, :4] = False
        image_key, text_key = torch.rand(2, n, generator=g), torch.rand(2, 9, generator=g)
        args = (image, text, text_mask)
        want = dart_select(*args, keep, image_pivots, text_pivots, image_key, text_key)
        got = dart_select_any_length(*args, torch.arange(keep), image_pivots, text_pivots, image_key, text_key)
        assert torch.equal(got, want), (n, keep)


class _Session:
    """``run_graph`` over ONNX files exported on their own."""

    def __init__(self, paths):
        import onnxruntime as ort

        self.sessions = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for name, p in paths}

    def run_graph(self, name, feeds):
        return self.sessions[name].run(None, feeds)


def test_exported_selectors_for_short_spans_and_any_length(tmp_path):
    """The any-length selector (one graph for every block length) and a fixed one, exported alone, against
    the per-sample reference at spans of 1..33 rows (fewer rows or a smaller quota than the 4 image pivots
    included): batch 2, left padding, duplicated rows, tied key norms."""
    from tpc.compiler.staged_graphs import export_dynamic_select, export_select

    rule = {"method": "dart-llm", "args": {"layer": "1"}, "ratio": 0.75, "composed": False}
    dynamic = _Session([("select_1", export_dynamic_select(plan_for_length(rule, 4, 33), 1, 32, 256, tmp_path))])
    for n in (1, 3, 7, 33):  # quotas 1, 1, 2, 9
        plan = plan_for_length(rule, 4, n)
        assert [r["passed"] for r in verify_selectors(dynamic, plan, 32, None, dynamic=True)] == [True], n
    short = plan_for_length(rule, 4, 7)  # keeps 2: fewer than the image pivots
    (tmp_path / "fixed").mkdir()
    fixed = _Session([("select_1", export_select(short, 1, 32, 256, tmp_path / "fixed"))])
    assert [r["passed"] for r in verify_selectors(fixed, short, 32, None)] == [True]


@pytest.mark.parametrize(
    "args,ratio,composed,message",
    [
        ({"layer": "0"}, 0.5, False, "--method-arg layer=0: must be in [1, 3]"),
        ({"layer": "4"}, 0.5, True, "--llm-method-arg layer=4: must be in [1, 3]"),
        ({"image_pivots": "0"}, 0.5, False, "image_pivots=0: must be at least 1"),
        ({"text_pivots": "-1"}, 0.5, True, "--llm-method-arg text_pivots=-1: must be at least 0"),
        ({"image_pivots": "four"}, 0.5, False, "expected an integer"),
        ({"pivots": "4"}, 0.5, False, "no parameter 'pivots'"),
        ({}, None, False, "give --ratio R"),
        ({}, None, True, "give --llm-ratio R"),
        ({}, 1.0, False, "outside [0, 1)"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(args, ratio, composed, message):
    with pytest.raises(UsageError) as info:
        LLM_METHODS.get("dart-llm").plan(args, 4, 576, ratio, composed)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_compile_refuses_bad_arguments_and_methods_lists_it(tmp_path, capsys):
    out = tmp_path / "refused"
    settings = CompileSettings(model="llava-tiny", output=out, method="dart-llm", method_args={"layer": "9"}, ratio=0.5)
    with pytest.raises(UsageError, match=r"layer=9: must be in \[1, 3\]"):
        compile_model(settings)
    assert not out.exists()
    code, listing, _ = run_cli(["methods"], capsys)
    assert code == 0
    lines = listing.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("dart-llm "))
    assert "image_pivots=4" in lines[row + 1] and "before layer K" in lines[row + 1]
    assert "prune point: in-LLM" in lines[row + 2]


def test_tensorrt_plan_gives_the_selector_its_normed_rows(tmp_path, capsys):
    """--target trt: the DART selector's extra input (the final-normed rows) has the hidden rows' profile, and
    the static check finds no blocker in it."""
    import json

    out = tmp_path / "trt"
    code, _, err = run_cli(
        [
            "compile",
            "llava-tiny",
            "--method",
            "dart-llm",
            "--ratio",
            "0.5",
            "--target",
            "trt",
            "--no-build",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    (profile,) = manifest["trt_plan"]["engines"]["select_1"]["profiles"]
    assert profile["shapes"]["normed_hidden"] == profile["shapes"]["hidden"]
    assert not [b for report in manifest["trt_check"] for b in report["blockers"]]
