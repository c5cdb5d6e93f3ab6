"""`tpc serve`: an OpenAI-compatible HTTP server for a compiled artifact (or Triton's, with --triton).

Options are checked before the model loads; a missing ``serve`` extra, a port in use or a
bad option is one error line. See ``tpc.serving`` for the endpoints and the batching.
"""

from __future__ import annotations

from pathlib import Path

import click

from tpc.errors import UsageError


@click.command("serve")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port (0: any free port).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Most requests run together.")
@click.option("--queue-size", type=int, default=64, show_default=True, help="Most waiting requests; more get 429.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="Seconds per request.")
@click.option(
    "--allow-local-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Let requests name image files inside this directory (default: base64 data: URLs only).",
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--runtime", type=click.Choice(["auto", "ort", "trt"]), default="auto", show_default=True)
@click.option("--model-name", default=None, help="The model name clients send (default: the artifact's model id).")
@click.option("--max-image-bytes", type=int, default=20 * 2**20, show_default=True, help="Encoded size per image.")
@click.option("--max-image-pixels", type=int, default=40_000_000, show_default=True, help="Pixels per image.")
@click.option("--default-max-tokens", type=int, default=256, show_default=True, help="When a request sets none.")
@click.option(
    "--batch-window-ms", type=float, default=5.0, show_default=True, help="Wait for requests arriving together."
)
@click.option(
    "--triton",
    is_flag=True,
    help="Serve through Triton Inference Server (PyTriton) instead, on --http-port/--grpc-port (with --host, "
    "--max-batch, --threads, --provider, --runtime, --model-name; the other options are this server's).",
)
@click.option("--http-port", type=int, default=8000, show_default=True, help="--triton: HTTP port (0: any).")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="--triton: gRPC port (0: any).")
def serve_cmd(
    artifact,
    host,
    port,
    max_batch,
    queue_size,
    timeout_s,
    allow_local_dir,
    threads,
    provider,
    runtime,
    model_name,
    max_image_bytes,
    max_image_pixels,
    default_max_tokens,
    batch_window_ms,
    triton,
    http_port,
    grpc_port,
):
    """Serve a compiled ARTIFACT over HTTP (OpenAI chat completions API)."""
    if max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {max_batch}")
    if triton:
        from tpc.serving.triton_server import serve_triton

        def ready(endpoint) -> None:
            click.echo(
                f"serving {endpoint.name!r} ({artifact}) with Triton: HTTP {endpoint.http_url}, "
                f"gRPC {endpoint.grpc_url}",
                err=True,
            )

        serve_triton(
            artifact,
            http_port=http_port,
            grpc_port=grpc_port,
            max_batch=max_batch,
            on_ready=ready,
            host=host,
            model_name=model_name,
            provider=provider,
            threads=threads,
            runtime=runtime,
        )
        return
    if not 0 <= port < 65536:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    check_serve_extra()
    from tpc.serving.settings import ServeSettings

    settings = ServeSettings(
        model_name=model_name,
        max_batch=max_batch,
        queue_size=queue_size,
        timeout_s=timeout_s,
        allow_local_dir=allow_local_dir,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        default_max_tokens=default_max_tokens,
        batch_window_ms=batch_window_ms,
    ).check()
    from tpc.runtimes.compiled_model import CompiledModel
    from tpc.serving.app import create_app
    from tpc.serving.background import bind, serve_forever, url_of

    sock = bind(host, port)  # a port in use fails before the model loads
    model = CompiledModel.load(artifact, provider=provider, threads=threads, runtime=runtime)
    info = model.graphs.describe()
    if info["fell_back"]:
        click.echo(
            f"warning: requested {info['requested_provider']} but ONNX Runtime runs on {info['provider']}", err=True
        )
    app = create_app(model, settings)
    click.echo(
        f"serving {app.state.model_name!r} ({artifact}) on {url_of(sock)}: POST /v1/chat/completions; "
        f"max batch {max_batch}, queue {queue_size}, provider {info['provider']}",
        err=True,
    )
    try:
        serve_forever(app, sock)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        click.echo("stopped", err=True)


def check_serve_extra() -> None:
    """FastAPI, uvicorn and prometheus_client are the ``serve`` extra: a one-line error without them."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"tpc serve needs {', '.join(missing)}: pip install 'tpc[serve]'")
