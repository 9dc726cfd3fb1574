"""`schemad import`'s conversion as a pure function: layouts, ordering, index statements moved
into the registry, transaction control and non-transactional statements, names PostgreSQL
would give, and the rule that no statement disappears without a word."""

from __future__ import annotations

import pytest

from schemad import importer, indexes, legacy, sourcefiles, sqlparser
from schemad.legacy import Act, Layout, LegacyFile


def folder(files: dict[str, str]) -> list[LegacyFile]:
    return [LegacyFile(path, text) for path, text in files.items()]


def convert(files: dict[str, str], *, waive_warnings: bool = False) -> importer.ImportResult:
    return importer.convert(legacy.recognise(folder(files)), waive_warnings=waive_warnings)


def texts(result: importer.ImportResult) -> dict[str, str]:
    return {f.name: f.text for f in result.migrations}


def actions(result: importer.ImportResult, act: Act) -> list[str]:
    return [a.message for r in result.reports for a in r.actions if a.act is act]


def registry(result: importer.ImportResult) -> dict[str, str]:
    """Registry index name → its statement, parsed back the way `schemad check` reads it."""
    out: dict[str, str] = {}
    for f in result.index_files:
        specs, findings = indexes.parse_index_file(sourcefiles.SourceFile(f"indexes/{f.name}", f.text))
        assert findings == []
        out.update({s.name: s.definition.source for s in specs})
    return out


PLPGSQL = """CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();  -- a semicolon inside the body
    RETURN NEW;
END;
$fn$;
"""
DO_BLOCK = """DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN
        CREATE TYPE mood AS ENUM ('ok', 'meh');
    END IF;
END $$;
"""


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("files", "layout"),
    [
        ({"V1__init.sql": "SELECT 1;", "V2__more.sql": "SELECT 2;"}, Layout.FLYWAY),
        ({"0001_init.up.sql": "SELECT 1;", "0001_init.down.sql": "SELECT 0;"}, Layout.GOLANG_MIGRATE),
        ({"20240101120000_init.sql": "-- migrate:up\nSELECT 1;\n-- migrate:down\n"}, Layout.DBMATE),
        ({"2024-01-01-120000_init/up.sql": "SELECT 1;", "2024-01-01-120000_init/down.sql": ""}, Layout.DIESEL),
        ({"001_init.sql": "SELECT 1;", "README.md": "notes"}, Layout.PLAIN),
    ],
)
def test_each_layout_is_recognised(files: dict[str, str], layout: Layout) -> None:
    assert legacy.detect_layout(folder(files)) is layout


def test_mixed_or_unknown_layouts_are_refused_with_a_reason() -> None:
    with pytest.raises(legacy.LegacyFolderError, match="mixes migration layouts"):
        legacy.detect_layout(folder({"V1__a.sql": "", "0002_b.up.sql": ""}))
    with pytest.raises(legacy.LegacyFolderError, match="no migration files recognised"):
        legacy.detect_layout(folder({"schema.sql": "", "notes.txt": ""}))


def test_flyway_versions_are_ordered_numerically_and_dotted_versions_fit_between() -> None:
    rec = legacy.recognise(folder({
        "V10__ten.sql": "SELECT 10;", "V2__two.sql": "SELECT 2;", "V1_2__one_two.sql": "SELECT 12;",
        "V1.1__one_one.sql": "SELECT 11;", "V1__one.sql": "SELECT 1;", "U2__undo.sql": "SELECT 0;",
        "R__views.sql": "SELECT 99;",
    }))
    assert [m.original_id for m in rec.migrations] == ["1", "1.1", "1.2", "2", "10", "R"]
    assert [a.path for a in rec.actions] == ["U2__undo.sql"]
    result = importer.convert(rec)
    assert list(texts(result)) == [
        "0001_one.sql", "0002_one_one.sql", "0003_one_two.sql", "0004_two.sql", "0005_ten.sql", "0006_views.sql",
    ]
    assert "(version 1.1)" in texts(result)["0002_one_one.sql"].splitlines()[0]
    assert any("repeatable" in m for m in actions(result, Act.WARNING))


def test_flyway_migrations_in_subfolders_are_found() -> None:
    rec = legacy.recognise(folder({"V2__b.sql": "SELECT 2;", "core/V1__a.sql": "SELECT 1;", "core/notes.txt": ""}))
    assert [m.path for m in rec.migrations] == ["core/V1__a.sql", "V2__b.sql"]
    assert [a.path for a in rec.actions] == ["core/notes.txt"]


