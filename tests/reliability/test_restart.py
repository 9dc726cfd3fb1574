"""Promise 3 — a database restart is survived: `pg_ctl restart -m fast` while a migration is
being applied and while a concurrent index build waits for a writer. The daemon reconnects
and converges with no operator action; a CLI run exits 1 (design §11: failed in the
database, nothing partial recorded) and a rerun converges.

These tests restart PostgreSQL, so each runs on its own cluster (`pgcluster.create()`),
never on the per-worker cluster other tests share.
"""

from __future__ import annotations

import functools
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from schemad import pgcluster
from tests.conftest import Database, psql, run_schemad, schemad_cmd
from tests.e2e.daemons import Daemon, notify_socket, start_daemon, wait_for
from tests.reliability.support import clean_env, fresh_database, poll, record, run_migrate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

RECOVERY_BOUND_S = 30.0
# The slow statement sleeps only while the postmaster that started it is up: after the
# restart, the same migration runs through at once.
SLEEPY = (
    "-- schemad:allow=data-change the apply log proves exactly-once application\n"
    "CREATE TABLE slow_a (id int);\n"
    "SELECT pg_sleep(CASE WHEN pg_postmaster_start_time() = '{started}'::timestamptz THEN 600 ELSE 0 END);\n"
    "CREATE TABLE slow_b (id int);\n"
    "INSERT INTO apply_log VALUES (2);\n"
)
MIGRATIONS = {
    "0001_log.sql": "CREATE TABLE apply_log (version int NOT NULL);\n",
    "0003_after.sql": (
        "-- schemad:allow=data-change the apply log proves exactly-once application\n"
        "CREATE TABLE after_restart (id int);\nINSERT INTO apply_log VALUES (3);\n"
    ),
}
SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:migrate:%' "
    "AND wait_event = 'PgSleep'"
)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[pgcluster.Cluster]:
    cluster = pgcluster.create()
    try:
        psql(cluster.dsn(), "CREATE DATABASE schemad_template")
        yield cluster
    finally:
        cluster.destroy()


def _write(mdir: Path, cluster: pgcluster.Cluster) -> None:
    mdir.mkdir(parents=True, exist_ok=True)
    for name, text in MIGRATIONS.items():
        (mdir / name).write_text(text)
    started = psql(cluster.dsn(), "SELECT pg_postmaster_start_time()")
    (mdir / "0002_slow.sql").write_text(SLEEPY.format(started=started))


def _converged(db: Database) -> None:
    assert db.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schemad.migrations") == "1,2,3"
    assert db.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM apply_log") == "2,3"
    assert db.sql("SELECT to_regclass('slow_a') IS NOT NULL AND to_regclass('slow_b') IS NOT NULL") == "t"


def _restart(cluster: pgcluster.Cluster) -> float:
    started = time.monotonic()
    cluster.restart("fast")
    return time.monotonic() - started


