"""The FastAPI application: ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``.

A chat request is parsed and checked on the event loop (image decoding in the thread
pool), queued for the ``Scheduler``'s worker, and answered from the events the worker
posts. A streamed reply starts once its first token exists, so an error found before
it (queue full, a prompt over the context with its image) still gets its HTTP status;
after that, an error ends the stream with an ``error`` event. Every refusal is a JSON
body in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tpc.errors import UsageError
from tpc.serving.chat_request import ChatRequest, parse_chat_request, unknown_model
from tpc.serving.errors import ApiError, invalid
from tpc.serving.images import open_image_url
from tpc.serving.metrics import ServerMetrics
from tpc.serving.responses import DONE, ChunkWriter, chat_completion, sse
from tpc.serving.scheduler import Job, Scheduler
from tpc.serving.settings import ServeSettings

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client closed the connection before its reply was ready."""


def create_app(model, settings: ServeSettings) -> FastAPI:
    """An app serving ``model`` (a loaded ``CompiledModel``); its worker runs while the app does."""
    if settings.model_name is None:
        settings = dataclasses.replace(settings, model_name=str(model.artifact.manifest["model"]["id"]))
    metrics = ServerMetrics(settings.max_batch)
    scheduler = Scheduler(model, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.close)

    app = FastAPI(title="tpc", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.model_name = settings.model_name
    created = int(time.time())

    def refuse(error: ApiError) -> JSONResponse:
        metrics.requests.labels(str(error.status)).inc()
        metrics.errors.labels(error.type).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return refuse(ApiError(500, f"internal error ({type(exc).__name__})", "server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name}

    @app.get("/v1/models")
    async def models():
        card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "tpc"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        deadline = asyncio.get_running_loop().time() + settings.timeout_s
        try:
            body = await read_body(request, settings.max_body_bytes)
            chat = parse_chat_request(body, settings.default_max_tokens, model.runtime["max_context"])
            if chat.model != settings.model_name:
                raise unknown_model(chat.model, settings.model_name)
            keep = resolve_keep(model, chat)
            image = await run_in_threadpool(prepare, model, settings, chat, keep)
            job = Job(chat, image, keep, asyncio.get_running_loop())
            scheduler.submit(job)
        except ApiError as error:
            return refuse(error)
        except ClientDisconnect:  # gone while sending its body
            metrics.requests.labels("499").inc()
            return Response(status_code=499)
        watcher = asyncio.create_task(wait_disconnect(request))
        try:
            kind, value = await next_event(job, deadline, watcher)  # streaming: the first token
        except ClientGone:
            scheduler.cancel(job)
            metrics.cancelled.labels("disconnect").inc()
            metrics.requests.labels("499").inc()
            return Response(status_code=499)  # nobody reads it: the connection is closed
        except TimeoutError:
            scheduler.cancel(job)
            metrics.cancelled.labels("timeout").inc()
            return refuse(timed_out(settings))
        finally:
            watcher.cancel()
        if kind == "error":
            return refuse(value)
        metrics.requests.labels("200").inc()
        if not chat.stream:
            return JSONResponse(chat_completion(settings.model_name, value))
        writer = ChunkWriter(settings.model_name, model.decode)
        return StreamingResponse(
            stream(job, (kind, value), writer, deadline),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def stream(job: Job, first: tuple, writer: ChunkWriter, deadline: float):
        """The reply's chunks; leaving early (client gone, timeout) cancels the job."""
        finished = False
        try:
            kind, value = first
            while True:
                if kind == "token":
                    yield writer.token(value)
                elif kind == "done":
                    finished = True
                    yield writer.finish(value, job.request.include_usage)
                    break
                else:
                    finished = True
                    metrics.errors.labels(value.type).inc()
                    yield sse(value.body())
                    break
                try:
                    kind, value = await next_event(job, deadline)
                except TimeoutError:
                    scheduler.cancel(job)
                    metrics.cancelled.labels("timeout").inc()
                    kind, value = "error", timed_out(settings)
            yield DONE
        finally:
            if not finished:
                scheduler.cancel(job)
                metrics.cancelled.labels("disconnect").inc()

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, over the server's limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def resolve_keep(model, chat: ChatRequest) -> int | None:
    """The compiled bucket a request runs at (bucketed artifacts), from the ``tpc`` extension field."""
    from tpc.runtimes.buckets import bucket_for

    asked = chat.keep is not None or chat.ratio is not None
    bucketed = model.bucketed
    if bucketed is None or bucketed.adaptive:
        if asked:
            why = (
                "chooses its budget per image"
                if bucketed is not None
                else f"was compiled for {model.runtime['keep']} visual tokens (compile with --buckets to choose)"
            )
            raise invalid(f"'tpc.keep'/'tpc.ratio': this artifact {why}", param="tpc")
        return None
    keep = chat.keep
    if keep is None and chat.ratio is not None:
        keep = max(1, math.ceil(model.runtime["num_patches"] * (1.0 - chat.ratio) - 1e-9))
    try:
        return bucket_for(keep if keep is not None else model.runtime["keep"], bucketed.buckets)
    except UsageError as exc:
        raise invalid(str(exc), param="tpc.keep") from None


def prepare(model, settings: ServeSettings, chat: ChatRequest, keep: int | None):
    """(thread pool) The decoded pictures (None: text only), after checking that the prompt can fit the
    context."""
    images = [
        open_image_url(url, settings.max_image_bytes, settings.max_image_pixels, settings.allow_local_dir)
        for url in chat.image_urls
    ]
    # a picture brings at least one crop's kept tokens; the worker refuses the rest exactly
    fewest = None
    if images:
        bucketed = model.bucketed
        fewest = keep or (min(bucketed.buckets) if bucketed is not None else model.runtime["keep"])
    try:
        length = len(model.encoder.encode(chat.prompt, [fewest] * len(images)))
    except UsageError as exc:
        raise invalid(str(exc), param="messages") from None
    context = model.runtime["max_context"]
    if length + chat.max_tokens > context:
        visual = f" ({fewest * len(images)} or more of them visual)" if fewest else ""
        raise invalid(
            f"the prompt is {length} tokens{visual} plus max_tokens {chat.max_tokens}, over the model's context "
            f"of {context}",
            param="messages",
            code="context_length_exceeded",
        )
    return images or None


async def wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def next_event(job: Job, deadline: float, watcher: asyncio.Task | None = None) -> tuple[str, object]:
    """The job's next event; ``ClientGone`` if ``watcher`` ends first, ``TimeoutError`` at the deadline."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise TimeoutError
    getter = asyncio.ensure_future(job.events.get())
    waiting = {getter} if watcher is None else {getter, watcher}
    done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    if watcher is not None and watcher in done:
        raise ClientGone
    raise TimeoutError


def timed_out(settings: ServeSettings) -> ApiError:
    return ApiError(
        504, f"the request did not finish within the server's --timeout of {settings.timeout_s:g} s", "timeout"
    )