def test_golang_migrate_down_files_are_reported_not_imported() -> None:
    result = convert({
        "000001_create_users.up.sql": "CREATE TABLE users (id int);",
        "000001_create_users.down.sql": "DROP TABLE users;",
        "000002_add_email.up.sql": "ALTER TABLE users ADD COLUMN email text;",
    })
    assert list(texts(result)) == ["0001_create_users.sql", "0002_add_email.sql"]
    assert [a.path for a in result.skipped] == ["000001_create_users.down.sql"]
    assert "forward-only" in result.skipped[0].message


def test_dbmate_takes_only_the_up_section_and_positions_count_in_the_whole_file() -> None:
    result = convert({
        "20240101120000_items.sql": (
            "-- migrate:up\nCREATE TABLE items (id int);\nCREATE INDEX items_id ON items (id);\n\n"
            "-- migrate:down\nDROP TABLE items;\n"
        ),
    })
    text = texts(result)["0001_items.sql"]
    assert "DROP TABLE" not in text and "CREATE TABLE items (id int);" in text
    moved = [a for r in result.reports for a in r.actions if a.act is Act.MOVED]
    assert (moved[0].line, moved[0].col) == (3, 1)
    assert any("migrate:down" in a.message for a in result.skipped)


def test_dbmate_transaction_false_stays_outside_a_transaction_only_while_it_must() -> None:
    result = convert({
        "20240101000000_a.sql": "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY a_x ON a (x);\n"
                                "ALTER TABLE a ADD COLUMN y int;\n",
        "20240102000000_b.sql": "-- migrate:up transaction:false\nALTER TYPE mood ADD VALUE 'sad';\nVACUUM a;\n",
    })
    first, second = texts(result).values()
    assert "no-transaction" not in first  # the index moved out: the rest is all-or-nothing now
    assert "-- schemad:no-transaction" in second
    assert result.ok


def test_diesel_folders_and_metadata_run_in_transaction_false() -> None:
    result = convert({
        "2024-01-02-030405_create_users/up.sql": "CREATE TABLE users (id serial PRIMARY KEY, email text);",
        "2024-01-02-030405_create_users/down.sql": "DROP TABLE users;",
        "2024-01-03-000000_Add-Index/up.sql": "VACUUM users;",
        "2024-01-03-000000_Add-Index/metadata.toml": "run_in_transaction = false\n",
        "00000000000000_diesel_initial_setup/up.sql": "SELECT 1;",
    })
    assert list(texts(result)) == ["0001_diesel_initial_setup.sql", "0002_create_users.sql", "0003_add_index.sql"]
    assert "-- schemad:no-transaction" in texts(result)["0003_add_index.sql"]
    assert result.ok


def test_slugs_are_sanitised() -> None:
    assert legacy.slugify("Add Users & Orders (v2)") == "add_users_orders_v2"
    assert legacy.slugify("Crème brûlée") == "creme_brulee"
    assert legacy.slugify("---") == "migration"


# --------------------------------------------------------------------------- index names


@pytest.mark.parametrize(
    ("sql", "taken", "expected"),
    [
        # Names PostgreSQL 15 gave these statements (see the integration test for the live check).
        ("CREATE INDEX ON orders (customer_id)", set(), "orders_customer_id_idx"),
        ("CREATE INDEX ON orders (customer_id)", {"orders_customer_id_idx"}, "orders_customer_id_idx1"),
        ("CREATE UNIQUE INDEX ON orders (note)", set(), "orders_note_idx"),
        ("CREATE INDEX ON orders (lower(note))", set(), "orders_lower_idx"),
        ("CREATE INDEX ON orders ((a + b))", set(), "orders_expr_idx"),
        ("CREATE INDEX ON orders (customer_id) INCLUDE (created_at)", set(), "orders_customer_id_created_at_idx"),
        ('CREATE INDEX ON orders ("Weird Col")', set(), "orders_Weird Col_idx"),
        ("CREATE INDEX ON orders (a, a)", set(), "orders_a_a1_idx"),
        (
            (
                "CREATE INDEX ON a_very_long_table_name_that_goes_on_and_on_and_on_forever_and_e "
                "(a_rather_long_column_name_too, b)"
            ),
            set(),
            "a_very_long_table_name_that_g_a_rather_long_column_name_too_idx",
        ),
    ],
)
def test_unnamed_indexes_get_the_name_postgresql_gives_them(sql: str, taken: set[str], expected: str) -> None:
    idx = sqlparser.parse(sql)[0].index
    assert idx is not None
    assert legacy.postgres_index_name(idx, taken) == expected


