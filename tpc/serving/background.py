"""Running the app on uvicorn: in the foreground (``tpc serve``) or in a thread (tests, benchmarks).

The listening socket is bound here, before uvicorn starts, so a port in use is one
``UsageError`` line and port 0 gives the OS-assigned port at once.
"""

from __future__ import annotations

import socket
import threading
import time

from tpc.errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port`` 0: the OS picks one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every reply written in two parts waits for the client's delayed ACK (about 40 ms)
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:  # socket.gaierror included
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app, log_level: str = "warning"):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve_forever(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on the bound ``sock`` until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    uvicorn_server(app, log_level).run(sockets=[sock])


class ServerThread:
    """``with ServerThread(app) as server: httpx.get(server.url + "/health")`` on 127.0.0.1, an OS-assigned port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 60.0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn_server(app)
        self.startup_timeout_s = startup_timeout_s
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="tpc-serve-http", daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        limit = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > limit:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __exit__(self, *exc) -> None:
        self.stop()
