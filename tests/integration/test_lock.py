"""The migration advisory lock on a real PostgreSQL: busy → LockBusy, waiting then
proceeding, the holder visible and idle, released afterwards, and a lost lock stopping
the run before anything more is committed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from schemad import commands, db, engine, errors, lock, queries, validation
from schemad.ledger import Ledger
from tests.conftest import Database, make_settings, write_migrations

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

SLOW = (
    "CREATE TABLE slow_a (id int);\n"
    "SELECT pg_sleep({seconds});\n"
    "CREATE TABLE slow_b (id int);\n"
)


def migration_key(database: Database) -> int:
    return lock.lock_key(database.name, "migrations")


async def wait_for(conn: asyncpg.Connection, sql: str, *args: Any, timeout_s: float = 10) -> Any:
    """Poll ``sql`` until it returns a non-null, truthy value; returns it."""
    with anyio.fail_after(timeout_s):
        while True:
            value = await conn.fetchval(sql, *args)
            if value:
                return value
            await anyio.sleep(0.02)


SLEEPING_MIGRATE_PID = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'schemad:migrate:%' AND wait_event = 'PgSleep'
"""


async def migrate_collect(settings: Any, val: validation.Validation, out: dict[str, Any]) -> None:
    try:
        out["report"] = await engine.migrate(settings, val)
    except errors.SchemadError as exc:
        out["error"] = exc


async def test_busy_lock_gives_up_after_lock_wait(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    settings = make_settings(database.dsn, mdir, idir, lock_wait_s=0.4)
    holder = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-holder"})
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", migration_key(database))
        started = time.monotonic()
        with pytest.raises(errors.LockBusy):
            await engine.migrate(settings, validation.validate(mdir, idir))
        assert time.monotonic() - started >= 0.4
        assert database.sql("SELECT to_regclass('a') IS NULL") == "t"
        assert database.sql("SELECT to_regclass('schemad.migrations') IS NULL") == "t", "not even the ledger"
    finally:
        await holder.close()


async def test_waits_for_the_holder_then_applies(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    settings = make_settings(database.dsn, mdir, idir, lock_wait_s=30)
    holder = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-holder"})
    out: dict[str, Any] = {}
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", migration_key(database))
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate_collect, settings, validation.validate(mdir, idir), out)
            # Release once schemad's lock connection is there and polling.
            await wait_for(
                holder,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'schemad:lock:%'",
            )
            await anyio.sleep(0.1)  # let it poll and fail at least once more; not a synchronisation
            assert "report" not in out and "error" not in out
            await holder.fetchval("SELECT pg_advisory_unlock($1)", migration_key(database))
    finally:
        await holder.close()
    report: engine.RunReport = out["report"]
    assert [r.version for r in report.applied] == [1]
    assert report.lock_waited_s >= 0.1


async def test_holder_is_visible_idle_and_released(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_slow.sql": SLOW.format(seconds=0.6)})
    settings = make_settings(database.dsn, mdir, idir)
    out: dict[str, Any] = {}
    watcher = await asyncpg.connect(database.dsn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate_collect, settings, validation.validate(mdir, idir), out)
            await wait_for(watcher, SLEEPING_MIGRATE_PID)
            status = await commands.gather_status(settings)
            holder = status["lock"]["migrations"]
            assert holder is not None
            assert holder["application_name"].startswith("schemad:lock:")
            # The lock connection sits idle (no open transaction) while the migration runs.
            row = await watcher.fetchrow(
                "SELECT state, backend_xid, application_name FROM pg_stat_activity WHERE pid = $1", holder["pid"]
            )
            assert row is not None and row["state"] == "idle" and row["backend_xid"] is None
            assert row["application_name"].split(":")[3].isdigit(), "schemad:<role>:<host>:<pid>"
    finally:
        await watcher.close()
    assert [r.version for r in out["report"].applied] == [1]
    assert database.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
    assert database.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'schemad:%'"
    ) == "0", "every schemad connection is closed after the run"


async def test_lost_lock_stops_the_run_with_nothing_more_committed(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_first.sql": "CREATE TABLE first (id int);",
        "0002_slow.sql": SLOW.format(seconds=1),
        "0003_after.sql": "CREATE TABLE after_it (id int);",
    })
    settings = make_settings(database.dsn, mdir, idir)
    out: dict[str, Any] = {}
    killer = await asyncpg.connect(database.dsn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate_collect, settings, validation.validate(mdir, idir), out)
            await wait_for(killer, SLEEPING_MIGRATE_PID)
            terminated = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'schemad:lock:%'"
            )
            assert terminated == 1
    finally:
        await killer.close()

    assert isinstance(out.get("error"), errors.LockLost), out
    # 0001 went in before the loss; 0002 (in flight when the lock went) and 0003 did not.
    assert database.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schemad.migrations") == "1"
    assert database.sql("SELECT to_regclass('slow_a') IS NULL AND to_regclass('slow_b') IS NULL") == "t"
    assert database.sql("SELECT to_regclass('after_it') IS NULL") == "t"
    # The stopped attempt is on record, so `status` shows it as the last failure.
    status = await commands.gather_status(settings)
    failure = status["last_failure"]
    assert failure is not None and failure["subject"] == "0002_slow" and failure["detail"]["reason"] == "lock_lost"


