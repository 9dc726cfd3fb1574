"""Batches: consecutive transactional migrations travel in one round trip, each still in its
own transaction with its ledger row and event; the first failure stops the batch with the
migrations before it committed and its own error classified exactly, as when sent alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from schemad import engine, errors, executor, migrations, validation
from tests.conftest import Database, make_settings, write_migrations
from tests.integration.conftest import migrating
from tests.integration.test_migrate import events, ledger, migrate, table_exists

if TYPE_CHECKING:
    import logging
    from pathlib import Path

pytestmark = pytest.mark.anyio


def _files(n: int, **special: str) -> dict[str, str]:
    files = {f"{i:04d}_m{i}.sql": f"CREATE TABLE m{i} (id int);\nCOMMENT ON TABLE m{i} IS 'x';\n" for i in range(1, n + 1)}
    for name, text in special.items():
        files[next(k for k in files if k.endswith(f"_{name}.sql"))] = text
    return files


async def test_a_batch_applies_each_migration_in_its_own_transaction(
    database: Database, folders: tuple[Path, Path], records: list[logging.LogRecord]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, _files(12))
    report = await migrate(database, mdir, idir)
    assert [r.version for r in report.applied] == list(range(1, 13))
    assert all(r.fast_path and r.attempts == 1 and r.duration_s > 0 for r in report.applied)
    assert [v for v, *_ in ledger(database)] == list(range(1, 13))
    # One transaction each: twelve transaction ids, start times in order, every row timed on its own.
    rows = database.sql(
        "SELECT count(DISTINCT xmin::text), bool_and(duration_s > 0), "
        "bool_and(applied_at <= applied_at_next OR applied_at_next IS NULL) FROM ("
        "  SELECT xmin, duration_s, applied_at, lead(applied_at) OVER (ORDER BY version) AS applied_at_next "
        "  FROM schemad.migrations) t"
    )
    assert rows == "12|t|t"
    applied = [e for e in events(database) if e["outcome"] == "applied"]
    assert [e["version"] for e in applied] == list(range(1, 13))
    logged = [getattr(r, "version", None) for r in records if getattr(r, "event", None) == "migration_applied"]
    assert logged == list(range(1, 13))


async def test_a_failure_stops_the_batch_after_the_migrations_before_it(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, _files(6, m4="CREATE TABLE m4 (id int);\n\nALTER TABLE nowhere ADD COLUMN x int;\n"))
    with pytest.raises(errors.MigrationFailed) as info:
        await migrate(database, mdir, idir)
    err = info.value
    # Classified exactly, by the savepoint re-run: the statement's position and SQLSTATE.
    assert (err.version, err.sqlstate, err.line, err.col, err.reason) == (4, "42P01", 3, 1, "sql_error")
    assert [v for v, *_ in ledger(database)] == [1, 2, 3]
    assert not table_exists(database, "m4") and not table_exists(database, "m5")
    failed = [e for e in events(database) if e["outcome"] == "failed"]
    assert [(e["version"], e["sqlstate"], e["detail"]["line"]) for e in failed] == [(4, "42P01", 3)]


async def test_a_tolerated_error_mid_batch_is_counted_and_the_rest_applies(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE made_by_hand (id int)")
    write_migrations(mdir, _files(5, m3="CREATE TABLE made_by_hand (id int);\nCREATE TABLE m3 (id int);\n"))
    report = await migrate(database, mdir, idir)
    assert [r.version for r in report.applied] == [1, 2, 3, 4, 5]
    assert [(r.version, len(r.tolerated)) for r in report.applied if r.tolerated] == [(3, 1)]
    # 1-2 in the batch, 3 alone (savepoints), then 4-5 in a new batch.
    assert [r.fast_path for r in report.applied] == [True, True, False, True, True]
    assert [(v, t) for v, _n, _r, t, _tr in ledger(database)] == [(1, 0), (2, 0), (3, 1), (4, 0), (5, 0)]


async def test_a_no_transaction_migration_goes_alone(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    files = _files(5)
    files["0003_m3.sql"] = "-- schemad:no-transaction\nCREATE TABLE m3 (id int);\n"
    write_migrations(mdir, files)
    val = validation.validate(mdir, idir)
    assert [[m.version for m in b] for b in _batches(val.migrations)] == [[1, 2], [3], [4, 5]]
    await migrate(database, mdir, idir)
    assert [(v, tr) for v, _n, _r, _t, tr in ledger(database)] == [
        (1, True), (2, True), (3, False), (4, True), (5, True)
    ]


def _batches(pending: list[migrations.Migration], **limits: Any) -> list[list[migrations.Migration]]:
    out, start = [], 0
    while start < len(pending):
        out.append(executor.next_batch(pending, start, **limits))
        start += len(out[-1])
    return out


async def test_batches_are_bounded(folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, _files(7))
    ms = validation.validate(mdir, idir).migrations
    assert [len(b) for b in _batches(ms, max_migrations=3)] == [3, 3, 1]
    one = sum(len(st.text) for st in ms[0].statements)
    assert [len(b) for b in _batches(ms, max_bytes=2 * one)] == [2, 2, 2, 1]


async def test_a_lock_timeout_mid_batch_retries_that_migration_then_goes_on(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE busy (id int)")
    write_migrations(mdir, _files(4, m2="ALTER TABLE busy ADD COLUMN extra int;\n"))
    settings = make_settings(database.dsn, mdir, idir, lock_timeout_s=0.2, retry_max_attempts=30, retry_budget_s=30)
    blocker = await asyncpg.connect(database.dsn)
    await blocker.execute("BEGIN; LOCK TABLE busy IN ACCESS SHARE MODE")

    async def retried() -> bool:  # (the ledger appears under the lock, after the run starts)
        return database.sql("SELECT to_regclass('schemad.events') IS NOT NULL") == "t" and database.sql(
            "SELECT EXISTS (SELECT FROM schemad.events WHERE outcome = 'retry')"
        ) == "t"

    try:
        async with migrating(settings) as run:
            await run.until(retried)
            assert [v for v, *_ in ledger(database)] == [1]
            await blocker.execute("ROLLBACK")
    finally:
        await blocker.close()
    assert run.report is not None
    assert [(r.version, r.attempts > 1) for r in run.report.applied] == [(1, False), (2, True), (3, False), (4, False)]
    assert [v for v, *_ in ledger(database)] == [1, 2, 3, 4]


def _role_without_temporary(database: Database) -> str:
    """A DSN for a role that owns the database but may not create temporary objects."""
    role = f"{database.name}_notemp"
    database.sql(
        f"CREATE ROLE {role} LOGIN; ALTER DATABASE {database.name} OWNER TO {role}; "
        f"REVOKE TEMPORARY ON DATABASE {database.name} FROM PUBLIC, {role}"
    )
    return database.dsn.replace("postgres@", f"{role}@", 1)


async def test_fences_are_do_blocks_where_the_role_may_not_create_temporary_objects(
    database: Database, folders: tuple[Path, Path], records: list[logging.LogRecord]
) -> None:
    """The batch's fences, settings and ledger rows are session-local functions (pg_temp) where
    the role has TEMPORARY on the database; without it, the same steps as SQL (DO-block fences,
    INSERTs): every migration still batched, fenced and recorded alike."""
    mdir, idir = folders
    write_migrations(mdir, _files(6))
    settings = make_settings(_role_without_temporary(database), mdir, idir)
    report = await engine.migrate(settings, validation.validate(mdir, idir))
    assert [(r.version, r.fast_path) for r in report.applied] == [(v, True) for v in range(1, 7)]
    assert [v for v, *_ in ledger(database)] == list(range(1, 7))
    unavailable = [r for r in records if getattr(r, "event", None) == "batch_functions_unavailable"]
    assert [getattr(r, "sqlstate", None) for r in unavailable] == ["42501"]


async def test_the_batch_functions_live_in_the_session_only(
    database: Database, folders: tuple[Path, Path], records: list[logging.LogRecord]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, _files(3))
    await migrate(database, mdir, idir)
    assert not [r for r in records if getattr(r, "event", None) == "batch_functions_unavailable"]
    # Gone with the session: nothing of it in the schema.
    assert database.sql("SELECT count(*) FROM pg_proc WHERE proname LIKE 'schemad%'") == "0"


async def test_a_batch_around_a_version_applied_before_it_reports_only_its_own(
    database: Database, folders: tuple[Path, Path]
) -> None:
    """A gap filled later (4 and 6 pending, 5 applied by an earlier release): the batch 4, 6
    is read back by its version range, which holds 5 too; only 4 and 6 are this run's."""
    mdir, idir = folders
    files = _files(6)
    write_migrations(mdir, {k: v for k, v in files.items() if not k.startswith(("0004", "0006"))})
    await migrate(database, mdir, idir)
    write_migrations(mdir, files)
    report = await migrate(database, mdir, idir)
    assert [(r.version, r.fast_path) for r in report.applied] == [(4, True), (6, True)]
    assert [v for v, *_ in ledger(database)] == list(range(1, 7))


