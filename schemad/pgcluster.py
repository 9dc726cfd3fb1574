"""A throwaway local PostgreSQL cluster from the machine's server binaries.

Used by `schemad demo`, the test suite and the benchmarks. `initdb` and `postgres` refuse
to run as root, so as root the cluster runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from schemad import errors

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")


def find_bindir() -> Path:
    """The newest directory holding ``initdb`` and ``pg_ctl``."""
    candidates: list[Path] = []
    env = os.environ.get("SCHEMAD_PG_BINDIR") or os.environ.get("PG_BINDIR")
    if env:
        candidates.append(Path(env))
    for pattern in _SEARCH:
        candidates.extend(sorted((Path(p) for p in glob.glob(pattern)), key=_version_key, reverse=True))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists() and (c / "postgres").exists():
            return c
    raise errors.NoPostgres(
        "no PostgreSQL server binaries found (looked for initdb/pg_ctl/postgres in "
        + ", ".join(_SEARCH)
        + " and on PATH): install them, e.g. `apt-get install postgresql`, or set SCHEMAD_PG_BINDIR"
    )


def _version_key(p: Path) -> tuple[int, ...]:
    digits = "".join(ch if ch.isdigit() else " " for ch in str(p)).split()
    return tuple(int(d) for d in digits)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """A running cluster: ``dsn()`` connects over TCP on 127.0.0.1 as the superuser."""

    bindir: Path
    datadir: Path
    port: int
    user: str = "postgres"
    run_as: str | None = None
    _base: Path | None = field(default=None, repr=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", *args),
            capture_output=True,
            text=True,
            check=check,
        )

    def start(self) -> None:
        log = self.datadir.parent / "postgres.log"
        res = self.pg_ctl("-l", str(log), "start", check=False)
        if res.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise errors.SchemadError(f"PostgreSQL did not start: {res.stderr.strip()} {tail}")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        # With -l the new server's output goes to the log file, not to pg_ctl's pipes (which
        # the server would inherit and hold open, so that waiting for pg_ctl never ends).
        log = self.datadir.parent / "postgres.log"
        self.pg_ctl("-m", mode, "-l", str(log), "restart", check=True)

    def destroy(self) -> None:
        self.stop("immediate")
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)


def create(
    *, base: Path | None = None, port: int | None = None, settings: dict[str, str] | None = None
) -> Cluster:
    """initdb + start a cluster in a fresh temporary directory, trust auth on loopback."""
    bindir = find_bindir()
    base = Path(tempfile.mkdtemp(prefix="schemad-pg-", dir=base))
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        pw = pwd.getpwnam(run_as)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        base.chmod(0o755)
    datadir = base / "data"
    port = port or free_port()
    cluster = Cluster(bindir=bindir, datadir=datadir, port=port, run_as=run_as, _base=base)
    initdb = cluster._cmd(
        str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
        "--locale=C.UTF-8", "--no-sync",
    )
    res = subprocess.run(initdb, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise errors.SchemadError(f"initdb failed: {res.stderr.strip()[-1500:]}")
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{base}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "128MB",
        "log_min_messages": "warning",
        **(settings or {}),
    }
    with (datadir / "postgresql.conf").open("a") as fh:
        for k, v in conf.items():
            fh.write(f"{k} = {v}\n")
    cluster.start()
    return cluster
