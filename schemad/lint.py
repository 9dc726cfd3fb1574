"""Statement rules for migrations: what may run, and which lock-unsafe changes to warn about.

Pure: takes `Migration` values, returns `Finding`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemad import rules, statements
from schemad.statements import Kind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from schemad.findings import Finding
    from schemad.migrations import Migration, MigrationStatement
    from schemad.sqlparser import AlterCmd


def _table(relation: str | None) -> tuple[str | None, str]:
    """(schema, name) as the parser normalised them: quoting and case are already resolved."""
    schema, _, name = (relation or "").rpartition(".")
    return (schema or None, name)


def _is_fresh(relation: str | None, created: set[tuple[str | None, str]]) -> bool:
    schema, name = _table(relation)
    # An unqualified name may resolve to any schema on the search_path: then the name decides.
    return any(n == name and (schema is None or s is None or s == schema) for s, n in created)


def _index_ddl(s: MigrationStatement) -> Iterator[tuple[str, str]]:
    if statements.kind(s.stmt) is Kind.INDEX_DDL:
        yield (
            "E105",
            (
                f"{s.stmt.command} in a migration: indexes belong in indexes/ "
                "(declare it there and schemad builds it concurrently)"
            ),
        )


def _transaction_control(s: MigrationStatement) -> Iterator[tuple[str, str]]:
    if statements.kind(s.stmt) is Kind.TRANSACTION_CONTROL:
        yield ("E107", f"{s.stmt.command}: schemad runs each migration in its own transaction; remove it")


def _data_change(s: MigrationStatement) -> Iterator[tuple[str, str]]:
    if statements.kind(s.stmt) is Kind.DATA_CHANGE:
        yield ("W207", f"{s.stmt.command} in a migration: data changes hold locks and are hard to re-run")


def _rename_drop(s: MigrationStatement) -> Iterator[tuple[str, str]]:
    if s.stmt.node == "rename_stmt":
        yield ("W205", f"{s.stmt.command}: running code still uses the old name")
    if s.stmt.node == "drop_stmt" and s.stmt.drop_type != "INDEX":
        yield ("W206", f"{s.stmt.command}: running code may still use it, and its data is lost")


_ALTER_RULES: dict[str, Callable[[AlterCmd], tuple[str, str] | None]] = {
    "AddConstraint": lambda c: (
        (
            "W208",
            (
                f"ADD {c.constraint_type} builds its index while holding ACCESS EXCLUSIVE: declare a unique index "
                "in indexes/, then ADD CONSTRAINT ... USING INDEX"
            ),
        )
        if c.constraint_type in ("PRIMARY", "UNIQUE") and not c.using_index
        else (
            "W201",
            (
                f"ADD {c.constraint_type} constraint validates the whole table under lock: "
                "add it NOT VALID, then VALIDATE CONSTRAINT in a later migration"
            ),
        )
        if c.constraint_type in ("FOREIGN", "CHECK") and not c.not_valid
        else None
    ),
    "SetNotNull": lambda c: (
        "W202",
        (
            f"SET NOT NULL on {c.column} scans the table under ACCESS EXCLUSIVE: add a CHECK (... IS NOT NULL) "
            "NOT VALID, validate it, then SET NOT NULL"
        ),
    ),
    "AlterColumnType": lambda c: ("W203", f"ALTER COLUMN {c.column} TYPE may rewrite the table under ACCESS EXCLUSIVE"),
    "AddColumn": lambda c: (
        ("W204", f"ADD COLUMN {c.column} with a volatile default rewrites the table under ACCESS EXCLUSIVE")
        if c.volatile_default
        else None
    ),
    "DropColumn": lambda c: ("W206", f"DROP COLUMN {c.column}: running code may still use it, and its data is lost"),
    "DropConstraint": lambda c: ("W206", f"DROP CONSTRAINT {c.column}: the guarantee it gave is gone"),
}


def _alter_table(s: MigrationStatement, created: set[tuple[str | None, str]]) -> Iterator[tuple[str, str]]:
    if not s.stmt.alter_cmds:
        return
    fresh = _is_fresh(s.stmt.relation, created)
    for cmd in s.stmt.alter_cmds:
        rule = _ALTER_RULES.get(cmd.subtype)
        hit = rule(cmd) if rule else None
        # Lock-safety warnings are about tables that already hold data; a table created
        # earlier in the same migration is empty, except that drops still break readers.
        if hit and (not fresh or hit[0] == "W206"):
            yield hit


def check_migration(m: Migration) -> list[Finding]:
    """Every statement-level finding for one migration, waivers applied."""
    out: list[Finding] = []
    created: set[tuple[str | None, str]] = set()
    for s in m.statements:
        hits: list[tuple[str, str]] = [
            *_index_ddl(s),
            *_transaction_control(s),
            *_data_change(s),
            *_rename_drop(s),
            *_alter_table(s, created),
        ]
        reason = statements.not_in_transaction_reason(s.stmt)
        if reason and m.transactional and statements.kind(s.stmt) is not Kind.INDEX_DDL:
            hits.append(("E106", f"{reason}: put it in its own file with -- schemad:no-transaction"))
        if s.stmt.node == "create_stmt":
            created.add(_table(s.stmt.relation))
        out.extend(
            rules.finding(code, m.path, s.line, s.col, msg)
            for code, msg in hits
            if not rules.is_waived(code, m.directives.allow)
        )
    return out
