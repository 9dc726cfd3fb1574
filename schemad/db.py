"""The one module that talks to the driver (asyncpg).

`connect()` opens a dedicated connection with schemad's session settings (application
name, TCP keepalives, client_connection_check_interval); `Session` wraps it and
translates every driver exception into `errors.DatabaseError` / `errors.ConnectionLost`
with the SQLSTATE kept as data. Code above this module never names asyncpg.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from schemad import config, errors, redact

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

HOSTNAME = socket.gethostname()

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Notice:
    sqlstate: str | None
    message: str


def application_name(role: str) -> str:
    """``schemad:<role>:<host>:<pid>``, cut to PostgreSQL's 63 bytes."""
    return f"schemad:{role}:{HOSTNAME}:{os.getpid()}"[:63]


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver exceptions to schemad's tree, keeping the SQLSTATE."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        message = redact.scrub(getattr(exc, "message", None) or str(exc))
        detail = getattr(exc, "detail", None)
        err_cls = errors.ConnectionLost if sqlstate and (sqlstate[:2] == "08" or sqlstate in _SHUTDOWN) else errors.DatabaseError
        err = err_cls(message, sqlstate=sqlstate, detail=redact.scrub(detail) if detail else None)
        err.position = _int_or_none(getattr(exc, "position", None))
        raise err from None
    except _CONNECTION_ERRORS as exc:
        raise errors.ConnectionLost(redact.scrub(str(exc) or type(exc).__name__), sqlstate="08006") from None


_CLOSE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *_CONNECTION_ERRORS)
_SHUTDOWN = frozenset({"57P01", "57P02", "57P03"})


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


class Session:
    """A dedicated connection. Not safe for concurrent use: one operation at a time."""

    def __init__(self, conn: asyncpg.Connection, role: str) -> None:
        self._conn = conn
        self.role = role
        self.notices: list[Notice] = []
        conn.add_log_listener(self._on_notice)

    def _on_notice(self, _conn: Any, msg: Any) -> None:
        self.notices.append(Notice(getattr(msg, "sqlstate", None), redact.scrub(str(getattr(msg, "message", msg)))))
        del self.notices[:-100]

    @property
    def server_version(self) -> int:
        """The server's version as ``server_version_num`` (e.g. 150004), from the connection's startup."""
        v = self._conn.get_server_version()
        return int(v.major) * 10000 + int(v.minor)

    @property
    def server_pid(self) -> int:
        """The backend pid the server announced at connect time (a pooler announces its own)."""
        return int(self._conn.get_server_pid())

    @property
    def local_port(self) -> int | None:
        transport = getattr(self._conn, "_transport", None)
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    def on_termination(self, callback: Callable[[], None]) -> None:
        self._conn.add_termination_listener(lambda _c: callback())

    async def execute(self, sql: str, *args: Any) -> str:
        with translate_errors():
            return str(await self._conn.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with translate_errors():
            rows = await self._conn.fetch(sql, *args)
        return [dict(r) for r in rows]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        with translate_errors():
            row = await self._conn.fetchrow(sql, *args)
        return dict(row) if row is not None else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        with translate_errors():
            return await self._conn.fetchval(sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        with translate_errors():
            await self._conn.executemany(sql, args)

    async def add_listener(self, channel: str, callback: Callable[[str], None]) -> None:
        with translate_errors():
            await self._conn.add_listener(channel, lambda _c, _pid, _ch, payload: callback(payload))

    async def cancel_running(self) -> None:
        """Ask the server to cancel whatever this session runs (used on shutdown)."""
        with translate_errors(), contextlib.suppress(errors.SchemadError):
            self._conn.terminate()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close politely; on timeout or error, drop the socket (the server frees the session)."""
        if self._conn.is_closed():
            return
        with anyio.move_on_after(timeout_s, shield=True) as scope:
            try:
                await self._conn.close(timeout=timeout_s)
            except _CLOSE_ERRORS:
                self._conn.terminate()
        if scope.cancelled_caught:
            self._conn.terminate()

    def terminate(self) -> None:
        self._conn.terminate()


async def connect(settings: config.Settings, role: str, *, dbname: str | None = None) -> Session:
    """Open a dedicated connection for ``role`` ("migrate", "lock", "index", "status", ...)."""
    dsn = settings.dsn.get_secret_value() if settings.dsn else None
    redact.register_dsn(dsn)
    password = config.read_password(settings)
    redact.register(password)
    # Only application_name travels in the startup packet: PgBouncer rejects other startup
    # parameters ("unsupported startup parameter"), which would hide the proxy check's
    # message; the keepalives are SET once connected instead.
    server_settings = {"application_name": application_name(role)}
    kwargs: dict[str, Any] = {"timeout": settings.connect_timeout_s, "server_settings": server_settings}
    if password is not None:
        kwargs["password"] = password
    if dbname is not None:
        kwargs["database"] = dbname
    with translate_errors():
        try:
            conn = await asyncpg.connect(dsn, **kwargs)
        except (ValueError, OverflowError) as exc:  # a malformed DSN (bad port, URL, option): configuration
            text = redact.scrub(str(exc))
            text = text if text.startswith("invalid DSN") else f"invalid DSN: {text}"
            raise errors.ConfigError(text, key="dsn") from None
    session = Session(conn, role)
    # schemad never leaves a transaction idle while it works on something else, so a session
    # idle in one for a whole lock lease belongs to a frozen process: the server ends it, and
    # with it the locks it holds on application tables.
    idle_in_transaction = (
        f"; SET idle_in_transaction_session_timeout = {int(settings.lock_lease_s * 1000)}"
        if settings.lock_lease_s > 0 else ""
    )
    await session.execute(
        f"SET tcp_keepalives_idle = {int(settings.keepalives_idle_s)}; "
        f"SET tcp_keepalives_interval = {int(settings.keepalives_interval_s)}; "
        f"SET tcp_keepalives_count = {int(settings.keepalives_count)}{idle_in_transaction}"
    )
    if settings.connection_check_interval_s > 0:
        # PostgreSQL 14+: notice a vanished client mid-query; ignored where unsupported.
        ms = int(settings.connection_check_interval_s * 1000)
        with contextlib.suppress(errors.DatabaseError):
            await session.execute(f"SET client_connection_check_interval = {ms}")
    return session


@contextlib.asynccontextmanager
async def session(settings: config.Settings, role: str) -> AsyncIterator[Session]:
    s = await connect(settings, role)
    try:
        yield s
    finally:
        await s.close()


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings on)."""
    return "'" + value.replace("'", "''") + "'"
