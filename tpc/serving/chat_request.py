"""Parse an OpenAI ``/v1/chat/completions`` body into what one generate row needs.

The compiled model's chat template wraps one user turn (the pictures, then the text), so a
request carries exactly one ``user`` message: its content is a string, or a list of
``text`` parts (joined by newlines) and ``image_url`` parts (the pictures, in order). Sampling follows
``tpc run``: ``temperature`` 0 (the default) is greedy, ``seed`` defaults to 0.

The ``tpc`` extension field sets the visual-token budget of a bucketed artifact:
``"tpc": {"keep": 64}`` or ``"tpc": {"ratio": 0.889}`` (rounded up to a compiled bucket).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from tpc.serving.errors import ApiError, invalid

ROLES = ("system", "developer", "user", "assistant", "tool")
# accepted with their default value only: this server has no stop strings, log-probabilities or tools
UNSUPPORTED = {"n": 1, "stop": None, "logprobs": False, "top_logprobs": None, "tools": None, "tool_choice": None}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    prompt: str
    image_urls: list[str]  # the user turn's pictures, in order (empty: text only)
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    include_usage: bool
    keep: int | None  # tpc extension: visual tokens (bucketed artifacts)
    ratio: float | None  # tpc extension: fraction of visual tokens removed (bucketed artifacts)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def parse_chat_request(body: bytes, default_max_tokens: int, max_context: int) -> ChatRequest:
    """The request, or an ``ApiError`` (400) naming the parameter at fault."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise invalid("the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required: the name /v1/models lists", param="model", code="missing_required")
    for name, default in UNSUPPORTED.items():
        value = data.get(name)
        if value is not None and value != default and value != []:
            raise invalid(f"'{name}' is not supported by this server (only {json.dumps(default)})", param=name)
    prompt, image_urls = _user_turn(data.get("messages"))
    if "max_tokens" in data and "max_completion_tokens" in data:
        raise invalid("give 'max_tokens' or 'max_completion_tokens', not both", param="max_tokens")
    limit_name = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
    max_tokens = data.get(limit_name)
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_context)
    max_tokens = _integer(max_tokens, limit_name, 1, max_context)
    temperature = _number(data.get("temperature", 0.0), "temperature", 0.0, 2.0)
    top_p = _number(data.get("top_p", 1.0), "top_p", 0.0, 1.0)
    if top_p == 0:
        raise invalid("'top_p' must be in (0, 1]", param="top_p")
    seed = _integer(data.get("seed", 0), "seed", 0, 2**63 - 1)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be true or false", param="stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", param="stream_options")
    keep, ratio = _budget(data.get("tpc"))
    return ChatRequest(
        model=model,
        prompt=prompt,
        image_urls=image_urls,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        keep=keep,
        ratio=ratio,
    )


def _user_turn(messages: object) -> tuple[str, list[str]]:
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list", param="messages", code="missing_required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"messages[{index}] needs a 'role' ({', '.join(ROLES)})", param=f"messages[{index}]")
    if len(messages) != 1 or messages[0]["role"] != "user":
        roles = ", ".join(m["role"] for m in messages)
        raise invalid(
            f"this server answers one user message (got: {roles}): the compiled model's chat template "
            "wraps the image and the text as one user turn",
            param="messages",
        )
    content = messages[0].get("content")
    if isinstance(content, str):
        texts, images = [content], []
    elif isinstance(content, list):
        texts, images = [], []
        for index, part in enumerate(content):
            where = f"messages[0].content[{index}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                images.append(_image_url(part.get("image_url"), where))
            else:
                raise invalid(f"{where}: expected a 'text' or an 'image_url' part", param=where)
    else:
        raise invalid("messages[0].content must be a string or a list of parts", param="messages[0].content")
    prompt = "\n".join(texts)
    if not prompt.strip():
        raise invalid("the user message has no text (a question or an instruction)", param="messages[0].content")
    return prompt, images


def _image_url(value: object, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}.image_url needs a 'url'", param=f"{where}.image_url")
    return url


def _budget(extension: object) -> tuple[int | None, float | None]:
    if extension is None:
        return None, None
    if not isinstance(extension, dict) or set(extension) - {"keep", "ratio"}:
        raise invalid('\'tpc\' takes {"keep": K} or {"ratio": R}', param="tpc")
    if "keep" in extension and "ratio" in extension:
        raise invalid("'tpc': give 'keep' or 'ratio', not both", param="tpc")
    keep = extension.get("keep")
    ratio = extension.get("ratio")
    if keep is not None:
        keep = _integer(keep, "tpc.keep", 1, 2**31 - 1)
    if ratio is not None:
        ratio = _number(ratio, "tpc.ratio", 0.0, 1.0)
        if ratio == 1:
            raise invalid("'tpc.ratio' must be in [0, 1): it is the fraction of visual tokens removed", "tpc.ratio")
    return keep, ratio


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer, got {json.dumps(value)}", param=name)
    if not low <= value <= high:
        raise invalid(f"'{name}' is {value}, outside [{low}, {high}]", param=name)
    return value


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"'{name}' must be a number, got {json.dumps(value)}", param=name)
    if not low <= value <= high:
        raise invalid(f"'{name}' is {value}, outside [{low}, {high}]", param=name)
    return float(value)


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"the model {name!r} is not served here; this server serves {served!r}",
        param="model",
        code="model_not_found",
    )
