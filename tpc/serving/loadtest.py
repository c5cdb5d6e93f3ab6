"""The client side of ``tpc loadtest``: bounded concurrent chat requests against a server.

A run sends at most ``requests`` requests from ``concurrency`` workers and stops by itself
after ``duration_s`` (requests still running then are abandoned and counted). Streamed
requests give the time to the first token (the first chunk carrying text or token ids)
and end-to-end latency; the server's resident memory is read from its ``/metrics``
(``process_resident_memory_bytes``) before, every tenth of the run, and after.

The report is gate-able: ``tpc gate load.json --budget B.yaml`` reads its ``metrics``
(``ttft_ms``, ``e2e_ms``: percentiles with samples), ``config.runs`` (requests answered)
and its top-level numbers (``errors``, ``requests_per_s``, ``server.rss_growth_pct``...).
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tpc.errors import UsageError

ERROR_SAMPLES = 5


@dataclass(frozen=True)
class LoadTestConfig:
    url: str
    requests: int = 200
    concurrency: int = 8
    duration_s: float = 600.0  # the whole run; then in-flight requests are abandoned
    timeout_s: float = 300.0  # one request
    max_tokens: int = 32
    prompt: str = "What is in the picture?"
    image: Path | None = None  # None: a synthetic 336x336 picture
    model: str | None = None  # None: the first model /v1/models lists
    stream: bool = True
    allow_remote: bool = False

    def check(self) -> LoadTestConfig:
        for name, value in (("--requests", self.requests), ("--concurrency", self.concurrency)):
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        for name, value in (("--duration", self.duration_s), ("--timeout", self.timeout_s)):
            if not value > 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {value}")
        if self.image is not None and not Path(self.image).is_file():
            raise UsageError(f"image {self.image}: no such file")
        check_target(self.url, self.allow_remote)
        return self


@dataclass
class Outcome:
    status: int | None = None  # HTTP status (None: no answer)
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[int, float]] = field(default_factory=list)  # (requests finished, server RSS in MB)
    sent: int = 0
    abandoned: int = 0
    stopped_by: str = "requests"


def check_target(url: str, allow_remote: bool) -> None:
    """``url`` is http(s) and, unless ``allow_remote``, every address it resolves to is loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url}: expected a server URL such as http://127.0.0.1:8000")
    if allow_remote:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except OSError as exc:
        raise UsageError(f"{url}: cannot resolve {parts.hostname} ({exc.strerror or exc})") from None
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote:
        raise UsageError(f"{url} is not a loopback address ({', '.join(remote)}); pass --allow-remote to load it")


