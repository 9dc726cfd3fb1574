"""The index registry: what `indexes/*.sql` declares, in what order, and what it rejects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from schemad import indexes, sourcefiles

if TYPE_CHECKING:
    from pathlib import Path


def _parse(text: str, path: str = "indexes/x.sql") -> tuple[list[indexes.IndexSpec], list[str]]:
    specs, findings = indexes.parse_index_file(sourcefiles.SourceFile(path, text))
    return specs, [f.format() for f in findings]


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "indexes"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_spec_fields_come_from_the_statement() -> None:
    [spec], findings = _parse(
        "\n-- Open invoices of a customer, newest first\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_invoices_open\n"
        "    ON billing.invoices USING btree (customer_id, created_at DESC) INCLUDE (total)\n"
        "    WHERE paid_at IS NULL;\n"
    )
    assert findings == []
    assert spec.name == "idx_invoices_open"
    assert (spec.schema, spec.table, spec.qualified_table) == ("billing", "invoices", "billing.invoices")
    assert spec.unique
    assert spec.method == "btree"
    assert spec.columns == ("customer_id", "created_at DESC")
    assert spec.include == ("total",)
    assert spec.predicate == "paid_at IS NULL"
    assert spec.description == "Open invoices of a customer, newest first"
    assert not spec.critical
    assert (spec.path, spec.line, spec.col) == ("indexes/x.sql", 3, 1)


def test_unqualified_table() -> None:
    [spec], _ = _parse("CREATE INDEX idx_a ON accounts (email);\n")
    assert (spec.schema, spec.table, spec.qualified_table) == (None, "accounts", "accounts")


def test_create_sql_is_concurrent_without_if_not_exists() -> None:
    [spec], _ = _parse("CREATE INDEX IF NOT EXISTS idx_a ON app.accounts (lower(email));\n")
    assert spec.create_sql() == "CREATE INDEX CONCURRENTLY idx_a ON app.accounts USING btree (lower(email))"
    assert spec.create_sql(name="idx_a_new") == (
        "CREATE INDEX CONCURRENTLY idx_a_new ON app.accounts USING btree (lower(email))"
    )


def test_canonical_form() -> None:
    [a], _ = _parse("CREATE INDEX idx_a ON accounts (email);\n")
    [b], _ = _parse("CREATE INDEX CONCURRENTLY idx_b ON public.accounts USING btree (email);\n")
    assert a.canonical() == b.canonical() == "CREATE INDEX _ ON public.accounts USING btree (email)"
    assert a.canonical(default_schema="app") == "CREATE INDEX _ ON app.accounts USING btree (email)"


def test_descriptions_and_critical_markers() -> None:
    specs, findings = _parse(
        "-- File header, separated by a blank line: describes nothing.\n"
        "\n"
        "CREATE INDEX idx_none ON t (a);\n"
        "-- Two lines of\n"
        "--   description\n"
        "-- schemad:critical\n"
        "CREATE INDEX idx_two ON t (b);\n"
        "-- schemad:critical\n"
        "CREATE INDEX idx_critical_only ON t (c);\n"
        "-- Not critical\n"
        "CREATE INDEX idx_plain ON t (d);\n"
        "   -- indented comment\n"
        "CREATE INDEX idx_indented ON t (e);\n"
    )
    assert findings == []
    got = {s.name: (s.description, s.critical) for s in specs}
    assert got == {
        "idx_none": (None, False),
        "idx_two": ("Two lines of description", True),
        "idx_critical_only": (None, True),
        "idx_plain": ("Not critical", False),
        "idx_indented": ("indented comment", False),
    }


def test_discover_orders_critical_first_then_by_name(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "b.sql": "CREATE INDEX idx_zeta ON t (a);\n-- schemad:critical\nCREATE INDEX idx_omega ON t (b);\n",
            "a.sql": "CREATE INDEX idx_alpha ON t (c);\n-- schemad:critical\nCREATE INDEX idx_beta ON t (d);\n",
            "README.md": "# ignored\n",
        },
    )
    specs, findings = indexes.discover(folder, "indexes")
    assert findings == []
    assert [(s.name, s.critical) for s in specs] == [
        ("idx_beta", True),
        ("idx_omega", True),
        ("idx_alpha", False),
        ("idx_zeta", False),
    ]
    assert {s.name: s.path for s in specs}["idx_omega"] == "indexes/b.sql"


def test_rejected_statements() -> None:
    specs, findings = _parse(
        "CREATE INDEX idx_ok ON t (a);\n"
        "CREATE INDEX ON t (b);\n"
        "CREATE INDEX idx_parent ON ONLY events (at);\n"
        "ALTER TABLE t ADD COLUMN c int;\n"
        "DROP INDEX idx_old;\n"
        "REINDEX INDEX idx_ok;\n"
    )
    assert [s.name for s in specs] == ["idx_ok"]
    assert findings == [
        "indexes/x.sql:2:1: E121 index has no name: name it explicitly",
        (
            "indexes/x.sql:3:1: E123 ON ONLY is not declared by hand: "
            "schemad builds partitioned indexes per partition and attaches them"
        ),
        "indexes/x.sql:4:1: E120 ALTER TABLE: index files hold only CREATE INDEX statements",
        "indexes/x.sql:5:1: E120 DROP INDEX: index files hold only CREATE INDEX statements",
        "indexes/x.sql:6:1: E120 REINDEX: index files hold only CREATE INDEX statements",
    ]


@pytest.mark.parametrize(
    ("text", "finding"),
    [
        ("", "indexes/x.sql:1:1: E103 no statements in index file"),
        ("-- just a note\n", "indexes/x.sql:1:1: E103 no statements in index file"),
        ("CREATE INDEX idx ON t (a;\n", 'indexes/x.sql:1:25: E104 syntax error at or near ";"'),
        (
            "-- Filter\n  ON business_calendars(business_id, is_active);\n",
            'indexes/x.sql:2:3: E104 syntax error at or near "ON"',
        ),
    ],
)
def test_unusable_files(text: str, finding: str) -> None:
    assert _parse(text) == ([], [finding])


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        {
            "a.sql": "CREATE INDEX idx_dup ON t (a);\n",
            "b.sql": "-- other\nCREATE INDEX IDX_DUP ON u (b);\n",
            "c.sql": 'CREATE INDEX "Idx_Dup" ON v (c);\n',  # quoted: a different name
        },
    )
    specs, findings = indexes.discover(folder, "indexes")
    assert sorted(s.name for s in specs) == ["Idx_Dup", "idx_dup"]
    assert [f.format() for f in findings] == [
        "indexes/b.sql:2:1: E122 index name 'idx_dup' is also declared at indexes/a.sql:1:1"
    ]


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.sql": "CREATE INDEX i ON t (a);\nCREATE INDEX i ON t (b);\n"})
    specs, findings = indexes.discover(folder, "indexes")
    assert [s.columns for s in specs] == [("a",)]
    assert [(f.code, f.line) for f in findings] == [("E122", 2)]


def test_only_sql_files(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path, {"a.sql": "CREATE INDEX i ON t (a);\n", "a.sql~": "junk", ".a.sql.swp": "junk"}
    )
    specs, findings = indexes.discover(folder, "indexes")
    assert [s.name for s in specs] == ["i"]
    assert [f.format() for f in findings] == ["indexes/a.sql~:1:1: E100 index files end in .sql"]


def test_missing_folder(tmp_path: Path) -> None:
    specs, findings = indexes.discover(tmp_path / "nope", "nope")
    assert specs == []
    assert [f.format() for f in findings] == ["nope:1:1: E111 folder nope does not exist"]


def test_unknown_directive_in_an_index_file_is_an_error() -> None:
    source = sourcefiles.SourceFile("i/x.sql", "-- schemad:criticl\nCREATE INDEX a ON t (a);\n")
    specs, found = indexes.parse_index_file(source)
    assert [(f.code, f.line, f.col) for f in found] == [("E108", 1, 1)]
    assert [s.critical for s in specs] == [False]
