"""The server's side of an apply: the corpus's batched messages replayed on one connection.

    python -m bench.replay [--n 1000] [--runs 7]

Renders the N-migration corpus with schemad's own `Executor.render` (batches of up to 200
migrations, one message each), then, per round and in a rotating order, replays each variant
on a fresh database (ledger created, a second session holding the fencing token) and
reports the wall time of the messages and the backend's CPU time, next to the floor
(`psql --single-transaction -f all.sql`) measured in the same rounds:

* ``functions``: what schemad sends (session-local ``schemad_begin`` / ``schemad_record``);
* ``sql``: the fallback without the TEMPORARY privilege (``set_config``, DO-block fences,
  INSERTs of the ledger row and the event), which was schemad's message before;
* ``bare``: each migration's statements in BEGIN/COMMIT, nothing else (no timeouts, fences,
  ledger or events): what a transaction per migration costs, batched.

No client start-up, no parsing: this isolates what the batch costs the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncpg

from bench import common, corpus
from bench.common import bench_cluster
from schemad import config, engine, executor, ledger, lock, queries, validation

TOKEN = 4242424242
VARIANTS = ("functions", "sql", "bare")


def _messages(folder: Path, functions: bool | None) -> list[str]:
    """The batch messages schemad sends for ``folder`` (None: the bare transactions)."""
    settings = config.load(flags={"migrations_dir": folder, "indexes_dir": folder.parent / "indexes"})
    pending = list(validation.validate(settings.migrations_dir, settings.indexes_dir).migrations)
    if functions is None:
        return [
            "\n;\n".join(part for m in batch for part in ("BEGIN", *(st.text for st in m.statements), "COMMIT"))
            for batch in _batches(pending)
        ]
    lk = lock.AdvisoryLock.__new__(lock.AdvisoryLock)
    lk.token = TOKEN
    work = cast("Any", SimpleNamespace(server_version=150000))
    ex = executor.Executor(work, ledger.Ledger(settings.ledger_schema), lk, engine.executor_settings(settings))
    return [ex.message(batch, functions=functions) for batch in _batches(pending)]


def _batches(pending: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    while (start := sum(map(len, out))) < len(pending):
        out.append(executor.next_batch(pending, start))
    return out


def _backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _replay(dsn: str, messages: list[str], functions: bool) -> tuple[float, float]:
    holder = await asyncpg.connect(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({TOKEN})")
        for step in queries.LEDGER_STEPS:  # the ledger as `Ledger.ensure` leaves it (versions aside)
            await conn.execute(queries.ledger_sql(step, "schemad"))
        if functions:
            await conn.execute(queries.ledger_sql(queries.BATCH_FUNCTIONS, "schemad"))
        pid = conn.get_server_pid()
        cpu, started = _backend_cpu_s(pid), time.perf_counter()
        for message in messages:
            await conn.execute(message)
        return time.perf_counter() - started, _backend_cpu_s(pid) - cpu
    finally:
        await conn.close()
        await holder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pgdata", choices=("memory", "disk"), default="memory")
    args = parser.parse_args()
    common.PGDATA = args.pgdata
    with bench_cluster() as b, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "migrations"
        paths = corpus.write(folder, args.n)
        (Path(tmp) / "indexes").mkdir()
        all_sql = corpus.concatenate(paths, Path(tmp) / "all.sql")
        messages = {"functions": _messages(folder, True), "sql": _messages(folder, False), "bare": _messages(folder, None)}
        wall: dict[str, list[float]] = {k: [] for k in ("floor", *VARIANTS)}
        cpu: dict[str, list[float]] = {k: [] for k in VARIANTS}
        names = list(wall)
        for r in range(args.runs):
            for name in names[r % len(names):] + names[: r % len(names)]:
                db = b.fresh_db("replay")
                if name == "floor":
                    started = time.perf_counter()
                    subprocess.run([b.psql, "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
                                    "-f", str(all_sql), b.cluster.dsn(db)], check=True)
                    wall[name].append(time.perf_counter() - started)
                else:
                    w, c = asyncio.run(_replay(b.cluster.dsn(db), messages[name], name == "functions"))
                    wall[name].append(w)
                    cpu[name].append(c)
                b.drop_db(db)
            b.drop_pending()
    print(f"server side of applying N = {args.n} ({len(messages['sql'])} messages), median (min-max) of {args.runs}:")
    for name, values in wall.items():
        line = f"  {name:10s} wall {statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"
        if name in cpu:
            line += f", backend CPU {statistics.median(cpu[name]):.2f} s"
        print(line)


if __name__ == "__main__":
    main()
