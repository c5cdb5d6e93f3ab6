"""``tpc.models.anyres`` against transformers' own LLaVA-NeXT functions, processor and model.

Every function is compared with the Hugging Face code it reproduces, over a grid of image
sizes (tiny, thin, exact pinpoint multiples, one pixel off them, large) and several sets of
pinpoints; ``packed_index`` against ``pack_image_features`` of a tiny seeded
``LlavaNextForConditionalGeneration``; the token counts against the placeholders
``LlavaNextProcessor`` writes, and against what the model produces for them.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from tpc.models import anyres
from tpc.models.tiny_processor import IMAGE_TOKEN_ID, LLAVA_NEXT_PINPOINTS, build_llava_next_processor

CROP, SIDE = 336, 24
V16 = [list(p) for p in LLAVA_NEXT_PINPOINTS]
PINPOINT_SETS = {
    "v1.6": V16,
    "one-crop": [[336, 336]],
    "2x2": [[672, 672]],
    # anyres_max-style 3x3 grids, equal areas listed both ways round (ties)
    "3x3": [[h, w] for h in (336, 672, 1008) for w in (336, 672, 1008)],
    "ties": [[672, 336], [336, 672], [1008, 336], [336, 1008], [672, 672]],
}
_SIDES = (1, 2, 3, 5, 7, 14, 20, 100, 167, 168, 335, 336, 337, 500, 671, 672, 673, 1000, 1007, 1008, 1009, 2017)
_rng = np.random.default_rng(0)
SIZES = sorted(
    set(itertools.product(_SIDES, _SIDES))
    | {tuple(int(v) for v in s) for s in _rng.integers(1, 3000, size=(300, 2))}
    | {(h * k, w * k) for h, w in [*V16, [336, 336]] for k in (1, 2, 3)}  # exact pinpoint aspect ratios
    | {(h // 7, w // 7) for h, w in V16}
    | {(20, 300), (300, 20), (1, 4000), (4000, 1)}
)


def _random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode)


@pytest.fixture(scope="module")
def hf_processor():
    return build_llava_next_processor(CROP, 14)


@pytest.fixture(scope="module")
def model():
    """A tiny seeded LLaVA-NeXT: CLIP 336/14 (hidden 64, 3 layers), Mistral (hidden 64, 4 layers)."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

    vision = CLIPVisionConfig(
        image_size=CROP,
        patch_size=14,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=64,
    )
    text = MistralConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        sliding_window=None,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=V16,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        net = LlavaNextForConditionalGeneration(config).eval()
    finally:
        torch.random.set_rng_state(state)
    return net


def _pack(model, pinpoints, features, sizes, newline=True):
    """``pack_image_features`` with these pinpoints (the config is restored afterwards)."""
    saved = model.config.image_grid_pinpoints
    model.config.image_grid_pinpoints = pinpoints
    try:
        with torch.no_grad():
            packed, lens = model.model.pack_image_features(
                [torch.from_numpy(f) for f in features],
                torch.tensor(sizes, dtype=torch.long),
                "default",
                image_newline=model.model.image_newline if newline else None,
            )
    finally:
        model.config.image_grid_pinpoints = saved
    return [p.numpy() for p in packed], lens.tolist()


def test_importing_it_needs_neither_torch_nor_transformers():
    code = "import sys, tpc.models.anyres; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", list(PINPOINT_SETS))
def test_resolution_grid_and_crop_count_match_transformers(name):
    pinpoints = PINPOINT_SETS[name]
    for size in SIZES:
        best = anyres.select_best_resolution(size, pinpoints)
        assert best == tuple(hf_select_best_resolution(size, pinpoints)), size
        assert anyres.grid_shape(size, pinpoints, CROP) == get_anyres_image_grid_shape(size, pinpoints, CROP)
        grid_h, grid_w = anyres.grid_shape(size, pinpoints, CROP)
        assert anyres.num_crops(size, pinpoints, CROP) == image_size_to_num_patches(size, pinpoints, CROP)
        assert anyres.num_crops(size, pinpoints, CROP) == 1 + grid_h * grid_w
    # tensors and arrays are read as (height, width), as Hugging Face reads image_sizes
    assert anyres.grid_shape(np.array([20, 300]), V16, CROP) == anyres.grid_shape(torch.tensor([20, 300]), V16, CROP)


def test_the_first_of_equal_pinpoints_wins():
    assert anyres.select_best_resolution((100, 100), [[336, 672], [672, 336]]) == (336, 672)
    assert anyres.select_best_resolution((100, 100), [[672, 336], [336, 672]]) == (672, 336)
    assert anyres.select_best_resolution((2000, 2000), V16) == (672, 672)


