"""The HTTP surface: a tiny ASGI app (/metrics, /livez, /readyz, /status) served by hypercorn.

No HTTP parsing here: hypercorn does it. The app only routes an ASGI scope to one of
four handlers. `/livez` never calls anything (a database outage must not restart the
process); `/readyz` and `/status` call the callables the daemon hands in, which read
state it already holds in memory and must not block. Serving is structured: `serve`
binds, reports the bound address through `task_status.started()` and stops on
cancellation, and hypercorn installs no signal handlers (a shutdown trigger is given).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Final

import anyio
import hypercorn.asyncio
from hypercorn.config import Config

from schemad import metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
# hypercorn's own messages ("Running on ... (CTRL + C to quit)") are noise in a daemon;
# its errors (a handler that raised) still come through at WARNING and above.
_server_log = logging.getLogger(f"{__name__}.server")

GRACEFUL_TIMEOUT_S: Final = 2.0
_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"


class App:
    """The ASGI application. `ready` and `status` are called on every request to their path."""

    def __init__(
        self,
        registry: Collector,
        *,
        ready: Callable[[], bool],
        status: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._status = status
        self._routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": self._metrics,
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/status": self._status_json,
        }

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served; returning closes the connection
        handler = self._routes.get(scope["path"])
        method = scope["method"]
        if handler is None:
            code, ctype, body = 404, _TEXT, b"not found\n"
            extra: list[tuple[bytes, bytes]] = []
        elif method not in ("GET", "HEAD"):
            code, ctype, body = 405, _TEXT, b"method not allowed\n"
            extra = [(b"allow", b"GET, HEAD")]
        else:
            code, ctype, body = handler()
            extra = []
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if method == "HEAD" else body, "more_body": False}
        )

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, metrics.CONTENT_TYPE, metrics.render(self._registry)

    def _livez(self) -> tuple[int, str, bytes]:
        return 200, _TEXT, b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        if self._ready():
            return 200, _TEXT, b"ready\n"
        return 503, _TEXT, b"not ready\n"

    def _status_json(self) -> tuple[int, str, bytes]:
        body = json.dumps(self._status(), default=str, indent=2) + "\n"
        return 200, _JSON, body.encode()


async def _lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {addr!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listen(addr: str) -> socket.socket:
    host, port = parse_addr(addr)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {addr}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _config(fd: int) -> Config:
    cfg = Config()
    cfg.bind = [f"fd://{fd}"]
    cfg.accesslog = None
    _server_log.setLevel(logging.WARNING)
    cfg.errorlog = _server_log
    cfg.graceful_timeout = GRACEFUL_TIMEOUT_S
    return cfg


async def serve(
    app: App,
    addr: str,
    *,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `addr` until cancelled; ``task_status.started((host, port))`` once listening.

    The socket is bound and listening before `started()`, so a probe that connects
    right after is queued rather than refused (port 0 picks a free port; the real
    one is in the started value). On cancellation hypercorn gets a graceful stop,
    bounded by `GRACEFUL_TIMEOUT_S`, and the cancellation propagates.
    """
    sock = _listen(addr)
    with sock:
        host, port = sock.getsockname()[:2]
        # hypercorn adopts (and later closes) the descriptor it is given: hand it a
        # duplicate so that closing ours stays correct either way.
        cfg = _config(os.dup(sock.fileno()))
        stop = anyio.Event()
        finished = anyio.Event()
        # Shielded so that the caller's cancellation reaches hypercorn only as the
        # graceful `stop`, not as a CancelledError in the middle of a response.
        server_scope = anyio.CancelScope(shield=True)

        async def run_server() -> None:
            try:
                with server_scope:
                    await hypercorn.asyncio.serve(app, cfg, shutdown_trigger=stop.wait, mode="asgi")
            finally:
                finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_server)
            log.info(
                "http listening on %s:%d",
                host,
                port,
                extra={"event": "http_listening", "addr": f"{host}:{port}"},
            )
            task_status.started((host, port))
            try:
                await finished.wait()  # returns early only if hypercorn stopped on its own
            finally:
                stop.set()
                with anyio.move_on_after(GRACEFUL_TIMEOUT_S + 1.0, shield=True):
                    await finished.wait()
                server_scope.cancel()
