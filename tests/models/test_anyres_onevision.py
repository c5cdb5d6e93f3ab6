"""LLaVA-OneVision's additions to ``tpc.models.anyres`` against transformers' own code.

``onevision_token_count`` against ``LlavaOnevisionProcessor._get_number_of_features`` (the
placeholders) and ``onevision_packed_rows`` against ``LlavaOnevisionModel.pack_image_features``
(rows and their count, with the ``anyres_max_N`` bilinear downsampling), over image sizes that
land on every grid of the released pinpoints, both sides of the downsampling threshold, thin
and tiny pictures; ``bilinear_resize`` against ``F.interpolate``.
"""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

from tpc.models import anyres
from tpc.models.tiny_processor import LLAVA_ONEVISION_PINPOINTS

CROP, SIDE = 384, 27
PINPOINTS = [list(p) for p in LLAVA_ONEVISION_PINPOINTS]
_SIDES = (1, 9, 100, 383, 384, 385, 700, 767, 769, 1000, 1151, 1153, 1500, 1919, 2000, 2303, 2305, 3000, 5000)
_rng = np.random.default_rng(0)
SIZES = sorted(
    set(itertools.product(_SIDES, _SIDES))
    | {tuple(int(v) for v in s) for s in _rng.integers(1, 4000, size=(150, 2))}
    | {(h - 29, w - 47) for h, w in PINPOINTS}  # the pictures compile's layout check uses
    | {(20, 3000), (3000, 20)}
)


def _hf_processor(max_crops: int = 9):
    """The counting methods of LlavaOnevisionProcessor on a stand-in (the real one needs a video processor)."""
    fake = SimpleNamespace(
        image_processor=SimpleNamespace(image_grid_pinpoints=PINPOINTS),
        num_image_tokens=SIDE * SIDE,
        vision_aspect_ratio=f"anyres_max_{max_crops}",
    )
    fake._get_unpadded_features = functools.partial(LlavaOnevisionProcessor._get_unpadded_features, fake)
    return fake


def _hf_pack(features, size, newline, max_crops: int = 9):
    """``LlavaOnevisionModel.pack_image_features`` on a stand-in holding the config it reads."""
    fake = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=CROP, patch_size=14), image_grid_pinpoints=PINPOINTS
        )
    )
    with torch.no_grad():
        packed, lens = LlavaOnevisionModel.pack_image_features(
            fake,
            [torch.from_numpy(features)],
            torch.tensor([size]),
            image_newline=None if newline is None else torch.from_numpy(newline),
            vision_aspect_ratio=f"anyres_max_{max_crops}",
        )
    return packed[0].numpy(), int(lens[0])


def test_max_crops_parses_anyres_max_only():
    assert anyres.max_crops_of("anyres_max_9") == 9 and anyres.max_crops_of("anyres_max_16") == 16
    for bad in ("anyres", "anyres_max_", "anyres_max_0", "pad", "anyres_max_9x"):
        with pytest.raises(ValueError, match="anyres_max_N"):
            anyres.max_crops_of(bad)


@pytest.mark.parametrize("max_crops", [9, 4])
def test_token_count_equals_the_processors_placeholders(max_crops):
    hf = _hf_processor(max_crops)
    downsampled = 0
    for size in SIZES:
        expected = LlavaOnevisionProcessor._get_number_of_features(hf, size[0], size[1], CROP, CROP)
        assert anyres.onevision_token_count(size, PINPOINTS, CROP, SIDE, max_crops) == expected, size
        grid = anyres.grid_shape(size, PINPOINTS, CROP)
        top, bottom, left, right = anyres.unpad_bounds(size, *grid, SIDE)
        downsampled += anyres.downsampled_shape(bottom - top, right - left, SIDE, max_crops) is not None
    assert 0 < downsampled < len(SIZES)  # both sides of the threshold are covered


@pytest.mark.parametrize("max_crops", [9, 2])
def test_packed_rows_equal_pack_image_features(max_crops):
    rng = np.random.default_rng(1)
    newline = rng.standard_normal(8).astype(np.float32)
    grids = set()
    for size in SIZES[::3] + [(h - 29, w - 47) for h, w in PINPOINTS]:
        grid = anyres.grid_shape(size, PINPOINTS, CROP)
        grids.add(grid)
        features = rng.standard_normal((1 + grid[0] * grid[1], SIDE * SIDE, 8)).astype(np.float32)
        expected, length = _hf_pack(features, size, newline, max_crops)
        rows, labels = anyres.onevision_packed_rows(
            features.reshape(-1, 8), size, PINPOINTS, CROP, SIDE, max_crops, newline
        )
        assert rows.shape == expected.shape and length == len(labels), size
        assert anyres.onevision_token_count(size, PINPOINTS, CROP, SIDE, max_crops) == length
        np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-6, err_msg=str(size))
        copied = labels >= 0  # rows copied from one patch carry its index; interpolated and newline rows -1
        assert np.array_equal(rows[copied], features.reshape(-1, 8)[labels[copied]])
        assert np.array_equal(rows[labels == -1][-1], newline)
    assert len(grids) == 36


def test_bilinear_resize_equals_torch_interpolate():
    rng = np.random.default_rng(2)
    for (height, width), factor in itertools.product(((162, 135), (100, 91), (54, 40), (200, 30), (7, 5)), (1.2, 2.7)):
        grid = rng.standard_normal((height, width, 16)).astype(np.float32) * 3
        out_hw = (max(1, int(height // factor)), max(1, int(width // factor)))
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(grid).permute(2, 0, 1)[None], list(out_hw), mode="bilinear"
        )[0].permute(1, 2, 0)
        got = anyres.bilinear_resize(grid, out_hw)
        assert got.shape == (*out_hw, 16) and got.dtype == np.float32
        # the same indices and weights; only the order of the four-term sum differs (a few ulp)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2e-6)
