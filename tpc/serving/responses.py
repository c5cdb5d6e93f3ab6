"""OpenAI response bodies: a ``chat.completion``, and ``chat.completion.chunk`` server-sent events.

Both carry a ``tpc`` extension: the generated token ids (per chunk when streaming), the
visual tokens that reached the language model, the batch the request ran in and its
server-side timings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from tpc.serving.scheduler import Completion

DONE = "data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(completion: Completion) -> dict:
    generated = len(completion.token_ids)
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": completion.prompt_tokens + generated,
    }


def extension(completion: Completion) -> dict:
    return {
        "token_ids": completion.token_ids,
        "visual_tokens": completion.image_tokens,
        "batch_size": completion.batch_size,
        "timings_ms": completion.timings_ms,
    }


def chat_completion(model: str, completion: Completion) -> dict:
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": usage(completion),
        "tpc": extension(completion),
    }


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class ChunkWriter:
    """The chunks of one streamed reply; the text comes from decoding every id so far.

    A token's text is sent once the decoded text grows by it without a partial character
    (U+FFFD) at the end, so the concatenated deltas equal the whole reply's decoded text.
    """

    def __init__(self, model: str, decode: Callable[[list[int]], str]):
        self.id = completion_id()
        self.model = model
        self.created = int(time.time())
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""
        self.role_sent = False

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            **extra,
        }
        return sse(body)

    def token(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        delta = {"role": "assistant"} if not self.role_sent else {}
        self.role_sent = True
        if text.startswith(self.sent) and not text.endswith("\ufffd"):
            delta["content"], self.sent = text[len(self.sent) :], text
        else:
            delta["content"] = ""
        return self.chunk(delta, tpc={"token_ids": [token_id]})

    def finish(self, completion: Completion, include_usage: bool) -> str:
        """The last content (if any was held back), the finish reason and, when asked for, the usage."""
        delta = {} if self.role_sent else {"role": "assistant"}
        if completion.text.startswith(self.sent) and completion.text != self.sent:
            delta["content"] = completion.text[len(self.sent) :]
            self.sent = completion.text
        info = extension(completion)
        info.pop("token_ids")
        out = self.chunk(delta, completion.finish_reason, tpc=info)
        if include_usage:
            out += sse(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage(completion),
                }
            )
        return out