async def test_sessions_carry_keepalives_and_the_connection_check(database: Database, folders: tuple[Path, Path]) -> None:
    """A vanished holder's lock must be freed in seconds: every schemad session sets TCP
    keepalives and client_connection_check_interval (after connecting, so that a pooler's
    startup-parameter filter cannot reject them)."""
    mdir, idir = folders
    settings = make_settings(
        database.dsn, mdir, idir, keepalives_idle_s=7, keepalives_interval_s=3, keepalives_count=2,
        connection_check_interval_s=1.5,
    )
    s = await db.connect(settings, "lock")
    try:
        got = [await s.fetchval(f"SHOW {name}") for name in (
            "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "client_connection_check_interval",
        )]
        assert got == ["7", "3", "2", "1500ms"]
        assert await s.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()") == (
            db.application_name("lock")
        )
    finally:
        await s.close()


async def test_fence_fails_once_the_lock_backend_is_gone_even_if_another_session_took_the_key(
    database: Database, folders: tuple[Path, Path]
) -> None:
    """The fencing token dies with our lock backend: a new holder of the same key (another
    replica, perhaps with a reused pid) never lets our fence pass, in a batch or alone."""
    mdir, idir = folders
    settings = make_settings(database.dsn, mdir, idir)
    lock_conn = await db.connect(settings, "lock")
    work = await db.connect(settings, "migrate")
    other = await asyncpg.connect(database.dsn)
    try:
        lk = lock.AdvisoryLock(lock_conn, migration_key(database), name="migration")
        assert await lk.try_acquire()
        await lk.fence(work)
        await work.execute(f"BEGIN;\n{lk.fence_sql()};\nCOMMIT")
        assert await other.fetchval("SELECT pg_terminate_backend($1)", lk.holder_pid)
        assert await wait_for(other, "SELECT pg_try_advisory_lock($1)", migration_key(database))
        with pytest.raises(errors.LockLost):
            await lk.fence(work)
        with pytest.raises(errors.DatabaseError) as info:
            await work.execute(f"BEGIN;\n{lk.fence_sql()};\nCOMMIT")
        assert info.value.sqlstate == "SD001"
        await work.execute("ROLLBACK")
    finally:
        await other.close()
        await work.close()
        await lock_conn.close()


async def test_the_batch_functions_fence_like_the_do_block(database: Database, folders: tuple[Path, Path]) -> None:
    """schemad_begin and schemad_record (queries.BATCH_FUNCTIONS) pass while the lock is ours
    and abort the transaction (SD001) once it is not, the ledger row and event unwritten."""
    mdir, idir = folders
    settings = make_settings(database.dsn, mdir, idir)
    lock_conn = await db.connect(settings, "lock")
    work = await db.connect(settings, "migrate")
    other = await asyncpg.connect(database.dsn)
    ledger = Ledger(settings.ledger_schema)
    try:
        await ledger.ensure(work)
        await work.execute(ledger.sql(queries.BATCH_FUNCTIONS))
        lk = lock.AdvisoryLock(lock_conn, migration_key(database), name="migration")
        assert await lk.try_acquire()
        begin = f"SELECT pg_temp.schemad_begin({lk.token}, '1500ms', '60000ms')"
        record = f"SELECT pg_temp.schemad_record({lk.token}, 7, '0007_x', 'abc', 'h', 42, 3)"
        await work.execute(f"BEGIN;\n{begin};\nCREATE TABLE t7 (id int);\n{record};\nCOMMIT")
        row = await work.fetchrow(
            "SELECT version, name, checksum, applied_by_host, applied_by_pid, statements_run, duration_s >= 0 AS timed "
            "FROM schemad.migrations"
        )
        assert row is not None
        assert tuple(row.values()) == (7, "0007_x", "abc", "h", 42, 3, True)
        event = await work.fetchrow("SELECT kind, subject, version, outcome, attempt, detail::text FROM schemad.events")
        assert event is not None
        assert tuple(event.values()) == (
            "migration", "0007_x", 7, "applied", 1, '{"fast_path": true, "tolerated": []}'
        )
        # The settings are the transaction's own.
        await work.execute(f"BEGIN;\n{begin}")
        assert await work.fetchval("SELECT current_setting('lock_timeout')") == "1500ms"
        await work.execute("ROLLBACK")
        assert await work.fetchval("SELECT current_setting('lock_timeout')") != "1500ms"
        assert await other.fetchval("SELECT pg_terminate_backend($1)", lk.holder_pid)
        assert await wait_for(other, "SELECT pg_try_advisory_lock($1)", migration_key(database))
        for stmt in (begin, record):
            with pytest.raises(errors.DatabaseError) as info:
                await work.execute(f"BEGIN;\n{stmt};\nCOMMIT")
            assert info.value.sqlstate == "SD001"
            await work.execute("ROLLBACK")
        assert await work.fetchval("SELECT count(*) FROM schemad.migrations") == 1
        assert await work.fetchval("SELECT count(*) FROM schemad.events") == 1
    finally:
        await other.close()
        await work.close()
        await lock_conn.close()
