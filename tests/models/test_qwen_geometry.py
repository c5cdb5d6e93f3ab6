"""``tpc.models.qwen_geometry`` against transformers' own Qwen2-VL / Qwen2.5-VL code.

Grids against ``smart_resize`` and the PIL image processor; the per-patch vision tables against
``vision_utils.get_vision_position_ids`` / ``get_vision_window_index`` and the processor's ``patchify``;
the M-RoPE positions against ``get_rope_index`` of both model classes (called on a config-only stub,
no weights), and the first decode position against ``compute_3d_position_ids``' ``rope_deltas`` rule.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from tpc.models import qwen_geometry as qg

IMAGE, START, END = 151655, 151652, 151653  # <|image_pad|>, <|vision_start|>, <|vision_end|>
GRIDS = [(2, 2), (4, 4), (6, 10), (8, 8), (20, 36), (34, 50), (48, 32), (16, 8), (2, 30), (70, 70)]
SIDES = (1, 13, 27, 28, 29, 55, 56, 57, 100, 224, 333, 448, 640, 999, 1000, 1080, 1920, 3000, 5000)
PIXEL_RANGES = [(56 * 56, 14 * 14 * 4 * 1280), (4 * 28 * 28, 256 * 28 * 28), (256 * 28 * 28, 1280 * 28 * 28)]


def _stub(config_cls, model_cls):
    """An object with just what ``get_rope_index`` / ``compute_3d_position_ids`` read: no weights."""
    names = ("get_rope_index", "get_vision_position_ids", "compute_3d_position_ids")
    stub = type("Stub", (), {n: getattr(model_cls, n) for n in names})()
    stub.config, stub.rope_deltas = config_cls(), None
    return stub


STUBS = {"qwen2.5-vl": _stub(Qwen2_5_VLConfig, Qwen2_5_VLModel), "qwen2-vl": _stub(Qwen2VLConfig, Qwen2VLModel)}


def test_importing_it_needs_neither_torch_nor_transformers():
    code = "import sys, tpc.models.qwen_geometry; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("min_pixels,max_pixels", PIXEL_RANGES)
def test_grid_matches_smart_resize_and_the_processor(min_pixels, max_pixels):
    proc = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    for h, w in itertools.product(SIDES, SIDES):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                qg.image_grid(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
            continue
        assert qg.smart_resize(h, w, 28, min_pixels, max_pixels) == hf_smart_resize(h, w, 28, min_pixels, max_pixels)
        grid = qg.image_grid(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
        assert grid[0] * grid[1] == proc.get_number_of_image_patches(h, w, {}), (h, w)
        assert qg.grid_pixels(grid) == hf_smart_resize(h, w, 28, min_pixels, max_pixels)
    for h, w in [(1, 1), (100, 37), (480, 640), (1080, 1920), (1400, 300)]:
        thw = proc(images=[Image.new("RGB", (w, h))], return_tensors="np")["image_grid_thw"]
        assert thw.tolist() == [[1, *qg.image_grid(h, w, min_pixels=min_pixels, max_pixels=max_pixels)]]


@pytest.mark.parametrize("grid", GRIDS)
def test_vision_positions_match_hf_and_the_processor_patch_order(grid):
    ours = qg.vision_positions(grid)
    assert ours.dtype == np.int64 and ours.shape == (grid[0] * grid[1], 2)
    np.testing.assert_array_equal(ours, get_vision_position_ids(torch.tensor([[1, *grid]]), 2).numpy())
    # the processor's flattened patches really come in this order: paint each patch with its (h, w)
    hh, ww = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    image = np.stack([hh, ww, hh * 0]).repeat(14, axis=1).repeat(14, axis=2).astype(np.float32)
    patches, _, _ = Qwen2VLImageProcessorPil().patchify(image, 14, 2, 2)
    channels = patches.reshape(len(patches), 3, 2 * 14 * 14)[:, :2, 0]  # (C, T, ph, pw): first pixel per channel
    np.testing.assert_array_equal(channels.astype(np.int64), ours)


@pytest.mark.parametrize("window_size", [112, 224, 56])
@pytest.mark.parametrize("grid", GRIDS)
def test_window_ids_reproduce_hf_windows(grid, window_size):
    ids = qg.window_ids(grid, window_size=window_size)
    window_index, cu = get_vision_window_index(torch.tensor([[1, *grid]]), 2, window_size, 14)
    hf_perm = (window_index[:, None] * 4 + torch.arange(4)).reshape(-1).numpy()  # unit u, patch p -> 4u + p
    cu = cu.tolist()
    assert cu[0] == 0 and cu[-1] == grid[0] * grid[1] and ids.max() + 1 == len(cu) - 1
    for k, (lo, hi) in enumerate(itertools.pairwise(cu)):  # HF's window k, in processor-order patch indices
        assert set(hf_perm[lo:hi].tolist()) == set(np.flatnonzero(ids == k).tolist()), (grid, k)
    hf_position = np.argsort(hf_perm)  # where HF puts each processor-order patch
    np.testing.assert_array_equal(np.lexsort((hf_position, ids)), hf_perm)
    np.testing.assert_array_equal(np.argsort(ids, kind="stable"), hf_perm)


def test_window_ids_reject_a_window_smaller_than_a_merge_unit():
    with pytest.raises(ValueError, match="window_size"):
        qg.window_ids((4, 4), window_size=14)
    with pytest.raises(ValueError, match="multiples of merge"):
        qg.window_ids((5, 4))


@pytest.mark.parametrize("grid", GRIDS)
def test_merged_positions_match_hf(grid):
    for start in (0, 7):
        hf = STUBS["qwen2.5-vl"].get_vision_position_ids(start, torch.tensor([1, *grid]), 1, 2)
        np.testing.assert_array_equal(qg.merged_positions(grid, start=start), hf.numpy().T)


def _batch(samples, pad_to=None):
    """Left-padded (input_ids, attention_mask) from samples given as lists of text lengths / run lengths.

    A sample is a list of items: an int n = n text tokens, ("img", n) = START, n image tokens, END.
    """
    rng = np.random.default_rng(0)
    rows = []
    for items in samples:
        row = []
        for item in items:
            if isinstance(item, tuple):
                row += [START] + [IMAGE] * item[1] + [END]
            else:
                row += rng.integers(10, 1000, item).tolist()
        rows.append(row)
    return _left_pad(rows, pad_to or max(map(len, rows)))


def _left_pad(rows, length):
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :], mask[b, length - len(row) :] = row, 1
    return ids, mask


def _merged(grid):
    return grid[0] * grid[1] // 4


# sample 0: one image after some text; 1: two images (different grids); 2: text only; 3: image first
BATCH_GRIDS = [[(34, 50)], [(6, 10), (16, 8)], [], [(4, 4)]]
BATCH = [
    [5, ("img", _merged((34, 50))), 9],
    [3, ("img", _merged((6, 10))), 4, ("img", _merged((16, 8))), 2],
    [11],
    [("img", _merged((4, 4))), 6],
]


def _hf_rope(name, ids, mask, grids):
    thw = [[1, *g] for sample in grids for g in sample]
    pos, deltas = STUBS[name].get_rope_index(
        torch.from_numpy(ids),
        mm_token_type_ids=torch.from_numpy((ids == IMAGE).astype(np.int64)),
        image_grid_thw=torch.tensor(thw) if thw else None,
        attention_mask=torch.from_numpy(mask),
    )
    return pos.permute(1, 2, 0).numpy(), deltas


@pytest.mark.parametrize("name", list(STUBS))
def test_unpruned_positions_match_get_rope_index(name):
    ids, mask = _batch(BATCH, pad_to=500)
    ours = qg.mrope_positions(ids, mask, IMAGE, BATCH_GRIDS)
    hf, _ = _hf_rope(name, ids, mask, BATCH_GRIDS)
    assert ours.dtype == np.int64 and ours.shape == (*ids.shape, 3)
    np.testing.assert_array_equal(ours, hf)
    # kept=None per sample / per image is the same as unpruned
    kept = [None, [None, None], [], [None]]
    np.testing.assert_array_equal(qg.mrope_positions(ids, mask, IMAGE, BATCH_GRIDS, kept=kept), hf)


def test_text_only_positions_are_the_mask_cumsum():
    ids, mask = _batch([[4], [9], [1]])
    ours = qg.mrope_positions(ids, mask, IMAGE, [[], [], []])
    expected = np.clip(np.cumsum(mask, axis=1) - 1, 0, None) * mask
    np.testing.assert_array_equal(ours, np.repeat(expected[..., None], 3, axis=2))
    hf, _ = _hf_rope("qwen2.5-vl", ids, mask, [[], [], []])
    np.testing.assert_array_equal(ours, hf)


def test_pruned_tokens_keep_their_unpruned_positions():
    rng = np.random.default_rng(1)
    ids, mask = _batch(BATCH)
    full, _ = _hf_rope("qwen2.5-vl", ids, mask, BATCH_GRIDS)

    def subset(n):
        return np.sort(rng.choice(n, rng.integers(1, n + 1), replace=False))

    for _ in range(5):
        kept = [[subset(_merged(g)) for g in sample] for sample in BATCH_GRIDS]
        rows, expected = [], []
        for b, sample_kept in enumerate(kept):
            valid = mask[b].astype(bool)
            row, pos = ids[b][valid], full[b][valid]
            keep = row != IMAGE  # every text token stays, with its unpruned position
            image_at, first = np.flatnonzero(row == IMAGE), 0
            for grid, k in zip(BATCH_GRIDS[b], sample_kept, strict=True):
                keep[image_at[first + k]] = True  # kept image tokens: the unpruned positions indexed by the kept set
                first += _merged(grid)
            rows.append(row[keep])
            expected.append(pos[keep])
        p_ids, p_mask = _left_pad(rows, max(map(len, rows)) + 2)
        ours = qg.mrope_positions(p_ids, p_mask, IMAGE, BATCH_GRIDS, kept=kept)
        for b, want in enumerate(expected):
            valid = p_mask[b].astype(bool)
            np.testing.assert_array_equal(ours[b][valid], want)
            np.testing.assert_array_equal(ours[b][~valid], 0)
        # decoding continues from the unpruned rope_deltas (a text token follows every last image)
        np.testing.assert_array_equal(qg.decode_start(ours, p_mask), qg.decode_start(full, mask))


def test_mismatched_runs_raise():
    ids, mask = _batch([[3, ("img", 4), 2]])
    with pytest.raises(ValueError, match="expected 16"):
        qg.mrope_positions(ids, mask, IMAGE, [[(8, 8)]])
    with pytest.raises(ValueError, match="1 image-token runs but 2 grids"):
        qg.mrope_positions(ids, mask, IMAGE, [[(4, 4), (4, 4)]])
    with pytest.raises(ValueError, match="expected 3"):
        qg.mrope_positions(ids, mask, IMAGE, [[(8, 8)]], kept=[[np.array([0, 5, 9])]])
    with pytest.raises(ValueError, match="unique indices"):
        qg.mrope_positions(ids, mask, IMAGE, [[(8, 8)]], kept=[[np.array([0, 5, 5, 9])]])
    with pytest.raises(ValueError, match="unique indices"):
        qg.mrope_positions(ids, mask, IMAGE, [[(8, 8)]], kept=[[np.array([0, 5, 9, 16])]])
    with pytest.raises(ValueError, match="grids has 2 entries"):
        qg.mrope_positions(ids, mask, IMAGE, [[(4, 4)], []])


@pytest.mark.parametrize("name", list(STUBS))
def test_decode_start_is_hf_rope_deltas_rule(name):
    ids, mask = _batch(BATCH, pad_to=480)
    ours = qg.mrope_positions(ids, mask, IMAGE, BATCH_GRIDS)
    stub = STUBS[name]
    _, stub.rope_deltas = _hf_rope(name, ids, mask, BATCH_GRIDS)

    class Cache:  # compute_3d_position_ids only asks the cache for its length
        def get_seq_length(self):
            return ids.shape[1]

    step_mask = torch.from_numpy(np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1))
    hf = stub.compute_3d_position_ids(
        input_ids=None,
        image_grid_thw=None,
        video_grid_thw=None,
        inputs_embeds=torch.zeros(len(ids), 1, 8),
        attention_mask=step_mask,
        cache=Cache(),
    )
    stub.rope_deltas = None
    np.testing.assert_array_equal(qg.decode_start(ours, mask), hf[:, :, -1:].permute(1, 2, 0).numpy())


def test_nearest_grid():
    compiled = [(32, 32), (24, 42), (42, 24), (16, 16)]
    assert qg.nearest_grid((42, 24), compiled) == (42, 24)
    assert qg.nearest_grid((20, 20), compiled) == (16, 16)  # same ratio, closest patch count
    assert qg.nearest_grid((30, 30), compiled) == (32, 32)
    assert qg.nearest_grid((10, 20), compiled) == (24, 42)
    assert qg.nearest_grid((60, 30), compiled) == (42, 24)
    # |log| distance: 2:1 and 1:2 are equally far from 1:1; equal patch counts -> first in order
    assert qg.nearest_grid((20, 20), [(20, 40), (40, 20)]) == (20, 40)
    assert qg.nearest_grid((20, 20), [(40, 20), (20, 40)]) == (40, 20)
    with pytest.raises(ValueError):
        qg.nearest_grid((4, 4), [])


def test_grids_for_sizes_and_default_grids():
    sizes = [(480, 640), (1080, 1920), (481, 640), (640, 480), (1080, 1920)]
    expected = [tuple(s // 14 for s in hf_smart_resize(h, w)) for h, w in sizes]
    assert qg.grids_for_sizes(sizes) == list(dict.fromkeys(expected))
    for min_pixels, max_pixels in PIXEL_RANGES:
        expected = []  # the documented rule: an h*s x w*s image of at least 4x max_pixels, per shape
        for ah, aw in qg.DEFAULT_ASPECTS:
            s = math.isqrt(4 * max_pixels // (ah * aw)) + 1
            gh, gw = (side // 14 for side in hf_smart_resize(ah * s, aw * s, 28, min_pixels, max_pixels))
            assert (gh * 14) * (gw * 14) <= max_pixels and abs(math.log(gh / gw) - math.log(ah / aw)) < 0.1
            expected.append((gh, gw))
        assert qg.default_grids(min_pixels, max_pixels) == list(dict.fromkeys(expected))
    assert qg.default_grids(28 * 28, 2 * 28 * 28) == [(2, 2)]  # every shape collapses to one grid
    assert qg.default_grids(56 * 56, 14 * 14 * 4 * 1280)[:3] == [(70, 70), (60, 82), (82, 60)]
