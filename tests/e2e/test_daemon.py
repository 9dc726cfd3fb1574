"""End to end: real `schemad run` processes against a real PostgreSQL."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REPO, Database
from tests.e2e.daemons import Daemon, notify_socket, start_daemon, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(REPO / "migrations", work / "migrations")
    (work / "indexes").mkdir()
    return work


def _ready(d: Daemon) -> Callable[[], bool]:
    return lambda: d.get("/readyz")[0] == 200


def _log_migration(version: int) -> str:
    return (
        "-- schemad:allow=data-change the row proves exactly-once application\n"
        f"CREATE TABLE t_{version} (id int);\n"
        f"INSERT INTO apply_log (version) VALUES ({version});\n"
    )


@pytest.fixture
def three(tmp_path: Path, database: Database) -> Iterator[tuple[Path, list[Daemon]]]:
    work = _workdir(tmp_path)
    (work / "migrations" / "0100_apply_log.sql").write_text(
        "CREATE TABLE apply_log (version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n"
    )
    (work / "migrations" / "0101_logged.sql").write_text(_log_migration(101))
    daemons: list[Daemon] = []
    with notify_socket(tmp_path) as n1, notify_socket(tmp_path) as n2, notify_socket(tmp_path) as n3:
        try:
            daemons.extend(start_daemon(database.dsn, work, n) for n in (n1, n2, n3))
            yield work, daemons
        finally:
            for d in daemons:
                d.stop()


def test_three_daemons_apply_once_and_all_become_ready(three: tuple[Path, list[Daemon]], database: Database) -> None:
    _work, daemons = three
    for d in daemons:
        wait_for(_ready(d), timeout_s=20, what=f"daemon :{d.port} ready")
        wait_for(functools.partial(d.notify.has, "READY=1"), timeout_s=5, what="READY=1 on the notify socket")
    assert database.sql("SELECT count(*) FROM apply_log WHERE version = 101") == "1"
    assert database.sql("SELECT count(*) FROM schemad.migrations") == "11"
    applied = sum(d.sample("schemad_migrations_applied_total") or 0 for d in daemons)
    assert applied == 11, "each migration applied by exactly one daemon"
    for d in daemons:
        status = json.loads(d.get("/status")[1])
        assert status["schema_version"] == 101 and status["up_to_date"] is True
        assert any(m.startswith("STATUS=") for m in d.notify.drain())


def test_new_migration_sighup_applies_once_and_others_wake_by_notify(
    three: tuple[Path, list[Daemon]], database: Database
) -> None:
    work, daemons = three
    for d in daemons:
        wait_for(_ready(d), timeout_s=20, what="ready")
    (work / "migrations" / "0102_logged.sql").write_text(_log_migration(102))
    daemons[0].signal(signal.SIGHUP)

    def at_102(d: Daemon) -> bool:
        code, body = d.get("/status")
        return code == 200 and json.loads(body).get("schema_version") == 102 and d.get("/readyz")[0] == 200

    wait_for(lambda: at_102(daemons[0]), timeout_s=10, what="the signalled daemon applied 0102")
    # The interval is 60 s: only the applier's NOTIFY can wake the other two this fast.
    for d in daemons[1:]:
        took = wait_for(functools.partial(at_102, d), timeout_s=1.0, what="a waiting replica woke through NOTIFY")
        assert took < 1.0
    assert database.sql("SELECT count(*) FROM apply_log WHERE version = 102") == "1"


def test_failing_migration_reports_and_recovers(tmp_path: Path, database: Database) -> None:
    work = _workdir(tmp_path)
    bad = work / "migrations" / "0100_bad.sql"
    bad.write_text("CREATE TABLE ok_part (id int);\nALTER TABLE no_such_table ADD COLUMN x int;\n")
    with notify_socket(tmp_path) as n:
        d = start_daemon(database.dsn, work, n)
        try:
            wait_for(lambda: d.sample("schemad_migration_last_run_success") == 0.0, timeout_s=20, what="failure metric")
            assert (d.sample('schemad_migration_failures_total{reason="sql_error"}') or 0) >= 1
            assert d.get("/readyz")[0] == 503
            assert d.get("/livez")[0] == 200
            # The metrics are set first, then the cycle refreshes the status document.
            wait_for(lambda: "last_failure" in json.loads(d.get("/status")[1]), timeout_s=5, what="status refresh")
            status = json.loads(d.get("/status")[1])
            assert status["last_failure"]["sqlstate"] == "42P01"
            assert "0100_bad" in status["daemon_error"]
            assert database.sql("SELECT to_regclass('ok_part') IS NULL") == "t", "nothing partial applied"
            assert not n.has("READY=1")
            assert d.proc.poll() is None, "the daemon stays up"
            # Fix the file; the next trigger recovers.
            bad.write_text("CREATE TABLE ok_part (id int);\n")
            d.signal(signal.SIGHUP)
            wait_for(lambda: d.get("/readyz")[0] == 200, timeout_s=30, what="recovery after the fix")
            assert d.sample("schemad_migration_last_run_success") == 1.0
            wait_for(lambda: n.has("READY=1"), timeout_s=5, what="READY=1 after recovery")
        finally:
            assert d.stop() == 0


def test_sigterm_exits_zero_and_releases_everything(tmp_path: Path, database: Database) -> None:
    work = _workdir(tmp_path)
    with notify_socket(tmp_path) as n:
        d = start_daemon(database.dsn, work, n)
        wait_for(lambda: d.get("/readyz")[0] == 200, timeout_s=20, what="ready")
        assert d.stop(timeout_s=10) == 0
        assert "STOPPING=1" in n.drain()
    sessions = database.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:%' "
        f"AND application_name LIKE '%:{d.proc.pid}'"
    )
    assert sessions == "0"


def test_bad_config_exits_78(tmp_path: Path, database: Database) -> None:
    from tests.conftest import run_schemad

    work = _workdir(tmp_path)
    (work / "schemad.toml").write_text('lock_timeout_s = "soon"\n')
    res = run_schemad("run", "--config", "schemad.toml", env={"SCHEMAD_DSN": database.dsn}, cwd=work)
    assert res.returncode == 78
    assert "lock_timeout_s" in res.stderr and "schemad.toml" in res.stderr


def test_failed_index_is_not_rebuilt_every_cycle_until_sighup(tmp_path: Path, database: Database) -> None:
    from tests.conftest import run_schemad

    work = _workdir(tmp_path)
    (work / "migrations" / "0100_dups.sql").write_text(
        "-- schemad:allow=data-change duplicates make the unique index fail\n"
        "CREATE TABLE dups (k int);\nINSERT INTO dups SELECT 1 FROM generate_series(1, 3);\n"
    )
    (work / "indexes" / "dups.sql").write_text("CREATE UNIQUE INDEX dups_k_key ON dups (k);\n")

    def failed() -> str:
        """Failed attempts so far; the ledger may not exist yet when the daemon has just started."""
        if database.sql("SELECT to_regclass('schemad.events') IS NULL") == "t":
            return "0"
        return database.sql(
            "SELECT count(*) FROM schemad.events WHERE kind = 'index' AND subject = 'dups_k_key' AND outcome = 'failed'"
        )

    with notify_socket(tmp_path) as n:
        d = start_daemon(database.dsn, work, n)
        try:
            wait_for(lambda: failed() == "1", timeout_s=30, what="the first failed build")
            assert d.sample('schemad_index_state{index="dups_k_key",state="failed"}') == 1.0
            # Another process applies a migration: its NOTIFY runs a full cycle here ...
            (work / "migrations" / "0101_more.sql").write_text("CREATE TABLE more_t (id int);\n")
            res = run_schemad("migrate", env={"SCHEMAD_DSN": database.dsn}, cwd=work)
            assert res.returncode == 0, res.stderr
            wait_for(lambda: json.loads(d.get("/status")[1]).get("schema_version") == 101, timeout_s=10,
                     what="the daemon saw 0101 through NOTIFY")
            wait_for(lambda: "cooling_down=1" in d.log(), timeout_s=10, what="an index pass that skipped it")
            # ... but the failed index waits for its retry time instead of failing again.
            assert failed() == "1"
            d.signal(signal.SIGHUP)
            wait_for(lambda: failed() == "2", timeout_s=30, what="the retry after SIGHUP")
        finally:
            assert d.stop() == 0


def test_sigterm_during_index_build_exits_zero_and_next_start_repairs(tmp_path: Path, database: Database) -> None:
    work = _workdir(tmp_path)
    (work / "indexes" / "big.sql").write_text("CREATE INDEX big_v_idx ON big (v);\n")
    database.sql("CREATE TABLE big (id int, v int)")
    # An open writer: the concurrent build waits for it ("waiting for writers") until stopped.
    blocker = subprocess.Popen(
        ["psql", database.dsn, "-X", "-q", "-c", "BEGIN; INSERT INTO big VALUES (1, 1); SELECT pg_sleep(120);"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        wait_for(lambda: database.sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'big' AND l.mode = 'RowExclusiveLock' AND l.granted") != "0",
            timeout_s=10, what="the writer's lock")
        with notify_socket(tmp_path) as n:
            d = start_daemon(database.dsn, work, n, extra_env={"SCHEMAD_SHUTDOWN_GRACE_S": "10"})
            try:
                # CONCURRENTLY: not the reconciler's check of the definition on an empty scratch
                # copy (a plain CREATE INDEX, also in this view for a moment).
                wait_for(lambda: database.sql(
                    "SELECT count(*) FROM pg_stat_progress_create_index WHERE command = 'CREATE INDEX CONCURRENTLY'"
                ) != "0", timeout_s=30, what="a concurrent build waiting for the writer")
                start = time.monotonic()
                assert d.stop(timeout_s=15) == 0
                took = time.monotonic() - start
            finally:
                d.stop()
        assert took < 10, f"shutdown took {took:.1f}s"
        assert database.sql("SELECT count(*) FROM pg_stat_progress_create_index") == "0"
        assert database.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_v_idx'::regclass") == "f", (
            "an interrupted concurrent build leaves an invalid index"
        )
    finally:
        # End the writer's session on the server (killing psql alone leaves its backend sleeping).
        database.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()"
        )
        blocker.wait()
    with notify_socket(tmp_path) as n:
        d2 = start_daemon(database.dsn, work, n)
        try:
            wait_for(lambda: database.sql(
                "SELECT coalesce(bool_and(indisvalid), false) FROM pg_index "
                "WHERE indexrelid = to_regclass('big_v_idx')") == "t", timeout_s=30, what="the repair")
            assert database.sql(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'big_v_idx%' AND relkind = 'i'"
            ) == "1"
        finally:
            assert d2.stop() == 0
