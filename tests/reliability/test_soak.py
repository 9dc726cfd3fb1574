"""Promise 7 — no leaks over time: one daemon (`--watch`) runs while a new migration arrives
every few seconds and, every fifth one, a registry index on the table it made (with rows,
so the concurrent build does real work). Sampled once a second from /proc and
pg_stat_activity: resident memory, threads, open file descriptors, and the daemon's
sessions. After a warm-up (every code path has run once), memory must grow less than 10 %
and sessions, threads and descriptors must not grow at all: a cycle's own connection may be
caught open by a sample, so what is compared is the floor over a window (what stays open
between cycles), which any leak would raise.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from tests.reliability.support import fds, poll, record, rss_kib, spawn_daemons, threads

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Database
    from tests.e2e.daemons import Daemon

ARRIVAL_S = 3.0
INDEX_EVERY = 5
SAMPLE_S = 1.0


@dataclass
class Sample:
    at_s: float
    rss_kib: int
    threads: int
    fds: int
    sessions: int


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    migrations: int = 0
    indexes: int = 0


def _sessions(db: Database, pid: int) -> int:
    return int(db.sql(
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:%:{pid}'"
    ))


def _arrive(work: Path, n: int) -> bool:
    """Migration n (a table with rows); every fifth also an index on it. True if an index came."""
    (work / "migrations" / f"{n:04d}_soak_{n}.sql").write_text(
        "-- schemad:allow=data-change rows for the index build to read\n"
        f"CREATE TABLE soak_{n} (id int, v text);\n"
        f"INSERT INTO soak_{n} SELECT g, md5(g::text) FROM generate_series(1, 20000) g;\n"
    )
    if n % INDEX_EVERY:
        return False
    (work / "indexes" / f"soak_{n}.sql").write_text(f"CREATE INDEX soak_{n}_v_idx ON soak_{n} (v);\n")
    return True


def _caught_up(d: Daemon, db: Database, n: int, indexes: int) -> bool:
    code, body = d.get("/status")
    if code != 200 or json.loads(body).get("schema_version") != n:
        return False
    return db.sql(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname LIKE 'soak\\_%\\_v\\_idx' AND i.indisvalid"
    ) == str(indexes)


def soak(db: Database, tmp_path: Path, duration_s: float) -> dict[str, object]:
    work = tmp_path / "work"
    (work / "migrations").mkdir(parents=True)
    (work / "indexes").mkdir()
    out = Soak()
    out.migrations = 1
    _arrive(work, 1)
    with contextlib.ExitStack() as stack:
        (d,) = spawn_daemons(stack, db.dsn, work, 1, args=("--watch",),
                             extra_env={"SCHEMAD_RECONCILE_INTERVAL_S": "10"})
        pid = d.proc.pid
        started = time.monotonic()
        next_arrival = started + ARRIVAL_S
        next_sample = started
        while time.monotonic() - started < duration_s:
            now = time.monotonic()
            if now >= next_arrival:
                out.migrations += 1
                out.indexes += _arrive(work, out.migrations)
                next_arrival += ARRIVAL_S
            if now >= next_sample:
                assert d.proc.poll() is None, d.log()[-3000:]
                d.get("/metrics")  # scraped like Prometheus would
                out.samples.append(Sample(now - started, rss_kib(pid), threads(pid), fds(pid), _sessions(db, pid)))
                next_sample += SAMPLE_S
            time.sleep(max(0.0, min(next_arrival, next_sample) - time.monotonic()))  # pacing the load, not a sync
        poll(lambda: _caught_up(d, db, out.migrations, out.indexes), timeout_s=60,
             what="the daemon to apply and build everything that arrived")
        log = d.log()
        assert d.stop() == 0, log[-3000:]
    assert "Traceback" not in log and "cycle_failed" not in log, log[-3000:]
    return summarize(out, duration_s)


def summarize(out: Soak, duration_s: float) -> dict[str, object]:
    window = max(5.0, duration_s * 0.1)
    warm_end = max(10.0, duration_s * 0.2)
    warm = [s for s in out.samples if warm_end - window <= s.at_s <= warm_end]
    tail = [s for s in out.samples if s.at_s >= duration_s - window]
    assert len(warm) >= 3 and len(tail) >= 3, "too few samples"
    rss_warm = statistics.median(s.rss_kib for s in warm)
    rss_end = statistics.median(s.rss_kib for s in tail)
    growth = (rss_end - rss_warm) / rss_warm

    def span(name: str) -> dict[str, int]:
        values = {k: [getattr(s, name) for s in part] for k, part in (("warm", warm), ("end", tail))}
        return {"warm_floor": min(values["warm"]), "end_floor": min(values["end"]),
                "max": max(getattr(s, name) for s in out.samples)}

    figures: dict[str, object] = {
        "duration_s": duration_s, "samples": len(out.samples), "migrations": out.migrations,
        "indexes": out.indexes,
        "rss_mib": {"warm": round(rss_warm / 1024, 1), "end": round(rss_end / 1024, 1),
                    "max": round(max(s.rss_kib for s in out.samples) / 1024, 1)},
        "rss_growth_pct": round(growth * 100, 2),
        "sessions": span("sessions"), "threads": span("threads"), "fds": span("fds"),
    }
    assert growth < 0.10, figures
    for name in ("sessions", "threads", "fds"):
        s = span(name)
        assert s["end_floor"] <= s["warm_floor"], (name, figures)
    return figures


def test_soak_fast(database: Database, tmp_path: Path) -> None:
    record("soak_30s", soak(database, tmp_path, 30.0))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_ten_minutes(database: Database, tmp_path: Path) -> None:
    record("soak_600s", soak(database, tmp_path, 600.0))
