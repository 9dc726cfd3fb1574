"""Integration-tier fixtures and helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, TypeVar

import anyio
import pytest

from schemad import engine, validation

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    import asyncpg

    from schemad.config import Settings


T = TypeVar("T")


async def sleeping_migration(conn: asyncpg.Connection) -> int | None:
    """The pid of schemad's migrate session while it sits in a migration's pg_sleep."""
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'schemad:migrate:%' AND wait_event = 'PgSleep'"
    )
    return pid


class Migrating:
    """`engine.migrate` running in the background (see `migrating`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.report: engine.RunReport | None = None

    async def _run(self) -> None:
        s = self.settings
        self.report = await engine.migrate(s, validation.validate(s.migrations_dir, s.indexes_dir))

    @staticmethod
    async def until(condition: Callable[[], Awaitable[T | None]], *, timeout_s: float = 10) -> T:
        """Poll ``condition`` (a database state the run reaches) until it gives a truthy
        value, and return that value."""
        with anyio.fail_after(timeout_s):
            while True:  # a state in another process: nothing to wait on but the database
                if value := await condition():
                    return value
                await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def migrating(settings: Settings) -> AsyncIterator[Migrating]:
    """Run a migration while the body waits for a state (`Migrating.until`) and acts on it
    (ends a blocker, kills a backend); leaving the block waits for the run to end, and
    `Migrating.report` then holds its report."""
    run = Migrating(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run._run)
        yield run


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record the schemad loggers emit (independent of caplog and of `logs.setup`)."""
    got: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Collect(logging.DEBUG)
    root = logging.getLogger("schemad")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield got
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
