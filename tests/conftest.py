"""Shared fixtures: one throwaway PostgreSQL cluster per test worker, and a fresh database
per test cloned from a template (`CREATE DATABASE ... TEMPLATE`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from schemad import config, pgcluster

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "schemad_template"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


@pytest.fixture(scope="session", autouse=True)
def _private_parse_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The parse cache (and anything else under XDG_CACHE_HOME) of this test session,
    for the tests and every schemad process they start, never the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    try:
        yield
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster]:
    cluster = pgcluster.create()
    try:
        psql(cluster.dsn(), f"CREATE DATABASE {TEMPLATE}")
        yield cluster
    finally:
        cluster.destroy()


def psql(dsn: str, sql: str, *, check: bool = True) -> str:
    """Run SQL through the real psql client; returns stdout (unaligned, tuples only)."""
    res = subprocess.run(
        ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql], capture_output=True, text=True, check=False
    )
    if check and res.returncode != 0:
        raise AssertionError(f"psql failed: {res.stderr}")
    return res.stdout.strip()


@dataclass
class Database:
    cluster: pgcluster.Cluster
    name: str

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def sql(self, sql: str) -> str:
        return psql(self.dsn, sql)

    def schema_dump(self, *extra: str) -> str:
        res = subprocess.run(
            [str(self.cluster.bindir / "pg_dump"), "--schema-only", "--no-owner", *extra, self.dsn],
            capture_output=True, text=True, check=True,
        )
        # pg_dump 15.14+ brackets its output with \restrict/\unrestrict and a random key.
        skip = ("--", "\\restrict ", "\\unrestrict ")
        return "\n".join(line for line in res.stdout.splitlines() if not line.startswith(skip))


@pytest.fixture
def database(pg_cluster: pgcluster.Cluster) -> Iterator[Database]:
    name = "t_" + uuid.uuid4().hex[:12]
    psql(pg_cluster.dsn(), f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield Database(pg_cluster, name)
    finally:
        psql(pg_cluster.dsn(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Empty migrations/ and indexes/ folders."""
    m, i = tmp_path / "migrations", tmp_path / "indexes"
    m.mkdir()
    i.mkdir()
    return m, i


def write_migrations(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def make_settings(dsn: str, migrations_dir: Path, indexes_dir: Path, **overrides: Any) -> config.Settings:
    values: dict[str, Any] = {
        "dsn": dsn,
        "migrations_dir": migrations_dir,
        "indexes_dir": indexes_dir,
        "lock_poll_s": 0.05,
        "retry_backoff_s": 0.05,
    }
    values.update(overrides)
    return config.Settings(**values)


def schemad_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "schemad", *args]


def run_schemad(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAD_")}
    full_env.update(env or {})
    return subprocess.run(
        schemad_cmd(*args), capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False
    )
