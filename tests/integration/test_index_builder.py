"""The index reconciler on a real PostgreSQL: builds from scratch, repairs an invalid index
(and never sends IF NOT EXISTS), fails a unique index over duplicates cleanly, defers on
an idle-in-transaction session, survives two reconcilers and a migration-lock poller,
reports and replaces drift under writes, cancels a build that waits too long, and builds
a partitioned index per partition."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from schemad import db, engine, index_builder, index_cli, index_plan, lock, sqlparser, validation
from schemad.ledger import Ledger
from tests.conftest import REPO, Database, make_settings, write_migrations

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from schemad import catalog, config, index_report, throttle

pytestmark = pytest.mark.anyio

ROWS = 1_000_000
BIG_TABLE = (
    "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int NOT NULL, b int NOT NULL);\n"
    f"INSERT INTO t (a, b) SELECT g % 1000, g FROM generate_series(1, {ROWS}) g;\n"
    "ANALYZE t;"
)
# Server-side proof of what reached PostgreSQL: every CREATE INDEX statement, verbatim.
# (Only CREATE INDEX: a trigger's insert before DROP INDEX CONCURRENTLY would break it.)
DDL_LOG = """
CREATE TABLE ddl_log (id serial, tag text, query text);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO ddl_log (tag, query) VALUES (tg_tag, current_query()); END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_start WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION log_ddl();
"""


# --------------------------------------------------------------------------- helpers


class Recorder(index_builder.NoHooks):
    """Keeps every hook call, for assertions; `until` wakes on the hook call that makes a
    condition true (an event, not a timer)."""

    def __init__(self) -> None:
        self.states: defaultdict[str, list[str]] = defaultdict(list)
        self.paused: list[tuple[str, bool]] = []
        self.drift: dict[str, bool] = {}
        self.finished: list[str] = []
        self.phases: defaultdict[str, list[str | None]] = defaultdict(list)
        self.invalid: list[int] = []
        self._waiters: list[tuple[Callable[[], bool], anyio.Event]] = []

    async def until(self, condition: Callable[[], bool], *, timeout_s: float = 20) -> None:
        if condition():
            return
        event = anyio.Event()
        self._waiters.append((condition, event))
        with anyio.fail_after(timeout_s):
            await event.wait()

    def _changed(self) -> None:
        for condition, event in list(self._waiters):
            if condition():
                event.set()
                self._waiters.remove((condition, event))

    def set_index_state(self, index: str, state: index_plan.State) -> None:
        self.states[index].append(state)
        self._changed()

    def build_progress(self, index: str, progress: catalog.Progress) -> None:
        self.phases[index].append(progress.phase)
        self._changed()

    def index_build_finished(self, outcome: index_builder.BuildOutcome) -> None:
        self.finished.append(outcome)
        self._changed()

    def set_throttle_paused(self, signal: throttle.Signal, paused: bool) -> None:
        self.paused.append((signal, paused))
        self._changed()

    def set_invalid_indexes(self, count: int) -> None:
        self.invalid.append(count)

    def set_index_drift(self, index: str, drift: bool) -> None:
        self.drift[index] = drift


async def until_sql(conn: asyncpg.Connection, sql: str, *args: Any, timeout_s: float = 20) -> Any:
    with anyio.fail_after(timeout_s):
        while True:
            value = await conn.fetchval(sql, *args)
            if value:
                return value
            await anyio.sleep(0.02)


def registry(folder: Path, text: str) -> None:
    (folder / "registry.sql").write_text(text, encoding="utf-8")


def index_settings(database: Database, folders: tuple[Path, Path], **overrides: Any) -> config.Settings:
    mdir, idir = folders
    values: dict[str, Any] = {
        "index_progress_poll_s": 0.05,
        "index_retry_backoff_s": 0.05,
        "throttle_poll_s": 0.05,
        "throttle_resume_after_s": 0.0,
        "connection_check_interval_s": 0.2,
    }
    values.update(overrides)
    return make_settings(database.dsn, mdir, idir, **values)


def validate(settings: config.Settings) -> validation.Validation:
    val = validation.validate(settings.migrations_dir, settings.indexes_dir)
    assert val.ok, [f.format() for f in val.errors]
    return val


def index_row(database: Database, name: str) -> str:
    """``valid|ready|definition`` of an index, or '' when it does not exist."""
    return database.sql(
        "SELECT i.indisvalid || '|' || i.indisready || '|' || pg_get_indexdef(i.indexrelid) "
        f"FROM pg_index i WHERE i.indexrelid = to_regclass('{name}')"
    )


def index_events(database: Database, name: str) -> list[str]:
    out = database.sql(f"SELECT outcome FROM schemad.events WHERE kind = 'index' AND subject = '{name}' ORDER BY id")
    return out.splitlines()


def result(report: index_builder.Report, name: str) -> index_builder.IndexResult:
    return next(r for r in report.results if r.name == name)


async def ensure_ledger(settings: config.Settings) -> None:
    session = await db.connect(settings, "test")
    try:
        await Ledger(settings.ledger_schema).ensure(session)
    finally:
        await session.close()


async def start_cancelled_build(database: Database, sql: str) -> None:
    """Leave an INVALID index behind by cancelling a CREATE INDEX CONCURRENTLY mid-build:
    a writer's open transaction holds the build in its first wait; pg_cancel_backend ends it."""
    writer = await asyncpg.connect(database.dsn)
    builder = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-cic"})
    admin = await asyncpg.connect(database.dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("UPDATE t SET b = b WHERE id = 1")
        failure: dict[str, BaseException] = {}

        async def build() -> None:
            try:
                await builder.execute(sql)
            except asyncpg.PostgresError as exc:
                failure["error"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(build)
            pid = await until_sql(
                admin,
                "SELECT pid FROM pg_stat_progress_create_index WHERE pid = $1 AND phase LIKE 'waiting%'",
                builder.get_server_pid(),
            )
            assert await admin.fetchval("SELECT pg_cancel_backend($1)", pid)
        assert getattr(failure.get("error"), "sqlstate", None) == "57014"
        await tx.rollback()
    finally:
        for c in (writer, builder, admin):
            await c.close()


# --------------------------------------------------------------------------- tests


async def test_seed_indexes_built_from_scratch(database: Database, tmp_path: Path) -> None:
    settings = index_settings(database, (REPO / "migrations", REPO / "indexes"))
    val = validate(settings)
    await engine.migrate(settings, val)
    hooks = Recorder()

    report = await index_builder.reconcile(settings, val, hooks=hooks)

    assert [r.state for r in report.results] == ["valid"] * 5
    assert [r.name for r in report.results][:2] == [
        "idx_appointments_calendar_id", "idx_business_calendars_business_active",  # critical first
    ]
    for spec in val.indexes:
        assert index_row(database, spec.name).startswith("true|true|CREATE INDEX")
        assert index_events(database, spec.name) == ["built"]
        assert hooks.states[spec.name][-1] == "valid"
    assert hooks.finished == ["success"] * 5
    assert database.sql("SELECT count(*) FROM schemad.index_builds WHERE last_outcome = 'built'") == "5"

    again = await index_builder.reconcile(settings, val)  # nothing to do: no lock, no builds
    assert again.lock_waited_s is None and again.all_ready

    session = await db.connect(settings, "status")
    try:
        rows = await index_cli.index_status(settings, session, val.indexes)
    finally:
        await session.close()
    assert {r["name"]: (r["state"], r["attempts"], r["drift"]) for r in rows} == {
        s.name: ("valid", 1, None) for s in val.indexes
    }


async def test_invalid_index_is_dropped_and_rebuilt_without_if_not_exists(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql(BIG_TABLE + DDL_LOG)
    registry(folders[1], "-- schemad:critical\nCREATE INDEX IF NOT EXISTS t_a_idx ON t (a);\n")
    settings = index_settings(database, folders)
    await start_cancelled_build(database, "CREATE INDEX CONCURRENTLY t_a_idx ON t (a)")
    assert index_row(database, "t_a_idx").startswith("false|false|")
    old_oid = database.sql("SELECT 't_a_idx'::regclass::oid")
    await ensure_ledger(settings)  # its own DDL is not under test here
    database.sql("TRUNCATE ddl_log")

    report = await index_builder.reconcile(settings, validate(settings))

    assert result(report, "t_a_idx").state == "valid"
    assert index_row(database, "t_a_idx") == "true|true|CREATE INDEX t_a_idx ON public.t USING btree (a)"
    assert database.sql("SELECT 't_a_idx'::regclass::oid") != old_oid
    assert index_events(database, "t_a_idx") == ["dropped", "built"]
    assert "DROP INDEX CONCURRENTLY" in database.sql(
        "SELECT detail->>'sql' FROM schemad.events WHERE outcome = 'dropped'"
    )
    sent = database.sql("SELECT query FROM ddl_log ORDER BY id").splitlines()
    # The registry file says IF NOT EXISTS; what reached the server never does.
    assert sent == ["CREATE INDEX CONCURRENTLY t_a_idx ON t USING btree (a)"]


async def test_unique_index_over_duplicates_fails_and_leftover_is_dropped(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql(BIG_TABLE + "UPDATE t SET b = 1 WHERE id = 2;")  # one duplicate of b = 1
    registry(folders[1], "CREATE UNIQUE INDEX t_b_key ON t (b);\n")
    settings = index_settings(database, folders)
    hooks = Recorder()

    report = await index_builder.reconcile(settings, validate(settings), hooks=hooks)

    r = result(report, "t_b_key")
    assert (r.state, r.sqlstate, r.attempts) == ("failed", "23505", 1)
    assert report.failed == [r]
    assert index_row(database, "t_b_key") == ""  # the invalid leftover is gone at once
    assert index_events(database, "t_b_key") == ["failed", "dropped"]
    assert database.sql("SELECT detail->>'why' FROM schemad.events WHERE outcome = 'dropped'") == "failed"
    assert database.sql("SELECT attempts || ' ' || last_outcome || ' ' || last_sqlstate FROM schemad.index_builds") == (
        "1 failed 23505"
    )
    assert hooks.finished == ["failed"]
    # A leftover invalid unique index would still reject this duplicate.
    database.sql("INSERT INTO t (a, b) VALUES (1, 1)")


async def test_idle_in_transaction_defers_admission_until_it_ends(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql("CREATE TABLE t (id int, a int); INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;")
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    settings = index_settings(database, folders, throttle_max_idle_in_transaction_s=0.0)
    val = validate(settings)
    idle = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-idle"})
    tx = idle.transaction()
    await tx.start()
    await idle.fetchval("SELECT 1")
    hooks = Recorder()
    out: dict[str, index_builder.Report] = {}

    async def run() -> None:
        out["report"] = await index_builder.reconcile(settings, val, hooks=hooks)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await hooks.until(lambda: ("idle_in_transaction", True) in hooks.paused)
            assert hooks.states["t_a_idx"][-1] == "absent"
            assert index_row(database, "t_a_idx") == ""  # deferred: nothing started
            # ... and the index lock is not held while deferred: it is held only to build.
            assert database.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == "0"
            await tx.rollback()
    finally:
        await idle.close()

    assert result(out["report"], "t_a_idx").state == "valid"
    assert hooks.paused[-1] == ("idle_in_transaction", False)
    assert index_row(database, "t_a_idx").startswith("true|true|")


async def test_two_reconcilers_build_each_index_once(database: Database, folders: tuple[Path, Path]) -> None:
    database.sql(BIG_TABLE)
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\nCREATE INDEX t_ab_idx ON t (a, b);\n")
    settings = index_settings(database, folders)
    val = validate(settings)
    gate = await asyncpg.connect(database.dsn)
    key = lock.lock_key(database.name, "indexes")
    await gate.fetchval("SELECT pg_advisory_lock($1)", key)
    reports: list[index_builder.Report] = []

    async def run() -> None:
        reports.append(await index_builder.reconcile(settings, val))

    waiting_sql = (  # both have asked for the index lock (and keep polling it)
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'schemad:index-lock:%' AND query LIKE '%pg_try_advisory_lock%'"
    )
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                tg.start_soon(run)
                await until_sql(gate, waiting_sql)  # both are polling the index lock now
                await gate.fetchval("SELECT pg_advisory_unlock($1)", key)
    finally:
        await gate.close()

    assert len(reports) == 2
    assert all(r.all_ready for r in reports)
    for name in ("t_a_idx", "t_ab_idx"):
        assert index_events(database, name) == ["built"]  # built once, by one of them
    # The lock is held per build, so the two may share the work, but never duplicate it.
    assert sorted(a for r in reports for x in r.results for a in x.actions) == ["built", "built"]
    assert all(r.lock_waited_s is not None for r in reports)  # both went for the lock, at once


async def test_migration_lock_poller_during_a_build_causes_no_deadlock(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    database.sql(BIG_TABLE)
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    registry(idir, "CREATE INDEX t_ab_idx ON t (a, b);\n")
    settings = index_settings(database, folders, lock_wait_s=60.0)
    await engine.migrate(settings, validate(settings))
    write_migrations(mdir, {"0002_b.sql": "CREATE TABLE b (id int);"})
    val = validate(settings)
    holder = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-holder"})
    await holder.fetchval("SELECT pg_advisory_lock($1)", lock.lock_key(database.name, "migrations"))
    migrated: dict[str, Any] = {}
    built: dict[str, index_builder.Report] = {}

    async def migrate() -> None:
        migrated["report"] = await engine.migrate(settings, val)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(migrate)
                await until_sql(
                    holder,
                    "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'schemad:lock:%'",
                )
                built["report"] = await index_builder.reconcile(settings, val)
                assert "report" not in migrated  # still polling the migration lock all along
                await holder.fetchval("SELECT pg_advisory_unlock($1)", lock.lock_key(database.name, "migrations"))
    finally:
        await holder.close()

    assert built["report"].all_ready
    assert [a.version for a in migrated["report"].applied] == [2]


async def test_drift_is_reported_then_replaced_while_writes_go_on(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql(BIG_TABLE + "CREATE INDEX t_ab_idx ON t (a);")
    registry(folders[1], "CREATE INDEX t_ab_idx ON t (a, b);\n")
    settings = index_settings(database, folders)
    val = validate(settings)
    hooks = Recorder()

    report = await index_builder.reconcile(settings, val, hooks=hooks)

    r = result(report, "t_ab_idx")
    assert r.state == "drift" and r.drift is not None and "btree (a, b)" in r.drift
    assert hooks.drift == {"t_ab_idx": True}
    assert index_row(database, "t_ab_idx").endswith("USING btree (a)")
    assert report.lock_waited_s is None  # reporting takes no lock

    replace = index_settings(database, folders, index_replace_drifted=True)
    writer = await asyncpg.connect(database.dsn)
    latencies: list[float] = []
    stop = anyio.Event()
    out: dict[str, index_builder.Report] = {}

    async def write() -> None:
        while not stop.is_set():
            started = time.monotonic()
            await writer.execute("INSERT INTO t (a, b) VALUES (7, -1)")
            latencies.append(time.monotonic() - started)

    async def run() -> None:
        try:
            out["report"] = await index_builder.reconcile(replace, val, hooks=hooks)
        finally:
            stop.set()

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                tg.start_soon(run)
    finally:
        await writer.close()

    assert result(out["report"], "t_ab_idx").state == "valid"
    assert index_row(database, "t_ab_idx") == "true|true|CREATE INDEX t_ab_idx ON public.t USING btree (a, b)"
    assert index_row(database, index_plan.derived_name("t_ab_idx", "sdnew")) == ""
    assert index_events(database, "t_ab_idx") == ["built", "dropped", "renamed"]
    assert hooks.drift["t_ab_idx"] is False
    # Writes went on during the build, the drop and the rename, never blocked for long.
    assert len(latencies) > 50
    assert max(latencies) < 1.0, max(latencies)


async def test_expression_index_with_implicit_casts_is_not_drift(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql("CREATE TABLE u (id int, name varchar(50));")
    registry(folders[1], "CREATE INDEX u_lower_idx ON u (lower(name)) WHERE name <> '';\n")
    settings = index_settings(database, folders, index_replace_drifted=True)
    val = validate(settings)
    await index_builder.reconcile(settings, val)
    actual = index_row(database, "u_lower_idx").split("|")[2]
    assert "lower((name)::text)" in actual  # the server adds casts the registry never wrote
    assert sqlparser.index_shape(actual) != sqlparser.index_shape(val.indexes[0].create_sql())

    again = await index_builder.reconcile(settings, val)

    assert result(again, "u_lower_idx").state == "valid"
    assert index_events(database, "u_lower_idx") == ["built"]  # not "replaced"


async def test_watchdog_cancels_a_build_stuck_behind_a_locker(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql("CREATE TABLE t (id int, a int, b int); INSERT INTO t SELECT g, g, g FROM generate_series(1, 1000) g;")
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    settings = index_settings(
        database, folders, index_max_lock_wait_s=0.3, index_retry_attempts=1,
        throttle_max_idle_in_transaction_s=3600.0,  # admit it: the watchdog is under test
    )
    locker = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-locker"})
    tx = locker.transaction()
    await tx.start()
    await locker.execute("UPDATE t SET b = b WHERE id = 1")
    try:
        report = await index_builder.reconcile(settings, validate(settings))
    finally:
        await tx.rollback()
        await locker.close()

    r = result(report, "t_a_idx")
    assert r.state == "failed"
    detail = database.sql(
        "SELECT detail->'watchdog' FROM schemad.events WHERE subject = 't_a_idx' AND outcome = 'failed'"
    )
    assert f'"current_locker_pid": {locker.get_server_pid()}' in detail
    assert '"locker_application_name": "test-locker"' in detail
    assert "waiting for writers before build" in detail

    again = await index_builder.reconcile(settings, validate(settings))  # the locker is gone: repaired
    assert result(again, "t_a_idx").state == "valid"


async def test_partitioned_table_index_is_built_per_partition_and_attached(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql(
        "CREATE TABLE ev (id bigint, at date NOT NULL, v int) PARTITION BY RANGE (at);\n"
        "CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n"
        "CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n"
        "CREATE TABLE ev_2026 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n"
        "INSERT INTO ev SELECT g, date '2024-01-01' + (g % 1000), g FROM generate_series(1, 30000) g;\n"
        + DDL_LOG
    )
    registry(folders[1], "CREATE INDEX ev_v_idx ON ev (v);\n")
    settings = index_settings(database, folders)
    val = validate(settings)
    await ensure_ledger(settings)
    database.sql("TRUNCATE ddl_log")

    report = await index_builder.reconcile(settings, val)

    assert result(report, "ev_v_idx").state == "valid"
    assert database.sql(
        "SELECT c.relkind::text || ' ' || i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
        "WHERE c.oid = 'ev_v_idx'::regclass"
    ) == "I true"
    children = database.sql(
        "SELECT c.relname || ' ' || i.indisvalid FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
        "JOIN pg_index i ON i.indexrelid = c.oid WHERE h.inhparent = 'ev_v_idx'::regclass ORDER BY 1"
    ).splitlines()
    assert children == ["ev_v_idx_ev_2024 true", "ev_v_idx_ev_2025 true", "ev_v_idx_ev_2026 true"]
    assert index_events(database, "ev_v_idx") == ["built"] + ["built", "attached"] * 3
    sent = database.sql("SELECT query FROM ddl_log ORDER BY id").splitlines()
    assert sent[0] == "CREATE INDEX ev_v_idx ON ONLY public.ev USING btree (v)"
    assert sent[1:] == [
        f"CREATE INDEX CONCURRENTLY ev_v_idx_ev_{y} ON public.ev_{y} USING btree (v)" for y in (2024, 2025, 2026)
    ]
    assert (await index_builder.reconcile(settings, val)).all_ready


async def test_cancelling_a_run_mid_build_stops_the_build_and_releases_the_lock(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql("CREATE TABLE t (id int, a int, b int); INSERT INTO t SELECT g, g, g FROM generate_series(1, 1000) g;")
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    settings = index_settings(database, folders, throttle_max_idle_in_transaction_s=3600.0)
    val = validate(settings)
    locker = await asyncpg.connect(database.dsn)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("UPDATE t SET b = b WHERE id = 1")  # holds the build in its first wait
    hooks = Recorder()
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(index_builder.reconcile, settings, val, hooks=hooks))
                await hooks.until(lambda: "waiting for writers before build" in hooks.phases["t_a_idx"])
                tg.cancel_scope.cancel()  # shutdown: cancel here
        # The server-side build is cancelled with the run, the lock and sessions released.
        await until_sql(
            locker,
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'schemad:%'",
        )
        assert await locker.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        assert await locker.fetchval("SELECT count(*) FROM pg_stat_progress_create_index") == 0
    finally:
        await tx.rollback()
        await locker.close()
    assert hooks.finished == ["cancelled"]
    assert index_row(database, "t_a_idx").startswith("false|false|")  # the leftover the next run repairs

    again = await index_builder.reconcile(settings, val)

    assert result(again, "t_a_idx").state == "valid"
    assert index_events(database, "t_a_idx") == ["dropped", "built"]


async def test_an_index_another_backend_is_building_is_waited_for_not_dropped(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql("CREATE TABLE t (id int, a int, b int); INSERT INTO t SELECT g, g, g FROM generate_series(1, 1000) g;")
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    settings = index_settings(database, folders, throttle_max_idle_in_transaction_s=3600.0)
    val = validate(settings)
    writer = await asyncpg.connect(database.dsn)
    foreign = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-foreign"})
    tx = writer.transaction()
    await tx.start()
    await writer.execute("UPDATE t SET b = b WHERE id = 1")  # holds the foreign build in its first wait
    hooks = Recorder()
    out: dict[str, index_builder.Report] = {}

    async def run() -> None:
        out["report"] = await index_builder.reconcile(settings, val, hooks=hooks)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(foreign.execute, "CREATE INDEX CONCURRENTLY t_a_idx ON t (a)")
                await until_sql(writer, "SELECT count(*) > 0 FROM pg_stat_progress_create_index")
                one_pass = await index_builder.reconcile(settings, val, wait=False)
                r = result(one_pass, "t_a_idx")
                assert r.state == "building" and r.detail is not None
                assert f"pid {foreign.get_server_pid()} (test-foreign)" in r.detail
                tg.start_soon(run)
                await hooks.until(lambda: "building" in hooks.states["t_a_idx"])
                await tx.rollback()  # the foreign build goes on and finishes
    finally:
        await writer.close()
        await foreign.close()

    assert result(out["report"], "t_a_idx").state == "valid"
    assert index_events(database, "t_a_idx") == []  # waited for it; never dropped or rebuilt it


async def test_index_concurrency_builds_on_several_tables_at_once_but_one_per_table(
    database: Database, folders: tuple[Path, Path]
) -> None:
    """``index_concurrency = 3`` and three indexes, two of them on one table: the builds on
    different tables run at the same time (both seen waiting for the writers that hold them),
    the second one on the same table waits for the first (concurrent builds on one table
    would only queue on its lock), and all three end valid."""
    database.sql("CREATE TABLE c1 (a int, b int); CREATE TABLE c2 (a int);")
    registry(folders[1], (
        "CREATE INDEX c1_a_idx ON c1 (a);\n"
        "CREATE INDEX c2_a_idx ON c2 (a);\n"
        "CREATE INDEX c1_b_idx ON c1 (b);\n"
    ))
    settings = index_settings(database, folders, index_concurrency=3)
    val = validate(settings)
    writers = [await asyncpg.connect(database.dsn) for _ in range(2)]
    watcher = await asyncpg.connect(database.dsn)
    try:
        txs = [w.transaction() for w in writers]
        for tx, w, table in zip(txs, writers, ("c1", "c2"), strict=True):
            await tx.start()
            await w.execute(f"INSERT INTO {table} VALUES (1)")  # a build on it waits for this writer
        out: dict[str, index_report.Report] = {}

        async def run() -> None:
            out["report"] = await index_builder.reconcile(settings, val)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await until_sql(
                watcher,
                "SELECT count(*) = 2 FROM pg_stat_progress_create_index "
                "WHERE command = 'CREATE INDEX CONCURRENTLY' AND phase LIKE 'waiting for writers%'",
            )
            building = await watcher.fetch(
                "SELECT relid::regclass::text AS tab FROM pg_stat_progress_create_index "
                "WHERE command = 'CREATE INDEX CONCURRENTLY' ORDER BY 1"
            )
            assert [r["tab"] for r in building] == ["c1", "c2"]
            for tx in txs:
                await tx.commit()
        report = out["report"]
        assert sorted((r.name, r.state) for r in report.results) == [
            ("c1_a_idx", "valid"), ("c1_b_idx", "valid"), ("c2_a_idx", "valid"),
        ]
        for name in ("c1_a_idx", "c1_b_idx", "c2_a_idx"):
            assert index_row(database, name).startswith("true|true|")
    finally:
        for c in (*writers, watcher):
            await c.close()
