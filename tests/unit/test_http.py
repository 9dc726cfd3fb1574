"""The HTTP surface on a real hypercorn server on 127.0.0.1 (a free port picked by the kernel)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from schemad import http, metrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Probe:
    """What the daemon would hand the app: in-memory state, with call counts."""

    def __init__(self) -> None:
        self.is_ready = False
        self.ready_calls = 0
        self.status_calls = 0
        self.snapshot: dict[str, Any] = {"schema_version": 3, "pending": [4, 5], "ready": False}

    def ready(self) -> bool:
        self.ready_calls += 1
        return self.is_ready

    def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return self.snapshot


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _request(url: str, method: str = "GET") -> Response:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


class Server:
    def __init__(self, base: str, probe: Probe, m: metrics.Metrics, registry: CollectorRegistry) -> None:
        self.base = base
        self.probe = probe
        self.metrics = m
        self.registry = registry

    async def get(self, path: str, method: str = "GET") -> Response:
        return await anyio.to_thread.run_sync(_request, self.base + path, method)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    registry = CollectorRegistry()
    m = metrics.Metrics(registry)
    probe = Probe()
    app = http.App(registry, ready=probe.ready, status=probe.status)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(http.serve, app, "127.0.0.1:0")
        assert port != 0
        yield Server(f"http://{host}:{port}", probe, m, registry)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_livez_never_consults_the_daemon(server: Server) -> None:
    resp = await server.get("/livez")
    assert (resp.status, resp.body) == (200, b"ok\n")
    assert (server.probe.ready_calls, server.probe.status_calls) == (0, 0)


@pytest.mark.anyio
async def test_readyz_follows_the_callable(server: Server) -> None:
    resp = await server.get("/readyz")
    assert (resp.status, resp.body) == (503, b"not ready\n")
    server.probe.is_ready = True
    resp = await server.get("/readyz")
    assert (resp.status, resp.body) == (200, b"ready\n")
    server.probe.is_ready = False
    assert (await server.get("/readyz")).status == 503
    assert server.probe.ready_calls == 3


@pytest.mark.anyio
async def test_status_is_json_from_the_callable(server: Server) -> None:
    resp = await server.get("/status")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.body) == {"schema_version": 3, "pending": [4, 5], "ready": False}
    server.probe.snapshot = {"schema_version": 5, "pending": [], "ready": True}
    assert json.loads((await server.get("/status")).body)["schema_version"] == 5


@pytest.mark.anyio
async def test_metrics_scrape(server: Server) -> None:
    server.metrics.set_ready(True)
    server.metrics.set_index_state("ix_calendars_business", "building")
    server.metrics.set_index_progress("ix_calendars_business", 0.5)
    resp = await server.get("/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"] == metrics.CONTENT_TYPE
    assert resp.body == metrics.render(server.registry)
    text = resp.body.decode()
    assert "schemad_ready 1.0\n" in text
    assert 'schemad_index_build_progress_ratio{index="ix_calendars_business"} 0.5\n' in text
    assert "_created" not in text

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is required (apt-get install prometheus)"
    with anyio.fail_after(60):
        lint = await anyio.run_process([promtool, "check", "metrics"], input=resp.body, check=False)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


@pytest.mark.anyio
async def test_unknown_path_and_method(server: Server) -> None:
    assert (await server.get("/")).status == 404
    assert (await server.get("/metrics/extra")).status == 404
    resp = await server.get("/readyz", method="POST")
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, HEAD"
    assert server.probe.ready_calls == 0


@pytest.mark.anyio
async def test_head_has_headers_but_no_body(server: Server) -> None:
    resp = await server.get("/livez", method="HEAD")
    assert resp.status == 200
    assert resp.body == b""


@pytest.mark.anyio
async def test_serve_installs_no_signal_handlers_and_stays_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="schemad")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    registry = CollectorRegistry()
    metrics.Metrics(registry)
    app = http.App(registry, ready=lambda: True, status=dict)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(http.serve, app, "127.0.0.1:0")
        for _ in range(3):
            resp = await anyio.to_thread.run_sync(_request, f"http://{host}:{port}/livez")
            assert resp.status == 200
        assert {sig: signal.getsignal(sig) for sig in before} == before
        tg.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("/livez" in msg or "Running on" in msg for msg in messages), messages
    assert [getattr(r, "event", None) for r in caplog.records if r.name.startswith("schemad")] == [
        "http_listening"
    ]


@pytest.mark.anyio
async def test_cancellation_stops_serving_and_frees_the_port() -> None:
    registry = CollectorRegistry()
    app = http.App(registry, ready=lambda: True, status=dict)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(http.serve, app, "127.0.0.1:0")
            assert (await anyio.to_thread.run_sync(_request, f"http://{host}:{port}/livez")).status == 200
            scope.cancel()
    assert scope.cancelled_caught
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=5):
        pass


@pytest.mark.anyio
async def test_bind_failure_raises_before_started() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        app = http.App(CollectorRegistry(), ready=lambda: True, status=dict)
        async with anyio.create_task_group() as tg:
            with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
                await tg.start(http.serve, app, f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:9646", ("127.0.0.1", 9646)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert http.parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9646", ":9646", "host:", "host:http", "host:70000"])
def test_parse_addr_rejects(addr: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        http.parse_addr(addr)
