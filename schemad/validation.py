"""`schemad check`: load both folders and apply every rule (no database here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemad import indexes, lint, migrations
from schemad.findings import Finding, escalate

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    migrations: list[migrations.Migration]
    indexes: list[indexes.IndexSpec]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.is_error for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]


def validate(migrations_dir: Path, indexes_dir: Path, *, strict: bool = False) -> Validation:
    """Every finding for both folders, sorted by position; ``strict`` turns warnings into errors."""
    found_migrations, findings = migrations.discover(migrations_dir, str(migrations_dir))
    for m in found_migrations:
        findings.extend(lint.check_migration(m))
    found_indexes, index_findings = indexes.discover(indexes_dir, str(indexes_dir))
    findings.extend(index_findings)
    return Validation(
        migrations=found_migrations, indexes=found_indexes, findings=escalate(findings, strict=strict)
    )