# --------------------------------------------------------------------------- conversion


def test_index_statements_move_to_the_registry_one_file_per_table() -> None:
    result = convert({
        "V1__orders.sql": (
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, note text);\n"
            "-- Look up a customer's orders\n"
            "CREATE INDEX orders_customer_idx ON orders (customer_id);\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_note_idx ON orders (note) WHERE note IS NOT NULL;\n"
            "CREATE INDEX ON orders (lower(note));\n"
            "CREATE INDEX items_id ON shop.items (id);\n"
        ),
    })
    assert sorted(f.name for f in result.index_files) == ["orders.sql", "shop.items.sql"]
    reg = registry(result)
    assert set(reg) == {"orders_customer_idx", "orders_note_idx", "orders_lower_idx", "items_id"}
    orders = next(f.text for f in result.index_files if f.name == "orders.sql")
    specs, _ = indexes.parse_index_file(sourcefiles.SourceFile("indexes/orders.sql", orders))
    assert next(s for s in specs if s.name == "orders_customer_idx").description == "Look up a customer's orders"
    migration = texts(result)["0001_orders.sql"]
    assert "CREATE INDEX" not in migration.replace("-- [import] moved to the index registry: CREATE INDEX", "")
    assert any("unnamed index: named orders_lower_idx" in m for m in actions(result, Act.WARNING))
    assert result.ok


def test_drops_reindex_and_transaction_control_are_taken_out_and_reported() -> None:
    result = convert({
        "0001_init.up.sql": (
            "BEGIN;\nCREATE TABLE t (id int, x int);\nCREATE INDEX t_x ON t (x);\nCOMMIT;\n"
        ),
        "0002_change.up.sql": (
            "DROP INDEX CONCURRENTLY IF EXISTS t_x, gone_idx;\nREINDEX TABLE t;\nALTER TABLE t ADD COLUMN y int;\n"
        ),
    })
    assert registry(result) == {}
    dropped = actions(result, Act.DROPPED)
    assert any("t_x" in m and "taken out of the imported registry" in m for m in dropped)
    assert any("gone_idx" in m and "registry has no drops and does not declare it" in m for m in dropped)
    removed = actions(result, Act.REMOVED)
    assert [m.split()[0] for m in removed] == ["BEGIN", "COMMIT", "REINDEX"]
    assert result.ok


def test_statements_that_cannot_run_in_a_transaction_get_their_own_file() -> None:
    result = convert({"V1__big.sql": "CREATE TABLE t (id int);\nVACUUM t;\nALTER TABLE t ADD COLUMN y int;\n"})
    out = texts(result)
    assert list(out) == ["0001_big.sql", "0002_big_part2.sql", "0003_big_part3.sql"]
    assert "-- schemad:no-transaction" in out["0002_big_part2.sql"] and "VACUUM t;" in out["0002_big_part2.sql"]
    assert "no-transaction" not in out["0001_big.sql"] + out["0003_big_part3.sql"]
    assert "Part 2 of 3: VACUUM cannot run inside a transaction block." in out["0002_big_part2.sql"]
    assert len(actions(result, Act.SPLIT)) == 1
    assert result.ok


def test_plpgsql_bodies_and_do_blocks_come_through_whole() -> None:
    result = convert({"V1__fn.sql": PLPGSQL + DO_BLOCK + "CREATE INDEX t_x ON t (x);\n"})
    text = texts(result)["0001_fn.sql"]
    assert PLPGSQL.strip() in text and DO_BLOCK.strip() in text
    assert [s.node for s in sqlparser.parse(text)] == ["create_function_stmt", "do_stmt"]
    assert result.ok


def test_index_ddl_inside_procedural_code_is_flagged() -> None:
    result = convert({"V1__do.sql": "DO $$ BEGIN EXECUTE 'CREATE INDEX x ON t (a)'; END $$;\n"})
    assert any("procedural code mentions index DDL" in m for m in actions(result, Act.WARNING))


