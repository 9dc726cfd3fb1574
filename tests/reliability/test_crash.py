"""Promise 1 — nothing partial is ever recorded: `python -m schemad migrate` is SIGKILLed at
random moments (seeded) while it applies the 60-migration corpus; after every kill the
catalog and the ledger agree (every recorded migration complete, every unrecorded
transactional one absent), and a rerun converges on exactly the schema of a clean run.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_schemad
from tests.reliability import corpus
from tests.reliability.support import (
    clean_env,
    consistency,
    fresh_database,
    ledger,
    migrate_cmd,
    probe,
    record,
    run_migrate,
    wait_sessions_gone,
)

if TYPE_CHECKING:
    from pathlib import Path

    from schemad import pgcluster

SEED = 20261124


@dataclass
class Window:
    """When, measured from process start, a clean run holds the lock and when it exits."""

    lock_s: float
    end_s: float
    dump: str
    ledger: str


@dataclass
class Campaign:
    landed: int = 0
    finished_first: int = 0
    trials: int = 0
    progress: list[int] = field(default_factory=list)  # ledger rows right after each kill
    half_done_no_transaction: int = 0
    problems: list[str] = field(default_factory=list)  # catalog/ledger disagreements found
    dump_mismatches: int = 0


def _ts(line: str) -> float:
    stamp = json.loads(line)["ts"]
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def calibrate(cluster: pgcluster.Cluster, mdir: Path, idir: Path) -> Window:
    with fresh_database(cluster, "clean") as ref:
        started = time.time()
        res = run_migrate(ref.dsn, mdir, idir, "--log-format", "json")
        ended = time.time()
        assert res.returncode == 0, res.stderr
        lock_at = next(_ts(ln) for ln in res.stderr.splitlines() if '"lock_acquired"' in ln)
        return Window(lock_at - started, ended - started, ref.schema_dump(), ledger(ref))


def campaign(cluster: pgcluster.Cluster, tmp_path: Path, *, kills: int, seed: int, per_trial: int = 2) -> Campaign:
    mdir, idir = tmp_path / "migrations", tmp_path / "indexes"
    migrations = corpus.build()
    corpus.write(mdir, migrations)
    idir.mkdir()
    window = calibrate(cluster, mdir, idir)
    rng = random.Random(seed)
    env = clean_env(SCHEMAD_CONNECTION_CHECK_INTERVAL_S="0.2")
    out = Campaign()
    started = time.monotonic()
    while out.landed < kills:
        out.trials += 1
        assert out.trials <= 4 * kills, f"only {out.landed} of {kills} kills landed in {out.trials - 1} trials"
        with fresh_database(cluster, "crash") as db:
            for run in range(per_trial):
                delay = rng.uniform(window.lock_s, window.end_s)
                launched = time.monotonic()
                proc = subprocess.Popen(
                    migrate_cmd(db.dsn, mdir, idir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                )
                try:
                    rc = proc.wait(timeout=delay)  # the injected fault's timing, not a synchronisation
                    assert rc == 0, f"an undisturbed run failed with {rc}"
                    out.finished_first += 1
                    if run == 0:  # a whole apply ran faster than calibrated (the machine got quieter)
                        took = time.monotonic() - launched
                        window.lock_s *= took / window.end_s
                        window.end_s = took
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    out.landed += 1
                wait_sessions_gone(db, proc.pid)
                problems, recorded = consistency(db, migrations)
                out.problems += [f"trial {out.trials}, after {delay:.3f}s: {p}" for p in problems]
                out.progress.append(len(recorded))
                rows = probe(db, migrations)
                for m in migrations:
                    present, total = rows[m.version]
                    if not m.transactional and m.version not in recorded and 0 < present < total:
                        out.half_done_no_transaction += 1
            rerun = run_migrate(db.dsn, mdir, idir)
            assert rerun.returncode == 0, rerun.stderr
            problems, recorded = consistency(db, migrations)
            out.problems += [f"trial {out.trials}, after the rerun: {p}" for p in problems]
            assert len(recorded) == corpus.SIZE, problems
            out.dump_mismatches += db.schema_dump() != window.dump
            assert ledger(db) == window.ledger
            if out.landed >= kills:
                verify = run_schemad(
                    "verify", "--dsn", db.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir)
                )
                assert verify.returncode == 0, verify.stdout + verify.stderr
    record(f"crash_{kills}", {
        "seed": seed, "kills": out.landed, "finished_before_kill": out.finished_first, "trials": out.trials,
        "window_s": [round(window.lock_s, 3), round(window.end_s, 3)],
        "ledger_rows_at_kill": {"min": min(out.progress), "max": max(out.progress),
                                "distinct": len(set(out.progress))},
        "kills_mid_apply": sum(1 for p in out.progress if 0 < p < corpus.SIZE),
        "half_done_no_transaction_seen": out.half_done_no_transaction,
        "partially_applied": len(out.problems), "dump_mismatches": out.dump_mismatches,
        "elapsed_s": round(time.monotonic() - started, 1),
    })
    assert out.problems == []
    assert out.dump_mismatches == 0
    return out


def test_crash_injection_fast(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    out = campaign(pg_cluster, tmp_path, kills=5, seed=SEED)
    assert out.landed >= 5  # a trial has two runs: the last trial may land one kill more


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_crash_injection_full(pg_cluster: pgcluster.Cluster, tmp_path: Path) -> None:
    out = campaign(pg_cluster, tmp_path, kills=50, seed=SEED + 1)
    assert out.landed >= 50
    assert sum(1 for p in out.progress if 0 < p < corpus.SIZE) >= 25, "most kills land mid-apply"


def test_the_checker_sees_partial_states() -> None:
    """The consistency check itself: each disagreement between ledger and probes is named."""
    migrations = corpus.build()
    full = {m.version: (len(m.probes), len(m.probes)) for m in migrations}
    none = {m.version: (0, len(m.probes)) for m in migrations}
    everything = {m.version for m in migrations}
    assert corpus.partial_problems(migrations, full, everything) == []
    assert corpus.partial_problems(migrations, none, set()) == []
    notx = min(corpus.NO_TRANSACTION)
    before = set(range(1, notx))
    half = {**none, **{v: full[v] for v in before}, notx: (2, full[notx][1])}
    assert corpus.partial_problems(migrations, half, before) == [], "a half-done no-transaction file is allowed"
    broken = {**half, 5: (1, full[5][1])}
    assert corpus.partial_problems(migrations, broken, before) == [
        f"{migrations[4].name} is recorded but only 1/{full[5][1]} of its probes hold"
    ]
    leaked = {**half, notx + 1: (1, full[notx + 1][1])}
    assert corpus.partial_problems(migrations, leaked, before) == [
        f"{migrations[notx].name} is not recorded but 1/{full[notx + 1][1]} of its probes hold"
    ]
    assert corpus.partial_problems(migrations, full, everything - {3}) == [
        f"{migrations[2].name} is not recorded but {full[3][0]}/{full[3][1]} of its probes hold",
        f"versions {list(range(4, 61))} are recorded after the unrecorded 3",
    ]
