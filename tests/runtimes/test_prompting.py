import numpy as np
import pytest
from PIL import Image

from tpc.errors import UsageError
from tpc.runtimes.prompting import PromptEncoder, load_image


@pytest.fixture()
def encoder(tiny):
    _, processor = tiny
    return PromptEncoder(processor, image_token_id=4, image_tokens=64, max_context=2048, pad_token_id=3)


def test_chat_template_wraps_one_user_turn_and_expands_the_image(encoder, demo_image):
    text = encoder.template("What is it?", 1)
    assert text == "USER: <image>\nWhat is it? ASSISTANT:"
    batch = encoder(["What is it?"], [demo_image])
    ids = batch.input_ids[0].tolist()
    assert ids.count(4) == 64
    assert ids[0] == 1  # BOS from the tokenizer
    assert batch.pixel_values.shape == (1, 3, 336, 336)


def test_batches_are_left_padded(encoder, demo_image):
    batch = encoder(["short", "a much longer question about the image"], [demo_image, demo_image])
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[1].all()
    assert batch.input_ids[0, 0] == 3
    assert batch.attention_mask[0].sum() == batch.prompt_lengths[0]


@pytest.mark.parametrize("size,mode", [((517, 283), "RGB"), ((101, 999), "L"), ((336, 336), "RGBA"), ((7, 5), "P")])
def test_odd_images_are_preprocessed_to_the_model_size(encoder, size, mode):
    image = Image.new(mode, size)
    batch = encoder(["x"], [image.convert("RGB")])
    assert batch.pixel_values.shape == (1, 3, 336, 336)
    assert np.isfinite(batch.pixel_values).all()


def test_text_only_prompt_has_no_image_tokens(encoder):
    batch = encoder(["hello"], None)
    assert batch.pixel_values is None and 4 not in batch.input_ids[0].tolist()


def test_prompt_longer_than_the_context_is_rejected(tiny):
    _, processor = tiny
    small = PromptEncoder(processor, image_token_id=4, image_tokens=64, max_context=100, pad_token_id=3)
    with pytest.raises(UsageError, match="longer than the model's context of 100"):
        small(["word " * 50], None)
    with pytest.raises(UsageError, match="context"):
        small(["hi"], None, max_new_tokens=200)


def test_literal_image_token_in_prompt_is_rejected(encoder, demo_image):
    with pytest.raises(UsageError, match="must not contain <image>"):
        encoder(["look <image> here"], [demo_image])


def test_batch_mixes_text_only_one_and_two_pictures(encoder, demo_image):
    """Each picture's placeholder becomes its own rows, in order; spans say where each picture's rows are."""
    other = demo_image.rotate(90, expand=True)
    batch = encoder(["a", "bb", "ccc"], [demo_image, None, [demo_image, other]])
    assert batch.pixel_values.shape[0] == 3  # every picture, samples after one another
    ids = batch.input_ids
    assert [(row == 4).sum() for row in ids] == [64, 0, 128]
    assert batch.image_spans[1] == []
    for row, spans in enumerate(batch.image_spans):
        for start, n in spans:
            assert n == 64 and (ids[row, start : start + n] == 4).all()
    first, second = batch.image_spans[2]
    assert first[0] + 64 <= second[0]
    alone = encoder(["ccc"], [[demo_image, other]])
    np.testing.assert_array_equal(alone.input_ids[0], ids[2, ids.shape[1] - alone.input_ids.shape[1] :])


def test_adjacent_placeholders_are_cut_by_each_pictures_rows(encoder):
    """Pictures whose placeholders touch in the template still get their own spans (by their row counts)."""
    batch = encoder.tokens(["x"], [[3, 5]])
    ids = batch.input_ids[0].tolist()
    (a, n), (b, m) = batch.image_spans[0]
    assert (n, m) == (3, 5) and b >= a + 3 and ids.count(4) == 8


def test_a_none_inside_a_prompts_pictures_is_a_usage_error(encoder, demo_image):
    with pytest.raises(UsageError, match="holds None"):
        encoder(["a"], [[demo_image, None]])


def test_unreadable_image_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match="cannot read it as an image"):
        load_image(bad)
    with pytest.raises(UsageError, match="no such file"):
        load_image(tmp_path / "missing.png")
