"""`schemad adopt indexes` on a real PostgreSQL: live indexes become registry files (one per
table, names kept, text from pg_get_indexdef), constraint indexes and system/ledger schemas
are left out, invalid indexes are listed, and `build-indexes --dry-run` then finds every
adopted index ready."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from schemad import adopt, indexes, sourcefiles
from tests.conftest import make_settings, psql, run_schemad

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Database

pytestmark = pytest.mark.anyio

LIVE = """
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, code text UNIQUE, note text,
                     during tstzrange, EXCLUDE USING gist (during WITH &&));
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE UNIQUE INDEX orders_code_lower_uq ON orders (lower(code)) WHERE code IS NOT NULL;
CREATE INDEX ON orders (customer_id DESC NULLS LAST) INCLUDE (note);
COMMENT ON INDEX orders_customer_idx IS 'Look up the orders of a customer';
CREATE SCHEMA app;
CREATE TABLE app."Line Items" (order_id bigint, "Qty" int);
CREATE INDEX "Items By Order" ON app."Line Items" (order_id, "Qty");
CREATE SCHEMA schemad;
CREATE TABLE schemad.events (at timestamptz);
CREATE INDEX events_at_idx ON schemad.events (at);
CREATE TABLE dupes (x int);
INSERT INTO dupes VALUES (1), (1);
"""


def dump(database: Database) -> str:
    """The schema dump without pg_dump 15.14+'s per-run ``\\restrict`` key lines."""
    lines = database.schema_dump().splitlines()
    return "\n".join(ln for ln in lines if not ln.startswith(("\\restrict ", "\\unrestrict ")))


def make_live(database: Database) -> None:
    database.sql(LIVE)
    # A failed concurrent build leaves an INVALID index behind (23505: the data has duplicates).
    psql(database.dsn, "CREATE UNIQUE INDEX CONCURRENTLY dupes_x_uq ON dupes (x)", check=False)
    assert database.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'dupes_x_uq'::regclass") == "f"


def test_adopt_writes_one_registry_file_per_table_and_build_indexes_finds_them_ready(
    database: Database, folders: tuple[Path, Path]
) -> None:
    make_live(database)
    mdir, idir = folders
    settings = make_settings(database.dsn, mdir, idir)
    before = dump(database)

    lines = adopt.run(settings, dry_run=False, out=None)

    assert dump(database) == before  # read-only
    assert sorted(p.name for p in idir.iterdir()) == ["app.Line_Items.sql", "orders.sql"]
    orders = (idir / "orders.sql").read_text()
    specs, findings = indexes.parse_index_file(sourcefiles.SourceFile("indexes/orders.sql", orders))
    assert findings == []
    assert [s.name for s in specs] == ["orders_code_lower_uq", "orders_customer_id_note_idx", "orders_customer_idx"]
    assert "CREATE INDEX orders_customer_idx ON public.orders USING btree (customer_id);" in orders
    assert next(s for s in specs if s.name == "orders_customer_idx").description == "Look up the orders of a customer"
    assert (idir / "app.Line_Items.sql").read_text().endswith(
        'CREATE INDEX "Items By Order" ON app."Line Items" USING btree (order_id, "Qty");\n'
    )
    # Left out: the primary key, UNIQUE and EXCLUDE constraints' indexes and the ledger schema.
    assert "orders_pkey" not in orders and "orders_code_key" not in orders and "excl" not in orders
    assert any(ln.startswith("not adopted: dupes_x_uq on public.dupes is INVALID") for ln in lines)
    assert lines[-1] == "adopted 4 index(es) into 2 file(s); 0 already declared, 1 invalid"

    args = ("--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    dry = run_schemad("build-indexes", "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    names = ["Items By Order", "orders_code_lower_uq", "orders_customer_id_note_idx", "orders_customer_idx"]
    assert sorted(dry.stdout.splitlines()) == sorted(f"would: {n}: ready" for n in names)

    again = adopt.run(settings, dry_run=False, out=None)
    assert again[-1] == "adopted 0 index(es) into 0 file(s); 4 already declared, 1 invalid"
    assert (idir / "orders.sql").read_text() == orders


def test_dry_run_writes_nothing_and_out_writes_elsewhere(
    database: Database, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    make_live(database)
    mdir, idir = folders
    (idir / "orders.sql").write_text("CREATE INDEX orders_customer_idx ON orders (customer_id);\n")
    settings = make_settings(database.dsn, mdir, idir)

    dry = adopt.run(settings, dry_run=True, out=None)
    assert dry[0] == f"would adopt Items By Order → {idir}/app.Line_Items.sql"
    assert "already in the registry: orders_customer_idx" in "\n".join(dry)
    assert sorted(p.name for p in idir.iterdir()) == ["orders.sql"]

    out = tmp_path / "adopted"
    adopt.run(settings, dry_run=False, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["app.Line_Items.sql", "orders.sql"]
    assert "orders_customer_idx" not in (out / "orders.sql").read_text()
