"""`schemad import` for each legacy layout, proved on a real PostgreSQL: a database is built
from the legacy folder the way the old tool ran it (plain `psql`), the folder is imported,
baselined, and `verify` (which replays the imported files and builds the imported registry in
a scratch database) finds the live database identical — including the names PostgreSQL gave
unnamed indexes and every plpgsql body, DO block and index."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from schemad import adopt, baseline, importer, legacy, validation, verify
from schemad.legacy import Layout
from tests.conftest import make_settings, run_schemad

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Database

pytestmark = pytest.mark.anyio

# (name, up SQL, must run outside a transaction), in the order the old tool applied them.
HISTORY: list[tuple[str, str, bool]] = [
    (
        "create shop",
        """CREATE TABLE customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- one account per address, whatever the case
CREATE UNIQUE INDEX customers_lower_email_uq ON customers (lower(email));
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    total numeric(12, 2),
    updated_at timestamptz
);
CREATE INDEX ON orders (customer_id);
""",
        False,
    ),
    (
        "touch trigger",
        """CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();  -- semicolons inside the body
    RETURN NEW;
END;
$fn$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
""",
        False,
    ),
    (
        "order status",
        """DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'order_status') THEN
        CREATE TYPE order_status AS ENUM ('new', 'paid', 'done');
    END IF;
END $$;
ALTER TABLE orders ADD COLUMN status order_status NOT NULL DEFAULT 'new';
CREATE INDEX orders_open_idx ON orders (status) WHERE status <> 'done';
""",
        False,
    ),
    (
        "concurrent index",
        """CREATE INDEX CONCURRENTLY orders_updated_idx ON orders (updated_at);
DROP INDEX CONCURRENTLY orders_open_idx;
ALTER TABLE customers ADD COLUMN note text;
""",
        True,
    ),
]
REGISTRY = {"customers_lower_email_uq", "orders_customer_id_idx", "orders_updated_idx"}


def write_legacy(folder: Path, layout: Layout) -> list[Path]:
    """The legacy folder as ``layout`` writes it; returns the files holding the up SQL, in order."""
    folder.mkdir()
    ups: list[Path] = []
    for i, (name, sql, no_tx) in enumerate(HISTORY, start=1):
        slug = name.replace(" ", "_")
        if layout is Layout.FLYWAY:
            path = folder / f"V{'1.1' if i == 2 else i}__{slug}.sql"
            path.write_text(sql)
        elif layout is Layout.GOLANG_MIGRATE:
            path = folder / f"{i:06d}_{slug}.up.sql"
            # golang-migrate adds no transaction: its users write one.
            path.write_text(sql if no_tx else f"BEGIN;\n{sql}COMMIT;\n")
            (folder / f"{i:06d}_{slug}.down.sql").write_text("SELECT 1;\n")
        elif layout is Layout.DBMATE:
            path = folder / f"2024010{i}120000_{slug}.sql"
            option = " transaction:false" if no_tx else ""
            path.write_text(f"-- migrate:up{option}\n{sql}\n-- migrate:down\nSELECT 1;\n")
        else:
            sub = folder / f"2024-01-0{i}-120000_{slug}"
            sub.mkdir()
            path = sub / "up.sql"
            path.write_text(sql)
            (sub / "down.sql").write_text("SELECT 1;\n")
            if no_tx:
                (sub / "metadata.toml").write_text("run_in_transaction = false\n")
        ups.append(path)
    return ups


def run_like_the_old_tool(database: Database, layout: Layout, ups: list[Path]) -> None:
    """Apply the up sections with plain psql, one file after another."""
    for path in ups:
        text = path.read_text()
        if layout is Layout.DBMATE:
            text = text.split("-- migrate:up", 1)[1].split("\n", 1)[1].split("-- migrate:down")[0]
        subprocess.run(
            ["psql", database.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", text] if "CONCURRENTLY" not in text
            else ["psql", database.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", *_each(text)],
            check=True, capture_output=True,
        )


def _each(text: str) -> list[str]:
    # psql -c sends one multi-statement string as one transaction block; CONCURRENTLY needs its own.
    return [arg for stmt in text.split(";\n") if stmt.strip() for arg in ("-c", stmt)]


@pytest.mark.parametrize("layout", [Layout.FLYWAY, Layout.GOLANG_MIGRATE, Layout.DBMATE, Layout.DIESEL])
async def test_each_layout_imports_and_matches_the_database_it_built(
    layout: Layout, database: Database, tmp_path: Path
) -> None:
    ups = write_legacy(tmp_path / "legacy", layout)
    run_like_the_old_tool(database, layout, ups)
    mdir, idir = tmp_path / "migrations", tmp_path / "indexes"

    lines, clean = importer.run(tmp_path / "legacy", migrations_dir=mdir, indexes_dir=idir)

    assert clean, "\n".join(lines)
    files = legacy.read_folder(tmp_path / "legacy")[0]
    assert legacy.recognise(files).layout is layout
    val = validation.validate(mdir, idir)
    assert val.ok, [f.format() for f in val.findings]
    assert {s.name for s in val.indexes} == REGISTRY
    assert not any("INDEX" in st.stmt.command for m in val.migrations for st in m.statements)
    head = max(m.version for m in val.migrations)

    settings = make_settings(database.dsn, mdir, idir)
    await baseline.baseline(settings, val, version=head, dry_run=False)
    report = await verify.verify(settings, val)

    assert report.differences == [], "\n".join(d.format() for d in report.differences)
    assert report.replayed == head
    live, _ = await adopt.read_live(settings)
    assert adopt.plan(live, val.indexes).adopt == []  # the import already declared every index


def test_the_layouts_special_cases_are_converted(tmp_path: Path) -> None:
    for layout in (Layout.GOLANG_MIGRATE, Layout.DBMATE, Layout.DIESEL):
        write_legacy(tmp_path / layout, layout)
    golang = importer.convert(legacy.recognise(legacy.read_folder(tmp_path / Layout.GOLANG_MIGRATE)[0]))
    removed = [a.message for r in golang.reports for a in r.actions if a.act is legacy.Act.REMOVED]
    assert [m.split()[0] for m in removed] == ["BEGIN", "COMMIT"] * 3
    assert len(golang.skipped) == 4  # the down files
    for layout in (Layout.DBMATE, Layout.DIESEL):
        result = importer.convert(legacy.recognise(legacy.read_folder(tmp_path / layout)[0]))
        last = result.migrations[-1].text
        # The old tool ran it outside a transaction for CONCURRENTLY; that moved out, so now it is atomic.
        assert "no-transaction" not in last and "orders_updated_idx" in last


def test_the_cli_writes_the_folders_and_refuses_to_overwrite(tmp_path: Path) -> None:
    write_legacy(tmp_path / "legacy", Layout.FLYWAY)
    args = ["import", str(tmp_path / "legacy"), "--migrations-dir", str(tmp_path / "m"),
            "--indexes-dir", str(tmp_path / "i")]
    first = run_schemad(*args)
    assert first.returncode == 0, first.stderr
    assert "flyway layout, 4 migration(s) → 4 schemad migration(s), 3 registry index(es) in 2 file(s)" in first.stdout
    assert "V1__create_shop.sql:14:1: CREATE INDEX orders_customer_id_idx → " in first.stdout
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["customers.sql", "orders.sql"]
    again = run_schemad(*args)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    nothing = run_schemad("import", str(tmp_path / "i"))
    assert nothing.returncode == 3
    assert "no migration files recognised" in nothing.stderr
