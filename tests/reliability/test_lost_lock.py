"""Promise 4 — a lost lock stops all work: two daemons, one applying a slow migration.

* `pg_terminate_backend` on the applier's lock connection: its statement in flight is
  cancelled at once (the statement after the sleep, a non-transactional `nextval`, never
  runs in its session), the other replica takes over, and every migration lands once.
* A frozen applier (SIGSTOP): the server ends its lock session once its lease runs out
  (`lock_lease_s`: the holder renews it every lease/3; `idle_session_timeout` on the lock
  session), the other replica takes the lock, ends the frozen holder's open migration
  transaction, and applies. The time from SIGSTOP to the takeover is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.reliability.support import fresh_database, poll, record, spawn_daemons

if TYPE_CHECKING:
    from pathlib import Path

    from schemad import pgcluster
    from tests.conftest import Database
    from tests.e2e.daemons import Daemon

MIGRATIONS = {
    "0001_setup.sql": (
        "-- schemad:allow=data-change the test's control row\n"
        "CREATE TABLE apply_log (version int NOT NULL, pid int NOT NULL DEFAULT pg_backend_pid());\n"
        "CREATE TABLE ctl (sleep_s float8 NOT NULL);\n"
        "INSERT INTO ctl VALUES (600);\n"
        "CREATE SEQUENCE after_sleep;\n"
    ),
    "0002_slow.sql": (
        "-- schemad:allow=data-change the apply log proves exactly-once application\n"
        "CREATE TABLE slow_a (id int);\n"
        "SELECT pg_sleep((SELECT sleep_s FROM ctl));\n"
        "-- sequences ignore rollbacks: a value taken here is proof that this statement ran\n"
        "SELECT nextval('after_sleep');\n"
        "CREATE TABLE slow_b (id int);\n"
        "INSERT INTO apply_log (version) VALUES (2);\n"
    ),
    "0003_after.sql": (
        "-- schemad:allow=data-change the apply log proves exactly-once application\n"
        "CREATE TABLE after_it (id int);\nINSERT INTO apply_log (version) VALUES (3);\n"
    ),
}
SLEEPING = (
    "SELECT coalesce(max(application_name), '') FROM pg_stat_activity "
    "WHERE application_name LIKE 'schemad:migrate:%' AND wait_event = 'PgSleep'"
)
TAKEOVER_BOUND_S = 30.0


def _setup(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "migrations").mkdir(parents=True)
    (work / "indexes").mkdir()
    for name, text in MIGRATIONS.items():
        (work / "migrations" / name).write_text(text)
    return work


def _holder_and_other(db: Database, daemons: list[Daemon]) -> tuple[Daemon, Daemon]:
    app = ""

    def sleeping() -> bool:
        nonlocal app
        app = db.sql(SLEEPING)
        return app != ""

    poll(sleeping, timeout_s=30, what="a daemon applying the slow migration")
    pid = int(app.rsplit(":", 1)[1])
    holder = next(d for d in daemons if d.proc.pid == pid)
    return holder, next(d for d in daemons if d is not holder)


def _applied_once(db: Database) -> str:
    """Who applied 2 and 3; fails unless each migration and its post-sleep statement ran once."""
    assert db.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schemad.migrations") == "1,2,3"
    assert db.sql("SELECT string_agg(version::text, ',' ORDER BY version) FROM apply_log") == "2,3"
    assert db.sql("SELECT last_value || '|' || is_called FROM after_sleep") == "1|true", (
        "the statement after the sleep ran more than once: once in a session that had lost the lock"
    )
    return db.sql("SELECT string_agg(DISTINCT applied_by_pid::text, ',') FROM schemad.migrations WHERE version > 1")


def _ready(daemons: list[Daemon]) -> None:
    for d in daemons:
        poll(lambda d=d: d.get("/readyz")[0] == 200, timeout_s=TAKEOVER_BOUND_S, what=f"daemon :{d.port} ready")


def terminated_lock(db: Database, tmp_path: Path) -> dict[str, float]:
    work = _setup(tmp_path)
    with contextlib.ExitStack() as stack:
        daemons = spawn_daemons(stack, db.dsn, work, 2)
        holder, other = _holder_and_other(db, daemons)
        db.sql("UPDATE ctl SET sleep_s = 0")  # whoever runs 0002 next does not sleep
        lost_at = time.monotonic()
        assert db.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name LIKE 'schemad:lock:%:{holder.proc.pid}'"
        ) == "1"
        stopped_s = poll(lambda: db.sql(SLEEPING) == "", timeout_s=TAKEOVER_BOUND_S,
                         what="the holder's statement to stop")
        poll(lambda: db.sql("SELECT count(*) FROM schemad.migrations") == "3", timeout_s=TAKEOVER_BOUND_S,
             what="the other replica to apply")
        applied_s = time.monotonic() - lost_at
        _ready(daemons)
        appliers = _applied_once(db)
        assert appliers == str(other.proc.pid), f"taken over by {appliers}, not by {other.proc.pid}"
        lost_event = db.sql(
            "SELECT detail->>'reason' FROM schemad.events WHERE outcome = 'failed' AND subject = '0002_slow' "
            f"AND pid = {holder.proc.pid}"
        )
        assert lost_event == "lock_lost", lost_event
        status = json.loads(holder.get("/status")[1])
        assert status["up_to_date"] is True
        for d in daemons:
            assert d.stop() == 0, d.log()
        assert "lock_lost" in holder.log()
    return {"statement_stopped_s": stopped_s, "other_applied_s": applied_s}


def frozen_holder(db: Database, tmp_path: Path, lease_s: float) -> dict[str, float]:
    work = _setup(tmp_path)
    env = {"SCHEMAD_LOCK_LEASE_S": str(lease_s)}
    with contextlib.ExitStack() as stack:
        daemons = spawn_daemons(stack, db.dsn, work, 2, extra_env=env)
        holder, other = _holder_and_other(db, daemons)
        db.sql("UPDATE ctl SET sleep_s = 0")
        holder_lock = (
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE application_name LIKE 'schemad:lock:%:{holder.proc.pid}'"
        )
        assert db.sql(holder_lock) == "1"
        frozen_at = time.monotonic()
        os.kill(holder.proc.pid, signal.SIGSTOP)
        try:
            # The server ends the frozen holder's lock session when its lease runs out ...
            lock_s = poll(lambda: db.sql(holder_lock) == "0", timeout_s=lease_s + TAKEOVER_BOUND_S,
                          what="the frozen holder's lock session to end")
            # ... and the other replica takes the lock, ends the frozen holder's migration
            # transaction (still sleeping on the server), and applies.
            poll(lambda: db.sql("SELECT count(*) FROM schemad.migrations") == "3", timeout_s=TAKEOVER_BOUND_S,
                 what="the other replica to apply")
            applied_s = time.monotonic() - frozen_at
        finally:
            os.kill(holder.proc.pid, signal.SIGCONT)
        # Thawed, the old holder finds its sessions gone, stops, and comes back ready.
        _ready(daemons)
        appliers = _applied_once(db)
        assert appliers == str(other.proc.pid), appliers
        for d in daemons:
            assert d.stop() == 0, d.log()
    assert "stale_holder_ended" in other.log()
    return {"lease_s": lease_s, "lock_lost_s": lock_s, "other_applied_s": applied_s}


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in figures.items()}


def test_lost_lock_fast(database: Database, tmp_path: Path) -> None:
    figures = terminated_lock(database, tmp_path)
    record("lost_lock_terminated", _rounded(figures))


def test_frozen_holder_fast(database: Database, tmp_path: Path) -> None:
    figures = frozen_holder(database, tmp_path, lease_s=2.0)
    # The lease (the last renewal was at most lease/3 before the freeze), then one poll.
    assert figures["lock_lost_s"] <= 2.0 + 0.5, figures
    assert figures["other_applied_s"] <= 2.0 + 2.0, figures
    record("frozen_holder_lease_2s", _rounded(figures))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lost_lock_repeated(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    rounds: list[dict[str, float]] = []
    for r in range(5):
        with fresh_database(pg_cluster, "lost") as db:
            terminated = terminated_lock(db, tmp_path / f"terminated{r}")
        with fresh_database(pg_cluster, "frozen") as db:
            frozen = frozen_holder(db, tmp_path / f"frozen{r}", lease_s=2.0)
        rounds.append({f"terminated_{k}": v for k, v in terminated.items()}
                      | {f"frozen_{k}": v for k, v in frozen.items() if k != "lease_s"})
    record("lost_lock_5_rounds", {
        key: {"min": round(min(f[key] for f in rounds), 2), "max": round(max(f[key] for f in rounds), 2)}
        for key in rounds[0]
    } | {"rounds": len(rounds), "frozen_lease_s": 2.0})
    assert all(f["frozen_lock_lost_s"] <= 2.0 + 0.5 for f in rounds), rounds


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_frozen_index_builder_default_lease(database: Database, tmp_path: Path) -> None:
    from schemad import config

    figures = frozen_index_builder(database, tmp_path, lease_s=config.DEFAULT_LOCK_LEASE_S)
    assert figures["index_lock_lost_s"] <= config.DEFAULT_LOCK_LEASE_S + 0.5, figures
    record("frozen_index_builder_default_lease", _rounded(figures))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_frozen_holder_default_lease(database: Database, tmp_path: Path) -> None:
    from schemad import config

    lease = config.DEFAULT_LOCK_LEASE_S
    figures = frozen_holder(database, tmp_path, lease_s=lease)
    assert figures["lock_lost_s"] <= lease + 0.5, figures
    assert figures["other_applied_s"] <= lease + 2.0, figures
    record("frozen_holder_default_lease", _rounded(figures))


def frozen_index_builder(db: Database, tmp_path: Path, lease_s: float) -> dict[str, float]:
    """The index lock has the same lease: a replica frozen while its concurrent builds wait
    for a writer loses the index lock within the lease, and the other replica goes on with
    the registry."""
    work = tmp_path / "work"
    (work / "migrations").mkdir(parents=True)
    (work / "indexes").mkdir()
    db.sql("CREATE TABLE big (id int, v int); CREATE TABLE small (id int, v int)")
    (work / "migrations" / "0001_other.sql").write_text("CREATE TABLE other (id int);\n")
    (work / "indexes" / "a.sql").write_text("-- schemad:critical\nCREATE INDEX big_v_idx ON big (v);\n")
    (work / "indexes" / "b.sql").write_text("CREATE INDEX small_v_idx ON small (v);\n")
    env = {"SCHEMAD_LOCK_LEASE_S": str(lease_s), "SCHEMAD_RECONCILE_INTERVAL_S": "1",
           "SCHEMAD_INDEX_CONCURRENCY": "2"}
    # An open writer holds up big_v_idx's concurrent build from the start.
    writer = subprocess.Popen(
        ["psql", db.dsn, "-X", "-q", "-c", "BEGIN; INSERT INTO big VALUES (1, 1); SELECT pg_sleep(600);"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PGAPPNAME": "test-writer"},
    )
    app = ""

    def building() -> bool:
        nonlocal app
        app = db.sql(
            "SELECT coalesce(max(a.application_name), '') FROM pg_stat_progress_create_index p "
            "JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.application_name LIKE 'schemad:index:%' "
            "AND p.command = 'CREATE INDEX CONCURRENTLY'"
        )
        return app != ""

    with contextlib.ExitStack() as stack:
        try:
            poll(lambda: db.sql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                "WHERE c.relname = 'big' AND l.mode = 'RowExclusiveLock' AND l.granted") != "0",
                 timeout_s=10, what="the writer's lock")
            daemons = spawn_daemons(stack, db.dsn, work, 2, extra_env=env)
            poll(building, timeout_s=30, what="a build waiting for the writer")
            holder = next(d for d in daemons if d.proc.pid == int(app.rsplit(":", 1)[1]))
            other = next(d for d in daemons if d is not holder)
            held_by_holder = (
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                f"WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'schemad:index-lock:%:{holder.proc.pid}'"
            )
            assert db.sql(held_by_holder) != "0", "the builder holds the index lock"
            os.kill(holder.proc.pid, signal.SIGSTOP)
            try:
                took = poll(lambda: db.sql(held_by_holder) == "0", timeout_s=lease_s + TAKEOVER_BOUND_S,
                            what="the frozen builder to lose the index lock")
                # Its builds go on on the server, frozen client or not, and finish once the
                # writer is gone; the other replica, finding them running, waits for them.
                db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-writer'")
                poll(lambda: db.sql(
                    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname IN ('big_v_idx', 'small_v_idx') AND i.indisvalid") == "2",
                    timeout_s=TAKEOVER_BOUND_S, what="both indexes valid while their builder is still frozen")
                # A new registry index: the replica that is not frozen builds it.
                (work / "indexes" / "c.sql").write_text("CREATE INDEX small_id_idx ON small (id);\n")
                poll(lambda: db.sql(
                    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = 'small_id_idx' AND i.indisvalid") == "1",
                    timeout_s=TAKEOVER_BOUND_S, what="the other replica to build a new index")
            finally:
                os.kill(holder.proc.pid, signal.SIGCONT)
        finally:
            db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-writer'")
            writer.wait()
        _ready(daemons)
        for d in daemons:
            assert d.stop() == 0, d.log()
    assert "[index_build_started] building small_id_idx" in other.log()
    return {"lease_s": lease_s, "index_lock_lost_s": took}


def test_frozen_index_builder_fast(database: Database, tmp_path: Path) -> None:
    figures = frozen_index_builder(database, tmp_path, lease_s=2.0)
    record("frozen_index_builder_lease_2s", _rounded(figures))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_without_a_lease_a_frozen_holder_keeps_the_lock(database: Database, tmp_path: Path) -> None:
    """Why the lease exists: a stopped process's kernel still answers TCP keepalives and its
    socket stays open, so neither keepalives nor client_connection_check_interval ever end
    its session. With the lease off, the frozen holder still holds the lock well past the
    keepalive bound (idle + interval × count) plus the connection check."""
    from schemad import config

    s = config.load()
    bound = s.keepalives_idle_s + s.keepalives_interval_s * s.keepalives_count + s.connection_check_interval_s
    work = _setup(tmp_path)
    with contextlib.ExitStack() as stack:
        daemons = spawn_daemons(stack, database.dsn, work, 2, extra_env={"SCHEMAD_LOCK_LEASE_S": "0"})
        holder, _other = _holder_and_other(database, daemons)
        database.sql("UPDATE ctl SET sleep_s = 0")
        holder_lock = (
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:lock:%:{holder.proc.pid}'"
        )
        os.kill(holder.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(AssertionError, match="timed out"):
                poll(lambda: database.sql(holder_lock) == "0", timeout_s=bound + 10, what="the lock session to end",
                     interval_s=0.5)
            assert database.sql("SELECT count(*) FROM schemad.migrations") == "1", "nobody else could apply"
        finally:
            os.kill(holder.proc.pid, signal.SIGCONT)
    record("frozen_holder_without_lease", {"observed_s": bound + 10, "lock_still_held": True})
