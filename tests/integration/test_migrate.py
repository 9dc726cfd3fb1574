"""The migration engine in-process against a real PostgreSQL: the happy path and a no-op
rerun, tolerated "already exists", 23505 never tolerated, no-transaction files, the
checksum and unknown-version rules. Every test gets a fresh database (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from schemad import engine, errors, validation
from tests.conftest import REPO, Database, make_settings, write_migrations

if TYPE_CHECKING:
    import logging

pytestmark = pytest.mark.anyio


async def migrate(database: Database, mdir: Path, idir: Path, **overrides: Any) -> engine.RunReport:
    settings = make_settings(database.dsn, mdir, idir, **overrides)
    val = validation.validate(mdir, idir, strict=settings.strict)
    return await engine.migrate(settings, val)


def ledger(database: Database) -> list[tuple[int, str, int, int, bool]]:
    """(version, name, statements_run, statements_tolerated, transactional) per ledger row."""
    exists = database.sql("SELECT to_regclass('schemad.migrations') IS NOT NULL")
    if exists != "t":
        return []
    out = database.sql(
        "SELECT version, name, statements_run, statements_tolerated, transactional "
        "FROM schemad.migrations ORDER BY version"
    )
    rows = [line.split("|") for line in out.splitlines() if line]
    return [(int(v), n, int(r), int(t), tr == "t") for v, n, r, t, tr in rows]


def events(database: Database) -> list[dict[str, Any]]:
    out = database.sql(
        "SELECT coalesce(json_agg(json_build_object('subject', subject, 'version', version, 'outcome', outcome, "
        "'sqlstate', sqlstate, 'message', message, 'attempt', attempt, 'detail', detail) ORDER BY id), '[]') "
        "FROM schemad.events"
    )
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def table_exists(database: Database, name: str) -> bool:
    return database.sql(f"SELECT to_regclass('{name}') IS NOT NULL") == "t"


# --------------------------------------------------------------------------- happy path


async def test_examples_apply_then_second_run_does_nothing(database: Database) -> None:
    mdir, idir = REPO / "migrations", REPO / "indexes"
    files = validation.validate(mdir, idir).migrations
    assert len(files) >= 9

    report = await migrate(database, mdir, idir)

    assert [r.version for r in report.applied] == [m.version for m in files]
    assert all(r.attempts == 1 and not r.tolerated for r in report.applied)
    rows = database.sql("SELECT version, name, checksum, applied_by_pid > 0 FROM schemad.migrations ORDER BY 1")
    assert rows.splitlines() == [f"{m.version}|{m.name}|{m.checksum}|t" for m in files]
    evs = events(database)
    assert [(e["version"], e["outcome"]) for e in evs] == [(m.version, "applied") for m in files]
    # The example schema is really there, down to the last migration's column comment.
    assert table_exists(database, "outbound_call_jobs")
    assert database.sql("SELECT col_description('business_calendars'::regclass, 7)").startswith("Notizen")

    dump = database.schema_dump()
    again = await migrate(database, mdir, idir)
    assert again.applied == []
    assert again.plan.pending == ()
    assert len(events(database)) == len(evs), "a no-op run writes no events"
    assert database.schema_dump() == dump


async def test_run_applies_only_what_is_pending(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    assert [r.version for r in (await migrate(database, mdir, idir)).applied] == [1]
    write_migrations(mdir, {"0002_b.sql": "CREATE TABLE b (id int);\nALTER TABLE a ADD COLUMN note text;"})
    report = await migrate(database, mdir, idir)
    assert [(r.version, r.statements_run) for r in report.applied] == [(2, 2)]
    assert ledger(database) == [(1, "0001_a", 1, 0, True), (2, "0002_b", 2, 0, True)]


# --------------------------------------------------------------------------- fatal errors


async def test_fatal_error_rolls_back_the_whole_migration(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_base.sql": "CREATE TABLE base (id int PRIMARY KEY);"})
    await migrate(database, mdir, idir)
    write_migrations(mdir, {
        "0002_broken.sql": (
            "-- two good statements, then one that names a missing column\n"
            "CREATE TABLE two_a (id int);\n"
            "ALTER TABLE base ADD COLUMN note text;\n"
            "\n"
            "  ALTER TABLE base RENAME COLUMN no_such_column TO other;\n"
            "CREATE TABLE two_b (id int);\n"
        ),
        "0003_later.sql": "CREATE TABLE three (id int);",
    })
    before = database.schema_dump()

    with pytest.raises(errors.MigrationFailed) as info:
        await migrate(database, mdir, idir)

    err = info.value
    assert (err.version, err.sqlstate, err.line, err.col, err.reason) == (2, "42703", 5, 3, "sql_error")
    assert err.path.endswith("0002_broken.sql")
    assert f"{err.path}:5:3" in err.message and "nothing of 0002_broken was applied or recorded" in err.message
    assert database.schema_dump() == before
    assert not table_exists(database, "two_a") and not table_exists(database, "three")
    assert ledger(database) == [(1, "0001_base", 1, 0, True)]
    failed = [e for e in events(database) if e["outcome"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["version"] == 2 and failed[0]["sqlstate"] == "42703"
    assert failed[0]["detail"]["line"] == 5 and failed[0]["detail"]["statement"] == 3


# --------------------------------------------------------------------------- tolerated and never tolerated


async def test_already_exists_is_tolerated_counted_and_logged(
    database: Database, folders: tuple[Path, Path], records: list[logging.LogRecord]
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE made_by_hand (id int)")
    write_migrations(mdir, {
        "0001_tolerant.sql": (
            "CREATE TABLE made_by_hand (id int);\n"
            "ALTER TABLE made_by_hand ADD COLUMN note text;\n"
            "CREATE TABLE fresh (id int);\n"
        ),
    })

    report = await migrate(database, mdir, idir)

    [result] = report.applied
    assert [(t.sqlstate, t.line, t.col) for t in result.tolerated] == [("42P07", 1, 1)]
    assert ledger(database) == [(1, "0001_tolerant", 3, 1, True)]
    # The statements around the tolerated one did run.
    assert database.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'made_by_hand'") == "2"
    assert table_exists(database, "fresh")
    [applied] = events(database)
    assert applied["outcome"] == "applied" and applied["detail"]["tolerated"] == ["42P07"]
    logged = [r for r in records if getattr(r, "event", None) == "statement_tolerated"]
    assert len(logged) == 1
    assert getattr(logged[0], "sqlstate", None) == "42P07"
    assert str(getattr(logged[0], "position", "")).endswith("0001_tolerant.sql:1:1")


async def test_strict_does_not_tolerate(database: Database, folders: tuple[Path, Path]) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE made_by_hand (id int)")
    write_migrations(mdir, {"0001_tolerant.sql": "CREATE TABLE fresh (id int);\nCREATE TABLE made_by_hand (id int);"})

    with pytest.raises(errors.MigrationFailed) as info:
        await migrate(database, mdir, idir, strict=True)

    assert (info.value.sqlstate, info.value.line) == ("42P07", 2)
    assert not table_exists(database, "fresh")
    assert ledger(database) == []


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE dup ADD CONSTRAINT dup_v_key UNIQUE (v);",
        "INSERT INTO dup (id, v) VALUES (1, 'again');",
    ],
    ids=["unique-constraint-over-duplicates", "insert-duplicate-key"],
)
async def test_unique_violation_is_never_tolerated(
    database: Database, folders: tuple[Path, Path], statement: str
) -> None:
    mdir, idir = folders
    database.sql("CREATE TABLE dup (id int PRIMARY KEY, v text); INSERT INTO dup VALUES (1, 'x'), (2, 'x')")
    write_migrations(mdir, {"0001_unique.sql": f"CREATE TABLE before_it (id int);\n{statement}\n"})

    with pytest.raises(errors.MigrationFailed) as info:
        await migrate(database, mdir, idir)

    assert info.value.sqlstate == "23505" and info.value.line == 2
    assert not table_exists(database, "before_it")
    assert database.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'dup_v_key'") == "0"
    assert database.sql("SELECT count(*) FROM dup") == "2"
    assert ledger(database) == []
    assert [e["sqlstate"] for e in events(database) if e["outcome"] == "failed"] == ["23505"]


# --------------------------------------------------------------------------- no-transaction


async def test_no_transaction_failure_stays_unrecorded_and_reruns_the_file(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {
        "0001_outside.sql": (
            "-- schemad:no-transaction\n"
            "CREATE TABLE IF NOT EXISTS runs (id serial PRIMARY KEY, at timestamptz DEFAULT now());\n"
            "INSERT INTO runs DEFAULT VALUES;\n"
            "ALTER TABLE target ADD COLUMN IF NOT EXISTS extra int;\n"
        ),
    })

    with pytest.raises(errors.MigrationFailed) as info:
        await migrate(database, mdir, idir)

    assert (info.value.sqlstate, info.value.line) == ("42P01", 4)
    assert "runs again next time" in info.value.message
    # Autocommit: what ran before the failure stays, but the migration is not recorded.
    assert database.sql("SELECT count(*) FROM runs") == "1"
    assert ledger(database) == []

    database.sql("CREATE TABLE target (id int)")
    report = await migrate(database, mdir, idir)

    assert [r.version for r in report.applied] == [1]
    assert database.sql("SELECT count(*) FROM runs") == "2", "the whole file ran again"
    assert ledger(database) == [(1, "0001_outside", 3, 0, False)]
    assert [e["outcome"] for e in events(database)] == ["failed", "applied"]


# --------------------------------------------------------------------------- checksums and unknown versions


async def test_changed_applied_migration_blocks_but_comment_edits_do_not(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    await migrate(database, mdir, idir)

    write_migrations(mdir, {"0001_a.sql": "-- a comment added later\nCREATE   TABLE a (\n  id int\n);  -- same\n"})
    assert (await migrate(database, mdir, idir)).applied == []

    write_migrations(mdir, {
        "0001_a.sql": "CREATE TABLE a (id bigint);",
        "0002_b.sql": "CREATE TABLE b (id int);",
    })
    with pytest.raises(errors.ValidationFailed) as info:
        await migrate(database, mdir, idir)
    assert [(f.code, Path(f.path).name) for f in info.value.findings] == [("E130", "0001_a.sql")]
    assert not table_exists(database, "b"), "a checksum mismatch blocks every further apply"


async def test_unknown_applied_versions_are_reported_not_fatal(
    database: Database, folders: tuple[Path, Path]
) -> None:
    mdir, idir = folders
    write_migrations(mdir, {"0001_a.sql": "CREATE TABLE a (id int);"})
    await migrate(database, mdir, idir)
    database.sql(
        "INSERT INTO schemad.migrations (version, name, checksum, duration_s, applied_by_host, applied_by_pid, "
        "statements_run) VALUES (7, '0007_from_a_newer_release', 'abc', 0, 'elsewhere', 1, 1)"
    )
    write_migrations(mdir, {"0002_b.sql": "CREATE TABLE b (id int);"})

    report = await migrate(database, mdir, idir)

    assert [r.version for r in report.applied] == [2]
    assert [(u.version, u.name) for u in report.plan.unknown] == [(7, "0007_from_a_newer_release")]
