"""The executor under lock contention on a real PostgreSQL: a migration blocked by another
transaction's lock times out (lock_timeout), reports the blocker, backs off and retries;
it succeeds once the blocker ends, or fails with nothing recorded when the budget runs
out. Meanwhile other sessions' queries on the table wait at most about one lock timeout."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from schemad import engine, errors, validation
from tests.conftest import Database, make_settings, write_migrations
from tests.integration.conftest import migrating, sleeping_migration

if TYPE_CHECKING:
    import logging
    from pathlib import Path

pytestmark = pytest.mark.anyio

LOCK_TIMEOUT_S = 0.3
BLOCKER_APP = "test-blocker"


def prepare(database: Database, folders: tuple[Path, Path]) -> tuple[Path, Path]:
    mdir, idir = folders
    database.sql("CREATE TABLE busy (id int PRIMARY KEY, v text); INSERT INTO busy SELECT g, 'x' FROM generate_series(1, 100) g")
    # ALTER TABLE needs ACCESS EXCLUSIVE: it queues behind any reader's ACCESS SHARE.
    write_migrations(mdir, {
        "0001_alter_busy.sql": "CREATE TABLE beside (id int);\nALTER TABLE busy ADD COLUMN extra int;\n",
    })
    return mdir, idir


async def open_blocker(database: Database) -> asyncpg.Connection:
    """A session holding ACCESS SHARE on `busy`: an open transaction that read the table."""
    conn = await asyncpg.connect(database.dsn, server_settings={"application_name": BLOCKER_APP})
    await conn.execute("BEGIN")
    await conn.fetch("SELECT * FROM busy LIMIT 1")
    return conn


async def retry_events(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    if not await conn.fetchval("SELECT to_regclass('schemad.events') IS NOT NULL"):
        return []
    rows = await conn.fetch("SELECT outcome, sqlstate, attempt, detail FROM schemad.events ORDER BY id")
    return [
        {"outcome": r["outcome"], "sqlstate": r["sqlstate"], "attempt": r["attempt"], "detail": json.loads(r["detail"])}
        for r in rows
    ]


class Latency:
    """A client reading the contended table in a loop; remembers its slowest query."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self.queries = 0

    async def run(self, dsn: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": "test-client"})
        task_status.started()
        try:
            while True:
                started = time.monotonic()
                await conn.fetchval("SELECT count(*) FROM busy")
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                self.queries += 1
                await anyio.sleep(0.01)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()


async def test_blocked_migration_retries_reports_blocker_and_succeeds(
    database: Database, folders: tuple[Path, Path], records: list[logging.LogRecord]
) -> None:
    mdir, idir = prepare(database, folders)
    settings = make_settings(
        database.dsn, mdir, idir, lock_timeout_s=LOCK_TIMEOUT_S, retry_max_attempts=20, retry_budget_s=30
    )
    blocker = await open_blocker(database)
    blocker_pid = blocker.get_server_pid()
    watcher = await asyncpg.connect(database.dsn)

    async def retried() -> bool:
        return any(e["outcome"] == "retry" for e in await retry_events(watcher))

    try:
        async with migrating(settings) as run:
            await run.until(retried)  # then end the blocker
            assert database.sql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'extra'") == "0"
            await blocker.execute("ROLLBACK")
        evs = await retry_events(watcher)
    finally:
        await blocker.close()
        await watcher.close()

    assert run.report is not None
    [result] = run.report.applied
    assert result.attempts >= 2
    assert database.sql("SELECT statements_run FROM schemad.migrations WHERE version = 1") == "2"
    assert database.sql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'extra'") == "1"

    retries = [e for e in evs if e["outcome"] == "retry"]
    assert retries and all(e["sqlstate"] == "55P03" for e in retries)
    first = retries[0]["detail"]["blockers"]
    assert any(b["pid"] == blocker_pid and b["application_name"] == BLOCKER_APP for b in first), first
    assert evs[-1]["outcome"] == "applied" and evs[-1]["attempt"] == result.attempts
    logged = [r for r in records if getattr(r, "event", None) == "migration_retry"]
    assert logged and f"pid {blocker_pid} ({BLOCKER_APP}" in str(getattr(logged[0], "blockers", ""))


async def test_blocker_past_the_budget_fails_with_nothing_recorded_and_never_stalls_readers(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = prepare(database, folders)
    settings = make_settings(
        database.dsn, mdir, idir, lock_timeout_s=LOCK_TIMEOUT_S, retry_max_attempts=3, retry_budget_s=10
    )
    before = database.schema_dump("--exclude-schema=schemad")
    blocker = await open_blocker(database)
    blocker_pid = blocker.get_server_pid()
    client = Latency()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(client.run, database.dsn)
            with pytest.raises(errors.MigrationFailed) as info:
                await engine.migrate(settings, validation.validate(mdir, idir))
            tg.cancel_scope.cancel()
    finally:
        await blocker.close()

    err = info.value
    assert (err.sqlstate, err.reason, err.version) == ("55P03", "lock_timeout", 1)
    assert "after 3 attempt(s)" in err.message
    assert f"blocked by pid {blocker_pid} ({BLOCKER_APP}" in err.message
    assert "nothing of 0001_alter_busy was applied or recorded" in err.message
    assert database.schema_dump("--exclude-schema=schemad") == before
    assert database.sql("SELECT count(*) FROM schemad.migrations") == "0"
    assert database.sql("SELECT to_regclass('beside') IS NULL") == "t"
    assert database.sql(
        "SELECT string_agg(outcome || ':' || attempt, ',' ORDER BY id) FROM schemad.events"
    ) == "retry:1,retry:2,failed:3"

    # The reader queued behind each ALTER attempt for at most that attempt's lock timeout
    # (raised ×1.5 per attempt: 0.3, 0.45, 0.675 s), never for the whole retry sequence.
    print(f"reader: {client.queries} queries, worst {client.worst_s * 1000:.0f} ms (lock timeout {LOCK_TIMEOUT_S}s)")
    assert client.queries > 3
    assert client.worst_s >= LOCK_TIMEOUT_S * 0.5, "the reader never queued: the test measured nothing"
    assert client.worst_s < 3 * LOCK_TIMEOUT_S, f"a reader waited {client.worst_s:.2f}s"


async def test_lost_work_connection_reconnects_and_retries_under_the_same_lock(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_interrupted.sql": (
            "CREATE TABLE w1 (id int);\n"
            "SELECT pg_sleep(coalesce(current_setting('schemad_test.sleep_s', true), '0')::float8);\n"
            "CREATE TABLE w2 (id int);\n"
        ),
    })
    # Only connections opened while this is set sleep: the first attempt, not the reconnect.
    database.sql(f"ALTER DATABASE {database.name} SET schemad_test.sleep_s = '30'")
    settings = make_settings(database.dsn, mdir, idir)
    watcher = await asyncpg.connect(database.dsn)

    try:
        async with migrating(settings) as run:
            pid = await run.until(lambda: sleeping_migration(watcher))
            lock_pid = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'schemad:lock:%'"
            )
            await watcher.execute(f"ALTER DATABASE {database.name} RESET schemad_test.sleep_s")
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
        evs = await retry_events(watcher)
        lock_after = await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    finally:
        await watcher.close()

    assert run.report is not None
    [result] = run.report.applied
    assert result.attempts == 2
    assert [(e["outcome"], e["attempt"]) for e in evs] == [("retry", 1), ("applied", 2)]
    assert evs[0]["sqlstate"][:2] in ("08", "57"), evs[0]  # connection lost / admin shutdown
    assert database.sql("SELECT to_regclass('w1') IS NOT NULL AND to_regclass('w2') IS NOT NULL") == "t"
    assert database.sql("SELECT count(*) FROM schemad.migrations") == "1"
    assert lock_pid is not None and lock_after == 0


