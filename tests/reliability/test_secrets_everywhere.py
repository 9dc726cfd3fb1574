"""Promise 6 — no secret leaks: every command (check, migrate, status, status --json,
build-indexes, verify, adopt indexes, baseline, import) and the daemon, given the password
in the DSN (environment or `--dsn`), in SCHEMAD_PASSWORD_FILE or as the systemd credential
$CREDENTIALS_DIRECTORY/db-password. The password appears in no output, log line (text or
JSON), metric, /status body, event or ledger row, nor in `/proc/<pid>/cmdline` of a running
schemad — a password given with `--dsn` is overwritten in the process's own argument memory
at start-up (schemad/cmdline.py), and schemad warns that it was exposed until then.

tests/e2e/test_secrets.py covers migrate/status/check and connection failures; this one
covers every command, both log formats, the daemon's endpoints and the process list.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import pytest

from schemad import lock
from tests.conftest import Database, psql, run_schemad, schemad_cmd
from tests.e2e.daemons import wait_for
from tests.reliability.support import clean_env, record, spawn_daemons

if TYPE_CHECKING:
    from collections.abc import Iterator

MODES = ["dsn-env", "dsn-flag", "password-file", "credentials-directory"]


@dataclass(frozen=True)
class Role:
    name: str
    password: str

    def dsn(self, db: Database, password: str | None = None) -> str:
        auth = f"{self.name}:{quote(password, safe='')}" if password is not None else self.name
        return f"postgresql://{auth}@127.0.0.1:{db.cluster.port}/{db.name}"


@pytest.fixture
def role(database: Database) -> Iterator[Role]:
    """A role that needs its password (SCRAM, for this role only), owns the database and may
    create the scratch database `verify` needs."""
    marker = uuid.uuid4().hex
    r = Role("sec_" + uuid.uuid4().hex[:10], f"Pw:{marker}/%@'x")
    escaped = r.password.replace("'", "''")
    database.sql(
        f"CREATE ROLE {r.name} LOGIN CREATEDB PASSWORD '{escaped}'; ALTER DATABASE {database.name} OWNER TO {r.name}; "
        f"GRANT pg_read_all_stats TO {r.name}"
    )
    hba = database.cluster.datadir / "pg_hba.conf"
    hba.write_text(f"host all {r.name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    psql(database.cluster.dsn(), "SELECT pg_reload_conf()")
    wait_for(lambda: _refused(database, r), timeout_s=10, what="pg_hba reload")
    try:
        yield r
    finally:
        hba.write_text("".join(ln for ln in hba.read_text().splitlines(keepends=True) if f" {r.name} " not in ln))
        psql(database.cluster.dsn(), "SELECT pg_reload_conf()")
        psql(database.cluster.dsn(), f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)", check=False)
        psql(database.cluster.dsn(), f"DROP ROLE IF EXISTS {r.name}", check=False)


def _refused(db: Database, r: Role) -> bool:
    res = subprocess.run(
        ["psql", r.dsn(db, "wrong"), "-X", "-Atc", "SELECT 1"], capture_output=True, text=True, check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    return res.returncode != 0 and "password authentication failed" in res.stderr


def forms(secret: str) -> set[str]:
    """Every spelling of the secret that could show up somewhere."""
    return {secret, quote(secret, safe=""), quote(secret), secret.replace("'", "''"), secret.split(":", 1)[1]}


@dataclass
class Seen:
    """Everything schemad showed, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def add(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text + "\n"

    def leaks(self, secret: str) -> list[str]:
        return [where for where, text in self.texts.items() for f in forms(secret) if f in text]


@dataclass
class Setup:
    work: Path
    env: dict[str, str]
    dsn_args: tuple[str, ...]


def setup(mode: str, db: Database, r: Role, tmp_path: Path) -> Setup:
    work = tmp_path / f"work-{mode}"
    for sub in ("migrations", "indexes", "legacy", "imported", "adopted"):
        (work / sub).mkdir(parents=True)
    (work / "migrations" / "0001_a.sql").write_text("CREATE TABLE a (id int, v text);\n")
    (work / "migrations" / "0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    (work / "indexes" / "a.sql").write_text("CREATE INDEX a_v_idx ON a (v);\n")
    (work / "legacy" / "V1__init.sql").write_text("CREATE TABLE legacy (id int);\n")
    env: dict[str, str] = {}
    dsn_args: tuple[str, ...] = ()
    if mode == "dsn-env":
        env["SCHEMAD_DSN"] = r.dsn(db, r.password)
    elif mode == "dsn-flag":
        dsn_args = ("--dsn", r.dsn(db, r.password))
    else:
        secret_dir = work / "credentials"
        secret_dir.mkdir()
        name = "db-password" if mode == "credentials-directory" else "pw.txt"
        (secret_dir / name).write_text(r.password + "\n")
        (secret_dir / name).chmod(0o600)
        env["SCHEMAD_DSN"] = r.dsn(db)
        if mode == "credentials-directory":
            env["CREDENTIALS_DIRECTORY"] = str(secret_dir)
        else:
            env["SCHEMAD_PASSWORD_FILE"] = str(secret_dir / name)
    return Setup(work, env, dsn_args)


COMMANDS: list[tuple[tuple[str, ...], int]] = [
    (("check",), 0),
    (("migrate",), 0),
    (("status",), 0),
    (("status", "--json"), 0),
    (("build-indexes",), 0),
    (("verify",), 0),
    (("adopt", "indexes", "--out", "adopted"), 0),
    (("import", "legacy", "--out", "imported", "--indexes-out", "imported", "--dry-run"), 0),
]
AFTER_NEW_FILE: list[tuple[tuple[str, ...], int]] = [(("baseline", "--version", "3", "--dry-run"), 0)]


def run_commands(s: Setup, seen: Seen, *, log_format: str) -> None:
    for argv, expected in [*COMMANDS, *AFTER_NEW_FILE]:
        if argv[0] == "baseline":
            (s.work / "migrations" / "0003_c.sql").write_text("CREATE TABLE c (id int);\n")
        res = run_schemad(*argv, *s.dsn_args, "--log-format", log_format, env=s.env, cwd=s.work)
        seen.runs += 1
        seen.add(f"{' '.join(argv)} ({log_format})", res.stdout + res.stderr)
        assert res.returncode == expected, (argv, res.returncode, res.stdout[-2000:], res.stderr[-2000:])
        if argv[0] == "baseline":
            (s.work / "migrations" / "0003_c.sql").unlink()


def wrong_password_runs(s: Setup, db: Database, r: Role, seen: Seen, mode: str) -> str:
    """Every database command with a wrong password: refused, and the wrong one is not shown either."""
    wrong = f"Wrong:{uuid.uuid4().hex}"
    env, dsn_args = dict(s.env), s.dsn_args
    if mode == "dsn-env":
        env["SCHEMAD_DSN"] = r.dsn(db, wrong)
    elif mode == "dsn-flag":
        dsn_args = ("--dsn", r.dsn(db, wrong))
    else:
        path = s.work / "wrong.txt"
        path.write_text(wrong)
        env.pop("CREDENTIALS_DIRECTORY", None)
        env["SCHEMAD_PASSWORD_FILE"] = str(path)
    for argv in (("migrate",), ("status", "--json"), ("build-indexes",), ("verify",), ("adopt", "indexes", "--dry-run"),
                 ("baseline", "--version", "2", "--dry-run")):
        res = run_schemad(*argv, *dsn_args, "-v", env=env, cwd=s.work)
        seen.runs += 1
        seen.add(f"{' '.join(argv)} (wrong password)", res.stdout + res.stderr)
        assert res.returncode == 1, (argv, res.returncode, res.stderr[-2000:])
        assert "password authentication failed" in res.stderr, res.stderr[-2000:]
    return wrong


def daemon_run(s: Setup, db: Database, seen: Seen, *, log_format: str) -> None:
    with contextlib.ExitStack() as stack:
        (d,) = spawn_daemons(stack, None, s.work, 1, extra_env=s.env, args=(*s.dsn_args, "--log-format", log_format))
        wait_for(lambda: d.get("/readyz")[0] == 200 or d.proc.poll() is not None, timeout_s=30, what="ready")
        assert d.proc.poll() is None, d.log()
        for path in ("/metrics", "/status", "/readyz", "/livez"):
            seen.add(f"daemon {path}", d.get(path)[1])
        seen.add("daemon /proc/<pid>/cmdline", Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().decode(errors="replace"))
        assert d.stop() == 0
        seen.add(f"daemon log ({log_format})", d.log())
    seen.runs += 1


def waiting_cli_cmdline(s: Setup, db: Database, seen: Seen) -> None:
    """A `migrate` that waits for the lock (held here) is a long-lived process too: read its
    /proc/<pid>/cmdline while it waits."""
    (s.work / "migrations" / "0009_wait.sql").write_text("CREATE TABLE waited (id int);\n")
    holder = psql_holding_lock(db, lock.lock_key(db.name, "migrations"))
    try:
        proc = subprocess.Popen(
            schemad_cmd("migrate", *s.dsn_args, "--lock-wait", "60"), cwd=s.work, env=clean_env(**s.env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        wait_for(lambda: db.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'schemad:lock:%'") == "1",
            timeout_s=30, what="migrate waiting for the lock")
        seen.add("waiting migrate /proc/<pid>/cmdline",
                 Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"))
    finally:
        # End the holder's session on the server (killing psql alone leaves its backend sleeping).
        db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-lock-holder'")
        holder.wait()
    out, err = proc.communicate(timeout=60)
    seen.add("waiting migrate output", out + err)
    assert proc.returncode == 0, err
    seen.runs += 1


def psql_holding_lock(db: Database, key: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["psql", db.cluster.dsn(db.name), "-X", "-q", "-c", f"SELECT pg_advisory_lock({key}); SELECT pg_sleep(600);"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PGAPPNAME": "test-lock-holder"},
    )
    wait_for(lambda: db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") != "0",
             timeout_s=10, what="the test's lock")
    return proc


def recorded_rows(db: Database) -> str:
    return db.sql(
        "SELECT coalesce(string_agg(row_to_json(e)::text, E'\\n'), '') FROM schemad.events e"
    ) + db.sql("SELECT coalesce(string_agg(row_to_json(m)::text, E'\\n'), '') FROM schemad.migrations m") + db.sql(
        "SELECT coalesce(string_agg(row_to_json(b)::text, E'\\n'), '') FROM schemad.index_builds b"
    )


def prove(mode: str, db: Database, r: Role, tmp_path: Path, *, formats: tuple[str, ...], wrong: bool) -> Seen:
    s = setup(mode, db, r, tmp_path)
    seen = Seen()
    for i, fmt in enumerate(formats):
        if i:  # a fresh start for the second format: the same commands do the same work again
            db.sql("DROP SCHEMA schemad CASCADE; DROP TABLE a, b")
        run_commands(s, seen, log_format=fmt)
        daemon_run(s, db, seen, log_format=fmt)
    if mode == "dsn-flag":
        waiting_cli_cmdline(s, db, seen)
        assert "the password in --dsn" in seen.texts["waiting migrate output"], "the exposure is warned about"
    secrets = [r.password]
    if wrong:
        secrets.append(wrong_password_runs(s, db, r, seen, mode))
    seen.add("ledger and events", recorded_rows(db))
    assert "0001_a" in seen.texts["ledger and events"]
    leaks = [where for secret in secrets for where in seen.leaks(secret)]
    record(f"secrets_{mode}_{'_'.join(formats)}", {
        "mode": mode, "log_formats": list(formats), "runs": seen.runs, "places_checked": len(seen.texts),
        "wrong_password_runs": wrong, "leaks": len(leaks),
    })
    assert leaks == [], f"{mode}: the password shows in {leaks}"
    return seen


def test_secrets_fast(database: Database, role: Role, tmp_path: Path) -> None:
    prove("dsn-flag", database, role, tmp_path, formats=("json",), wrong=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", MODES)
def test_secrets_all(mode: str, database: Database, role: Role, tmp_path: Path) -> None:
    prove(mode, database, role, tmp_path, formats=("text", "json"), wrong=True)


@pytest.mark.anyio
async def test_the_role_needs_its_password(database: Database, role: Role) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(role.dsn(database, "not-it"))
    conn = await asyncpg.connect(role.dsn(database, role.password))
    await conn.close()
