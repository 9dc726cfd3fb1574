"""The database password never appears in schemad's output or in its event history, whether
it comes from the DSN, SCHEMAD_PASSWORD_FILE or $CREDENTIALS_DIRECTORY/db-password.

The role gets a real password and a pg_hba rule requiring SCRAM for that role only (the
rest of the shared test cluster stays on trust), so each run also proves the password
reached the server."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import pytest

from tests.conftest import Database, psql, run_schemad, write_migrations

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    marker: str  # the random part of the password: must never be printed, in any form

    def dsn(self, database: Database, *, password: str | None = None, port: int | None = None) -> str:
        auth = f"{self.name}:{quote(password, safe='')}" if password is not None else self.name
        return f"postgresql://{auth}@127.0.0.1:{port or database.cluster.port}/{database.name}"


def _wait_until_password_required(database: Database, role: str) -> None:
    """pg_reload_conf() is asynchronous: poll until a wrong password is refused."""
    deadline = time.monotonic() + 10
    while True:
        conn = subprocess.run(
            ["psql", f"postgresql://{role}:wrong@127.0.0.1:{database.cluster.port}/{database.name}",
             "-X", "-Atc", "SELECT 1"],
            capture_output=True, text=True, check=False, env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        if conn.returncode != 0 and "password authentication failed" in conn.stderr:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pg_hba reload did not take effect: {conn.stdout} {conn.stderr}")
        time.sleep(0.05)


@pytest.fixture
def role(database: Database) -> Iterator[Role]:
    marker = uuid.uuid4().hex
    password = f"S3cr/t%{marker}@pw"
    name = "pw_" + uuid.uuid4().hex[:10]
    database.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; ALTER DATABASE {database.name} OWNER TO {name}")
    hba = database.cluster.datadir / "pg_hba.conf"
    hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    psql(database.cluster.dsn(), "SELECT pg_reload_conf()")
    _wait_until_password_required(database, name)
    try:
        yield Role(name, password, marker)
    finally:
        hba.write_text("".join(line for line in hba.read_text().splitlines(keepends=True) if f" {name} " not in line))
        psql(database.cluster.dsn(), "SELECT pg_reload_conf()")
        psql(database.cluster.dsn(), f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)", check=False)
        psql(database.cluster.dsn(), f"DROP ROLE IF EXISTS {name}", check=False)


def assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            assert form not in text, f"secret leaked: {text}"


MODES = ["dsn", "password-file", "credentials-directory"]


@pytest.mark.parametrize("mode", MODES)
def test_password_never_printed_nor_recorded(
    mode: str, role: Role, database: Database, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    env: dict[str, str] = {}
    if mode == "dsn":
        dsn = role.dsn(database, password=role.password)
    else:
        dsn = role.dsn(database)
        secret_dir = tmp_path / "credentials"
        secret_dir.mkdir()
        secret = secret_dir / ("db-password" if mode == "credentials-directory" else "pw.txt")
        secret.write_text(role.password + "\n")
        secret.chmod(0o600)
        env = (
            {"CREDENTIALS_DIRECTORY": str(secret_dir)} if mode == "credentials-directory"
            else {"SCHEMAD_PASSWORD_FILE": str(secret)}
        )
    folder_args = ("--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    outputs: list[str] = []

    def run(*args: str, expect: int, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        res = run_schemad(*args, *folder_args, env={**env, **(extra_env or {})})
        # Only what schemad printed (our own command line holds the DSN, of course).
        outputs.append(f"{res.stdout}\n{res.stderr}")
        assert res.returncode == expect, (args[0], res.returncode, res.stdout, res.stderr)
        return res

    run("migrate", "--dsn", dsn, expect=0)
    status = run("status", "--dsn", dsn, expect=0)
    assert f"postgresql://{role.name}@127.0.0.1" in status.stdout, "the DSN is shown, without its password"
    write_migrations(mdir, {"0002_bad.sql": "CREATE TABLE b (id int);\nALTER TABLE missing ADD COLUMN x int;"})
    failing = run("migrate", "--dsn", dsn, "-v", "--log-format", "json", expect=1)
    assert "SQLSTATE 42P01" in failing.stderr
    run("status", "--dsn", dsn, "--json", expect=0)

    # Connection failures: nobody listening, a malformed port, a wrong password.
    secrets = [role.password]
    wrong = f"Wr0ng/{uuid.uuid4().hex}"
    secrets.append(wrong)
    if mode == "dsn":
        run("check", expect=0, extra_env={"SCHEMAD_DSN": dsn})
        run("migrate", "--dsn", role.dsn(database, password=role.password, port=1), "-v", expect=1)
        bad_port = role.dsn(database, password=role.password).replace(f":{database.cluster.port}/", ":99999/")
        run("status", "--dsn", bad_port, "-v", expect=78)
        denied = run("migrate", "--dsn", role.dsn(database, password=wrong), "-v", expect=1)
    else:
        run("status", "--dsn", dsn.replace(f":{database.cluster.port}/", ":1/"), "-v", expect=1)
        wrong_file = tmp_path / "wrong.txt"
        wrong_file.write_text(wrong)
        denied = run("migrate", "--dsn", dsn, "-v", expect=1,
                     extra_env={"SCHEMAD_PASSWORD_FILE": str(wrong_file), "CREDENTIALS_DIRECTORY": ""})
    assert "password authentication failed" in denied.stderr

    everything = "\n".join(outputs)
    assert_hidden(everything, *secrets)
    assert role.marker not in everything

    # The operator's history tables hold no trace of it either.
    recorded = database.sql(
        "SELECT coalesce(string_agg(row_to_json(e)::text, E'\\n'), '') FROM schemad.events e"
    ) + database.sql("SELECT coalesce(string_agg(row_to_json(m)::text, E'\\n'), '') FROM schemad.migrations m")
    assert "0002_bad" in recorded and "42P01" in recorded
    assert_hidden(recorded, *secrets)
    assert role.marker not in recorded


@pytest.mark.anyio
async def test_the_role_really_needs_its_password(role: Role, database: Database) -> None:
    """The fixture's premise: without the password the server refuses this role."""
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(role.dsn(database, password="not-it"))
    conn = await asyncpg.connect(role.dsn(database, password=role.password))
    await conn.close()