async def test_statement_timeout_directive_is_fatal_and_leaves_nothing(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_slow.sql": "-- schemad:statement-timeout=200ms\nCREATE TABLE st (id int);\nSELECT pg_sleep(5);\n",
        "0002_next.sql": "CREATE TABLE st_next (id int);",
    })
    started = time.monotonic()
    with pytest.raises(errors.MigrationFailed) as info:
        await engine.migrate(make_settings(database.dsn, mdir, idir), validation.validate(mdir, idir))
    assert time.monotonic() - started < 3
    assert (info.value.sqlstate, info.value.line, info.value.reason) == ("57014", 3, "sql_error")
    assert database.sql("SELECT to_regclass('st') IS NULL AND to_regclass('st_next') IS NULL") == "t"
    assert database.sql("SELECT count(*) FROM schemad.migrations") == "0"


async def test_lock_timeout_directive_raises_the_wait_for_that_file(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = prepare(database, folders)
    write_migrations(mdir, {
        "0001_alter_busy.sql": "-- schemad:lock-timeout=1s\nALTER TABLE busy ADD COLUMN extra int;\n",
    })
    settings = make_settings(database.dsn, mdir, idir, lock_timeout_s=0.1, retry_max_attempts=1)
    blocker = await open_blocker(database)
    try:
        started = time.monotonic()
        with pytest.raises(errors.MigrationFailed) as info:
            await engine.migrate(settings, validation.validate(mdir, idir))
        waited = time.monotonic() - started
    finally:
        await blocker.close()
    assert info.value.sqlstate == "55P03"
    assert 0.9 <= waited < 3, f"waited {waited:.2f}s for a 1s file-level lock timeout (default 0.1s)"


async def test_a_lost_work_connection_that_cannot_reconnect_names_the_batch_in_flight(
    database: Database, folders: tuple[Path, Path]
) -> None:
    """The work connection dies mid-batch while the lock holds, and no new connection can be
    made (here: the database stops accepting connections; in a server restart, "shutting
    down"): the run stops with ConnectionLost naming the migrations sent together, and
    nothing of them is recorded."""
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_first.sql": "CREATE TABLE f1 (id int);\nSELECT pg_sleep(30);\n",
        "0002_second.sql": "CREATE TABLE f2 (id int);\n",
    })
    settings = make_settings(database.dsn, mdir, idir)
    watcher = await asyncpg.connect(database.dsn)
    admin = await asyncpg.connect(database.cluster.dsn())  # ALTER DATABASE from outside it

    try:
        with pytest.raises(BaseExceptionGroup) as info:
            async with migrating(settings) as run:
                pid = await run.until(lambda: sleeping_migration(watcher))
                await admin.execute(f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS false")
                assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
        [err] = info.value.exceptions
        assert isinstance(err, errors.ConnectionLost), err
        assert err.sqlstate == "55000"  # object_not_in_prerequisite_state: not accepting connections
        assert err.message.startswith(
            "the connection was lost while applying one of 0001_first, 0002_second (sent together), "
            "and the database cannot be reached again"
        ), err.message
        assert "`schemad status` shows it" in err.message
    finally:
        await admin.execute(f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS true")
        await admin.close()
        await watcher.close()
    assert database.sql("SELECT count(*) FROM schemad.migrations") == "0"
    assert database.sql("SELECT to_regclass('f1') IS NULL AND to_regclass('f2') IS NULL") == "t"
