"""Served artifacts (compiled once per session) and a model whose generate a test can hold."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time

import numpy as np
import pytest

from tpc.compiler.pipeline import CompileSettings, compile_model


@pytest.fixture(scope="session")
def bucketed_dir(tmp_path_factory):
    """The single-crop tiny preset with buckets 32 and 64 (default 64); the oracle is CompiledModel itself."""
    out = tmp_path_factory.mktemp("serving") / "tiny-buckets"
    return compile_model(CompileSettings(model="llava-tiny", output=out, buckets=[32, 64], ratio=0.89, verify=False))


@pytest.fixture(scope="session")
def multicrop_dir(tmp_path_factory):
    """The anyres tiny preset (a picture is a base crop plus a grid) at ratio 0.889: 64 tokens per crop."""
    out = tmp_path_factory.mktemp("serving") / "tiny-anyres"
    return compile_model(CompileSettings(model="llava-next-tiny", output=out, ratio=0.889, verify=False))


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    """Qwen2.5-VL tiny at ratio 0.75, two compiled grids (224x224 and 168x280): one vision graph each."""
    out = tmp_path_factory.mktemp("serving") / "qwen"
    settings = CompileSettings(
        model="qwen2.5-vl-tiny", output=out, ratio=0.75, image_sizes=[(224, 224), (168, 280)], verify=False
    )
    return compile_model(settings)


@pytest.fixture(scope="session")
def bucketed_model(bucketed_dir):
    from tpc.runtimes.compiled_model import CompiledModel

    return CompiledModel.load(bucketed_dir, threads=1)


class HeldModel:
    """A ``CompiledModel`` whose generate stops at its ``hold_at``-th token until ``release()``.

    ``running`` is set once a batch reaches that token; ``tokens`` counts the tokens it produced.
    """

    def __init__(self, model, hold_at: int = 1):
        self.model = model
        self.hold_at = hold_at
        self.gate = threading.Event()
        self.running = threading.Event()
        self.tokens = 0
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def release(self) -> None:
        self.gate.set()

    def generate(self, prompts, images=None, max_new_tokens=32, sampler=None, on_token=None):
        self.batches.append(len(prompts))

        def hook(row: int, token: int) -> bool:
            self.tokens += 1
            if self.tokens >= self.hold_at and not self.gate.is_set():
                self.running.set()
                assert self.gate.wait(timeout=60), "the test never released the model"
            return on_token(row, token)

        return self.model.generate(prompts, images, max_new_tokens, sampler, on_token=hook)


@contextlib.contextmanager
def serving(model, **settings):
    """A real uvicorn server for ``model`` on 127.0.0.1, an OS-assigned port; yields its URL."""
    from tpc.serving.app import create_app
    from tpc.serving.background import ServerThread
    from tpc.serving.settings import ServeSettings

    settings.setdefault("model_name", "tiny")
    held = model if isinstance(model, HeldModel) else None
    with ServerThread(create_app(model, ServeSettings(**settings).check())) as server:
        try:
            yield server.url
        finally:  # before the server stops: its shutdown waits for the worker
            if held is not None:
                held.release()


def data_url(image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def noise_image(height: int, width: int, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(model: str, text: str, image_url: str | None = None, **fields) -> dict:
    content = ([{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []) + [
        {"type": "text", "text": text}
    ]
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def metric(url: str, name: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    limit = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
