"""The table of validation rules: code, name, severity, and whether a file may waive it.

Errors stop everything (exit 3). Warnings are the lock-safety rules users know from
strong_migrations and squawk; `--strict` makes them errors, and a migration may waive one
with ``-- schemad:allow=RULE reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemad.findings import Finding, Severity


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str

    @property
    def waivable(self) -> bool:
        return self.severity is Severity.WARNING


_E, _W = Severity.ERROR, Severity.WARNING

RULES: tuple[Rule, ...] = (
    Rule("E100", "bad-name", _E, "file names are NNNN_slug.sql with slug [a-z0-9_]+"),
    Rule("E101", "duplicate-version", _E, "two migration files share a version"),
    Rule("E102", "not-utf8", _E, "files must be UTF-8"),
    Rule("E103", "empty", _E, "a file with no statements"),
    Rule("E104", "syntax", _E, "the PostgreSQL parser rejects the text"),
    Rule("E105", "index-in-migration", _E, "CREATE/DROP/REINDEX INDEX belongs in indexes/"),
    Rule("E106", "not-in-transaction", _E, "a statement that cannot run in a transactional migration"),
    Rule("E107", "transaction-control", _E, "BEGIN/COMMIT/SAVEPOINT/...: schemad owns the transaction"),
    Rule("E108", "bad-directive", _E, "an unknown or malformed -- schemad: directive"),
    Rule("E109", "unsafe-path", _E, "a symlink leaving the folder, or not a regular file"),
    Rule("E110", "too-large", _E, "a file over the size limit"),
    Rule("E111", "missing-folder", _E, "the folder does not exist"),
    Rule("E120", "not-create-index", _E, "an index file statement that is not CREATE INDEX"),
    Rule("E121", "unnamed-index", _E, "registry indexes must be named explicitly"),
    Rule("E122", "duplicate-index-name", _E, "two registry indexes share a name"),
    Rule("E123", "bad-index-option", _E, "an index option schemad cannot build concurrently"),
    Rule("E130", "checksum-mismatch", _E, "an applied migration was changed"),
    Rule("W201", "constraint-not-valid", _W, "FK/CHECK on an existing table without NOT VALID"),
    Rule("W202", "set-not-null", _W, "SET NOT NULL scans the table under ACCESS EXCLUSIVE"),
    Rule("W203", "alter-column-type", _W, "ALTER COLUMN TYPE may rewrite the table"),
    Rule("W204", "volatile-default", _W, "ADD COLUMN with a volatile default rewrites the table"),
    Rule("W205", "rename", _W, "a rename breaks running application code"),
    Rule("W206", "drop", _W, "a drop breaks running application code and loses data"),
    Rule("W207", "data-change", _W, "INSERT/UPDATE/DELETE in a migration"),
    Rule("W208", "constraint-builds-index", _W, "ADD PRIMARY KEY/UNIQUE builds an index under ACCESS EXCLUSIVE"),
)

BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}
BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}
WAIVABLE: frozenset[str] = frozenset(
    {r.name for r in RULES if r.waivable} | {r.code for r in RULES if r.waivable}
)


def finding(code: str, path: str, line: int, col: int, message: str) -> Finding:
    rule = BY_CODE[code]
    return Finding(path=path, line=line, col=col, code=code, rule=rule.name, message=message, severity=rule.severity)


def is_waived(code: str, allow: dict[str, str]) -> bool:
    rule = BY_CODE[code]
    return rule.waivable and (rule.code in allow or rule.name in allow)
