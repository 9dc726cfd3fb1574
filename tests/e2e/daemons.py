"""Helpers for end-to-end daemon tests: start `schemad run` processes, read their
endpoints, and collect what they send to a real sd_notify datagram socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemad import pgcluster

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Fails after ``timeout_s``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


@dataclass
class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    path: Path
    sock: socket.socket
    messages: list[str] = field(default_factory=list)

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.extend(data.decode().splitlines())

    def has(self, line: str) -> bool:
        return line in self.drain()


@contextlib.contextmanager
def notify_socket(tmp: Path) -> Iterator[NotifySocket]:
    path = tmp / f"notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield NotifySocket(path, sock)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int
    notify: NotifySocket
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.base + path)

    def sample(self, series: str) -> float | None:
        """The value of one exact series, e.g. 'schemad_migration_failures_total{reason="sql_error"}'."""
        code, body = self.get("/metrics")
        if code != 200:
            return None
        for line in body.splitlines():
            if line.split(" ", 1)[0] == series:
                return float(line.rsplit(" ", 1)[1])
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return int(self.proc.returncode)


def start_daemon(
    dsn: str, workdir: Path, notify: NotifySocket, *, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Daemon:
    port = pgcluster.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_") and k != "NOTIFY_SOCKET"}
    env.update(
        {
            "SCHEMAD_DSN": dsn,
            "NOTIFY_SOCKET": str(notify.path),
            "SCHEMAD_LOCK_POLL_S": "0.2",
            "SCHEMAD_RETRY_BACKOFF_S": "0.05",
            "SCHEMAD_RECONCILE_INTERVAL_S": "60",
        }
    )
    env.update(extra_env or {})
    log_path = workdir / f"daemon-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "schemad", "run", "--metrics-addr", f"127.0.0.1:{port}", *args],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    d = Daemon(proc, port, notify, log_path)
    wait_for(lambda: d.get("/livez")[0] == 200 or proc.poll() is not None, timeout_s=20, what="daemon /livez")
    assert proc.poll() is None, f"daemon exited early:\n{d.log()}"
    return d
