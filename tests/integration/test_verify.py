"""`schemad verify` on a real PostgreSQL: no difference when the database matches its history;
a column dropped by hand and an index created by hand are each named; a missing registry
index, a history that does not replay and a role without CREATEDB are reported clearly; the
live database is never changed and the scratch database never left behind."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from schemad import baseline, engine, errors, validation, verify
from tests.conftest import make_settings, psql, run_schemad, write_migrations

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.config import Settings
    from tests.conftest import Database

pytestmark = pytest.mark.anyio

FILES = {
    "0001_orders.sql": (
        "CREATE TYPE order_status AS ENUM ('new', 'paid');\n"
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL,\n"
        "    status order_status NOT NULL DEFAULT 'new', note text, CHECK (customer_id > 0));\n"
    ),
    "0002_touch.sql": (
        "ALTER TABLE orders ADD COLUMN updated_at timestamptz;\n"
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); "
        "RETURN NEW; END $$;\n"
        "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();\n"
        "CREATE VIEW open_orders AS SELECT id, customer_id FROM orders WHERE status = 'new';\n"
    ),
}
REGISTRY = "-- Look up a customer's orders\nCREATE INDEX orders_customer_idx ON orders (customer_id);\n"


def dump(database: Database) -> str:
    """The schema dump without pg_dump 15.14+'s per-run ``\\restrict`` key lines."""
    lines = database.schema_dump().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith(("\\restrict ", "\\unrestrict ")))


async def migrated(database: Database, folders: tuple[Path, Path]) -> Settings:
    """A database schemad migrated, with its registry index built as build-indexes would."""
    mdir, idir = folders
    write_migrations(mdir, FILES)
    (idir / "orders.sql").write_text(REGISTRY)
    settings = make_settings(database.dsn, mdir, idir)
    await engine.migrate(settings, validation.validate(mdir, idir))
    database.sql("CREATE INDEX orders_customer_idx ON orders (customer_id)")
    return settings


async def run_verify(settings: Settings) -> verify.VerifyReport:
    return await verify.verify(settings, validation.validate(settings.migrations_dir, settings.indexes_dir))


def scratch_left(database: Database, report: verify.VerifyReport) -> str:
    return database.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{report.scratch}'")


async def test_a_database_that_matches_its_history_has_no_difference(
    database: Database, folders: tuple[Path, Path]
) -> None:
    settings = await migrated(database, folders)
    before = dump(database)
    report = await run_verify(settings)
    assert report.differences == [], [d.format() for d in report.differences]
    assert (report.replayed, report.registry) == (2, 1)
    assert verify.render(report)[-1] == "no difference: the database matches its history"
    assert dump(database) == before
    assert scratch_left(database, report) == "0"


async def test_a_column_dropped_and_an_index_created_by_hand_are_named(
    database: Database, folders: tuple[Path, Path]
) -> None:
    settings = await migrated(database, folders)
    database.sql("DROP VIEW open_orders; ALTER TABLE orders DROP COLUMN note; CREATE INDEX by_hand ON orders (status)")
    report = await run_verify(settings)
    assert [d.format() for d in report.differences] == [
        "missing view public.open_orders: the applied history creates it, the database does not have it",
        "missing column public.orders.note (text): the applied history creates it, the database does not have it",
        (
            "unexpected index by_hand on public.orders: the database has it, but no applied migration or registry "
            "entry explains it; declare it with `schemad adopt indexes`, or drop it"
        ),
    ]
    res = run_schemad(
        "verify", "--dsn", database.dsn, "--migrations-dir", str(folders[0]), "--indexes-dir", str(folders[1])
    )
    assert res.returncode == 5, res.stderr
    assert "missing column public.orders.note" in res.stdout and "unexpected index by_hand" in res.stdout
    assert res.stdout.splitlines()[-1] == "3 difference(s)"


async def test_changed_definitions_and_a_missing_registry_index(database: Database, folders: tuple[Path, Path]) -> None:
    settings = await migrated(database, folders)
    database.sql(
        "DROP INDEX orders_customer_idx; ALTER TABLE orders ALTER COLUMN note TYPE varchar(20); "
        "ALTER TYPE order_status ADD VALUE 'void'; "
        "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    found = {(d.kind, d.object_type, d.name) for d in (await run_verify(settings)).differences}
    assert found == {
        ("different", "column", "public.orders.note"),
        ("missing", "index", "orders_customer_idx on public.orders"),
        ("different", "type", "public.order_status"),
        ("different", "function", "public.touch()"),
    }


async def test_history_that_does_not_replay_is_reported_with_its_position(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE made_by_hand (id int)")
    write_migrations(mdir, {"0001_extend.sql": "-- extends a table no migration creates\n"
                                               "ALTER TABLE made_by_hand ADD COLUMN x int;\n"})
    database.sql("ALTER TABLE made_by_hand ADD COLUMN x int")
    settings = make_settings(database.dsn, mdir, idir)
    val = validation.validate(mdir, idir)
    await baseline.baseline(settings, val, version=1, dry_run=False)
    report = await run_verify(settings)
    [d] = report.differences
    assert d.format() == (
        f"history: migration 0001_extend does not replay on an empty database: {mdir}/0001_extend.sql:2:1: "
        'SQLSTATE 42P01: relation "made_by_hand" does not exist (nothing after it was compared)'
    )
    assert scratch_left(database, report) == "0"


async def test_verify_needs_createdb_and_says_so(database: Database, folders: tuple[Path, Path]) -> None:
    settings = await migrated(database, folders)
    role = "verify_" + uuid.uuid4().hex[:8]
    admin = database.cluster.dsn()
    psql(admin, f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        database.sql(f"GRANT USAGE ON SCHEMA schemad TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA schemad TO {role}")
        dsn = database.dsn.replace("postgres@", f"{role}@")
        with pytest.raises(errors.SchemadError, match="needs the CREATEDB privilege"):
            await run_verify(make_settings(dsn, settings.migrations_dir, settings.indexes_dir))
    finally:
        database.sql(f"DROP OWNED BY {role}")
        psql(admin, f"DROP ROLE {role}")