def test_the_registry_follows_later_renames_and_drops() -> None:
    result = convert({
        "V1__a.sql": "CREATE TABLE a (id int, x int, y int);\nCREATE INDEX a_x ON a (x);\n"
                     "CREATE INDEX a_y ON a (y);\nCREATE TABLE gone (id int);\nCREATE INDEX gone_id ON gone (id);\n",
        "V2__b.sql": "ALTER TABLE a RENAME TO b;\nALTER INDEX a_x RENAME TO b_x;\nALTER TABLE b DROP COLUMN y;\n"
                     "DROP TABLE gone;\n",
    })
    reg = registry(result)
    assert set(reg) == {"b_x"}
    assert "ON b" in reg["b_x"]
    text = texts(result)["0002_b.sql"]
    assert "ALTER INDEX" not in text.replace("-- [import] applied to the registry: ALTER INDEX", "")
    assert result.ok


def test_using_index_on_a_moved_index_is_flagged() -> None:
    result = convert({
        "V1__u.sql": "CREATE TABLE u (email text);\nCREATE UNIQUE INDEX u_email ON u (email);\n"
                     "ALTER TABLE u ADD CONSTRAINT u_email_key UNIQUE USING INDEX u_email;\n",
    })
    assert registry(result) == {}
    assert any("USING INDEX u_email" in m for m in actions(result, Act.WARNING))


def test_a_file_the_parser_rejects_is_copied_and_check_names_the_position() -> None:
    result = convert({"V1__ok.sql": "CREATE TABLE t (id int);", "V2__bad.sql": "CREATE TABLE (;\n"})
    assert "CREATE TABLE (;" in texts(result)["0002_bad.sql"]
    [error] = result.errors
    assert (error.path, error.code) == ("migrations/0002_bad.sql", "E104")
    assert error.line == 3  # after the two header lines
    assert not result.ok


def test_what_check_still_rejects_is_reported_per_file_with_positions() -> None:
    result = convert({"V1__sp.sql": "CREATE TABLE t (id int);\nSAVEPOINT a;\n"})
    [report] = result.reports
    assert [(f.code, f.line, f.col) for f in report.errors] == [("E107", 4, 1)]
    lines = importer.render_report(result, [], source="legacy")
    assert "  schemad check still rejects:" in lines
    assert any(ln.strip().startswith("migrations/0001_sp.sql:4:1: E107") for ln in lines)


def test_waive_warnings_marks_history_that_already_ran() -> None:
    files = {"V1__a.sql": "CREATE TABLE a (id int);", "V2__b.sql": "ALTER TABLE a ALTER COLUMN id SET NOT NULL;"}
    plain = convert(files)
    assert [f.code for r in plain.reports for f in r.findings] == ["W202"]
    waived = convert(files, waive_warnings=True)
    assert [f.code for r in waived.reports for f in r.findings] == []
    assert "-- schemad:allow=set-not-null imported from flyway" in texts(waived)["0002_b.sql"]


def test_a_file_of_only_index_statements_writes_no_migration() -> None:
    result = convert({"V1__t.sql": "CREATE TABLE t (x int);", "V2__idx.sql": "CREATE INDEX t_x ON t (x);"})
    assert list(texts(result)) == ["0001_t.sql"]
    assert any("no migration file written" in m for m in actions(result, Act.MOVED))


def test_no_statement_disappears_without_a_word() -> None:
    files = {
        "V1__all.sql": (
            "BEGIN;\nCREATE TABLE t (id int, x int);\n" + PLPGSQL + DO_BLOCK
            + "CREATE INDEX ON t (x);\nVACUUM t;\nDROP INDEX IF EXISTS nope;\nREINDEX TABLE t;\n"
            "ALTER TABLE t ADD COLUMN y int;\nCOMMIT;\n"
        ),
    }
    result = convert(files)
    kept = {s.tokens_digest for f in result.migrations for s in sqlparser.parse(f.text)}
    kept |= {s.tokens_digest for f in result.index_files for s in sqlparser.parse(f.text)}
    reported = {(a.line, a.col) for r in result.reports for a in r.actions}
    source = sourcefiles.SourceFile("V1__all.sql", files["V1__all.sql"])
    for st in sqlparser.parse(files["V1__all.sql"]):
        assert st.tokens_digest in kept or source.position(st.start) in reported, st.text
