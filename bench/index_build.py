"""Build time of one index on a large table: plain CREATE INDEX vs CREATE INDEX CONCURRENTLY
vs `schemad build-indexes` (the reconciler, in-process), side by side on the same table.

    python bench/index_build.py [--rows 5000000] [--rounds 3] [--dsn postgresql://...]

Without --dsn a throwaway cluster is started from the local PostgreSQL binaries
(schemad.pgcluster, fsync off). The three builds alternate within each round so that
cache state and background noise hit them alike; the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from schemad import config, index_builder, indexes, pgcluster

TABLE = """
DROP TABLE IF EXISTS bench_t;
CREATE TABLE bench_t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int NOT NULL, b int NOT NULL);
INSERT INTO bench_t (a, b) SELECT ((g::bigint * 7919) % 1000003)::int, g % 1000 FROM generate_series(1, {rows}) g;
"""
INDEX = "CREATE INDEX bench_a_idx ON bench_t (a);\n"


async def timed(conn: asyncpg.Connection, sql: str) -> float:
    started = time.perf_counter()
    await conn.execute(sql)
    return time.perf_counter() - started


async def run(dsn: str, rows: int, rounds: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute(TABLE.format(rows=rows))
        await conn.execute("VACUUM ANALYZE bench_t")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_table_size('bench_t'))")
        print(f"table bench_t: {rows:,} rows in {time.perf_counter() - started:.1f}s ({size})")
        version = await conn.fetchval("SHOW server_version")
        mwm = await conn.fetchval("SHOW maintenance_work_mem")
        workers = await conn.fetchval("SHOW max_parallel_maintenance_workers")
        print(f"PostgreSQL {version}, maintenance_work_mem={mwm}, max_parallel_maintenance_workers={workers}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "indexes"
            folder.mkdir()
            (folder / "bench.sql").write_text(INDEX, encoding="utf-8")
            specs, findings = indexes.discover(folder)
            assert not findings, findings
            given: dict[str, Any] = {"dsn": dsn, "indexes_dir": folder, "migrations_dir": Path(tmp) / "migrations"}
            settings = config.Settings(**given)
            await conn.execute("SELECT count(*) FROM bench_t")  # warm the cache
            results: dict[str, list[float]] = {"CREATE INDEX": [], "CREATE INDEX CONCURRENTLY": [],
                                               "schemad (whole run)": [], "schemad (the CIC statement)": []}
            for i in range(rounds):
                results["CREATE INDEX"].append(await timed(conn, "CREATE INDEX bench_a_idx ON bench_t (a)"))
                await conn.execute("DROP INDEX bench_a_idx")
                results["CREATE INDEX CONCURRENTLY"].append(
                    await timed(conn, "CREATE INDEX CONCURRENTLY bench_a_idx ON bench_t (a)")
                )
                await conn.execute("DROP INDEX bench_a_idx")
                started = time.perf_counter()
                report = await index_builder.reconcile(settings, specs)
                results["schemad (whole run)"].append(time.perf_counter() - started)
                assert report.all_ready, report
                stmt = await conn.fetchval(
                    "SELECT duration_s FROM schemad.events WHERE kind = 'index' AND outcome = 'built' "
                    "ORDER BY id DESC LIMIT 1"
                )
                results["schemad (the CIC statement)"].append(float(stmt))
                await conn.execute("DROP INDEX bench_a_idx")
                print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()))
        base = statistics.median(results["CREATE INDEX"])
        print(f"\nmedian of {rounds} rounds, index on bench_t (a), {rows:,} rows:")
        for name, values in results.items():
            med = statistics.median(values)
            print(f"  {name:<30} {med:7.2f}s  ({med / base:4.2f}x plain)")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="an existing database (default: a throwaway cluster)")
    args = parser.parse_args()
    if args.dsn:
        anyio.run(run, args.dsn, args.rows, args.rounds, backend="asyncio")
        return
    cluster = pgcluster.create()
    try:
        anyio.run(run, cluster.dsn(), args.rows, args.rounds, backend="asyncio")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
