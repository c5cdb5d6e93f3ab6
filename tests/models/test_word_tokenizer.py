"""The word-level Qwen tokenizer of the bench presets (tpc.models.word_tokenizer): common words are one
token, any text still encodes and decodes, the special tokens keep their ids, and saved artifacts reload
to the same ids through transformers, the parts-built processor and the light processor."""

from __future__ import annotations

import pytest

from tpc.models.qwen_processor import load_parts
from tpc.models.tiny_processor import (
    QWEN_IMAGE_TOKEN_ID,
    QWEN_PAD_ID,
    QWEN_SPECIAL_TOKENS,
    build_qwen2_5_vl_processor,
    build_qwen_byte_tokenizer,
)
from tpc.models.word_tokenizer import WORDS, build_word_tokenizer
from tpc.runtimes.light_processor import load_processor
from tpc.runtimes.prompting import PromptEncoder

QUESTION = "What is written on the sign in this picture, and what colour is it?"
TEXTS = ["ünïcödé, 日本語 😀 and <|im_start|> as text", "x", "two\nlines  and\ttabs", "Antidisestablishmentarianism"]


@pytest.fixture(scope="module")
def words():
    return build_qwen_byte_tokenizer(words=True)


def test_the_build_is_deterministic():
    assert build_word_tokenizer(QWEN_SPECIAL_TOKENS).to_str() == build_word_tokenizer(QWEN_SPECIAL_TOKENS).to_str()


def test_special_tokens_keep_their_ids(words):
    assert words.convert_ids_to_tokens(list(range(len(QWEN_SPECIAL_TOKENS)))) == list(QWEN_SPECIAL_TOKENS)
    assert words.eos_token == "<|im_end|>" and words.pad_token_id == QWEN_PAD_ID
    assert words("<|vision_start|><|image_pad|><|vision_end|>").input_ids == [3, 5, 4]


@pytest.mark.parametrize("word", WORDS[::7])
def test_every_spelling_of_a_word_is_one_token(words, word):
    for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        assert len(words(form).input_ids) == 1, form


def test_any_text_round_trips(words):
    bytes_only = build_qwen_byte_tokenizer()
    for text in TEXTS + [QUESTION]:
        ids = words(text).input_ids
        assert words.decode(ids) == text
        assert len(ids) <= len(bytes_only(text).input_ids)


def test_a_chat_prompt_is_as_long_as_with_a_real_vocabulary():
    processor = build_qwen2_5_vl_processor(words=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor.tokenizer(text).input_ids
    # 21 tokens of template (system prompt, role names, markers) + 16 of the question + the image token
    assert len(ids) == 38 and ids.count(QWEN_IMAGE_TOKEN_ID) == 1
    byte_ids = build_qwen2_5_vl_processor().tokenizer(text).input_ids
    assert len(byte_ids) > 3 * len(ids)


def test_saved_processor_reloads_to_the_same_ids(tmp_path):
    processor = build_qwen2_5_vl_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 64, words=True)
    processor.save_pretrained(tmp_path / "processor")
    parts, light = load_parts(tmp_path / "processor"), load_processor(tmp_path / "processor")
    encoders = [PromptEncoder(p, QWEN_IMAGE_TOKEN_ID, 64, 4096, QWEN_PAD_ID) for p in (processor, parts, light)]
    for prompt in [QUESTION] + TEXTS:
        for counts in ([12], None):
            ids = [e.tokens([prompt], counts).input_ids.tolist() for e in encoders]
            assert ids[0] == ids[1] == ids[2]
    sequence = encoders[0].tokens([QUESTION], [12]).input_ids[0].tolist() + list(range(400))
    for skip in (True, False):
        assert light.tokenizer.decode(sequence, skip_special_tokens=skip) == processor.decode(
            sequence, skip_special_tokens=skip
        )
