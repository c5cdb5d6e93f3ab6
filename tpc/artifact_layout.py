"""The names an artifact's graphs and their inputs/outputs carry: the contract between writer and reader.

The compiler (``tpc.compiler``) exports graphs under these names and the runtimes
(``tpc.runtimes``) feed and read them by the same names. This module imports nothing
heavy (no torch, no transformers), so that ``tpc run`` on an ONNX Runtime artifact
never loads the compiler's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plain data, only for annotations
    from tpc.methods.in_llm import PruningPlan

# Where an artifact keeps the checkpoint's processor (tokenizer, chat template, image
# preprocessing), written by ``save_pretrained``.
PROCESSOR_DIR = "processor"

# The three graphs of a fixed-budget artifact.
VISION = "vision"
EMBED = "embed"
DECODER = "decoder"
GRAPH_NAMES = (VISION, EMBED, DECODER)

# Families whose vision tower reads a grid of flattened patches (Qwen2.5-VL): one vision graph per
# compiled grid, ``vision_<grid_h>x<grid_w>`` (patches), all reading one shared weights file.
GRID_VISION_INPUT = "pixel_patches"
SHARED_VISION_WEIGHTS = "vision.weights"


def grid_vision_name(grid) -> str:
    return f"{VISION}_{int(grid[0])}x{int(grid[1])}"


# Bucketed artifacts: one encoder, one selector per kept-token count, one projector.
ENCODER = "vision_encoder"
PROJECTOR = "projector"
ADAPTIVE = "adaptive_keep"  # the encoder output an adaptive method (cls-mass) counts with

# In-LLM pruning: the selector graphs between decoder segments.
SELECT_INPUTS = ["hidden", "score", "position_ids", "attention_mask", "image_start"]
SELECT_OUTPUTS = ["kept_hidden", "kept_position_ids", "kept_attention_mask", "kept_image_indices"]
# A selector for image blocks of any length (unpruned multi-crop pictures) also takes two
# shape-carrying inputs: ``image_rows`` = arange(image tokens in), ``keep_rows`` = arange(kept).
# Their lengths set the block length and TopK's K at run time (a shape, not a value: what
# TensorRT's TopK and profiles take).
DYNAMIC_SELECT_INPUTS = [*SELECT_INPUTS, "image_rows", "keep_rows"]
# DART inside the LLM: the segment before the stage also outputs its hidden states after the
# model's final RMSNorm (DART's cosines), and the stage's selector takes them; ``score`` is then
# the L1 norm of the scoring layer's keys.
NORMED_HIDDEN = "normed_hidden"
DART_STAGE_RULE = "dart"  # ``Stage.rule`` of such a stage (``tpc.methods.in_llm.DART``)

# Selection at the LLM input (DART, CDPruner): the weightless graph between ``embed`` and the
# decoder. ``text_mask`` marks the real prompt rows (not image, not padding). One graph per
# image-span length: ``select_input`` when the artifact has one length, else ``select_input_n<length>``.
SELECT_INPUT = "select_input"
INPUT_SELECT_INPUTS = ["inputs_embeds", "attention_mask", "position_ids", "image_start", "text_mask"]
INPUT_SELECT_OUTPUTS = ["kept_embeds", "kept_position_ids", "kept_attention_mask", "kept_image_indices"]
# DART or CDPruner on spans of any length (unpruned multi-crop pictures): the span length and quota as input lengths
DYNAMIC_INPUT_SELECT_INPUTS = [*INPUT_SELECT_INPUTS, "image_rows", "keep_rows"]


def input_select_name(length: int, single: bool) -> str:
    """The LLM-input selector for image spans of ``length`` rows (``single``: the artifact's only one)."""
    return SELECT_INPUT if single else f"{SELECT_INPUT}_n{length}"


def kv_names(num_layers: int, prefix: str) -> list[str]:
    """``past_key_0, past_value_0, past_key_1, ...`` (or ``present_...``)."""
    return [f"{prefix}_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


def bucket_selector_name(keep: int) -> str:
    """The selector graph of a bucketed artifact that keeps ``keep`` tokens."""
    return f"select_k{keep}"


def segment_name(index: int) -> str:
    return f"decoder_{index}"


def select_name(stage: int, bucket: int | None = None) -> str:
    """Stage numbers start at 1: ``select_1`` sits between ``decoder_0`` and ``decoder_1``.

    A bucketed artifact has one selector per stage and bucket: ``select_1_k64``.
    """
    return f"select_{stage}" if bucket is None else f"select_{stage}_k{bucket}"


def segment_kv_names(start: int, end: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(start, end) for kind in ("key", "value")]


def segment_io(plan: PruningPlan, index: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of decoder segment ``index``."""
    start, end = plan.segments()[index]
    first = "inputs_embeds" if index == 0 else "hidden_states"
    last = index == len(plan.stages)
    outputs = ["logits"] if last else ["hidden", "score"]
    if not last and _dart_stage(plan, index + 1):
        outputs.append(NORMED_HIDDEN)
    return (
        [first, "attention_mask", "position_ids", *segment_kv_names(start, end, "past")],
        [*outputs, *segment_kv_names(start, end, "present")],
    )


def stage_inputs(plan: PruningPlan, stage: int) -> int:
    """Image tokens entering stage ``stage`` (1-based)."""
    return plan.image_tokens if stage == 1 else plan.stages[stage - 2].keep


def _dart_stage(plan: PruningPlan, stage: int) -> bool:
    return getattr(plan.stages[stage - 1], "rule", None) == DART_STAGE_RULE


def select_inputs(plan: PruningPlan, stage: int, dynamic: bool = False) -> list[str]:
    """Input names of stage ``stage``'s selector (1-based); ``dynamic``: for image blocks of any length."""
    names = list(DYNAMIC_SELECT_INPUTS if dynamic else SELECT_INPUTS)
    return [*names, NORMED_HIDDEN] if _dart_stage(plan, stage) else names