def synthetic_picture():
    """The picture a load test sends without ``--image``: seeded noise, 336x336 RGB."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8))


def image_data_url(path: Path | None) -> str:
    """The image as a base64 PNG data URL (``synthetic_picture`` when ``path`` is None)."""
    if path is not None:
        from tpc.runtimes.prompting import load_image

        image = load_image(path)
    else:
        image = synthetic_picture()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(config: LoadTestConfig, model: str, image_url: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": config.prompt}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": config.max_tokens}
    if config.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def parse_rss(text: str) -> float | None:
    """``process_resident_memory_bytes`` from a Prometheus text page, in MB (None if absent)."""
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


async def read_rss(client, url: str) -> float | None:
    try:
        response = await client.get(f"{url}/metrics", timeout=30)
    except Exception:  # a server without /metrics still gets load-tested
        return None
    return parse_rss(response.text) if response.status_code == 200 else None


async def one_request(client, url: str, body: dict, timeout_s: float) -> Outcome:
    outcome = Outcome()
    start = time.perf_counter()
    try:
        await asyncio.wait_for(_exchange(client, url, body, timeout_s, outcome, start), timeout_s)
    except asyncio.TimeoutError:
        outcome.error = f"no answer within --timeout {timeout_s:g} s"
    except Exception as exc:  # any transport failure is this request's error, not the run's
        outcome.error = f"{type(exc).__name__}: {exc}"
    if outcome.error is None:
        outcome.e2e_ms = 1e3 * (time.perf_counter() - start)
    return outcome


async def _exchange(client, url: str, body: dict, timeout_s: float, outcome: Outcome, start: float) -> None:
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout_s) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            outcome.error = f"HTTP {response.status_code}: {_message(text)}"
        elif body.get("stream"):
            await _read_stream(response, outcome, start)
        else:
            data = json.loads(await response.aread())
            outcome.tokens = int(data.get("usage", {}).get("completion_tokens", 0))


async def _read_stream(response, outcome: Outcome, start: float) -> None:
    finished = False
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :]
        if payload == "[DONE]":
            finished = True
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            outcome.error = f"stream error: {chunk['error'].get('message')}"
            return
        if chunk.get("usage"):
            outcome.tokens = int(chunk["usage"].get("completion_tokens", 0))
        delta = (chunk.get("choices") or [{}])[0].get("delta", {})
        if outcome.ttft_ms is None and (delta.get("content") or chunk.get("tpc", {}).get("token_ids")):
            outcome.ttft_ms = 1e3 * (time.perf_counter() - start)
    if not finished:
        outcome.error = "the stream ended without data: [DONE]"


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200]


async def run_load(config: LoadTestConfig, progress=None) -> tuple[Run, str]:
    """Send the requests; returns the run and the model name used."""
    import httpx

    url = config.url.rstrip("/")
    image_url = image_data_url(config.image)
    limits = httpx.Limits(max_connections=config.concurrency + 2, max_keepalive_connections=config.concurrency + 2)
    async with httpx.AsyncClient(limits=limits, timeout=config.timeout_s) as client:
        model = config.model or await served_model(client, url)
        body = request_body(config, model, image_url)
        run = Run()
        before = await read_rss(client, url)
        if before is not None:
            run.rss.append((0, before))
        every = max(1, config.requests // 10)
        end = time.monotonic() + config.duration_s

        async def worker() -> None:
            while run.sent < config.requests:
                if time.monotonic() >= end:
                    run.stopped_by = "time"
                    return
                run.sent += 1
                outcome = await one_request(client, url, body, min(config.timeout_s, end - time.monotonic()))
                run.outcomes.append(outcome)
                if progress is not None:
                    progress(len(run.outcomes))
                if len(run.outcomes) % every == 0 and len(run.outcomes) < config.requests:
                    rss = await read_rss(client, url)
                    if rss is not None:
                        run.rss.append((len(run.outcomes), rss))

        tasks = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=config.duration_s + 5)
        for task in pending:  # a request stuck past the run's end: abandon it
            task.cancel()
            run.abandoned += 1
            run.stopped_by = "time"
        await asyncio.gather(*pending, return_exceptions=True)
        after = await read_rss(client, url)
        if after is not None:
            run.rss.append((len(run.outcomes), after))
    return run, model


async def served_model(client, url: str) -> str:
    try:
        response = await client.get(f"{url}/v1/models", timeout=30)
        models = response.json()["data"]
        return str(models[0]["id"])
    except Exception as exc:  # one line for every way the first contact can fail
        raise UsageError(f"{url}/v1/models did not list a model ({type(exc).__name__}: {exc})") from None


def report(config: LoadTestConfig, run: Run, model: str, wall_s: float) -> dict:
    """The gate-able JSON document of a run (see the module docstring)."""
    import tpc
    from tpc.profiling.stats import summarize

    ok = [o for o in run.outcomes if o.error is None]
    failed = [o for o in run.outcomes if o.error is not None]
    metrics = {}
    for name, values in (
        ("ttft_ms", [o.ttft_ms for o in ok if o.ttft_ms is not None]),
        ("e2e_ms", [o.e2e_ms for o in ok]),
        ("completion_tokens", [float(o.tokens) for o in ok]),
    ):
        if values:
            metrics[name] = summarize(values)
    statuses: dict[str, int] = {}
    for outcome in run.outcomes:
        key = str(outcome.status) if outcome.status is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
    settings = asdict(config)
    settings["image"] = str(config.image) if config.image is not None else None
    return {
        "schema": "tpc.profile",  # what `tpc gate` reads; "kind" says it comes from a load test
        "schema_version": 1,
        "kind": "loadtest",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tpc_version": tpc.__version__,
        "artifact": {"model": model, "url": config.url},
        "config": {"runs": len(ok), **settings},
        "metrics": metrics,
        "requests_sent": run.sent,
        "requests_ok": len(ok),
        "errors": len(failed) + run.abandoned,
        "abandoned": run.abandoned,
        "stopped_by": run.stopped_by,
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 4) if wall_s > 0 else 0.0,
        "generated_tokens_per_s": round(sum(o.tokens for o in ok) / wall_s, 4) if wall_s > 0 else 0.0,
        "status_counts": statuses,
        "error_samples": [o.error for o in failed[:ERROR_SAMPLES]],
        "server": server_memory(run.rss, config.requests),
    }


def server_memory(samples: list[tuple[int, float]], requests: int) -> dict:
    """RSS before and after, and its growth over the run and over its second half (MB, %)."""
    if not samples:
        return {"rss_samples_mb": []}
    before, after = samples[0][1], samples[-1][1]
    half = min(samples, key=lambda s: abs(s[0] - requests / 2))
    return {
        "rss_before_mb": round(before, 2),
        "rss_after_mb": round(after, 2),
        "rss_growth_pct": round(100 * (after - before) / before, 3),
        "rss_half_mb": round(half[1], 2),
        "rss_growth_second_half_pct": round(100 * (after - half[1]) / half[1], 3),
        "rss_samples_mb": [[n, round(mb, 2)] for n, mb in samples],
    }


def load_test(config: LoadTestConfig, progress=None) -> dict:
    """Run ``config`` and return its report."""
    start = time.perf_counter()
    run, model = asyncio.run(run_load(config, progress))
    return report(config, run, model, time.perf_counter() - start)