@pytest.mark.parametrize("name", ["v1.6", "3x3"])
def test_unpad_bounds_match_unpad_image(name):
    pinpoints = PINPOINT_SETS[name]
    grids = {}
    for size in SIZES:
        grid_h, grid_w = anyres.grid_shape(size, pinpoints, CROP)
        if (grid_h, grid_w) not in grids:
            grids[grid_h, grid_w] = torch.arange(grid_h * SIDE * grid_w * SIDE).reshape(1, grid_h * SIDE, grid_w * SIDE)
        merged = grids[grid_h, grid_w]
        top, bottom, left, right = anyres.unpad_bounds(size, grid_h, grid_w, SIDE)
        want = unpad_image(merged, torch.tensor(size))
        assert torch.equal(merged[:, top:bottom, left:right], want), size
        assert 0 <= top <= bottom <= grid_h * SIDE and 0 <= left <= right <= grid_w * SIDE


def test_unpad_uses_the_original_size_with_rounding_to_seven_places():
    # 1x1000 in a 1x3 grid: the unpadded height rounds to 0 rows; a 9-row-high sliver keeps 1 row
    assert anyres.unpad_bounds((1, 1000), 1, 3, SIDE) == (12, 12, 0, 72)
    top, bottom, _, _ = anyres.unpad_bounds((139, 1000), 1, 3, SIDE)
    assert (top, bottom) == (7, 17)  # round(139 * 72 / 1000) = round(10.008) = 10 rows
    # exactly the grid's aspect ratio: nothing is cut
    assert anyres.unpad_bounds((672, 1344), 1, 2, SIDE) == (0, 24, 0, 48)


@pytest.mark.parametrize("name", list(PINPOINT_SETS))
def test_processor_and_model_counts_agree_for_every_size(hf_processor, name):
    pinpoints = PINPOINT_SETS[name]
    saved = hf_processor.image_processor.image_grid_pinpoints
    hf_processor.image_processor.image_grid_pinpoints = pinpoints
    try:
        for size in SIZES:
            want = hf_processor._get_number_of_features(size[0], size[1], CROP, CROP) - 1  # "default": no [CLS]
            got = anyres.image_token_count(size, pinpoints, CROP, SIDE)
            assert got == want == anyres.model_token_count(size, pinpoints, CROP, SIDE), size
            assert len(anyres.packed_index(size, pinpoints, CROP, SIDE)) == got
            no_newline = anyres.image_token_count(size, pinpoints, CROP, SIDE, newline=False)
            assert no_newline == anyres.model_token_count(size, pinpoints, CROP, SIDE, newline=False)
            assert no_newline == len(anyres.packed_index(size, pinpoints, CROP, SIDE, newline=False))
    finally:
        hf_processor.image_processor.image_grid_pinpoints = saved


def test_documented_disagreements_outside_tpc_configurations(hf_processor):
    # a processor without num_additional_image_tokens (transformers' default 0) counts one placeholder
    # fewer than the model's base crop rows under the "default" strategy
    for size in [(20, 300), (480, 640), (1000, 300)]:
        hf_processor.num_additional_image_tokens = 0
        try:
            want = hf_processor._get_number_of_features(size[0], size[1], CROP, CROP) - 1
        finally:
            hf_processor.num_additional_image_tokens = 1
        got = anyres.image_token_count(size, V16, CROP, SIDE, num_additional_image_tokens=0)
        assert got == want == anyres.model_token_count(size, V16, CROP, SIDE) - 1
    # pinpoints off the crop grid: the image processor cuts ceil crops, the model's grid is floor
    odd = [[400, 700]]
    assert image_size_to_num_patches((400, 700), odd, CROP) == anyres.num_crops((400, 700), odd, CROP) == 1 + 2 * 3
    assert get_anyres_image_grid_shape((400, 700), odd, CROP) == anyres.grid_shape((400, 700), odd, CROP) == (1, 2)
    with pytest.raises(ValueError, match="not multiples of the crop size"):
        anyres.check_pinpoints(odd, CROP)
    assert anyres.check_pinpoints(LLAVA_NEXT_PINPOINTS, CROP) == V16


