"""Statement rules: index DDL, transaction control, non-transactional statements, and the
lock-safety warnings W201..W207 with their waivers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from schemad import findings, lint, migrations, rules, sourcefiles, validation

if TYPE_CHECKING:
    from pathlib import Path


def _lint(text: str) -> list[tuple[str, int]]:
    source = sourcefiles.SourceFile("m/0001_x.sql", text)
    m, errs = migrations.parse_migration(source, 1, "x")
    assert errs == []
    assert m is not None
    return [(f.code, f.line) for f in lint.check_migration(m)]


def _messages(text: str) -> list[str]:
    m, _ = migrations.parse_migration(sourcefiles.SourceFile("m/0001_x.sql", text), 1, "x")
    assert m is not None
    return [f.format() for f in lint.check_migration(m)]


# --------------------------------------------------------------------------- each warning


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES customers (id);", "W201"),
        ("ALTER TABLE orders ADD CONSTRAINT pos CHECK (total >= 0);", "W201"),
        ("ALTER TABLE orders ALTER COLUMN total SET NOT NULL;", "W202"),
        ("ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2);", "W203"),
        ("ALTER TABLE orders ALTER total SET DATA TYPE bigint;", "W203"),
        ("ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();", "W204"),
        ("ALTER TABLE orders ADD COLUMN r float8 NOT NULL DEFAULT random();", "W204"),
        ("ALTER TABLE orders ADD COLUMN seq bigserial;", "W204"),
        ("ALTER TABLE orders RENAME TO purchases;", "W205"),
        ("ALTER TABLE orders RENAME COLUMN total TO amount;", "W205"),
        ("ALTER TABLE orders RENAME CONSTRAINT a TO b;", "W205"),
        ("DROP TABLE orders;", "W206"),
        ("DROP VIEW order_totals;", "W206"),
        ("ALTER TABLE orders DROP COLUMN note;", "W206"),
        ("ALTER TABLE orders DROP CONSTRAINT pos;", "W206"),
        ("INSERT INTO orders (id) VALUES (1);", "W207"),
        ("UPDATE orders SET total = 0 WHERE total IS NULL;", "W207"),
        ("DELETE FROM orders WHERE id < 10;", "W207"),
        ("COPY orders FROM '/tmp/orders.csv';", "W207"),
        ("ALTER TABLE orders ADD CONSTRAINT orders_ref UNIQUE (ref);", "W208"),
        ("ALTER TABLE orders ADD PRIMARY KEY (id);", "W208"),
    ],
)
def test_warning_rule(sql: str, code: str) -> None:
    assert _lint("-- a comment line\n" + sql + "\n") == [(code, 2)]
    assert rules.BY_CODE[code].severity is findings.Severity.WARNING


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES customers (id) NOT VALID;",
        "ALTER TABLE orders ADD CONSTRAINT pos CHECK (total >= 0) NOT VALID;",
        "ALTER TABLE orders VALIDATE CONSTRAINT pos;",
        "ALTER TABLE orders ADD COLUMN note text;",
        "ALTER TABLE orders ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();",
        "ALTER TABLE orders ADD COLUMN flag boolean NOT NULL DEFAULT false;",
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);",
        "CREATE VIEW v AS SELECT 1;",
        "COMMENT ON TABLE orders IS 'drop table; rename';",
        "SELECT 1;",
    ],
)
def test_safe_statements_do_not_warn(sql: str) -> None:
    assert _lint(sql + "\n") == []


def test_warning_messages() -> None:
    assert _messages(
        "ALTER TABLE orders ALTER COLUMN total SET NOT NULL;\n"
        "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES customers (id);\n"
        "UPDATE orders SET total = 0;\n"
    ) == [
        (
            "m/0001_x.sql:1:1: W202 SET NOT NULL on total scans the table under ACCESS EXCLUSIVE: "
            "add a CHECK (... IS NOT NULL) NOT VALID, validate it, then SET NOT NULL (warning)"
        ),
        (
            "m/0001_x.sql:2:1: W201 ADD FOREIGN constraint validates the whole table under lock: "
            "add it NOT VALID, then VALIDATE CONSTRAINT in a later migration (warning)"
        ),
        "m/0001_x.sql:3:1: W207 UPDATE in a migration: data changes hold locks and are hard to re-run (warning)",
    ]


def test_one_statement_with_several_unsafe_commands() -> None:
    assert _lint(
        "ALTER TABLE orders ALTER COLUMN a SET NOT NULL, ALTER COLUMN b TYPE text, DROP COLUMN c;\n"
    ) == [("W202", 1), ("W203", 1), ("W206", 1)]


# --------------------------------------------------------------------------- waivers


@pytest.mark.parametrize("allow", ["set-not-null", "W202"])
def test_waiver_by_name_or_code(allow: str) -> None:
    text = (
        f"-- schemad:allow={allow} orders has 40 rows, checked on 2024-05-01\n"
        "ALTER TABLE orders ALTER COLUMN total SET NOT NULL;\n"
        "ALTER TABLE orders ALTER COLUMN total TYPE bigint;\n"
    )
    assert _lint(text) == [("W203", 3)]  # only the waived rule is silenced


def test_waiver_for_every_warning() -> None:
    waivers = "".join(f"-- schemad:allow={r.name} reviewed\n" for r in rules.RULES if r.waivable)
    body = (
        "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES o (id);\n"
        "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
        "ALTER TABLE t ALTER COLUMN c TYPE bigint;\n"
        "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();\n"
        "ALTER TABLE t RENAME COLUMN a TO b;\n"
        "DROP TABLE old;\n"
        "DELETE FROM t;\n"
    )
    assert len(_lint(body)) == 7
    assert _lint(waivers + body) == []


def test_errors_cannot_be_waived() -> None:
    text = "-- schemad:allow=E105 we know\nCREATE INDEX i ON t (c);\n"
    source = sourcefiles.SourceFile("m/0001_x.sql", text)
    m, errs = migrations.parse_migration(source, 1, "x")
    assert [e.code for e in errs] == ["E108"]
    assert m is not None
    assert [f.code for f in lint.check_migration(m)] == ["E105"]
    assert not rules.is_waived("E105", {"E105": "we know", "index-in-migration": "we know"})


# --------------------------------------------------------------------------- fresh tables


def test_tables_created_earlier_in_the_migration_do_not_warn() -> None:
    text = (
        "CREATE TABLE invoices (id bigint PRIMARY KEY, customer_id bigint, total numeric, ref text);\n"
        "ALTER TABLE invoices ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id);\n"
        "ALTER TABLE invoices ADD CONSTRAINT pos CHECK (total >= 0);\n"
        "ALTER TABLE invoices ALTER COLUMN total SET NOT NULL;\n"
        "ALTER TABLE invoices ALTER COLUMN ref TYPE varchar(40);\n"
        "ALTER TABLE public.invoices ADD COLUMN token uuid DEFAULT gen_random_uuid();\n"
        "ALTER TABLE invoices DROP COLUMN ref;\n"  # a drop still breaks readers
        "ALTER TABLE customers ALTER COLUMN name SET NOT NULL;\n"  # not created here
    )
    assert _lint(text) == [("W206", 7), ("W202", 8)]


def test_a_table_created_later_in_the_migration_is_not_fresh_yet() -> None:
    text = "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\nCREATE TABLE t (c int);\n"
    assert _lint(text) == [("W202", 1)]


@pytest.mark.parametrize(
    ("created", "altered", "warns"),
    [
        ("app.t", "app.t", False),
        ("t", "public.t", False),
        ("public.t", "t", False),
        ("app.t", "other.t", True),  # same name, another schema
        ('"Orders"', '"Orders"', False),
        ('"Orders"', "orders", True),  # quoted identifiers keep their case
        ("ORDERS", "orders", False),  # unquoted ones fold to lower case
    ],
)
def test_fresh_table_matching_respects_schema_and_quoting(created: str, altered: str, warns: bool) -> None:
    text = f"CREATE TABLE {created} (c int);\nALTER TABLE {altered} ALTER COLUMN c SET NOT NULL;\n"
    assert _lint(text) == ([("W202", 2)] if warns else [])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("CREATE INDEX i ON t (c);", "CREATE INDEX"),
        ("CREATE UNIQUE INDEX i ON t (c);", "CREATE INDEX"),
        ("CREATE INDEX CONCURRENTLY i ON t (c);", "CREATE INDEX"),
        ("CREATE INDEX IF NOT EXISTS i ON t (c);", "CREATE INDEX"),
        ("DROP INDEX i;", "DROP INDEX"),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;", "DROP INDEX"),
        ("REINDEX INDEX i;", "REINDEX"),
        ("REINDEX TABLE CONCURRENTLY t;", "REINDEX"),
    ],
)
@pytest.mark.parametrize("header", ["", "-- schemad:no-transaction\n"])
def test_index_ddl_is_one_error_in_any_migration(sql: str, command: str, header: str) -> None:
    line = header.count("\n") + 1
    assert _messages(header + sql + "\n") == [
        (
            f"m/0001_x.sql:{line}:1: E105 {command} in a migration: indexes belong in indexes/ "
            "(declare it there and schemad builds it concurrently)"
        )
    ]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("VACUUM t;", "VACUUM cannot run inside a transaction block"),
        ("VACUUM;", "VACUUM cannot run inside a transaction block"),
        ("CREATE DATABASE d;", "CREATE DATABASE cannot run inside a transaction block"),
        ("DROP DATABASE d;", "DROP DATABASE cannot run inside a transaction block"),
        ("ALTER SYSTEM SET work_mem = '1MB';", "ALTER SYSTEM cannot run inside a transaction block"),
        ("CREATE TABLESPACE ts LOCATION '/x';", "CREATE TABLESPACE cannot run inside a transaction block"),
        ("CLUSTER;", "CLUSTER without a table cannot run inside a transaction block"),
        (
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;",
            "ALTER TABLE CONCURRENTLY cannot run inside a transaction block",
        ),
    ],
)
def test_not_in_transaction(sql: str, reason: str) -> None:
    msgs = [m for m in _messages(sql + "\n") if " E106 " in m]
    assert msgs == [f"m/0001_x.sql:1:1: E106 {reason}: put it in its own file with -- schemad:no-transaction"]
    assert [c for c, _ in _lint("-- schemad:no-transaction\n" + sql + "\n") if c == "E106"] == []


def test_cluster_with_a_table_may_run_in_a_transaction() -> None:
    assert _lint("CLUSTER t USING t_pkey;\n") == []


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("BEGIN;", "BEGIN"),
        ("START TRANSACTION;", "START"),
        ("COMMIT;", "COMMIT"),
        ("END;", "COMMIT"),
        ("ROLLBACK;", "ROLLBACK"),
        ("SAVEPOINT s;", "SAVEPOINT"),
        ("RELEASE SAVEPOINT s;", "RELEASE"),
        ("ROLLBACK TO SAVEPOINT s;", "ROLLBACK TO"),
    ],
)
@pytest.mark.parametrize("header", ["", "-- schemad:no-transaction\n"])
def test_transaction_control(sql: str, command: str, header: str) -> None:
    line = header.count("\n") + 1
    assert _messages(header + sql + "\n") == [
        f"m/0001_x.sql:{line}:1: E107 {command}: schemad runs each migration in its own transaction; remove it"
    ]


# --------------------------------------------------------------------------- --strict


def _finding(code: str, line: int) -> findings.Finding:
    return rules.finding(code, "m/0001_x.sql", line, 1, "msg")


def test_escalate_sorts_and_keeps_warnings_without_strict() -> None:
    out = findings.escalate([_finding("W202", 3), _finding("E104", 1), _finding("W207", 2)], strict=False)
    assert [(f.code, f.severity) for f in out] == [
        ("E104", findings.Severity.ERROR),
        ("W207", findings.Severity.WARNING),
        ("W202", findings.Severity.WARNING),
    ]
    assert out[1].format() == "m/0001_x.sql:2:1: W207 msg (warning)"


def test_escalate_strict_turns_warnings_into_errors() -> None:
    out = findings.escalate([_finding("W202", 3), _finding("E104", 1)], strict=True)
    assert [(f.code, f.severity, f.rule) for f in out] == [
        ("E104", findings.Severity.ERROR, "syntax"),
        ("W202", findings.Severity.ERROR, "set-not-null"),
    ]
    assert out[1].format() == "m/0001_x.sql:3:1: W202 msg"


def test_validate_strict(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "i").mkdir()
    (tmp_path / "m" / "0001_x.sql").write_text("DELETE FROM t;\n", encoding="utf-8")
    relaxed = validation.validate(tmp_path / "m", tmp_path / "i")
    assert relaxed.ok
    assert [f.code for f in relaxed.findings] == ["W207"]
    assert relaxed.errors == []
    strict = validation.validate(tmp_path / "m", tmp_path / "i", strict=True)
    assert not strict.ok
    assert [f.code for f in strict.errors] == ["W207"]


def test_rule_table_is_consistent() -> None:
    codes = [r.code for r in rules.RULES]
    names = [r.name for r in rules.RULES]
    assert len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)
    for r in rules.RULES:
        assert r.waivable is r.code.startswith("W")
        assert (r.severity is findings.Severity.ERROR) is r.code.startswith("E")
    assert rules.WAIVABLE == {r.code for r in rules.RULES if r.waivable} | {
        r.name for r in rules.RULES if r.waivable
    }


def test_constraint_using_an_existing_index_builds_nothing() -> None:
    assert _lint("ALTER TABLE orders ADD CONSTRAINT orders_ref UNIQUE USING INDEX orders_ref_idx;\n") == []


def test_directive_text_inside_a_function_body_is_not_a_directive() -> None:
    text = (
        "CREATE TABLE t (id int);\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n"
        "-- schemad:no-transaction\n"
        "SELECT 1 $$;\n"
    )
    m, errs = migrations.parse_migration(sourcefiles.SourceFile("m/0001_x.sql", text), 1, "x")
    assert errs == []
    assert m is not None and m.transactional
