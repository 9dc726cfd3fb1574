"""An index built under load: foreground throughput and p99 latency before and during
`schemad build-indexes` (CREATE INDEX CONCURRENTLY), and its build time against a plain
CREATE INDEX on an idle copy of the table.

The load is pgbench with a custom read/write script at a fixed rate (a steady load, not a
saturating one): each transaction reads one row by primary key and updates another column
of it. Latency is what a client arriving on schedule sees: pgbench's per-transaction time
plus its schedule lag. "During" is the window from the start to the end of the
build-indexes process.
"""

from __future__ import annotations

import glob
import subprocess
import time
from typing import TYPE_CHECKING, Any

from bench.common import Bench, percentile, schemad_argv, schemad_env

if TYPE_CHECKING:
    from pathlib import Path

TABLE = """
CREATE TABLE bench_t (id bigint PRIMARY KEY, a int NOT NULL, b int NOT NULL);
INSERT INTO bench_t SELECT g, ((g::bigint * 7919) % 1000003)::int, (g % 1000)::int FROM generate_series(1, {rows}) g;
"""
SCRIPT = """\\set id random(1, :rows)
BEGIN;
SELECT a, b FROM bench_t WHERE id = :id;
UPDATE bench_t SET b = b + 1 WHERE id = :id;
END;
"""
INDEX = "-- the registry's index on the loaded table\nCREATE INDEX bench_t_a_idx ON bench_t (a);\n"


def _pgbench(b: Bench, db: str, script: Path, prefix: Path, *, seconds: int, rate: int, rows: int,
             clients: int) -> subprocess.Popen[bytes]:
    argv = [b.pgbench, "-n", "-f", str(script), "-c", str(clients), "-j", "2", "-T", str(seconds), "-R", str(rate),
            "-l", f"--log-prefix={prefix}", "-D", f"rows={rows}",
            "-h", "127.0.0.1", "-p", str(b.cluster.port), "-U", "postgres", db]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _transactions(prefix: Path) -> list[tuple[float, float]]:
    """(end time as epoch seconds, latency incl. schedule lag in seconds) of every logged transaction."""
    out = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) < 6:
                    continue
                latency_us = int(f[2]) + (int(f[6]) if len(f) > 6 else 0)
                out.append((int(f[4]) + int(f[5]) / 1e6, latency_us / 1e6))
    return out


def _window(txs: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    lat = [lat for t, lat in txs if start <= t <= end]
    span = max(end - start, 1e-9)
    return {"tps": len(lat) / span, "p99_ms": percentile(lat, 99) * 1000, "p50_ms": percentile(lat, 50) * 1000,
            "max_ms": max(lat, default=0.0) * 1000, "transactions": len(lat), "seconds": span}


def _timed_sql(b: Bench, sql: str, db: str) -> float:
    started = time.perf_counter()
    b.sql(sql, db)
    return time.perf_counter() - started


def run(b: Bench, *, rows: int, rate: int, before_s: int, clients: int = 4) -> dict[str, Any]:
    logs = b.dir("logs")
    work = b.dir("index")
    db = b.fresh_db("idxload")
    started = time.perf_counter()
    b.sql(TABLE.format(rows=rows), db)
    b.sql("CREATE TABLE bench_copy AS TABLE bench_t", db)
    b.sql("VACUUM ANALYZE bench_t", db)
    b.sql("VACUUM ANALYZE bench_copy", db)
    setup_s = time.perf_counter() - started
    size = b.sql("SELECT pg_size_pretty(pg_table_size('bench_t'))", db)
    print(f"  index: {rows:,} rows ({size}) set up in {setup_s:.1f}s", flush=True)
    b.sql("SELECT count(*) FROM bench_copy", db)  # warm
    plain_s = _timed_sql(b, "CREATE INDEX bench_copy_a_idx ON bench_copy (a)", db)
    b.sql("DROP INDEX bench_copy_a_idx", db)
    cic_idle_s = _timed_sql(b, "CREATE INDEX CONCURRENTLY bench_copy_a_idx ON bench_copy (a)", db)
    print(f"  index: idle copy: CREATE INDEX {plain_s:.2f}s, CONCURRENTLY {cic_idle_s:.2f}s", flush=True)

    script = work / "load.sql"
    script.write_text(SCRIPT, encoding="utf-8")
    before = work / "before"
    proc = _pgbench(b, db, script, before, seconds=before_s, rate=rate, rows=rows, clients=clients)
    t0 = time.time()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.decode(errors='replace')}")
    before_stats = _window(_transactions(before), t0 + 1, time.time() - 0.5)

    (work / "migrations").mkdir(exist_ok=True)
    (work / "indexes").mkdir(exist_ok=True)
    (work / "indexes" / "bench_t_a_idx.sql").write_text(INDEX, encoding="utf-8")
    env = schemad_env(b.cluster.dsn(db), work / "migrations", work / "indexes", b.dir("index/cache"))
    during = work / "during"
    budget = int(3 + 6 * cic_idle_s + 15)
    proc = _pgbench(b, db, script, during, seconds=budget, rate=rate, rows=rows, clients=clients)
    time.sleep(3)
    build_start = time.time()
    with (logs / "build-indexes.log").open("ab") as log:
        res = subprocess.run([*schemad_argv(), "build-indexes"], env=env, stdout=log, stderr=subprocess.STDOUT,
                             check=False)
    build_end = time.time()
    _, err = proc.communicate()
    if res.returncode != 0 or proc.returncode != 0:
        raise RuntimeError(f"build-indexes exited {res.returncode}, pgbench {proc.returncode}: {err.decode()}")
    during_stats = _window(_transactions(during), build_start, min(build_end, build_start + budget - 3))
    statement_s = float(b.sql(
        "SELECT duration_s FROM schemad.events WHERE kind = 'index' AND outcome = 'built' ORDER BY id DESC LIMIT 1", db
    ) or "nan")
    valid = b.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'bench_t_a_idx'::regclass", db)
    b.drop_db(db)
    return {
        "rows": rows, "table_size": size, "rate_tps": rate, "clients": clients,
        "before": before_stats, "during": during_stats,
        "window_covered": build_end <= build_start + budget - 3,
        "schemad_build_indexes_s": build_end - build_start, "schemad_cic_statement_s": statement_s,
        "plain_create_index_idle_s": plain_s, "cic_idle_s": cic_idle_s, "index_valid": valid == "t",
    }