def _sizes_for_pack():
    picks = {
        "tall": (900, 200),
        "wide": (200, 900),
        "square": (500, 500),
        "tiny": (20, 300),
        "tiny-tall": (300, 20),
        "one-pixel": (1, 1),
        "sliver": (1, 4000),
        "exact-2x1": (672, 336),
    }
    for h, w in V16:  # an image that lands on each pinpoint, and one a pixel off its aspect ratio
        picks[f"on-{h}x{w}"] = (h, w)
        picks[f"near-{h}x{w}"] = (h // 2 + 1, w // 2)
    return picks


@pytest.mark.parametrize("newline", [True, False])
def test_packed_index_matches_pack_image_features(model, newline):
    rng = np.random.default_rng(1)
    sizes = list(_sizes_for_pack().values()) + [tuple(int(v) for v in s) for s in rng.integers(1, 2500, (40, 2))]
    seen_grids = set()
    features = []
    for size in sizes:
        seen_grids.add(anyres.grid_shape(size, V16, CROP))
        n = anyres.num_crops(size, V16, CROP)
        features.append(rng.standard_normal((n, SIDE * SIDE, 64)).astype(np.float32))
    assert seen_grids == {(h // CROP, w // CROP) for h, w in V16}  # every pinpoint shape is exercised
    packed, lens = _pack(model, V16, features, sizes, newline)
    line = model.model.image_newline.detach().numpy()
    for size, feats, want, length in zip(sizes, features, packed, lens, strict=True):
        index = anyres.packed_index(size, V16, CROP, SIDE, newline=newline)
        flat = feats.reshape(-1, feats.shape[-1])
        got = np.where((index >= 0)[:, None], flat[np.maximum(index, 0)], line[None, :])
        assert got.shape == want.shape and length == len(index), size
        np.testing.assert_array_equal(got, want, err_msg=str(size))
        top, bottom, _, _ = anyres.unpad_bounds(size, *anyres.grid_shape(size, V16, CROP), SIDE)
        assert (index == -1).sum() == ((bottom - top) if newline else 0)


@pytest.mark.parametrize("name", ["3x3", "one-crop", "2x2"])
def test_packed_index_matches_pack_image_features_for_other_pinpoints(model, name):
    pinpoints = PINPOINT_SETS[name]
    rng = np.random.default_rng(2)
    sizes = list(_sizes_for_pack().values()) + [tuple(int(v) for v in s) for s in rng.integers(1, 3000, (20, 2))]
    features = [
        rng.standard_normal((anyres.num_crops(s, pinpoints, CROP), SIDE * SIDE, 8)).astype(np.float32) for s in sizes
    ]
    packed, _ = _pack(model, pinpoints, features, sizes, newline=False)
    for size, feats, want in zip(sizes, features, packed, strict=True):
        index = anyres.packed_index(size, pinpoints, CROP, SIDE, newline=False)
        np.testing.assert_array_equal(feats.reshape(-1, 8)[index], want, err_msg=str(size))


def test_packed_index_layout():
    index = anyres.packed_index((200, 900), V16, CROP, SIDE)  # wide: a 1x3 grid, rows cut top and bottom
    top, bottom, left, right = anyres.unpad_bounds((200, 900), 1, 3, SIDE)
    assert (left, right) == (0, 72) and 0 < top < bottom < 24
    np.testing.assert_array_equal(index[: SIDE * SIDE], np.arange(SIDE * SIDE))
    grid = index[SIDE * SIDE :].reshape(bottom - top, right - left + 1)
    assert (grid[:, -1] == -1).all() and (grid[:, :-1] >= 0).all()
    # first kept row, first column: crop 1's token (top, 0); its column 24: crop 2's token (top, 0)
    assert grid[0, 0] == 1 * SIDE * SIDE + top * SIDE and grid[0, 24] == 2 * SIDE * SIDE + top * SIDE
    assert index.dtype == np.int64


def _images():
    return {
        "tall": _random_image(900, 200),
        "wide": _random_image(200, 900, seed=1),
        "square": _random_image(500, 500, seed=2),
        "tiny": _random_image(20, 300, seed=3),
        "grayscale": _random_image(300, 517, "L", seed=4),
        "rgba": _random_image(517, 300, "RGBA", seed=5),
        "one-pixel": _random_image(1, 1, seed=6),
        "large": _random_image(1100, 1500, seed=7),
        "sliver": _random_image(3, 700, seed=8),
    }


def test_placeholder_counts_equal_the_processor_output(hf_processor):
    images = _images()
    for name, image in images.items():
        out = hf_processor(text="[INST] <image>\nWhat is it? [/INST]", images=image, return_tensors="np")
        count = int((out["input_ids"] == IMAGE_TOKEN_ID).sum())
        size = (image.height, image.width)
        assert tuple(out["image_sizes"][0]) == size
        assert (
            count == anyres.image_token_count(size, V16, CROP, SIDE) == anyres.model_token_count(size, V16, CROP, SIDE)
        ), name
        assert out["pixel_values"].shape[1] == anyres.num_crops(size, V16, CROP)
    # two images in one prompt, with the processor padding the crop axis across them
    pair = [images["tiny"], images["large"]]
    out = hf_processor(text="<image> and <image>", images=pair, return_tensors="np")
    want = sum(anyres.image_token_count((i.height, i.width), V16, CROP, SIDE) for i in pair)
    assert int((out["input_ids"] == IMAGE_TOKEN_ID).sum()) == want


def test_the_model_consumes_exactly_the_processor_placeholders(hf_processor, model):
    """A forward pass of the tiny model: transformers checks placeholders against packed features."""
    images = _images()
    for name in ("tall", "tiny", "sliver"):
        image = images[name]
        out = hf_processor(text="[INST] <image>\nWhat? [/INST]", images=image, return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_image_features(
                out["pixel_values"],
                out["image_sizes"],
                vision_feature_layer=-2,
                vision_feature_select_strategy="default",
            ).pooler_output
            logits = model(**out).logits
        assert features[0].shape[0] == int((out["input_ids"] == IMAGE_TOKEN_ID).sum()), name
        assert logits.shape[1] == out["input_ids"].shape[1]
