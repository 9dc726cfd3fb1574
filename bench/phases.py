"""Where a no-op `schemad migrate` spends its time: each phase of the command, timed in
fresh processes (the minimum of several), next to the bare cost of the libraries it imports.

    python -m bench.phases [--runs 9] [--n 1000]

Starts a throwaway cluster, applies an N-migration corpus once, then times, per process:
interpreter start, each library import on its own, and the command's phases in order.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, corpus
from bench.common import bench_cluster, byte_compile, schemad_argv, schemad_env, timed

# Imports on their own (each in a fresh interpreter, minus the bare interpreter's start).
LIBRARIES = {
    "asyncio": "import asyncio",
    "asyncio + asyncpg": "import asyncio, asyncpg",
    "anyio + its asyncio backend": "import anyio, anyio._backends._asyncio",
    "pydantic + pydantic-settings": "import pydantic_settings",
    "postgast (libpg_query binding)": "import postgast",
    "prometheus_client": "import prometheus_client",
    "hypercorn (asyncio)": "import hypercorn.asyncio",
    # What every command imports before schemad does anything: the floor of a no-op.
    "the command path's stack together (asyncpg, anyio + backend, pydantic-settings)":
        "import asyncpg, anyio, anyio._backends._asyncio, pydantic_settings",
}

# The no-op command, phase by phase, in one process (what `schemad migrate` does, in order).
PHASES = """
import time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
from schemad import cli; mark("import cli + config")
args = cli.build_parser("migrate").parse_args(["migrate"]); mark("argparse")
settings = cli.config.load(config_file=None, flags=cli._flags(args)); mark("settings")
from schemad import commands; mark("import commands (asyncpg, engine, ...)")
import anyio, anyio._backends._asyncio; mark("import anyio's asyncio backend")
val = commands._validate(settings); mark("validate every file (parse cache)")
from schemad import engine
anyio.run(lambda: engine.migrate(settings, val), backend="asyncio"); mark("connect, plan from the ledger, close")
print(";".join(f"{name}={(t - p) * 1000:.2f}" for (name, t), (_, p) in zip(marks[1:], marks)))
"""


def _fresh(code: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pgdata", choices=("memory", "disk"), default="memory",
                        help="the cluster's data directory on a tmpfs (default; stable figures) or on disk")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    common.PGDATA = args.pgdata
    byte_compile()
    bare = min(_fresh("pass") for _ in range(args.runs))
    print(f"interpreter start (python -c pass): {bare * 1000:.1f} ms")
    for name, code in LIBRARIES.items():
        best = min(_fresh(code) for _ in range(args.runs))
        print(f"  import {name}: {(best - bare) * 1000:.1f} ms")
    with bench_cluster() as b, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus.write(folder / "migrations", args.n)
        (folder / "indexes").mkdir()
        db = b.fresh_db("phases")
        env = schemad_env(b.cluster.dsn(db), folder / "migrations", folder / "indexes", folder / "cache")
        timed([*schemad_argv(), "migrate"], env=env)  # applies the corpus and fills the parse cache
        runs: list[dict[str, float]] = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", PHASES], env=env, check=True, capture_output=True, text=True)
            runs.append({k: float(v) for k, v in (kv.rsplit("=", 1) for kv in out.stdout.strip().split(";"))})
        whole = min(timed([*schemad_argv(), "migrate"], env=env) for _ in range(args.runs))
    print(f"no-op `schemad migrate`, {args.n} applied, phases (minimum of {args.runs} processes, ms):")
    for key in runs[0]:
        print(f"  {key}: {min(r[key] for r in runs):.1f}")
    print(f"  (interpreter start and exit: see above; the whole process, best of {args.runs}: {whole * 1000:.1f} ms)")
    print(f"load average now: {os.getloadavg()}")


if __name__ == "__main__":
    main()
