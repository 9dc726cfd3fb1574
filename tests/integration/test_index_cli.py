"""`schemad build-indexes` as a process: a build killed with SIGKILL is repaired by the next
run; exit codes (0 ready, 1 failed, 3 validation, 4 lock busy); --dry-run; the live
progress bars on a terminal; the index section of `schemad status --json`."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import asyncpg
import pytest

from schemad import lock
from tests.conftest import Database, run_schemad, schemad_cmd

if TYPE_CHECKING:
    from pathlib import Path

KILL_TABLE = (
    "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, s text NOT NULL);\n"
    "INSERT INTO t (s) SELECT md5(g::text) FROM generate_series(1, 1000000) g;\n"
    "ANALYZE t;"
)


def env_for(database: Database, folders: tuple[Path, Path], **extra: str) -> dict[str, str]:
    mdir, idir = folders
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_")}
    env.update({
        "SCHEMAD_DSN": database.dsn,
        "SCHEMAD_MIGRATIONS_DIR": str(mdir),
        "SCHEMAD_INDEXES_DIR": str(idir),
        "SCHEMAD_LOCK_POLL_S": "0.05",
        "SCHEMAD_INDEX_PROGRESS_POLL_S": "0.1",
        "SCHEMAD_CONNECTION_CHECK_INTERVAL_S": "0.2",
    })
    env.update(extra)
    return env


def registry(folder: Path, text: str) -> None:
    (folder / "registry.sql").write_text(text, encoding="utf-8")


def poll_sql(database: Database, sql: str, *, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = database.sql(sql)
        if value and value != "f":
            return value
        time.sleep(0.02)  # polling the server for a state, not waiting a fixed time
    raise AssertionError(f"timed out waiting for: {sql}")


def test_a_build_killed_mid_way_is_repaired_by_the_next_run(database: Database, folders: tuple[Path, Path]) -> None:
    database.sql(KILL_TABLE)
    registry(folders[1], "CREATE INDEX t_s_idx ON t (s);\n")
    env = env_for(database, folders)
    proc = subprocess.Popen(schemad_cmd("build-indexes"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = poll_sql(
            database,
            "SELECT p.pid FROM pg_stat_progress_create_index p JOIN pg_stat_activity a ON a.pid = p.pid "
            "WHERE a.application_name LIKE 'schemad:index:%' AND p.phase LIKE 'building index%'",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The server notices the vanished client (client_connection_check_interval) and aborts.
    poll_sql(database, f"SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {pid})")
    assert database.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_s_idx'::regclass") == "f"

    res = run_schemad("build-indexes", env=env)

    assert res.returncode == 0, res.stderr
    assert "t_s_idx" in res.stdout and "valid" in res.stdout and "dropped invalid t_s_idx" in res.stdout
    assert database.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_s_idx'::regclass") == "t"
    outcomes = database.sql("SELECT outcome FROM schemad.events WHERE kind = 'index' ORDER BY id").splitlines()
    assert outcomes == ["dropped", "built"]


def test_exit_codes_dry_run_and_status(database: Database, folders: tuple[Path, Path]) -> None:
    database.sql(
        "CREATE TABLE t (id int, a int, b int); INSERT INTO t SELECT g, g % 10, 1 FROM generate_series(1, 1000) g;"
    )
    registry(folders[1], "-- schemad:critical\nCREATE INDEX t_a_idx ON t (a);\n")
    env = env_for(database, folders)

    dry = run_schemad("build-indexes", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would: t_a_idx: build t_a_idx on public.t (build): CREATE INDEX CONCURRENTLY t_a_idx" in dry.stdout
    assert database.sql("SELECT to_regclass('t_a_idx') IS NULL") == "t"

    holder = subprocess.Popen(
        ["psql", database.dsn, "-X", "-c", f"SELECT pg_advisory_lock({lock.lock_key(database.name, 'indexes')})",
         "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PGAPPNAME": "test-holder"},
    )
    try:
        poll_sql(database, "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted")
        busy = run_schemad("build-indexes", "--lock-wait", "0.3", env=env)
    finally:
        database.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-holder'")
        holder.wait(timeout=10)
    assert busy.returncode == 4, busy.stderr
    assert "could not take the index lock" in busy.stderr

    ok = run_schemad("build-indexes", "--no-wait", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "t_a_idx" in ok.stdout and "built" in ok.stdout

    registry(folders[1], "CREATE UNIQUE INDEX t_b_key ON t (b);\n")
    failed = run_schemad("build-indexes", env=env)
    assert failed.returncode == 1
    assert "t_b_key" in failed.stdout and "failed" in failed.stdout and "SQLSTATE 23505" in failed.stdout

    status = run_schemad("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["indexes"]
    assert rows == [
        {
            "name": "t_b_key", "table": "t", "critical": False, "state": "failed", "progress": None, "attempts": 1,
            "last_outcome": "failed", "last_sqlstate": "23505", "last_error": rows[0]["last_error"],
            "last_attempt_at": rows[0]["last_attempt_at"], "built_at": None, "drift": None,
        }
    ]
    assert "could not create unique index" in rows[0]["last_error"]
    text = run_schemad("status", env=env)
    assert "t_b_key" in text.stdout and "SQLSTATE 23505" in text.stdout

    registry(folders[1], "CREATE INDEX ON t (a);\n")  # no name: rejected before anything runs
    invalid = run_schemad("build-indexes", env=env)
    assert invalid.returncode == 3


def test_progress_bars_on_a_terminal(database: Database, folders: tuple[Path, Path]) -> None:
    database.sql("CREATE TABLE t (id int, a int); INSERT INTO t SELECT g, g FROM generate_series(1, 200000) g;")
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            schemad_cmd("build-indexes"), env=env_for(database, folders, COLUMNS="160"),
            stdout=subprocess.PIPE, stderr=terminal,
        )
        os.close(terminal)
        out, _ = proc.communicate(timeout=60)
        screen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0, screen.decode(errors="replace")
    drawn = screen.decode(errors="replace")
    assert "t_a_idx" in drawn and "100%" in drawn and "━" in drawn  # a rich bar, finished
    assert b"t_a_idx" in out and b"valid" in out


@pytest.mark.anyio
async def test_progress_visibility_is_reported_for_a_role_without_pg_read_all_stats(
    database: Database, folders: tuple[Path, Path]
) -> None:
    database.sql(
        "CREATE TABLE t (id int, a int); INSERT INTO t VALUES (1, 1);"
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'schemad_low') THEN "
        "CREATE ROLE schemad_low LOGIN; END IF; END $$;"
        f"GRANT ALL ON DATABASE {database.name} TO schemad_low; GRANT ALL ON SCHEMA public TO schemad_low;"
        "ALTER TABLE t OWNER TO schemad_low;"
    )
    registry(folders[1], "CREATE INDEX t_a_idx ON t (a);\n")
    dsn = database.dsn.replace("postgres@", "schemad_low@")
    res = run_schemad("build-indexes", env=env_for(database, folders, SCHEMAD_DSN=dsn))
    assert res.returncode == 0, res.stderr
    assert "pg_read_all_stats" in res.stderr and "lacks pg_read_all_stats" in res.stdout
    conn = await asyncpg.connect(database.dsn)
    try:
        assert await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass")
    finally:
        await conn.close()
