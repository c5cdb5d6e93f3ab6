"""One worker thread runs the model; requests wait in a bounded queue and run in batches.

The event loop never runs the model: a request becomes a ``Job`` whose events (its tokens,
then its completion or an error) the worker posts back with ``call_soon_threadsafe``.
The worker takes the oldest waiting job and every compatible one behind it (``batching``),
up to ``max_batch``, after waiting ``batch_window_ms`` for requests arriving together. A
full queue refuses new jobs (429). A cancelled job (client gone, timeout) leaves the queue
at once, or, while it runs, stops at its next token (``on_token`` returns True), so its
slot is free when the batch's other rows finish. Only the worker touches the model, so
batches never share KV state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tpc.errors import UsageError
from tpc.runtimes.sampling import Sampler
from tpc.serving.batching import batch_key, batch_sampler
from tpc.serving.chat_request import ChatRequest
from tpc.serving.errors import ApiError, invalid
from tpc.serving.metrics import ServerMetrics
from tpc.serving.settings import ServeSettings

log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens)
    prompt_tokens: int
    image_tokens: int | None  # visual tokens that reached the language model
    batch_size: int  # requests in the generate call that produced it
    timings_ms: dict[str, float] = field(default_factory=dict)


class Job:
    """One request on its way through the queue and the worker."""

    def __init__(self, request: ChatRequest, image, keep: int | None, loop: asyncio.AbstractEventLoop):
        self.id = next(_ids)
        self.request = request
        self.image = image  # the request's pictures (a list), or None
        self.keep = keep  # the compiled bucket (bucketed artifacts), else None
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.tokens: list[int] = []
        self.cancelled = threading.Event()
        self.arrived = time.perf_counter()
        self.started: float | None = None
        self.first_token: float | None = None

    def post(self, kind: str, value: object = None) -> None:
        """Hand an event to the request's handler (from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass


class Scheduler:
    def __init__(self, model, settings: ServeSettings, metrics: ServerMetrics):
        self.model = model
        self.settings = settings
        self.metrics = metrics
        # every row sees its own sampler unless the artifact prunes inside the LLM (see batching)
        self.per_row_sampling = not model.runtime.get("llm_pruning")
        self.eos = set(model.runtime["eos_token_ids"])
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="tpc-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.post("error", ApiError(503, "the server is shutting down", "server_error"))
        self._thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down", "server_error")
            if len(self._waiting) >= self.settings.queue_size:
                raise ApiError(
                    429,
                    f"the server is busy: {len(self._waiting)} requests are waiting (--queue-size); retry later",
                    "rate_limit_error",
                    code="queue_full",
                )
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Give up on ``job``: out of the queue now, or stopped at its next token if it runs."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.queue_depth.set(len(self._waiting))

    def _key(self, job: Job):
        return batch_key(job.image is not None, job.keep, job.request.greedy, self.per_row_sampling, job.id)

    def _take_batch(self) -> list[Job] | None:
        """The next batch (None once closed); waits for a first job, then briefly for its companions."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            window_end = time.monotonic() + self.settings.batch_window_ms / 1e3
            while not self._closed and 0 < len(self._waiting) < self.settings.max_batch:
                left = window_end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            if not self._waiting:  # every waiting job was cancelled during the window
                return []
            key = self._key(self._waiting[0])
            batch = [job for job in self._waiting if self._key(job) == key][: self.settings.max_batch]
            for job in batch:
                self._waiting.remove(job)
            self.metrics.queue_depth.set(len(self._waiting))
            return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            if batch:
                self.metrics.running.set(len(batch))
                self.metrics.batch_size.observe(len(batch))
                self._run(batch)
                self.metrics.running.set(0)

    def _run(self, batch: list[Job]) -> None:
        for job in batch:
            job.started = time.perf_counter()
        try:
            result = self._generate(batch)
        except UsageError as exc:  # a request the runtime refuses (e.g. over the context with its image)
            if len(batch) > 1 and not any(job.tokens for job in batch):
                for job in batch:  # so each request gets its own answer or its own error
                    self._run([job])
                return
            for job in batch:
                job.post("error", invalid(str(exc), code="invalid_request"))
            return
        except Exception as exc:  # a bug or a runtime failure: this batch fails, the server stays up
            log.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                job.post("error", ApiError(500, f"generation failed ({type(exc).__name__}: {exc})", "server_error"))
            return
        done = time.perf_counter()
        for row, job in enumerate(batch):
            if not job.cancelled.is_set():
                job.post("done", self._completion(job, row, result, len(batch), done))

    def _generate(self, batch: list[Job]):
        if self.model.bucketed is not None and batch[0].keep is not None:
            self.model.set_budget(keep=batch[0].keep)
        sampler = batch_sampler([Sampler(j.request.temperature, j.request.top_p, j.request.seed) for j in batch])
        images = [job.image for job in batch] if batch[0].image is not None else None

        def on_token(row: int, token: int) -> bool:
            job = batch[row]
            if job.cancelled.is_set():
                return True
            now = time.perf_counter()
            if job.first_token is None:
                job.first_token = now
                self.metrics.ttft.observe(now - job.arrived)
            job.tokens.append(token)
            if job.request.stream:
                job.post("token", token)
            return len(job.tokens) >= job.request.max_tokens

        return self.model.generate(
            [job.request.prompt for job in batch],
            images,
            max_new_tokens=max(job.request.max_tokens for job in batch),
            sampler=sampler,
            on_token=on_token,
        )

    def _completion(self, job: Job, row: int, result, batch_size: int, done: float) -> Completion:
        ids = list(result.token_ids[row])
        image_tokens = result.image_tokens[row] if result.image_tokens else None
        pictures = result.picture_tokens[row] if result.picture_tokens else None
        prompt_ids = self.model.encoder.encode(job.request.prompt, pictures)
        first = job.first_token or done
        self.metrics.generated.inc(len(ids))
        self.metrics.latency.observe(done - job.arrived)
        if len(ids) > 1:
            self.metrics.decode.observe((done - first) / (len(ids) - 1))
        if image_tokens is not None:
            self.metrics.visual_tokens.observe(image_tokens)
        return Completion(
            token_ids=ids,
            text=self.model.decode(ids),
            finish_reason="stop" if ids and ids[-1] in self.eos else "length",
            prompt_tokens=len(prompt_ids),
            image_tokens=image_tokens,
            batch_size=batch_size,
            timings_ms={
                "queue_ms": round(1e3 * (job.started - job.arrived), 3),
                "ttft_ms": round(1e3 * (first - job.arrived), 3),
                "total_ms": round(1e3 * (done - job.arrived), 3),
            },
        )