def _writer(db: Database, table: str) -> subprocess.Popen[str]:
    """An open transaction that has written to ``table``: a concurrent build waits for it."""
    proc = subprocess.Popen(
        ["psql", db.dsn, "-X", "-q", "-c", f"BEGIN; INSERT INTO {table} VALUES (1, 1); SELECT pg_sleep(600);"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
    poll(lambda: db.sql(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        f"WHERE c.relname = '{table}' AND l.mode = 'RowExclusiveLock' AND l.granted") != "0",
        timeout_s=10, what="the writer's lock")
    return proc


def _building(db: Database) -> bool:
    """A concurrent build under way (not the reconciler's scratch-copy check, a plain CREATE INDEX)."""
    return db.sql(
        "SELECT count(*) FROM pg_stat_progress_create_index WHERE command = 'CREATE INDEX CONCURRENTLY'"
    ) != "0"


def _index_valid(db: Database, name: str) -> bool:
    return db.sql(
        f"SELECT coalesce(bool_and(indisvalid), false) FROM pg_index WHERE indexrelid = to_regclass('{name}')"
    ) == "t" and db.sql(f"SELECT count(*) FROM pg_class WHERE relname LIKE '{name}%' AND relkind = 'i'") == "1"


# --------------------------------------------------------------------------- the daemon


def _ready(d: Daemon) -> bool:
    return d.get("/readyz")[0] == 200


def _wait(d: Daemon, condition: Callable[[], bool], what: str) -> float:
    try:
        return wait_for(condition, timeout_s=RECOVERY_BOUND_S, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the daemon's log:\n{d.log()[-6000:]}") from None



def daemon_restarts(cluster: pgcluster.Cluster, tmp_path: Path, rounds: int) -> dict[str, list[float]]:
    """Per round: a restart mid-apply, then a restart mid-index-build, on one running daemon."""
    figures: dict[str, list[float]] = {"apply_recovery_s": [], "index_recovery_s": [], "restart_s": []}
    for r in range(rounds):
        with fresh_database(cluster, "rst") as db, notify_socket(tmp_path) as notify:
            work = tmp_path / f"work{r}"
            _write(work / "migrations", cluster)
            (work / "indexes").mkdir()
            db.sql("CREATE TABLE big (id int, v int); INSERT INTO big SELECT g, g FROM generate_series(1, 1000) g")
            d = start_daemon(db.dsn, work, notify, extra_env={"SCHEMAD_INDEX_RETRY_BACKOFF_S": "0.5"})
            try:
                poll(lambda: db.sql(SLEEPING) == "1", timeout_s=20, what="the migration in its sleep")
                figures["restart_s"].append(_restart(cluster))
                figures["apply_recovery_s"].append(
                    _wait(d, functools.partial(_ready, d), "ready after the restart")
                )
                _converged(db)
                assert d.proc.poll() is None and d.get("/livez")[0] == 200
                # Now a concurrent build, held up by an open writer, when the server restarts.
                writer = _writer(db, "big")
                try:
                    (work / "indexes" / "big.sql").write_text("CREATE INDEX big_v_idx ON big (v);\n")
                    d.signal(1)  # SIGHUP: re-scan the folders
                    poll(lambda: _building(db), timeout_s=20, what="a concurrent build waiting for the writer")
                    figures["restart_s"].append(_restart(cluster))
                finally:
                    writer.wait(timeout=30)  # the restart ended its session
                figures["index_recovery_s"].append(
                    _wait(d, lambda: _index_valid(db, "big_v_idx"), "the index rebuilt after the restart")
                )
                assert d.proc.poll() is None, d.log()
                log = d.log()
                assert "Traceback" not in log, log
            finally:
                assert d.stop() == 0, d.log()
    return figures


# --------------------------------------------------------------------------- the CLI


def cli_restarts(cluster: pgcluster.Cluster, tmp_path: Path, rounds: int) -> dict[str, list[float]]:
    """Per round: `migrate` and `build-indexes` each see a restart mid-work: exit 1, rerun converges."""
    figures: dict[str, list[float]] = {"migrate_exit_s": [], "build_exit_s": []}
    for r in range(rounds):
        work = tmp_path / f"cli{r}"
        mdir, idir = work / "migrations", work / "indexes"
        _write(mdir, cluster)
        idir.mkdir()
        with fresh_database(cluster, "cli") as db, fresh_database(cluster, "clean") as clean:
            # A short retry backoff: the interrupted build is retried once before the dead
            # control connection ends the run (the default backoff is 10 s).
            env = clean_env(SCHEMAD_CONNECTION_CHECK_INTERVAL_S="0.2", SCHEMAD_INDEX_RETRY_BACKOFF_S="0.5")
            argv = ["migrate", "--dsn", db.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)]
            proc = subprocess.Popen(
                schemad_cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            poll(lambda: db.sql(SLEEPING) == "1", timeout_s=20, what="the migration in its sleep")
            restarted = time.monotonic()
            _restart(cluster)
            _out, err = proc.communicate(timeout=RECOVERY_BOUND_S)
            figures["migrate_exit_s"].append(time.monotonic() - restarted)
            assert proc.returncode == 1, err
            assert "Traceback" not in err, err
            # 0001 and 0002 travel in one batch (executor.apply_batch): with the server gone, which
            # of them committed cannot be told then; the ledger shows it afterwards. The restart
            # ends both connections: whichever loss is noticed first names the stop.
            last = err.strip().splitlines()[-1]
            if last.startswith("schemad: the migration lock was lost while applying "):
                assert "0002_slow" in last and "its statement was cancelled at once" in last, err
            else:
                assert last.startswith(
                    "schemad: the connection was lost while applying one of 0001_log, 0002_slow, 0003_after "
                    "(sent together), and the database cannot be reached again"
                ), err
            assert db.sql("SELECT string_agg(version::text, ',') FROM schemad.migrations") == "1", "0002 not recorded"
            assert db.sql("SELECT to_regclass('slow_a') IS NULL") == "t"
            rerun = run_migrate(db.dsn, mdir, idir)
            assert rerun.returncode == 0, rerun.stderr
            _converged(db)
            assert run_migrate(clean.dsn, mdir, idir).returncode == 0
            assert db.schema_dump() == clean.schema_dump()

            # build-indexes, its concurrent build waiting for a writer, when the server restarts.
            db.sql("CREATE TABLE big (id int, v int)")
            (idir / "big.sql").write_text("CREATE INDEX big_v_idx ON big (v);\n")
            writer = _writer(db, "big")
            build = subprocess.Popen(
                schemad_cmd("build-indexes", "--dsn", db.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            try:
                poll(lambda: _building(db), timeout_s=20, what="a concurrent build waiting for the writer")
                restarted = time.monotonic()
                _restart(cluster)
                out, err = build.communicate(timeout=RECOVERY_BOUND_S)
                figures["build_exit_s"].append(time.monotonic() - restarted)
            finally:
                writer.wait(timeout=30)
            assert build.returncode == 1, out + err
            assert "Traceback" not in err, err
            assert err.strip().splitlines()[-1].startswith(
                "schemad: lost the connection to PostgreSQL while reconciling indexes"
            ), err
            again = run_schemad(
                "build-indexes", "--dsn", db.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)
            )
            assert again.returncode == 0, again.stdout + again.stderr
            assert _index_valid(db, "big_v_idx")
    return figures


def _summary(values: list[float]) -> dict[str, float]:
    return {"max": round(max(values), 2), "min": round(min(values), 2), "n": len(values)}


def test_restart_fast(own_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    figures = {**daemon_restarts(own_cluster, tmp_path, 1), **cli_restarts(own_cluster, tmp_path, 1)}
    record("restart_1", {k: _summary(v) for k, v in figures.items()} | {"bound_s": RECOVERY_BOUND_S})


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_restart_repeated(own_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    figures = {**daemon_restarts(own_cluster, tmp_path, 5), **cli_restarts(own_cluster, tmp_path, 5)}
    record("restart_5", {k: _summary(v) for k, v in figures.items()} | {"bound_s": RECOVERY_BOUND_S})
