"""`schemad baseline` on a real PostgreSQL: it records what another tool applied (baselined rows,
checksums from the files, an event naming who), after which `migrate` has nothing to do and a
new migration applies normally; it refuses every unsafe case with a clear message and changes
nothing (schema dump, ledger and events compared before and after)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from schemad import baseline, commands, db, engine, errors, lock, validation
from tests.conftest import make_settings, run_schemad, write_migrations

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.config import Settings
    from tests.conftest import Database

pytestmark = pytest.mark.anyio

LEGACY = {
    "0001_customers.sql": "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL);\n",
    "0002_orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers);\n",
    "0003_touch.sql": (
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n"
    ),
}


def dump(database: Database) -> str:
    """The schema dump without pg_dump 15.14+'s per-run ``\\restrict`` key lines."""
    lines = database.schema_dump().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith(("\\restrict ", "\\unrestrict ")))


def build_legacy(database: Database, folders: tuple[Path, Path], files: dict[str, str] = LEGACY) -> Settings:
    """The database as another tool left it, and schemad's files for the same history."""
    mdir, idir = folders
    write_migrations(mdir, files)
    for text in files.values():
        database.sql(text)
    return make_settings(database.dsn, mdir, idir)


def state(database: Database) -> tuple[str, str]:
    """Everything a refused baseline must leave alone: the schema and the ledger's rows."""
    rows = ""
    if database.sql("SELECT to_regclass('schemad.events') IS NOT NULL") == "t":
        rows = database.sql(
            "SELECT json_agg(m ORDER BY version)::text FROM schemad.migrations m"
        ) + database.sql("SELECT json_agg(e ORDER BY id)::text FROM schemad.events e")
    return dump(database), rows


async def run_baseline(settings: Settings, version: int, *, dry_run: bool) -> baseline.BaselinePlan:
    val = validation.validate(settings.migrations_dir, settings.indexes_dir)
    return await baseline.baseline(settings, val, version=version, dry_run=dry_run)


async def test_baseline_records_the_history_and_schemad_takes_over(
    database: Database, folders: tuple[Path, Path]
) -> None:
    settings = build_legacy(database, folders)
    p = await run_baseline(settings, 3, dry_run=False)

    assert [m.version for m in p.record] == [1, 2, 3]
    val = validation.validate(*folders)
    rows = database.sql("SELECT version, checksum, baselined, statements_run FROM schemad.migrations ORDER BY 1")
    assert rows.splitlines() == [f"{m.version}|{m.checksum}|t|0" for m in val.migrations]
    event = json.loads(database.sql(
        "SELECT json_build_object('kind', kind, 'subject', subject, 'outcome', outcome, 'version', version, "
        "'message', message, 'detail', detail) FROM schemad.events"
    ))
    assert (event["kind"], event["subject"], event["outcome"], event["version"]) == (
        "baseline", "baseline to 3", "baselined", 3
    )
    assert event["detail"]["versions"] == [1, 2, 3] and event["detail"]["db_user"] == "postgres"
    assert event["detail"]["os_user"] in event["message"]

    report = await engine.migrate(settings, val)
    assert report.plan.pending == () and report.applied == []
    again = await run_baseline(settings, 3, dry_run=False)
    assert again.record == ()

    write_migrations(folders[0], {"0004_notes.sql": "ALTER TABLE orders ADD COLUMN note text;\n"})
    val = validation.validate(*folders)
    report = await engine.migrate(settings, val)
    assert [r.version for r in report.applied] == [4]
    status = await commands.gather_status(settings)
    assert [(a["version"], a["baselined"]) for a in status["applied"]] == [(1, True), (2, True), (3, True), (4, False)]
    assert status["up_to_date"] is True


async def test_dry_run_changes_nothing_not_even_the_ledger_schema(
    database: Database, folders: tuple[Path, Path]
) -> None:
    settings = build_legacy(database, folders)
    before = state(database)
    p = await run_baseline(settings, 2, dry_run=True)
    assert [m.name for m in p.record] == ["0001_customers", "0002_orders"]
    assert baseline.render(p, dry_run=True)[0].startswith("would record 0001_customers as applied (checksum ")
    assert state(database) == before
    assert database.sql("SELECT to_regnamespace('schemad') IS NULL") == "t"


@pytest.mark.parametrize(
    ("case", "version", "message"),
    [
        ("ledger_above", 2, "the ledger already records version(s) 3 above 2"),
        ("file_missing", 3, "no migration file for version(s) 2 at or below 3"),
        ("beyond_files", 4, "no migration file has version 4 (the files go up to 3)"),
        ("changed_file", 3, "version(s) 1 are already recorded with a different checksum"),
    ],
)
async def test_unsafe_baselines_are_refused_and_change_nothing(
    database: Database, folders: tuple[Path, Path], case: str, version: int, message: str
) -> None:
    settings = build_legacy(database, folders)
    mdir = folders[0]
    if case in ("ledger_above", "changed_file"):
        await run_baseline(settings, 3 if case == "ledger_above" else 1, dry_run=False)
    if case == "file_missing":
        (mdir / "0002_orders.sql").unlink()
    if case == "changed_file":
        (mdir / "0001_customers.sql").write_text(LEGACY["0001_customers.sql"].replace("email", "mail"))
    before = state(database)

    with pytest.raises(baseline.Refused) as caught:
        await run_baseline(settings, version, dry_run=False)

    assert message in caught.value.message
    assert state(database) == before


def test_the_cli_exits_3_with_the_reason(database: Database, folders: tuple[Path, Path]) -> None:
    settings = build_legacy(database, folders)
    before = state(database)
    res = run_schemad(
        "baseline", "--version", "7", "--dsn", database.dsn,
        "--migrations-dir", str(settings.migrations_dir), "--indexes-dir", str(settings.indexes_dir),
    )
    assert res.returncode == 3
    assert res.stderr.strip() == (
        "schemad: baseline at version 7 refused: no migration file has version 7 (the files go up to 3); "
        "no migration file for version(s) 4, 5, 6 at or below 7: restore them, or pass --allow-gaps if the "
        "numbering skips them on purpose; nothing was changed"
    )
    assert state(database) == before


async def test_baseline_takes_the_migration_lock(database: Database, folders: tuple[Path, Path]) -> None:
    settings = build_legacy(database, folders)
    holder = await db.connect(settings, "test-holder")
    try:
        key = lock.lock_key(await engine.namespace(settings, holder), "migrations")
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", key)
        before = state(database)
        with pytest.raises(errors.LockBusy):
            val = validation.validate(*folders)
            await baseline.baseline(settings, val, version=3, dry_run=False, lock_wait_s=0.1)
        assert state(database) == before
    finally:
        await holder.close()