@pytest.mark.parametrize("path", ["functions", "sql", "savepoints"])
async def test_a_migration_that_moves_search_path_does_not_redirect_fences_or_ledger_rows(
    database: Database, folders: tuple[Path, Path], path: str
) -> None:
    """Every call schemad adds to a migration's transaction is qualified — in the batch
    functions, in their SQL form and on the savepoint path (taken here after a tolerated
    error): a function of the same name earlier on a migration's search_path (here ones that
    would fail every fence and misdate the rows) is never called."""
    mdir, idir = folders
    dsn = _role_without_temporary(database) if path == "sql" else database.dsn
    tolerated = ""
    if path == "savepoints":
        database.sql("CREATE TABLE made_by_hand (id int)")
        tolerated = "CREATE TABLE made_by_hand (id int);\n"
    write_migrations(mdir, _files(4, m2=tolerated + (
        "CREATE SCHEMA shadow;\n"
        "CREATE FUNCTION shadow.pg_try_advisory_xact_lock_shared(bigint) RETURNS boolean\n"
        "    LANGUAGE sql AS 'SELECT true';\n"
        "CREATE FUNCTION shadow.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$SELECT '2000-01-01'::timestamptz$$;\n"
        "SET LOCAL search_path = shadow, pg_catalog, public;\n"
        "CREATE TABLE m2 (id int);\n"
    )))
    report = await engine.migrate(make_settings(dsn, mdir, idir), validation.validate(mdir, idir))
    fast = [True, path != "savepoints", True, True]
    assert [(r.version, r.fast_path) for r in report.applied] == list(zip(range(1, 5), fast, strict=True))
    assert database.sql("SELECT bool_and(applied_at > '2020-01-01') FROM schemad.migrations") == "t"
