"""Shared helpers of the reliability proofs: fresh databases, the ledger as text, the
corpus probes, waiting for a dead client's sessions, process metrics from /proc, figures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemad import pgcluster
from tests.conftest import TEMPLATE, Database, psql, schemad_cmd
from tests.e2e.daemons import Daemon, notify_socket
from tests.reliability import corpus

if TYPE_CHECKING:
    from collections.abc import Iterator

FAST_POLL = {"SCHEMAD_LOCK_POLL_S": "0.05", "SCHEMAD_RETRY_BACKOFF_S": "0.05"}
FIGURES_ENV = "RELIABILITY_FIGURES_DIR"


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without SCHEMAD_* (schemad rejects unknown ones), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_") and k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


@contextlib.contextmanager
def fresh_database(cluster: pgcluster.Cluster, prefix: str = "r") -> Iterator[Database]:
    name = f"{prefix}_" + uuid.uuid4().hex[:12]
    psql(cluster.dsn(), f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield Database(cluster, name)
    finally:
        psql(cluster.dsn(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


def ledger(database: Database) -> str:
    """The ledger's identity columns, one `version|name|checksum|transactional` per line ("" if absent)."""
    if database.sql("SELECT to_regclass('schemad.migrations') IS NOT NULL") != "t":
        return ""
    return database.sql("SELECT version, name, checksum, transactional FROM schemad.migrations ORDER BY 1")


def recorded_versions(database: Database) -> set[int]:
    return {int(line.split("|")[0]) for line in ledger(database).splitlines()}


def probe(database: Database, migrations: list[corpus.CorpusMigration]) -> dict[int, tuple[int, int]]:
    rows: dict[int, tuple[int, int]] = {}
    for line in database.sql(corpus.probe_sql(migrations)).splitlines():
        version, present, total = (int(x) for x in line.split("|"))
        rows[version] = (present, total)
    return rows


def consistency(database: Database, migrations: list[corpus.CorpusMigration]) -> tuple[list[str], set[int]]:
    """(problems, recorded versions): the corpus probes against the ledger."""
    recorded = recorded_versions(database)
    return corpus.partial_problems(migrations, probe(database, migrations), recorded), recorded


def wait_sessions_gone(database: Database, pid: int, *, timeout_s: float = 20) -> float:
    """Poll until the server has dropped every session of the (dead) schemad process ``pid``."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:%' "
        f"AND application_name LIKE '%:{int(pid)}'"
    )
    return poll(lambda: database.sql(sql) == "0", timeout_s=timeout_s, what=f"the sessions of pid {pid} to end")


def poll(condition: Any, *, timeout_s: float, what: str, interval_s: float = 0.02) -> float:
    """Poll ``condition()`` until true (a deadline, never a fixed sleep); returns the seconds taken."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - start


def migrate_cmd(dsn: str, mdir: Path, idir: Path, *args: str) -> list[str]:
    return schemad_cmd("migrate", "--dsn", dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir), *args)


def run_migrate(dsn: str, mdir: Path, idir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        migrate_cmd(dsn, mdir, idir, *args), capture_output=True, text=True, env=clean_env(**FAST_POLL),
        timeout=timeout, check=False,
    )


# --------------------------------------------------------------------------- daemons


def spawn_daemons(
    stack: contextlib.ExitStack, dsn: str | None, workdir: Path, n: int, *, extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> list[Daemon]:
    """Start ``n`` daemons at once (not one after another), each with its own notify socket;
    ``stack`` kills any still running when it closes. ``dsn`` None: the caller passes it."""
    daemons: list[Daemon] = []
    # AF_UNIX paths are limited to 108 bytes: the sockets go in a short directory of their own.
    sockets = Path(tempfile.mkdtemp(prefix="sd-"))
    stack.callback(shutil.rmtree, sockets, True)
    for _ in range(n):
        notify = stack.enter_context(notify_socket(sockets))
        port = pgcluster.free_port()
        env = clean_env(**{
            **({"SCHEMAD_DSN": dsn} if dsn is not None else {}),
            "NOTIFY_SOCKET": str(notify.path), "SCHEMAD_LOCK_POLL_S": "0.2",
            "SCHEMAD_RETRY_BACKOFF_S": "0.05", "SCHEMAD_RECONCILE_INTERVAL_S": "60",
            "SCHEMAD_INDEX_RETRY_BACKOFF_S": "0.2", **(extra_env or {}),
        })
        log_path = workdir / f"daemon-{port}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                schemad_cmd("run", "--metrics-addr", f"127.0.0.1:{port}", *args),
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )
        d = Daemon(proc, port, notify, log_path)
        stack.callback(_kill_if_running, d)
        daemons.append(d)
    return daemons


def _kill_if_running(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


# --------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- figures


def record(name: str, figures: dict[str, Any]) -> None:
    """Print a proof's figures (shown with -s / -rA) and, if $RELIABILITY_FIGURES_DIR is set,
    write them to <dir>/<name>.json for docs/reliability.md."""
    text = json.dumps(figures, sort_keys=True, default=str)
    print(f"FIGURES {name} {text}")
    folder = os.environ.get(FIGURES_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(text + "\n")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
