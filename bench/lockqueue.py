"""Lock-queue safety: a long transaction holds a lock on a hot table while a migration
ALTERs it and a client keeps reading it.

An ``ALTER TABLE`` waits for its ACCESS EXCLUSIVE lock behind the long transaction, and
every later reader queues behind the ALTER: with plain ``psql`` the readers stall for the
whole hold. schemad's ``lock_timeout`` (default 2 s, raised gently on retries) gives up,
lets the queue drain, backs off and tries again, so a reader waits at most one attempt.

Per round and per tool, in a fresh database: the blocker opens ``BEGIN; SELECT ... FROM
hot`` and holds it ``hold_s``; one second later the migration starts; a client queries
``hot`` every 20 ms from before the blocker until the migration is done. Reported: the
client's worst latency, and when the migration finished.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.common import Bench, Series, schemad_argv, schemad_env

if TYPE_CHECKING:
    from pathlib import Path

SETUP = """
CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO hot SELECT g, g FROM generate_series(1, 10000) g;
"""
ALTER = "ALTER TABLE hot ADD COLUMN note text"
CLIENT_EVERY_S = 0.02


async def _client(dsn: str, stop: asyncio.Event, latencies: list[tuple[float, float]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.perf_counter()
            await conn.fetchval("SELECT v FROM hot WHERE id = $1", i % 10000 + 1)
            latencies.append((started, time.perf_counter() - started))
            await asyncio.sleep(CLIENT_EVERY_S)
    finally:
        await conn.close()


async def _blocker(dsn: str, hold_s: float, holding: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT count(*) FROM hot")  # ACCESS SHARE, held until COMMIT
        holding.set()
        await asyncio.sleep(hold_s)
        await conn.execute("COMMIT")
    finally:
        await conn.close()


async def _round(dsn: str, hold_s: float, argv: list[str], env: dict[str, str] | None, log: Path) -> dict[str, float]:
    stop = asyncio.Event()
    holding = asyncio.Event()
    latencies: list[tuple[float, float]] = []
    client = asyncio.create_task(_client(dsn, stop, latencies))
    await asyncio.sleep(0.5)
    blocker = asyncio.create_task(_blocker(dsn, hold_s, holding))
    await holding.wait()
    blocked_at = time.perf_counter()
    await asyncio.sleep(1.0)
    with log.open("ab") as out:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        await proc.wait()
        done = time.perf_counter()
    await blocker
    stop.set()
    await client
    if proc.returncode != 0:
        raise RuntimeError(f"the migration exited {proc.returncode}")
    during = [lat for t, lat in latencies if started - 0.1 <= t <= done]
    return {
        "worst_client_latency_s": max(during, default=0.0),
        "migration_done_after_s": done - started,
        "blocker_held_s": hold_s,
        "client_queries": len(during),
        "blocked_at": blocked_at,
    }


def run(b: Bench, runs: int, hold_s: float) -> dict[str, Any]:
    logs = b.dir("logs")
    mig = b.dir("lockq/migrations")
    idx = b.dir("lockq/indexes")
    (mig / "0001_add_note.sql").write_text(f"{ALTER};\n", encoding="utf-8")
    cache = b.dir("lockq/cache")
    out: dict[str, Series] = {
        "psql (no lock_timeout)": Series("psql: worst client latency"),
        "schemad migrate (lock_timeout 2 s)": Series("schemad: worst client latency"),
    }
    done: dict[str, Series] = {k: Series(k + ": migration done after") for k in out}
    retries = Series("schemad: lock_timeout retries", unit="count")
    for _ in range(runs):
        for name, worst in out.items():
            db = b.fresh_db("lockq")
            b.sql(SETUP, db)
            dsn = b.cluster.dsn(db)
            if name.startswith("psql"):
                argv, env = [b.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", ALTER, dsn], None
            else:
                argv, env = [*schemad_argv(), "migrate"], schemad_env(dsn, mig, idx, cache)
            got = asyncio.run(_round(dsn, hold_s, argv, env, logs / "lockq.log"))
            worst.values.append(got["worst_client_latency_s"])
            done[name].values.append(got["migration_done_after_s"])
            if name.startswith("schemad"):
                retries.values.append(float(b.sql(
                    "SELECT count(*) FROM schemad.events WHERE outcome = 'retry' AND sqlstate = '55P03'", db)))
            b.drop_db(db)
        print(f"  lock queue: worst client latency psql {out['psql (no lock_timeout)'].values[-1]:.2f}s, "
              f"schemad {out['schemad migrate (lock_timeout 2 s)'].values[-1]:.2f}s", flush=True)
    return {"worst": out, "done": done, "retries": retries, "hold_s": hold_s}
