"""What every scenario shares: the throwaway cluster, fresh databases, timed processes,
schemad's environment, statistics, and the machine's load while we measure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemad import pgcluster

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent


# `--schemad-root DIR` (bench.run): measure the schemad in another checkout (e.g. an older
# commit in a `git worktree`) instead of the installed one.
SCHEMAD_ROOT: Path | None = None


def schemad_argv() -> list[str]:
    """The installed console script next to this interpreter, as a user runs it."""
    if SCHEMAD_ROOT is not None:
        code = f"import sys; sys.path.insert(0, {str(SCHEMAD_ROOT)!r}); from schemad.cli import main; main()"
        return [sys.executable, "-c", code]
    script = Path(sys.executable).with_name("schemad")
    return [str(script)] if script.exists() else [sys.executable, "-m", "schemad"]


def byte_compile() -> None:
    """Write schemad's bytecode, as `pip install` does: measured processes must not compile
    the package from source on every start (PYTHONDONTWRITEBYTECODE may be set here)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str((SCHEMAD_ROOT or REPO) / "schemad")], check=True)


# --------------------------------------------------------------------------- cluster


@dataclass
class Bench:
    """The throwaway cluster and a scratch folder for one benchmark run."""

    cluster: pgcluster.Cluster
    scratch: Path
    _dbs: int = 0
    _to_drop: list[str] = field(default_factory=list)

    @property
    def psql(self) -> str:
        return str(self.cluster.bindir / "psql")

    @property
    def pgbench(self) -> str:
        return str(self.cluster.bindir / "pgbench")

    def sql(self, sql: str, dbname: str = "postgres") -> str:
        res = subprocess.run(
            [self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, self.cluster.dsn(dbname)],
            capture_output=True, text=True, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def fresh_db(self, prefix: str) -> str:
        self._dbs += 1
        name = f"{prefix}_{self._dbs}"
        self.sql(f"DROP DATABASE IF EXISTS {name}")
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop_db(self, name: str) -> None:
        """Dropped later, between scenarios: DROP DATABASE forces a checkpoint and unlinks
        thousands of files whose dirty pages the kernel then discards, which slowed the next
        measured run by up to 2x (psql's floor 0.7 s -> 1.0-1.5 s)."""
        self._to_drop.append(name)

    def drop_pending(self) -> None:
        for name in self._to_drop:
            self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._to_drop.clear()
        self.sql("CHECKPOINT")
        time.sleep(2.0)

    def dir(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# Where the cluster's data directory goes (`--pgdata`): "memory" (a tmpfs, /dev/shm) or
# "disk" (the temporary folder). Set by the entry points before `bench_cluster`.
PGDATA = "memory"
_TMPFS = Path("/dev/shm")
_TMPFS_NEEDED_BYTES = 4 << 30  # the index scenario's table, its copy and their indexes, with room


def pgdata_base() -> Path | None:
    """The folder for the data directory: a tmpfs when asked for and big enough, else the
    temporary folder (None). With fsync off the comparison is CPU and round trips; on a disk
    the kernel's file creation and writeback for thousands of relation files made the same
    replay take 0.7 s in one run and 1.4 s in the next."""
    if PGDATA == "memory" and _TMPFS.is_dir():
        st = os.statvfs(_TMPFS)
        if st.f_bavail * st.f_frsize >= _TMPFS_NEEDED_BYTES:
            return _TMPFS
    return None


@contextlib.contextmanager
def bench_cluster(settings: dict[str, str] | None = None) -> Iterator[Bench]:
    """A cluster from the local binaries (schemad.pgcluster: fsync and synchronous_commit
    off, for every tool alike; data in memory, see `pgdata_base`) and a scratch folder, both
    removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="schemad-bench-"))
    scratch.chmod(0o755)
    cluster = pgcluster.create(base=pgdata_base(), settings=settings)
    try:
        yield Bench(cluster, scratch)
    finally:
        cluster.destroy()
        shutil.rmtree(scratch, ignore_errors=True)


def schemad_env(dsn: str, migrations: Path, indexes: Path, cache: Path, **extra: str) -> dict[str, str]:
    """A clean environment for one schemad process: no SCHEMAD_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_") and k != "NOTIFY_SOCKET"}
    env.update({
        "SCHEMAD_DSN": dsn,
        "SCHEMAD_MIGRATIONS_DIR": str(migrations),
        "SCHEMAD_INDEXES_DIR": str(indexes),
        "XDG_CACHE_HOME": str(cache),
    })
    env.update(extra)
    return env


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> float:
    """Wall time of one whole process; its output goes to ``log`` (or nowhere). Raises on failure."""
    out = log.open("ab") if log else None
    try:
        started = time.perf_counter()
        res = subprocess.run(list(argv), env=env, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False)
        took = time.perf_counter() - started
    finally:
        if out:
            out.close()
    if res.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:] if log else ""
        raise RuntimeError(f"{argv[0]} exited {res.returncode}: {tail}")
    return took


# --------------------------------------------------------------------------- statistics


@dataclass
class Series:
    """Repeated measurements of one thing (seconds unless said otherwise)."""

    name: str
    values: list[float] = field(default_factory=list)
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self, scale: float = 1.0, digits: int = 3) -> str:
        if not self.values:
            return "—"
        med, lo, hi = (round(v * scale, digits) for v in (self.median, min(self.values), max(self.values)))
        return f"{med} ({lo}–{hi})" if len(self.values) > 1 else f"{med}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values,
                "median": self.median if self.values else None}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- machine


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    mem_kb = 0
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    base = pgdata_base()
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release, "python": sys.version.split()[0],
        "pgdata": f"tmpfs ({base})" if base is not None else f"disk ({tempfile.gettempdir()})",
    }


def busy_others(own: set[int] | None = None) -> list[str]:
    """Other processes using CPU right now (a short `top` sample), to say how quiet it was."""
    res = subprocess.run(["top", "-bn2", "-d", "0.5"], capture_output=True, text=True, check=False)
    blocks = res.stdout.split("\ntop - ")
    lines = blocks[-1].splitlines() if blocks else []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 12 and parts[0].isdigit():
            pid, cpu = int(parts[0]), float(parts[8].replace(",", "."))
            if cpu >= 5.0 and pid not in (own or set()) and pid != os.getpid():
                out.append(f"{parts[11]}({pid}) {cpu:.0f}%")
    return out


# --------------------------------------------------------------------------- processes


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.01, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's: `schemad run` sends READY=1 to it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def wait_for(self, line: str, timeout_s: float) -> float:
        """Block until a datagram holding ``line`` arrives; returns time.perf_counter() then."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {line} within {timeout_s}s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if line in data.decode(errors="replace").splitlines():
                return time.perf_counter()

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a live process in MiB, from /proc."""
    got: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                got[key] = int(rest.split()[0]) / 1024
    return got.get("VmHWM", 0.0), got.get("VmRSS", 0.0)
