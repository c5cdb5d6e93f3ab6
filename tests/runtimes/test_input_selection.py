"""Selection at the LLM input at run time: DART alone on LLaVA-1.5's tiny preset, CDPruner after a
pre-LLM method on LLaVA-NeXT's (pictures of different crop grids: spans of different lengths).

The selector's feeds are captured as the runtime sends them and the kept indices recomputed
with the naive per-sample references (``tpc.methods.llm_input_reference``); the survivors
keep their unpruned positions and the decoder continues after the unpruned length."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ASSETS, run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.methods.llm_input import input_reference
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.input_select import select_at_input, text_rows

PROMPTS = ["Which sign is red?", "Describe every colour you can see in this picture, in detail please."]
DEMO = Image.open(ASSETS / "demo.png").convert("RGB")


def _picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


CONFIGS = {
    "dart": dict(model="llava-tiny", method="dart", ratio=0.5),
    "cdpruner": dict(model="llava-next-tiny", method="fastervlm", keep=8, input_method="cdpruner", input_ratio=0.5),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def compiled(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("input") / request.param
    compile_model(CompileSettings(output=out, **CONFIGS[request.param]), lambda stage: None)
    return request.param, out, CompiledModel.load(out)


def _capture(model: CompiledModel) -> list:
    """Wrap the runtime's ``run_graph``: every LLM-input selector call's (name, feeds, outputs)."""
    calls, run = [], model.graphs.run_graph

    def recording(name, feeds):
        outputs = run(name, feeds)
        if name.startswith("select_input"):
            calls.append((name, {k: np.array(v) for k, v in feeds.items()}, outputs))
        return outputs

    model.graphs.run_graph = recording
    return calls


def _span(selection: dict, name: str) -> tuple[int, int]:
    """(span length, kept) of the selector graph ``name``."""
    return next((int(n), s["keep"]) for n, s in selection["spans"].items() if s["graph"] == name)


def _expected(selection: dict, name: str, feeds: dict) -> torch.Tensor:
    n, keep = _span(selection, name)
    embeds = torch.from_numpy(feeds["inputs_embeds"])
    image = torch.stack([embeds[b, s : s + n] for b, s in enumerate(feeds["image_start"].tolist())])
    reference = input_reference(selection["method"])
    return reference(image, embeds, torch.from_numpy(feeds["text_mask"]), keep, **selection["parameters"])


def test_kept_indices_follow_the_prompt_and_equal_the_reference(compiled):
    kind, _, model = compiled
    calls = _capture(model)
    images = [DEMO, DEMO] if kind == "dart" else [_picture(700, 300, 1), _picture(700, 300, 1)]
    result = model.generate(PROMPTS, images, max_new_tokens=3, stop_at_eos=False)
    selection = model.runtime["input_selection"]
    assert len(calls) == 1  # one span length: one selector call for the batch
    name, feeds, outputs = calls[0]
    assert np.array_equal(result.input_kept_indices, outputs[3])
    assert np.array_equal(result.input_kept_indices, _expected(selection, name, feeds).numpy())
    assert not np.array_equal(result.input_kept_indices[0], result.input_kept_indices[1])  # same picture
    real = feeds["attention_mask"] != 0
    image_rows = np.zeros_like(real)
    n, _ = _span(selection, name)
    for b, start in enumerate(feeds["image_start"]):
        image_rows[b, start : start + n] = True
    assert np.array_equal(feeds["text_mask"], (real & ~image_rows).astype(np.int64))
    # one at a time: the same kept set as in the batch
    single = model.generate(PROMPTS[1:], images[1:], max_new_tokens=1)
    assert np.array_equal(single.input_kept_indices[0], result.input_kept_indices[1])


def test_survivors_keep_their_positions_and_decoding_continues_after_the_unpruned_length(compiled):
    _, _, model = compiled
    calls = _capture(model)
    result = model.generate(PROMPTS[:1], [_picture(500, 480, 3)], max_new_tokens=3, stop_at_eos=False)
    _, feeds, (embeds, positions, mask, kept) = calls[0]
    start, n_total = int(feeds["image_start"][0]), feeds["position_ids"].shape[1]
    dropped = n_total - positions.shape[1]
    n = kept.shape[1] + dropped
    original = feeds["position_ids"][0]
    index = np.concatenate([np.arange(start), start + kept[0], np.arange(start + n, n_total)])
    assert np.array_equal(positions[0], original[index]) and positions[0, -1] == original[-1]
    assert np.array_equal(embeds[0], feeds["inputs_embeds"][0, index])
    assert result.kv_lengths == [n_total - dropped + 2] * len(result.kv_lengths)  # the prompt is shorter


def test_batch_with_a_text_only_sample_and_spans_of_different_lengths(compiled):
    """The runtime step itself: a sample without an image is left whole, samples are grouped by span
    length, and the shortened rows are left-padded to one length."""
    kind, _, model = compiled
    runtime = model.runtime
    spans = {int(n): s["keep"] for n, s in runtime["input_selection"]["spans"].items()}
    lengths = sorted(spans)[:2] if len(spans) > 1 else [max(spans)]
    image_id = runtime["image_token_id"]
    t = max(lengths) + 9
    ids = np.full((len(lengths) + 1, t), 5, dtype=np.int64)
    mask = np.ones_like(ids)
    for row, n in enumerate(lengths):
        mask[row, : t - n - 7] = 0  # left padding up to the prompt
        ids[row, t - n - 4 : t - 4] = image_id
    embeds = np.random.default_rng(0).standard_normal((len(ids), t, runtime["hidden_size"])).astype(np.float32)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    got_embeds, got_mask, got_positions, kept = select_at_input(model.graphs, runtime, ids, embeds, mask, positions)
    assert got_embeds.shape[1] == t  # the text-only row is the longest
    assert np.array_equal(got_embeds[-1], embeds[-1]) and np.array_equal(got_positions[-1], positions[-1])
    assert (kept[-1] == -1).all()
    reference = input_reference(runtime["input_selection"]["method"])
    params = runtime["input_selection"]["parameters"]
    for row, n in enumerate(lengths):
        start = t - n - 4
        image = torch.from_numpy(embeds[row : row + 1, start : start + n])
        text_mask = torch.from_numpy(text_rows(ids[row : row + 1], mask[row : row + 1], image_id))
        want = reference(image, torch.from_numpy(embeds[row : row + 1]), text_mask, spans[n], **params)[0].numpy()
        assert np.array_equal(kept[row, : spans[n]], want) and (kept[row, spans[n] :] == -1).all()
        real = got_mask[row] != 0
        index = np.concatenate([np.arange(start), start + want, np.arange(start + n, t)])
        index = index[mask[row, index] != 0]
        assert np.array_equal(got_positions[row][real], positions[row, index])
        assert np.array_equal(got_embeds[row][real], embeds[row, index])


def test_run_json_reports_the_input_kept_indices(compiled, capsys):
    _, out, model = compiled
    code, stdout, err = run_cli(
        [
            "run",
            str(out),
            "--image",
            str(ASSETS / "demo.png"),
            "--prompt",
            PROMPTS[0],
            "--json",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    payload = json.loads(stdout.strip().splitlines()[-1])
    keeps = {span["keep"] for span in model.runtime["input_selection"]["spans"].values()}
    assert len(payload["input_kept_indices"]) in keeps and payload["timings_ms"]["select_input_ms"] > 0


def test_dart_on_unpruned_multi_crop_spans_of_any_length(tmp_path):
    """LLaVA-NeXT unpruned: a span's length follows its picture's aspect ratio (unpad + newlines), so DART runs
    in ONE selector that takes the length and the quota as input lengths. A tall and a wide picture in one batch:
    each span keeps ceil(n * (1 - R)) rows, equal to the naive reference at its own length (CDPruner's form:
    tests/runtimes/test_cdpruner_any_length.py)."""
    from tpc.methods.llm_input import input_keep

    out = tmp_path / "next-dart"
    compile_model(CompileSettings(model="llava-next-tiny", output=out, method="dart", ratio=0.9), lambda stage: None)
    model = CompiledModel.load(out)
    selection = model.runtime["input_selection"]
    assert selection["spans"] == {} and selection["any_length"]["graph"] == "select_input"
    calls = _capture(model)
    pictures = [_picture(700, 300, 4), _picture(300, 700, 5)]
    result = model.generate(PROMPTS, pictures, max_new_tokens=2, stop_at_eos=False)
    lengths = sorted({int(n) for n in result.image_tokens})
    assert len(lengths) == 2 and len(calls) == 2  # one call per span length, the same graph
    reference = input_reference("dart")
    for name, feeds, outputs in calls:
        n = len(feeds["image_rows"])
        keep = input_keep(n, 0.9)
        assert name == "select_input" and len(feeds["keep_rows"]) == keep and outputs[3].shape[1] == keep
        embeds = torch.from_numpy(feeds["inputs_embeds"])
        image = torch.stack([embeds[b, s : s + n] for b, s in enumerate(feeds["image_start"].tolist())])
        want = reference(image, embeds, torch.from_numpy(feeds["text_mask"]), keep, **selection["parameters"])
        assert np.array_equal(outputs[3], want.numpy())


def test_several_pictures_each_keep_their_own_quota(compiled):
    """Per picture span (METHODS.md): a sample with two pictures (their spans touching, so only the pictures'
    row counts tell them apart) beside a one-picture and a text-only sample. Each span is selected by the
    reference with its own quota, and the text rows are the rows of no picture; survivors keep positions."""
    kind, _, model = compiled
    runtime = model.runtime
    spans = {int(n): s["keep"] for n, s in runtime["input_selection"]["spans"].items()}
    n = min(spans)
    image_id = runtime["image_token_id"]
    t = 2 * n + 12
    ids = np.full((3, t), 5, dtype=np.int64)
    mask = np.ones_like(ids)
    layout = [[(3, n), (3 + n, n)], [(t - n - 4, n)], []]  # two touching spans; one span; text only
    mask[1, : t - n - 9] = 0
    mask[2, :4] = 0
    for row, row_spans in enumerate(layout):
        for start, length in row_spans:
            ids[row, start : start + length] = image_id
    rng = np.random.default_rng(1)
    embeds = rng.standard_normal((3, t, runtime["hidden_size"])).astype(np.float32)
    embeds[0, 3 + n + 1] = embeds[0, 3 + 2]  # a row of picture 2 equal to one of picture 1: spans stay apart
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    got_embeds, got_mask, got_positions, kept = select_at_input(
        model.graphs, runtime, ids, embeds, mask, positions, layout
    )
    reference = input_reference(runtime["input_selection"]["method"])
    params = runtime["input_selection"]["parameters"]
    text_mask = torch.from_numpy(text_rows(ids, mask, image_id))
    for row, row_spans in enumerate(layout):
        want, index, at, offset = [], [], 0, 0
        for start, length in row_spans:
            image = torch.from_numpy(embeds[row : row + 1, start : start + length])
            picks = reference(
                image, torch.from_numpy(embeds[row : row + 1]), text_mask[row : row + 1], spans[length], **params
            )[0].numpy()
            want.append(picks + offset)
            index += [np.arange(at, start), start + picks]
            at, offset = start + length, offset + length
        index = np.concatenate([*index, np.arange(at, t)])
        index = index[mask[row, index] != 0]
        real = got_mask[row] != 0
        assert np.array_equal(got_positions[row][real], positions[row, index])
        assert np.array_equal(got_embeds[row][real], embeds[row, index])
        if want:
            want = np.concatenate(want)
            assert np.array_equal(kept[row, : len(want)], want) and (kept[row, len(want) :] == -1).all()
        else:
            assert (kept[row] == -1).all()


def test_a_prompt_with_two_pictures_runs_end_to_end(compiled):
    """Two pictures in one prompt beside a one-picture prompt: every picture keeps its own quota."""
    kind, _, model = compiled
    pictures = [[DEMO, DEMO.rotate(90, expand=True)], [DEMO]]
    result = model.generate(PROMPTS, pictures, max_new_tokens=3)
    spans = {int(n): s["keep"] for n, s in model.runtime["input_selection"]["spans"].items()}
    for row, counts in enumerate(result.picture_tokens):
        quota = sum(spans[c] for c in counts)
        assert (result.input_kept_indices[row] >= 0).sum() == quota
        assert len(result.token_ids[row]) >= 1
