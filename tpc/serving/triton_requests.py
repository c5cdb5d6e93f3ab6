"""The generation model's tensors on Triton (KServe v2), shared by both Triton paths.

``tpc export-triton``'s Python-backend model and ``tpc serve --triton`` (PyTriton) take and
return the same tensors and batch requests the same way. Per row (a request may carry
several rows; every row of one request shares its options):

=====================  =====  ====  ===================================================
name                   type   dims  meaning
=====================  =====  ====  ===================================================
``prompt``             BYTES  [1]   UTF-8 text
``image``              BYTES  [1]   an encoded picture (PNG, JPEG, ...); optional
``max_new_tokens``     INT32  [1]   optional, default 32
``temperature``        FP32   [1]   optional, default 0 (greedy)
``top_p``              FP32   [1]   optional, default 1
``seed``               INT64  [1]   optional, default 0
``keep``               INT32  [1]   optional: visual tokens kept (bucketed artifacts)
``text`` (output)      BYTES  [1]   the decoded reply
``token_ids`` (output) INT64  [-1]  generated ids; a row shorter than the longest ends in -1
=====================  =====  ====  ===================================================

Requests with the same options (and all with or all without an image) run as one
``CompiledModel.generate`` batch; a sampled request (temperature > 0) always runs alone, so
its seed gives the same tokens as ``CompiledModel.generate`` with that seed. When a batch
fails with a ``TpcError`` its requests are retried one by one, so a bad request fails alone.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tpc.errors import TpcError, UsageError
from tpc.runtimes.sampling import Sampler

MAX_NEW_TOKENS = 32
MAX_IMAGE_BYTES = 32 << 20
MAX_IMAGE_PIXELS = 64 << 20
PAD_ID = -1  # token_ids after a row's last token


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # KServe v2 / Triton type without the TYPE_ prefix: BYTES, INT32, FP32, INT64
    dims: tuple[int, ...]  # without the batch axis
    optional: bool = False


INPUTS = (
    TensorSpec("prompt", "BYTES", (1,)),
    TensorSpec("image", "BYTES", (1,), optional=True),
    TensorSpec("max_new_tokens", "INT32", (1,), optional=True),
    TensorSpec("temperature", "FP32", (1,), optional=True),
    TensorSpec("top_p", "FP32", (1,), optional=True),
    TensorSpec("seed", "INT64", (1,), optional=True),
    TensorSpec("keep", "INT32", (1,), optional=True),
)
OUTPUTS = (TensorSpec("text", "BYTES", (1,)), TensorSpec("token_ids", "INT64", (-1,)))
NUMPY_TYPES = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "INT64": np.int64}


@dataclass(frozen=True)
class Options:
    max_new_tokens: int = MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    keep: int | None = None


@dataclass
class GenerationRequest:
    prompts: list[str]
    images: list | None  # PIL images, one per prompt, or None (text only)
    options: Options


def default_model_name(manifest: dict) -> str:
    """The served model's name: the compiled model's id (a preset name, or a checkpoint's directory name)."""
    model_id = str(manifest.get("model", {}).get("id") or "model")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_id.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
    return name or "model"


def parse_request(tensors: Mapping[str, np.ndarray]) -> GenerationRequest:
    """One inference request's tensors (name -> array with the batch axis first) as a request."""
    known = {spec.name for spec in INPUTS}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise UsageError(f"unknown input {unknown[0]!r}; this model takes {', '.join(s.name for s in INPUTS)}")
    if "prompt" not in tensors:
        raise UsageError("the request has no 'prompt' input")
    prompts = [_text(value, "prompt") for value in _rows(tensors["prompt"], "prompt")]
    images = None
    if "image" in tensors:
        encoded = _rows(tensors["image"], "image")
        if len(encoded) != len(prompts):
            raise UsageError(f"{len(prompts)} prompts but {len(encoded)} images in one request")
        images = [_image(value) for value in encoded]
    values = {}
    for spec in INPUTS[2:]:
        if spec.name in tensors:
            column = _rows(tensors[spec.name], spec.name)
            if len(column) != len(prompts) or len(set(column.tolist())) != 1:
                raise UsageError(f"{spec.name!r}: give one value per row, the same for every row of a request")
            values[spec.name] = column[0].item()
    options = Options(
        max_new_tokens=int(values.get("max_new_tokens", MAX_NEW_TOKENS)),
        temperature=float(values.get("temperature", 0.0)),
        top_p=float(values.get("top_p", 1.0)),
        seed=int(values.get("seed", 0)),
        keep=int(values["keep"]) if "keep" in values else None,
    )
    Sampler(options.temperature, options.top_p, options.seed)  # range checks, one-line errors
    return GenerationRequest(prompts, images, options)


def generate_batch(model, requests: list[GenerationRequest | TpcError]) -> list[dict[str, np.ndarray] | TpcError]:
    """Outputs (or the error) of every request, in order; compatible requests share one generate call."""
    results: list[dict[str, np.ndarray] | TpcError] = list(requests)
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        if isinstance(request, TpcError):
            continue
        alone = request.options.temperature > 0  # a seed's draws must not depend on batch neighbours
        key = (index,) if alone else (request.options, request.images is None)
        groups.setdefault(key, []).append(index)
    for indices in groups.values():
        try:
            outputs = _generate(model, [requests[i] for i in indices])
        except TpcError as exc:
            if len(indices) == 1:
                results[indices[0]] = exc
                continue
            outputs = []
            for i in indices:
                try:
                    outputs.extend(_generate(model, [requests[i]]))
                except TpcError as single:
                    outputs.append(single)
        for i, output in zip(indices, outputs, strict=True):
            results[i] = output
    return results


def _generate(model, requests: list[GenerationRequest]) -> list[dict[str, np.ndarray]]:
    options = requests[0].options
    prompts = [p for r in requests for p in r.prompts]
    images = None if requests[0].images is None else [i for r in requests for i in r.images]
    if model.bucketed is not None:  # a request without ``keep`` gets the artifact's default budget
        model.set_budget(keep=options.keep if options.keep is not None else model.runtime["keep"])
    elif options.keep is not None:
        model.set_budget(keep=options.keep)
    sampler = Sampler(options.temperature, options.top_p, options.seed)
    result = model.generate(prompts, images, max_new_tokens=options.max_new_tokens, sampler=sampler)
    outputs, start = [], 0
    for request in requests:
        rows = range(start, start + len(request.prompts))
        start += len(request.prompts)
        ids = [result.token_ids[r] for r in rows]
        token_ids = np.full((len(ids), max(len(t) for t in ids)), PAD_ID, dtype=np.int64)
        for row, tokens in enumerate(ids):
            token_ids[row, : len(tokens)] = tokens
        text = np.array([[result.text[r].encode("utf-8")] for r in rows], dtype=np.object_)
        outputs.append({"text": text, "token_ids": token_ids})
    return outputs


def _rows(array: np.ndarray, name: str) -> np.ndarray:
    """A [B, 1] (or [B]) input as its B values."""
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] == 0 or array.size != array.shape[0]:
        raise UsageError(f"{name!r} must have shape [rows, 1], got {list(array.shape)}")
    return array.reshape(-1)


def _text(value, name: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{name!r} is not UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise UsageError(f"{name!r} must be BYTES (UTF-8 text), got {type(value).__name__}")


def _image(value):
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, (bytes, np.bytes_)):
        raise UsageError(f"'image' must be BYTES (an encoded picture), got {type(value).__name__}")
    data = bytes(value)
    if len(data) > MAX_IMAGE_BYTES:
        raise UsageError(f"the image is {len(data)} bytes, over the limit of {MAX_IMAGE_BYTES}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UsageError(f"the image has {image.width}x{image.height} pixels, over {MAX_IMAGE_PIXELS}")
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"'image' is not a picture PIL can read ({type(exc).__name__})") from None
