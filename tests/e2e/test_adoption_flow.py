"""End to end, as an adopter runs it (docs/adopting.md): a database built by plain psql from a
legacy Flyway folder with CREATE INDEX inside its migrations (plus an index its old index
script made) is imported, baselined and adopted; then `migrate` has nothing to do,
`build-indexes` builds nothing, `verify` finds no difference, and a new migration applies."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

from tests.conftest import run_schemad

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Database

# The seed's domain, the way its team wrote it before schemad: indexes inside migrations.
LEGACY = {
    "V1__businesses.sql": """
CREATE TABLE businesses (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_businesses_name ON businesses (lower(name));
""",
    "V2__business_calendars.sql": """
CREATE TABLE business_calendars (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id bigint NOT NULL REFERENCES businesses (id),
    name text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    priority integer NOT NULL DEFAULT 0
);
CREATE TABLE calendar_routing_rules (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id bigint NOT NULL REFERENCES businesses (id),
    calendar_id bigint NOT NULL REFERENCES business_calendars (id),
    is_active boolean NOT NULL DEFAULT true
);
""",
    "V3__appointments.sql": """
CREATE TABLE appointments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_id bigint NOT NULL REFERENCES businesses (id),
    calendar_id bigint REFERENCES business_calendars (id),
    starts_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$fn$;
CREATE TRIGGER appointments_touch BEFORE UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
""",
    "V4__outbound_call_jobs.sql": """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'job_status') THEN
        CREATE TYPE job_status AS ENUM ('queued', 'running', 'done', 'failed');
    END IF;
END $$;
CREATE TABLE outbound_call_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL,
    lead_id bigint NOT NULL,
    status job_status NOT NULL DEFAULT 'queued',
    CONSTRAINT unique_run_lead UNIQUE (run_id, lead_id)
);
CREATE INDEX ON outbound_call_jobs (status) WHERE status IN ('queued', 'running');
""",
    "V5__calendar_indexes.sql": """
-- The seed's migration 115: the five calendar indexes, inside a migration.
CREATE INDEX IF NOT EXISTS idx_business_calendars_business_active ON business_calendars (business_id, is_active);
CREATE INDEX IF NOT EXISTS idx_business_calendars_priority ON business_calendars (business_id, priority);
CREATE INDEX IF NOT EXISTS idx_calendar_routing_business_active ON calendar_routing_rules (business_id, is_active);
CREATE INDEX IF NOT EXISTS idx_calendar_routing_calendar ON calendar_routing_rules (calendar_id);
CREATE INDEX IF NOT EXISTS idx_appointments_calendar_id ON appointments (calendar_id);
""",
}
# What the team's index script (db_indexes.py) built outside the migrations.
INDEX_SCRIPT = "CREATE INDEX CONCURRENTLY idx_appointments_starts_at ON appointments (business_id, starts_at)"


def dump(database: Database) -> str:
    """The schema dump without pg_dump 15.14+'s per-run ``\\restrict`` key lines."""
    lines = database.schema_dump().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith(("\\restrict ", "\\unrestrict ")))


def schemad(work: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_schemad(*args, env={"SCHEMAD_DSN": dsn}, cwd=work)


def test_legacy_database_to_schemad(database: Database, tmp_path: Path) -> None:
    work = tmp_path / "app"
    (work / "legacy").mkdir(parents=True)
    for name, text in LEGACY.items():
        (work / "legacy" / name).write_text(text)
    for name in LEGACY:  # the old tool: plain psql, one file after another
        subprocess.run(
            ["psql", database.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(work / "legacy" / name)],
            check=True, capture_output=True,
        )
    database.sql(INDEX_SCRIPT)

    imported = schemad(work, database.dsn, "import", "legacy")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "flyway layout, 5 migration(s) → 4 schemad migration(s), 7 registry index(es)" in imported.stdout
    assert "every statement moved out: no migration file written for it" in imported.stdout
    assert schemad(work, database.dsn, "check").returncode == 0

    based = schemad(work, database.dsn, "baseline", "--version", "4")
    assert based.returncode == 0, based.stderr
    assert based.stdout.splitlines()[-1] == "baselined at version 4: 4 migration(s) were recorded without running them"

    adopted = schemad(work, database.dsn, "adopt", "indexes")
    assert adopted.returncode == 0, adopted.stderr
    assert adopted.stdout.splitlines()[0] == "adopted idx_appointments_starts_at → indexes/appointments.sql"

    migrate = schemad(work, database.dsn, "migrate")
    assert (migrate.returncode, migrate.stdout.strip()) == (0, "nothing to do: schema at version 4")

    dry = schemad(work, database.dsn, "build-indexes", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.splitlines()) == 8
    assert all(line.endswith(": ready") for line in dry.stdout.splitlines()), dry.stdout
    before = dump(database)
    built = schemad(work, database.dsn, "build-indexes")
    assert built.returncode == 0, built.stderr
    assert all(line.split()[1] == "valid" and len(line.split()) == 2 for line in built.stdout.splitlines()), built.stdout
    assert dump(database) == before

    verified = schemad(work, database.dsn, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.splitlines()[-1] == "no difference: the database matches its history"

    (work / "migrations" / "0005_appointment_reminders.sql").write_text(
        "ALTER TABLE appointments ADD COLUMN reminder_sent_at timestamptz;\n"
    )
    applied = schemad(work, database.dsn, "migrate")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == "schema at version 5"
    status = json.loads(schemad(work, database.dsn, "status", "--json").stdout)
    assert [(a["version"], a["baselined"]) for a in status["applied"]] == [
        (1, True), (2, True), (3, True), (4, True), (5, False)
    ]
    assert schemad(work, database.dsn, "verify").returncode == 0
