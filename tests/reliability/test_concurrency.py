"""Promise 2 — each migration is applied exactly once: 10 `schemad migrate` processes, and
separately 5 `schemad run` daemons (also building the registry's indexes), start together
on a fresh database per trial. Every migration lands exactly once (the corpus appends one
`apply_log` row per transactional migration, and the probes demand exactly one), nothing
deadlocks (no 40P01 in any output, log or event), and every process finishes in a bound.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.e2e.daemons import Daemon, wait_for
from tests.reliability import corpus
from tests.reliability.support import (
    FAST_POLL,
    clean_env,
    consistency,
    fresh_database,
    migrate_cmd,
    percentile,
    record,
    spawn_daemons,
)

if TYPE_CHECKING:
    from pathlib import Path

    from schemad import pgcluster
    from tests.conftest import Database

PROCESS_BOUND_S = 60.0
DAEMON_READY_BOUND_S = 45.0
DAEMON_STOP_BOUND_S = 20.0
INDEXES = {
    "t2.sql": "-- schemad:critical\nCREATE INDEX corpus_t2_label_idx ON corpus.t2 (label);\n",
    "bulk.sql": "CREATE UNIQUE INDEX corpus_bulk8_id_key ON corpus.bulk8 (id);\n"
                "CREATE INDEX \"corpus bulk h; --\" ON corpus.bulk16 (h);\n",
}
INDEX_NAMES = ("corpus_t2_label_idx", "corpus_bulk8_id_key", "corpus bulk h; --")


def _folders(tmp_path: Path, *, indexes: bool) -> tuple[Path, Path]:
    mdir, idir = tmp_path / "migrations", tmp_path / "indexes"
    corpus.write(mdir, corpus.build())
    idir.mkdir()
    if indexes:
        for name, text in INDEXES.items():
            (idir / name).write_text(text)
    return mdir, idir


def _exactly_once(db: Database) -> int:
    """Fails unless every migration landed exactly once; returns the deadlocks on record."""
    problems, recorded = consistency(db, corpus.build())
    assert problems == [] and len(recorded) == corpus.SIZE, problems
    # The apply log holds one row per transactional migration, and no other.
    transactional = corpus.SIZE - len(corpus.NO_TRANSACTION)
    assert db.sql("SELECT count(*), count(DISTINCT version) FROM corpus.apply_log") == f"{transactional}|{transactional}"
    assert db.sql("SELECT count(*) FROM schemad.events WHERE kind = 'migration' AND outcome = 'applied'") == "60"
    return int(db.sql("SELECT count(*) FROM schemad.events WHERE sqlstate = '40P01'"))


# --------------------------------------------------------------------------- processes


def processes(cluster: pgcluster.Cluster, tmp_path: Path, *, trials: int, n: int = 10) -> None:
    mdir, idir = _folders(tmp_path, indexes=False)
    env = clean_env(**FAST_POLL)
    slowest: list[float] = []
    appliers: list[int] = []
    retries = deadlocks = exactly_once = 0
    for _ in range(trials):
        with fresh_database(cluster, "conc") as db:
            started = time.monotonic()
            procs = [
                subprocess.Popen(migrate_cmd(db.dsn, mdir, idir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
                for _ in range(n)
            ]
            finished: list[tuple[int, str, str, float]] = []
            for p in procs:
                remaining = max(0.1, PROCESS_BOUND_S - (time.monotonic() - started))
                out, err = p.communicate(timeout=remaining)  # raises (stuck) past the bound
                finished.append((p.returncode, out, err, time.monotonic() - started))
            assert [rc for rc, *_ in finished] == [0] * n, [e for _, _, e, _ in finished]
            deadlocks += sum((out + err).count("40P01") for _, out, err, _ in finished)
            applied_lines = [ln for _, out, _, _ in finished for ln in out.splitlines() if ln.startswith("applied ")]
            assert len(applied_lines) == corpus.SIZE, "each migration reported applied by exactly one process"
            appliers.append(sum(1 for _, out, _, _ in finished if "applied " in out))
            slowest.append(max(t for *_, t in finished))
            deadlocks += _exactly_once(db)
            exactly_once += 1
            retries += int(db.sql("SELECT count(*) FROM schemad.events WHERE outcome = 'retry'"))
    record(f"concurrency_processes_{trials}", {
        "trials": trials, "processes_per_trial": n, "migrations": corpus.SIZE,
        "applied_exactly_once_trials": exactly_once, "deadlocks": deadlocks, "retries": retries,
        "appliers_per_trial": sorted(set(appliers)),
        "slowest_process_s": {"p50": round(percentile(slowest, 0.5), 2), "max": round(max(slowest), 2)},
        "bound_s": PROCESS_BOUND_S,
    })
    assert deadlocks == 0


def test_ten_processes_fast(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    processes(pg_cluster, tmp_path, trials=2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ten_processes_twenty_trials(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    processes(pg_cluster, tmp_path, trials=20)


# --------------------------------------------------------------------------- daemons


def _ready_or_exited(d: Daemon) -> bool:
    return d.get("/readyz")[0] == 200 or d.proc.poll() is not None


def _indexes_valid(db: Database) -> bool:
    names = ", ".join("'" + n.replace("'", "''") + "'" for n in INDEX_NAMES)
    return db.sql(
        f"SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        f"WHERE c.relname IN ({names}) AND i.indisvalid"
    ) == str(len(INDEX_NAMES))


def daemons(cluster: pgcluster.Cluster, tmp_path: Path, *, trials: int, n: int = 5) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _folders(work, indexes=True)
    ready_s: list[float] = []
    stop_s: list[float] = []
    applied_by: list[int] = []
    deadlocks = exactly_once = 0
    for trial in range(trials):
        with fresh_database(cluster, "dmn") as db, contextlib.ExitStack() as stack:
            started = time.monotonic()
            ds = spawn_daemons(stack, db.dsn, work, n)
            for d in ds:
                wait_for(functools.partial(_ready_or_exited, d), timeout_s=DAEMON_READY_BOUND_S,
                         what=f"daemon :{d.port} ready")
                assert d.proc.poll() is None, d.log()
            ready_s.append(time.monotonic() - started)
            wait_for(lambda: _indexes_valid(db), timeout_s=DAEMON_READY_BOUND_S, what="the registry's indexes")
            deadlocks += _exactly_once(db)
            exactly_once += 1
            counts = [d.sample("schemad_migrations_applied_total") or 0.0 for d in ds]
            assert sum(counts) == corpus.SIZE, counts
            applied_by.append(sum(1 for c in counts if c))
            built = db.sql(
                "SELECT subject, count(*) FROM schemad.events WHERE kind = 'index' AND outcome = 'built' "
                "GROUP BY subject ORDER BY 1"
            )
            assert sorted(built.splitlines()) == sorted(f"{name}|1" for name in INDEX_NAMES), built
            for d in ds:
                status = json.loads(d.get("/status")[1])
                assert status["schema_version"] == corpus.SIZE and status["up_to_date"] is True
            stopping = time.monotonic()
            for d in ds:
                d.signal(15)
            for d in ds:
                assert d.proc.wait(timeout=DAEMON_STOP_BOUND_S) == 0, d.log()
            stop_s.append(time.monotonic() - stopping)
            logs = "".join(d.log() for d in ds)
            deadlocks += logs.count("40P01")
            assert "Traceback" not in logs, f"trial {trial}: {logs[-3000:]}"
    record(f"concurrency_daemons_{trials}", {
        "trials": trials, "daemons_per_trial": n, "migrations": corpus.SIZE, "indexes": len(INDEX_NAMES),
        "applied_exactly_once_trials": exactly_once, "deadlocks": deadlocks,
        "daemons_that_applied_per_trial": sorted(set(applied_by)),
        "all_ready_s": {"p50": round(percentile(ready_s, 0.5), 2), "max": round(max(ready_s), 2)},
        "all_stopped_s": {"p50": round(percentile(stop_s, 0.5), 2), "max": round(max(stop_s), 2)},
        "bounds_s": {"ready": DAEMON_READY_BOUND_S, "stop": DAEMON_STOP_BOUND_S},
    })
    assert deadlocks == 0


def test_five_daemons_fast(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    daemons(pg_cluster, tmp_path, trials=2)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_five_daemons_twenty_trials(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    daemons(pg_cluster, tmp_path, trials=20)
