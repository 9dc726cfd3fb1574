"""`schemad migrate` and `schemad status` as subprocesses against a real PostgreSQL: output,
exit codes (design §11), all-or-nothing failures, tolerated errors, checksums, dry runs,
the lock wait, the retry budget, eight concurrent processes and a SIGKILL mid-migration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest

from schemad import lock, pgcluster
from tests.conftest import (
    REPO,
    TEMPLATE,
    Database,
    psql,
    run_schemad,
    schemad_cmd,
    write_migrations,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

FAST_POLL = {"SCHEMAD_LOCK_POLL_S": "0.05", "SCHEMAD_RETRY_BACKOFF_S": "0.05"}


def cli(database: Database, mdir: Path, idir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_schemad(
        *args, "--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir),
        env={**FAST_POLL, **env},
    )


def ledger(database: Database) -> str:
    """The ledger's identity columns, one `version|name|checksum|statements_tolerated` per line."""
    if database.sql("SELECT to_regclass('schemad.migrations') IS NOT NULL") != "t":
        return ""
    return database.sql("SELECT version, name, checksum, statements_tolerated FROM schemad.migrations ORDER BY 1")


@contextmanager
def scratch_database(cluster: pgcluster.Cluster) -> Iterator[Database]:
    """A second fresh database, for a reference run."""
    name = "r_" + uuid.uuid4().hex[:12]
    psql(cluster.dsn(), f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield Database(cluster, name)
    finally:
        psql(cluster.dsn(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


def poll(condition: str, database: Database, *, timeout_s: float = 15) -> str:
    """Poll a SQL condition until it returns a non-empty value; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = database.sql(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {condition}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- happy path


def test_examples_then_noop_then_status(database: Database) -> None:
    mdir, idir = REPO / "migrations", REPO / "indexes"
    first = cli(database, mdir, idir, "migrate")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("applied 0001_businesses in ")
    assert lines[-1] == "schema at version 9"
    assert "[migration_applied]" in first.stderr and "[lock_released]" in first.stderr

    second = cli(database, mdir, idir, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout == "nothing to do: schema at version 9\n"
    assert "lock_acquired" not in second.stderr, "a no-op run does not even take the lock"

    status = cli(database, mdir, idir, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["schema_version"], data["head_version"], data["up_to_date"]) == (9, 9, True)
    assert [a["version"] for a in data["applied"]] == list(range(1, 10))
    assert data["pending"] == [] and data["last_failure"] is None and data["lock"]["migrations"] is None

    text = cli(database, mdir, idir, "status")
    assert text.returncode == 0 and "schema version 9 (files head 9)  up to date" in text.stdout


# --------------------------------------------------------------------------- failure: all or nothing


GOOD = {
    "0001_base.sql": "CREATE TABLE base (id int PRIMARY KEY, v text);",
    "0002_more.sql": "CREATE TABLE more (id int);\nCOMMENT ON TABLE more IS 'more';",
    "0003_good_in_failing_run.sql": "ALTER TABLE base ADD COLUMN note text;",
}
BAD = {
    "0004_bad.sql": (
        "-- the third statement fails: 42P01, the table does not exist\n"
        "CREATE TABLE four (id int);\n"
        "ALTER TABLE base ADD COLUMN four_id int;\n"
        "ALTER TABLE four\n"
        "    ADD CONSTRAINT four_fk FOREIGN KEY (id) REFERENCES no_such_table (id) NOT VALID;\n"
        "CREATE TABLE four_b (id int);\n"
    ),
    "0005_never.sql": "CREATE TABLE five (id int);",
}


def test_fatal_third_statement_leaves_no_trace(database: Database, pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    mdir, idir = tmp_path / "migrations", tmp_path / "indexes"
    mdir.mkdir()
    idir.mkdir()
    write_migrations(mdir, {k: GOOD[k] for k in ("0001_base.sql", "0002_more.sql")})
    assert cli(database, mdir, idir, "migrate").returncode == 0
    write_migrations(mdir, {"0003_good_in_failing_run.sql": GOOD["0003_good_in_failing_run.sql"], **BAD})

    res = cli(database, mdir, idir, "migrate")

    assert res.returncode == 1, res.stderr
    assert "applied 0003" not in res.stdout  # the report is only printed on success ...
    message = res.stderr.splitlines()[-1]
    path = f"{mdir}/0004_bad.sql"
    assert message.startswith("schemad: migration 0004_bad failed at ")
    assert f"{path}:4:1 (statement 3)" in message
    assert "SQLSTATE 42P01" in message and "no_such_table" in message
    assert "; nothing of 0004_bad was applied or recorded" in message

    # ... but 0003 stays applied: the state equals a clean run of 0001-0003 elsewhere.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    write_migrations(ref_dir, GOOD)
    with scratch_database(pg_cluster) as ref:
        assert cli(ref, ref_dir, idir, "migrate").returncode == 0
        assert database.schema_dump() == ref.schema_dump()
        assert ledger(database) == ledger(ref)
    assert [line.split("|")[0] for line in ledger(database).splitlines()] == ["1", "2", "3"]
    failed = database.sql("SELECT version, sqlstate, detail->>'line' FROM schemad.events WHERE outcome = 'failed'")
    assert failed == "4|42P01|4"

    status = json.loads(cli(database, mdir, idir, "status", "--json").stdout)
    assert status["last_failure"]["subject"] == "0004_bad" and status["last_failure"]["sqlstate"] == "42P01"
    assert [p["version"] for p in status["pending"]] == [4, 5]


def test_tolerated_is_reported_and_strict_fails(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE by_hand (id int)")
    write_migrations(mdir, {"0001_tolerant.sql": "CREATE TABLE by_hand (id int);\nCREATE TABLE other (id int);"})

    strict = cli(database, mdir, idir, "migrate", "--strict")
    assert strict.returncode == 1, strict.stderr
    assert "SQLSTATE 42P07" in strict.stderr and f"{mdir}/0001_tolerant.sql:1:1" in strict.stderr
    assert ledger(database) == "" and database.sql("SELECT to_regclass('other') IS NULL") == "t"

    lenient = cli(database, mdir, idir, "migrate")
    assert lenient.returncode == 0, lenient.stderr
    assert "(2 statement(s), 1 tolerated)" in lenient.stdout
    assert "[statement_tolerated]" in lenient.stderr and "sqlstate=42P07" in lenient.stderr
    assert ledger(database).endswith("|1")


def test_duplicate_key_is_never_tolerated(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE seen (id int PRIMARY KEY); INSERT INTO seen VALUES (1)")
    write_migrations(mdir, {"0001_dup.sql": "CREATE TABLE x (id int);\nINSERT INTO seen VALUES (1);"})
    res = cli(database, mdir, idir, "migrate")
    assert res.returncode == 1
    assert "SQLSTATE 23505" in res.stderr and "nothing of 0001_dup was applied or recorded" in res.stderr
    assert ledger(database) == ""


# --------------------------------------------------------------------------- validation against the ledger


def test_checksum_mismatch_exits_3_comment_edits_do_not(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    assert cli(database, mdir, idir, "migrate").returncode == 0

    write_migrations(mdir, {"0001_a.sql": "-- explained later\ncreate table a (\n    id int  -- the key\n);\n"})
    res = cli(database, mdir, idir, "migrate")
    assert (res.returncode, res.stdout) == (0, "nothing to do: schema at version 1\n")

    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int, v text);", "0002_b.sql": "CREATE TABLE b (id int);"})
    res = cli(database, mdir, idir, "migrate")
    assert res.returncode == 3, res.stderr
    assert f"{mdir}/0001_a.sql:1:1: E130 " in res.stdout and "changed after it was applied" in res.stdout
    assert "nothing was executed" in res.stderr
    assert database.sql("SELECT to_regclass('b') IS NULL") == "t"
    status = json.loads(cli(database, mdir, idir, "status", "--json").stdout)
    assert [m["version"] for m in status["checksum_mismatches"]] == [1]


def test_unknown_ledger_versions_are_reported_not_fatal(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);", "0002_b.sql": "CREATE TABLE b (id int);"})
    assert cli(database, mdir, idir, "migrate").returncode == 0
    (mdir / "0002_b.sql").unlink()  # this replica is older than the database

    res = cli(database, mdir, idir, "migrate")
    assert res.returncode == 0, res.stderr
    assert "version 2 (0002_b) is applied but unknown to these files" in res.stdout
    status = cli(database, mdir, idir, "status")
    assert status.returncode == 0 and "applied but unknown to these files: 2 0002_b" in status.stdout


# --------------------------------------------------------------------------- dry run and lock wait


def test_dry_run_prints_the_plan_and_executes_nothing(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_a.sql": "CREATE TABLE a (id int);\nCREATE TABLE b (id int);",
        "0002_c.sql": "-- schemad:no-transaction\nCREATE TABLE IF NOT EXISTS c (id int);",
    })
    res = cli(database, mdir, idir, "migrate", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"would apply 0001_a (2 statement(s), transaction) from {mdir}/0001_a.sql",
        f"would apply 0002_c (1 statement(s), no-transaction) from {mdir}/0002_c.sql",
    ]
    assert database.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'schemad'") == "0"
    assert database.sql("SELECT count(*) FROM pg_class WHERE relname IN ('a', 'b', 'c')") == "0"


@pytest.mark.anyio
async def test_lock_wait_exits_4_while_another_session_holds_the_lock(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    holder = await asyncpg.connect(database.dsn)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", lock.lock_key(database.name, "migrations"))
        started = time.monotonic()
        res = await anyio.to_thread.run_sync(lambda: cli(database, mdir, idir, "migrate", "--lock-wait", "0.5"))
        elapsed = time.monotonic() - started
    finally:
        await holder.close()
    assert res.returncode == 4, res.stderr
    assert "could not take the migration lock within 0.5s" in res.stderr
    assert elapsed >= 0.5
    assert database.sql("SELECT to_regclass('a') IS NULL") == "t"


# --------------------------------------------------------------------------- the retry budget through the CLI


@pytest.mark.anyio
async def test_blocker_past_the_budget_exits_1_with_nothing_recorded(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE busy (id int)")
    write_migrations(mdir, {"0001_alter.sql": "CREATE TABLE side (id int);\nALTER TABLE busy ADD COLUMN x int;"})
    blocker = await asyncpg.connect(database.dsn, server_settings={"application_name": "test-blocker"})
    try:
        await blocker.execute("BEGIN")
        await blocker.fetch("SELECT * FROM busy")
        res = await anyio.to_thread.run_sync(lambda: cli(
            database, mdir, idir, "migrate",
            SCHEMAD_LOCK_TIMEOUT_S="0.2", SCHEMAD_RETRY_MAX_ATTEMPTS="3", SCHEMAD_RETRY_BUDGET_S="5",
        ))
    finally:
        await blocker.close()
    assert res.returncode == 1, res.stderr
    assert "SQLSTATE 55P03" in res.stderr and "after 3 attempt(s)" in res.stderr
    assert "(test-blocker, idle in transaction" in res.stderr
    assert res.stderr.count("[migration_retry]") == 2 and "[migration_retry_exhausted]" in res.stderr
    assert ledger(database) == ""
    assert database.sql("SELECT to_regclass('side') IS NULL") == "t"


# --------------------------------------------------------------------------- concurrency and crashes


def test_eight_concurrent_processes_apply_each_migration_once(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_log.sql": "CREATE TABLE apply_log (version int NOT NULL, backend int NOT NULL);",
        "0002_first.sql": "INSERT INTO apply_log VALUES (2, pg_backend_pid());\nSELECT pg_sleep(0.2);",
        "0003_second.sql": "INSERT INTO apply_log VALUES (3, pg_backend_pid());\nCREATE TABLE done (id int);",
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_")} | FAST_POLL
    argv = schemad_cmd("migrate", "--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(8)
    ]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]

    assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
    appliers = [out for _, out, _ in results if "applied 0001_log" in out]
    assert len(appliers) == 1, [out for _, out, _ in results]
    assert all(
        out == "nothing to do: schema at version 3\n" for _, out, _ in results if "applied" not in out
    )
    assert database.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM apply_log") == "2,3"
    assert database.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schemad.migrations") == "1,2,3"
    assert database.sql("SELECT count(*) FROM schemad.events WHERE outcome = 'applied'") == "3"


SLEEPY = {
    "0001_base.sql": "CREATE TABLE base (id int PRIMARY KEY);",
    "0002_interrupted.sql": (
        "CREATE TABLE half (id int);\n"
        "ALTER TABLE base ADD COLUMN half_id int;\n"
        "-- sleeps only where the test asked for it (a database-level setting)\n"
        "SELECT pg_sleep(coalesce(current_setting('schemad_test.sleep_s', true), '0')::float8);\n"
        "CREATE TABLE other_half (id int);\n"
        "COMMENT ON TABLE other_half IS 'after the sleep';\n"
    ),
    "0003_after.sql": "ALTER TABLE half ADD COLUMN v text;",
}


def test_sigkill_mid_migration_then_rerun_converges(
    database: Database, pg_cluster: pgcluster.Cluster, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, SLEEPY)
    database.sql(f"ALTER DATABASE {database.name} SET schemad_test.sleep_s = '60'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_")}
    # A short connection check so the orphaned backend notices its vanished client quickly.
    env |= {"SCHEMAD_CONNECTION_CHECK_INTERVAL_S": "0.2"}
    argv = schemad_cmd("migrate", "--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        poll(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'schemad:migrate:%' AND wait_event = 'PgSleep'",
            database,
        )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    database.sql(f"ALTER DATABASE {database.name} RESET schemad_test.sleep_s")
    # The server drops the dead client's sessions (lock and migration) on its own, rolling back.
    poll(
        "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        f"AND application_name LIKE 'schemad:%:{proc.pid}')",
        database,
        timeout_s=10,
    )
    assert database.sql("SELECT string_agg(version::text, ',') FROM schemad.migrations") == "1"
    assert database.sql("SELECT to_regclass('half') IS NULL") == "t"

    rerun = run_schemad(
        "migrate", "--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "applied 0002_interrupted" in rerun.stdout and "applied 0003_after" in rerun.stdout

    with scratch_database(pg_cluster) as clean:
        assert run_schemad(
            "migrate", "--dsn", clean.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)
        ).returncode == 0
        assert database.schema_dump() == clean.schema_dump()
        assert ledger(database) == ledger(clean)
