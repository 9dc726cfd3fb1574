"""Through a real PgBouncer in transaction mode, session advisory locks are shared by every
client; schemad detects the pooler and refuses to migrate, naming the fix (a direct
connection). PgBouncer must be installed (CI installs it): the test fails, not skips."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from schemad import pgcluster
from tests.conftest import Database, run_schemad, write_migrations

if TYPE_CHECKING:
    from collections.abc import Iterator

RUN_AS = "postgres"  # PgBouncer refuses to run as root


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )
    if found is None:
        pytest.fail(
            "pgbouncer is not installed: `apt-get install --no-install-recommends pgbouncer` "
            "(the proxy-detection tests need a real PgBouncer)"
        )
    return found


@pytest.fixture(scope="module")
def pgbouncer(pg_cluster: pgcluster.Cluster) -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test cluster; yields its port."""
    binary = _pgbouncer_binary()
    workdir = Path(tempfile.mkdtemp(prefix="schemad-pgbouncer-"))
    port = pgcluster.free_port()
    (workdir / "userlist.txt").write_text(f'"{pg_cluster.user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    # Default startup-parameter handling on purpose: a stock PgBouncer must meet the
    # documented refusal, not "unsupported startup parameter".
    ini.write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={pg_cluster.port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 4\n"
    )
    if os.geteuid() == 0:
        pw = pwd.getpwnam(RUN_AS)
        for p in (workdir, workdir / "userlist.txt", ini):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        argv = ["runuser", "-u", RUN_AS, "--", binary, str(ini)]
    else:
        argv = [binary, str(ini)]
    log = (workdir / "pgbouncer.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"pgbouncer did not start: {(workdir / 'pgbouncer.log').read_text()[-2000:]}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def via(pgbouncer: int, database: Database) -> str:
    return f"postgresql://{database.cluster.user}@127.0.0.1:{pgbouncer}/{database.name}"


@pytest.mark.anyio
async def test_transaction_pooling_shares_session_locks(pgbouncer: int, database: Database) -> None:
    """The hazard itself: two clients of the pooler both 'hold' one session advisory lock."""
    a = await asyncpg.connect(via(pgbouncer, database), statement_cache_size=0)
    b = await asyncpg.connect(via(pgbouncer, database), statement_cache_size=0)
    try:
        assert await a.fetchval("SELECT pg_try_advisory_lock(4242)")
        assert await b.fetchval("SELECT pg_try_advisory_lock(4242)"), "both clients got the same session lock"
    finally:
        await a.close()
        await b.close()


def test_migrate_through_pgbouncer_refuses_and_names_the_fix(
    pgbouncer: int, database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})

    res = run_schemad("migrate", "--dsn", via(pgbouncer, database), "--migrations-dir", str(mdir),
                      "--indexes-dir", str(idir))

    assert res.returncode == 78, (res.stdout, res.stderr)  # a configuration error: no restart loop
    assert "Traceback" not in res.stderr
    message = res.stderr.strip().splitlines()[-1]
    assert message.startswith("schemad: schemad is connected through a connection pooler or proxy")
    assert "Give schemad a direct connection to PostgreSQL" in message
    assert "not the pooler" in message
    assert database.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'schemad'") == "0"
    assert database.sql("SELECT to_regclass('a') IS NULL") == "t"

    # The same files through a direct connection apply.
    direct = run_schemad("migrate", "--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    assert direct.returncode == 0, direct.stderr
