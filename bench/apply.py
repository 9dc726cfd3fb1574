"""Apply, no-op and start-to-ready: schemad against `psql` on the same generated corpus.

Per round, every tool applies the corpus to its own fresh database, in a rotating order so
that background noise hits them alike:

* ``floor``: ``psql -X -q --single-transaction -f all.sql`` (the issue's physical floor);
* ``psql, a transaction per file``: the same script with each file in BEGIN/COMMIT, one
  process — what a transaction per migration costs the server, without any tool;
* ``schemad (cold cache)``: ``schemad migrate`` with an empty parse cache: it parses and
  checks every file first;
* ``schemad (warm cache)``: the same with the cache of an earlier run (the steady state:
  the daemon, CI's ``schemad check``, any earlier run);
* ``psql, a process per file`` (N <= 200 only: it is 9x the floor).

Then, with the corpus applied: ``schemad migrate`` with nothing to do (warm and cold
cache) against ``psql -c 'select 1'``, and ``schemad run`` from exec to READY=1.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench import corpus
from bench.common import Bench, NotifySocket, Series, schemad_argv, schemad_env, stop, timed

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FLOOR = "psql --single-transaction (floor)"
TX_PER_FILE = "psql, a transaction per file"
PROCESS_PER_FILE = "psql, a process per file"
COLD = "schemad migrate (cold cache)"
WARM = "schemad migrate (warm cache)"
SHORT = {FLOOR: "floor", TX_PER_FILE: "tx/file", PROCESS_PER_FILE: "process/file", COLD: "cold", WARM: "warm"}


@dataclass
class Corpus:
    n: int
    migrations: Path
    indexes: Path
    all_sql: Path
    tx_sql: Path
    paths: list[Path] = field(default_factory=list)


def make_corpus(b: Bench, n: int) -> Corpus:
    root = b.dir(f"corpus-{n}")
    paths = corpus.write(root / "migrations", n)
    (root / "indexes").mkdir(exist_ok=True)
    all_sql = corpus.concatenate(paths, root / "all.sql")
    tx_sql = root / "all_tx.sql"
    tx_sql.write_text("".join(f"BEGIN;\n{p.read_text(encoding='utf-8')}\nCOMMIT;\n" for p in paths), encoding="utf-8")
    return Corpus(n, root / "migrations", root / "indexes", all_sql, tx_sql, paths)


def _psql_file(b: Bench, path: Path, db: str, *, single: bool) -> list[str]:
    return [b.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", *(["--single-transaction"] if single else []),
            "-f", str(path), b.cluster.dsn(db)]


def _per_file(b: Bench, c: Corpus, db: str) -> float:
    started = time.perf_counter()
    for p in c.paths:
        subprocess.run(_psql_file(b, p, db, single=True), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_apply(b: Bench, c: Corpus, runs: int, *, per_file: bool) -> tuple[dict[str, Series], str]:
    """Every tool, ``runs`` rounds; returns the series and a database holding the applied corpus."""
    logs = b.dir("logs")
    warm_cache = b.dir(f"cache-warm-{c.n}")
    # The warm cache is what an earlier check of the same folder left.
    timed([*schemad_argv(), "check"], env=schemad_env("", c.migrations, c.indexes, warm_cache), log=logs / "check.log")
    series = {name: Series(name) for name in (FLOOR, TX_PER_FILE, COLD, WARM)}
    if per_file:
        series[PROCESS_PER_FILE] = Series(PROCESS_PER_FILE)
    kept = ""

    def schemad(db: str, cache: Path) -> float:
        env = schemad_env(b.cluster.dsn(db), c.migrations, c.indexes, cache)
        return timed([*schemad_argv(), "migrate"], env=env, log=logs / f"migrate-{c.n}.log")

    def cold(db: str) -> float:
        cache = b.dir(f"cache-cold-{time.monotonic_ns()}")
        try:
            return schemad(db, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    tools: dict[str, Callable[[str], float]] = {
        FLOOR: lambda db: timed(_psql_file(b, c.all_sql, db, single=True)),
        TX_PER_FILE: lambda db: timed(_psql_file(b, c.tx_sql, db, single=False)),
        COLD: cold,
        WARM: lambda db: schemad(db, warm_cache),
    }
    if per_file:
        tools[PROCESS_PER_FILE] = lambda db: _per_file(b, c, db)
    names = list(tools)
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            db = b.fresh_db(f"apply{c.n}")
            series[name].values.append(tools[name](db))
            if name == WARM and r == runs - 1:
                kept = db
            else:
                b.drop_db(db)
        print(f"  apply N={c.n} round {r + 1}/{runs}: "
              + ", ".join(f"{SHORT[n]} {s.values[-1]:.3f}s" for n, s in series.items()), flush=True)
    count = b.sql("SELECT count(*) FROM schemad.migrations", kept)
    assert count == str(c.n), f"the kept database holds {count} of {c.n} migrations"
    return series, kept


def run_noop(b: Bench, c: Corpus, db: str, runs: int) -> dict[str, Series]:
    logs = b.dir("logs")
    warm_cache = b.dir(f"cache-warm-{c.n}")
    out = {k: Series(k) for k in ("psql -c 'select 1'", "schemad migrate, no-op (warm cache)",
                                  "schemad migrate, no-op (cold cache)")}
    env = schemad_env(b.cluster.dsn(db), c.migrations, c.indexes, warm_cache)
    for _ in range(runs):
        out["psql -c 'select 1'"].values.append(timed([b.psql, "-X", "-q", "-c", "select 1", b.cluster.dsn(db)]))
        out["schemad migrate, no-op (warm cache)"].values.append(
            timed([*schemad_argv(), "migrate"], env=env, log=logs / "noop.log")
        )
        cold = b.dir(f"cache-cold-{time.monotonic_ns()}")
        out["schemad migrate, no-op (cold cache)"].values.append(
            timed([*schemad_argv(), "migrate"], env={**env, "XDG_CACHE_HOME": str(cold)}, log=logs / "noop.log")
        )
        shutil.rmtree(cold, ignore_errors=True)
    return out


def start_to_ready(b: Bench, c: Corpus, db: str, runs: int) -> dict[str, Series]:
    """`schemad run` with nothing pending: exec → READY=1 on the notify socket."""
    logs = b.dir("logs")
    modes = {"warm": "schemad run, start to READY=1 (warm cache)", "cold": "schemad run, start to READY=1 (cold cache)"}
    out = {name: Series(name) for name in modes.values()}
    for _ in range(runs):
        for mode, name in modes.items():
            cache = b.dir(f"cache-warm-{c.n}") if mode == "warm" else b.dir(f"cache-cold-{time.monotonic_ns()}")
            notify = NotifySocket(b.scratch)
            env = schemad_env(b.cluster.dsn(db), c.migrations, c.indexes, cache, NOTIFY_SOCKET=str(notify.path))
            with (logs / "run.log").open("ab") as log:
                started = time.perf_counter()
                proc = subprocess.Popen([*schemad_argv(), "run", "--metrics-addr", "127.0.0.1:0"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    out[name].values.append(notify.wait_for("READY=1", timeout_s=60) - started)
                finally:
                    code = stop(proc)
                    notify.close()
                    if mode == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
            if code != 0:
                raise RuntimeError(f"schemad run exited {code}; see {logs / 'run.log'}")
    return out


def report(series: dict[str, Series], floor: str) -> list[dict[str, Any]]:
    base = series[floor]
    return [
        {**s.as_dict(), "ratio": s.median / base.median, "ratio_of_minimums": min(s.values) / min(base.values),
         "ratios_per_round": [v / f for v, f in zip(s.values, base.values, strict=False)]}
        for s in series.values()
    ]
