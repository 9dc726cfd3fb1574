"""Failover: two `schemad run` replicas start together on an empty database with N
migrations pending; one takes the lock and applies; it is SIGKILLed mid-run. Reported:
the time from the kill until the other replica has committed its first migration (the
next one after the last the killed replica committed), with default settings.

The killed replica's sockets close with it: its idle lock session ends at once (which frees
the advisory lock and its fencing token), its migration in flight is rolled back (its
final fence fails, or its session ends). The waiting replica re-polls the lock every
0.5 s after finding it busy (`lock_wait_s` 0 in the daemon).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import asyncpg

from bench.common import Bench, NotifySocket, Series, schemad_argv, schemad_env, stop
from schemad import lock

if TYPE_CHECKING:
    from bench.apply import Corpus

HOLDER_PID = """
SELECT split_part(a.application_name, ':', 4)::int
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.objsubid = 1
"""


async def _watch(
    dsn: str, db: str, procs: dict[int, subprocess.Popen[bytes]], kill_after: int, n: int
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    key = lock.key_halves(lock.lock_key(db, "migrations"))
    try:
        async def count() -> int:
            exists = await conn.fetchval("SELECT to_regclass('schemad.migrations') IS NOT NULL")
            return int(await conn.fetchval("SELECT count(*) FROM schemad.migrations")) if exists else 0

        deadline = time.monotonic() + 120
        while await count() < kill_after:
            if time.monotonic() > deadline:
                raise TimeoutError("no replica got going")
            await asyncio.sleep(0.005)
        victim = await conn.fetchval(HOLDER_PID, *key)
        if victim not in procs:
            raise RuntimeError(f"the lock holder {victim} is not one of ours {list(procs)}")
        survivor = next(p for p in procs if p != victim)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.perf_counter()
        committed_by_victim = await count()
        lock_taken = first_commit = None
        while first_commit is None:
            if time.perf_counter() - killed_at > 60:
                raise TimeoutError("the survivor did not take over within 60 s")
            if lock_taken is None and await conn.fetchval(HOLDER_PID, *key) == survivor:
                lock_taken = time.perf_counter()
            if await conn.fetchval("SELECT count(*) FROM schemad.migrations WHERE applied_by_pid = $1", survivor):
                first_commit = time.perf_counter()
            await asyncio.sleep(0.002)
        while await count() < n:
            if time.perf_counter() - killed_at > 120:
                raise TimeoutError("the survivor did not finish")
            await asyncio.sleep(0.05)
        twice = await conn.fetchval("SELECT count(*) - count(DISTINCT version) FROM schemad.migrations")
        return {
            "failover_s": first_commit - killed_at,
            "lock_taken_after_s": (lock_taken or first_commit) - killed_at,
            "killed_after_commits": committed_by_victim, "applied_twice": int(twice), "survivor": survivor,
        }
    finally:
        await conn.close()


def run(b: Bench, c: Corpus, runs: int) -> dict[str, Any]:
    logs = b.dir("logs")
    cache = b.dir(f"cache-warm-{c.n}")
    failover = Series("SIGKILL of the applier → the other replica's first commit")
    lock_taken = Series("SIGKILL → the other replica holds the lock")
    details = []
    for _ in range(runs):
        db = b.fresh_db("failover")
        procs: dict[int, subprocess.Popen[bytes]] = {}
        sockets = []
        try:
            for _i in range(2):
                notify = NotifySocket(b.scratch)
                sockets.append(notify)
                env = schemad_env(b.cluster.dsn(db), c.migrations, c.indexes, cache, NOTIFY_SOCKET=str(notify.path))
                with (logs / "failover.log").open("ab") as log:
                    p = subprocess.Popen([*schemad_argv(), "run", "--metrics-addr", "127.0.0.1:0"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
                procs[p.pid] = p
            got = asyncio.run(_watch(b.cluster.dsn(db), db, procs, kill_after=c.n // 4, n=c.n))
        finally:
            for p in procs.values():
                stop(p)
            for s in sockets:
                s.close()
        failover.values.append(got["failover_s"])
        lock_taken.values.append(got["lock_taken_after_s"])
        details.append(got)
        print(f"  failover: {got['failover_s']:.3f}s (lock after {got['lock_taken_after_s']:.3f}s), "
              f"killed after {got['killed_after_commits']} commits, applied twice: {got['applied_twice']}", flush=True)
        b.drop_db(db)
    return {"failover": failover, "lock_taken": lock_taken, "details": details}
