"""``tpc serve --triton``: an artifact served by Triton Inference Server's own binary, through PyTriton.

PyTriton (``nvidia-pytriton``) ships Triton's server binary with its Python backend and binds a
Python callable as a model: Triton answers the KServe v2 protocol over HTTP and gRPC, queues
and batches requests (dynamic batching up to ``max_batch`` rows) and hands each batch to the
callable, which runs ``CompiledModel.generate`` on ONNX Runtime or TensorRT in this process.
Tensors and batching rules: ``tpc.serving.triton_requests`` (the same as the exported
repository's Python model).

One difference from the exported repository: PyTriton reports an error for a whole call, so a
request that fails (an unreadable image, a prompt over the context) also fails the requests
Triton batched into the same call; the exported repository's model fails it alone.

The binary's Python stub loads ``libpython3.x.so``; ``start`` puts this interpreter's library
directory on ``LD_LIBRARY_PATH`` (PyTriton passes the environment on), or the stub may load
another Python's library and fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpc.errors import TpcError, UsageError
from tpc.serving.triton_requests import INPUTS, NUMPY_TYPES, OUTPUTS, default_model_name, generate_batch, parse_request

log = logging.getLogger(__name__)


class TritonStartError(TpcError):
    """Triton's server binary did not start or did not load the model."""


@dataclass(frozen=True)
class TritonEndpoint:
    model_name: str
    host: str
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class TritonService:
    """A started Triton serving one artifact: ``with TritonService(path) as endpoint: ...`` (non-blocking)."""

    def __init__(
        self,
        artifact_path: str | Path,
        http_port: int = 0,
        grpc_port: int = 0,
        max_batch: int = 8,
        *,
        host: str = "127.0.0.1",
        model_name: str | None = None,
        provider: str = "cpu",
        threads: int | None = None,
        runtime: str = "auto",
        queue_delay_us: int = 2000,
        log_verbose: int = 0,
    ):
        if max_batch < 1:
            raise UsageError(f"--max-batch must be at least 1, got {max_batch}")
        for port in (http_port, grpc_port):
            if not 0 <= port < 65536:
                raise UsageError(f"port {port} is outside 0..65535 (0 picks a free one)")
        from tpc.runtimes.compiled_model import CompiledModel

        self.model = CompiledModel.load(artifact_path, provider=provider, threads=threads, runtime=runtime)
        self.name = model_name or default_model_name(self.model.artifact.manifest)
        self.host = host
        free = iter(_free_ports(host, 2))
        self.ports = (http_port or next(free), grpc_port or next(free))
        self.max_batch = max_batch
        self.queue_delay_us = queue_delay_us
        self.log_verbose = log_verbose
        self.triton = None

    def start(self) -> TritonEndpoint:
        try:
            from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
            from pytriton.triton import Triton, TritonConfig
        except ImportError as exc:
            raise UsageError(
                f"--triton needs nvidia-pytriton ({exc.name} is missing): pip install 'tpc[triton]'"
            ) from None
        for port in self.ports:  # Triton would wait out its start-up timeout on a taken port
            _check_free(self.host, port)
        _library_path_for_stub()
        config = TritonConfig(
            http_address=self.host,
            http_port=self.ports[0],
            grpc_address=self.host,
            grpc_port=self.ports[1],
            allow_metrics=False,
            exit_timeout_secs=5,
            log_verbose=self.log_verbose,
        )
        self.triton = Triton(config=config)
        self.triton.bind(
            model_name=self.name,
            infer_func=self._infer,
            inputs=[
                Tensor(name=s.name, dtype=_pytriton_type(s.dtype), shape=s.dims, optional=s.optional) for s in INPUTS
            ],
            outputs=[Tensor(name=s.name, dtype=_pytriton_type(s.dtype), shape=s.dims) for s in OUTPUTS],
            config=ModelConfig(
                max_batch_size=self.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us),
            ),
            strict=True,
        )
        try:
            self.triton.run()
        except Exception as exc:  # PyTriton's errors and timeouts: the binary or the model did not come up
            self.stop()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TritonStartError(f"Triton's server did not start ({type(exc).__name__}: {detail})") from exc
        if not self.triton.is_alive():
            self.stop()
            raise TritonStartError("Triton's server exited right after it started (its log is above)")
        endpoint = TritonEndpoint(self.name, self.host, *self.ports)
        log.info("Triton serves %r over HTTP %s and gRPC %s", self.name, endpoint.http_url, endpoint.grpc_url)
        return endpoint

    def wait(self) -> None:
        """Block until Triton exits or the process is interrupted (Ctrl+C), then stop it."""
        self.triton.serve()

    def stop(self) -> None:
        if self.triton is not None:
            self.triton.stop()
            self.triton = None

    def __enter__(self) -> TritonEndpoint:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    def _infer(self, requests: list) -> list[dict[str, np.ndarray]]:
        parsed = []
        for request in requests:
            try:
                parsed.append(parse_request(dict(request.data)))
            except TpcError as exc:
                parsed.append(exc)
        outputs = generate_batch(self.model, parsed)
        errors = [(i, out) for i, out in enumerate(outputs) if isinstance(out, TpcError)]
        if errors:
            index, error = errors[0]
            where = f"request {index + 1} of {len(outputs)} batched together: " if len(outputs) > 1 else ""
            raise UsageError(f"{where}{error}")
        return outputs


def serve_triton(
    artifact_path: str | Path, http_port: int, grpc_port: int, max_batch: int, on_ready=None, **options
) -> None:
    """Serve ``artifact_path`` with Triton on ``http_port`` / ``grpc_port`` (0: free ports) until interrupted.

    ``on_ready(endpoint)``: called once the model answers (the CLI prints the URLs);
    ``options``: ``TritonService``'s keyword arguments (host, model_name, provider, threads, ...).
    """
    service = TritonService(artifact_path, http_port, grpc_port, max_batch, **options)
    endpoint = service.start()
    try:
        if on_ready is not None:
            on_ready(endpoint)
        service.wait()
    finally:
        service.stop()


def _pytriton_type(dtype: str):
    return np.bytes_ if dtype == "BYTES" else NUMPY_TYPES[dtype]


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports the OS has free on ``host`` (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def _check_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def _library_path_for_stub() -> None:
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])
