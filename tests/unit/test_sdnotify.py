"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

import pytest

from schemad import sdnotify

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)  # a bound on a broken test, not synchronisation: sends are synchronous
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _drain(sock: socket.socket) -> list[str]:
    """Every datagram already queued, without waiting for more."""
    out: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_daemon_lifecycle_message_sequence(listener: socket.socket) -> None:
    assert sdnotify.status("waiting for the migration lock")
    assert sdnotify.extend_timeout(90)
    assert sdnotify.ready("schema at version 12; 2 index builds queued")
    assert sdnotify.watchdog()
    assert sdnotify.watchdog()
    assert sdnotify.stopping("shutting down")
    assert _drain(listener) == [
        "STATUS=waiting for the migration lock",
        "EXTEND_TIMEOUT_USEC=90000000",
        "READY=1\nSTATUS=schema at version 12; 2 index builds queued",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=shutting down",
    ]


def test_status_stays_on_one_line(listener: socket.socket) -> None:
    assert sdnotify.status("applied 3/5\nREADY=1")
    assert sdnotify.ready()
    assert _drain(listener) == ["STATUS=applied 3/5 READY=1", "READY=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"schemad-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_explicit_environ_wins(listener: socket.socket) -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert _drain(listener) == []


def test_unreachable_socket_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "gone.sock"
    assert sdnotify.ready(environ={"NOTIFY_SOCKET": str(missing)}) is False
    assert any(getattr(r, "event", None) == "sd_notify_failed" for r in caplog.records)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "0"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval_s(environ) == expected


def test_watchdog_interval_for_this_pid() -> None:
    environ = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval_s(environ) == 10.0


def test_watchdog_interval_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 2.0
