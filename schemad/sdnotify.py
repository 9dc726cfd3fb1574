"""systemd notifications (sd_notify) over ``$NOTIFY_SOCKET``; a silent no-op when it is unset.

The protocol is newline-separated ``KEY=VALUE`` lines in one datagram to an
``AF_UNIX``/``SOCK_DGRAM`` socket; a leading ``@`` names the abstract namespace.
No libsystemd. A failed send is logged and reported as ``False``, never raised:
a missed notification must not take the daemon down (systemd's own timeouts and
watchdog catch a daemon that really stopped talking).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one datagram with `lines`; True if it was sent, False if unset or failed."""
    addr = _environ(environ).get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a full receive queue drops this message instead of
            # stalling the event loop that sends it.
            sock.setblocking(False)
            sock.connect(addr)
            sock.sendall(payload)
    except OSError as exc:
        log.warning(
            "sd_notify failed: %s",
            exc.strerror or exc,
            extra={"event": "sd_notify_failed", "message_keys": [line.partition("=")[0] for line in lines]},
        )
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment.
    return " ".join(text.splitlines())


def ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    lines = ["READY=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines, environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    return notify(f"STATUS={_one_line(text)}", environ=environ)


def watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ=environ)


def stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    lines = ["STOPPING=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines, environ=environ)


def extend_timeout(seconds: float, *, environ: Mapping[str, str] | None = None) -> bool:
    """Ask for `seconds` more before the start (or stop) timeout; repeat before it runs out."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}", environ=environ)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (how often to send WATCHDOG=1), or None.

    None when the watchdog is off, the value is not a positive integer, or
    ``$WATCHDOG_PID`` names another process (the variables were inherited).
    """
    env = _environ(environ)
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
