"""`schemad check`: load both folders and apply every rule (no database here).

Every file is read and checked on every run; with ``cache`` (the default) the parse of a
file whose text was parsed before comes from the per-user parse cache (`parsecache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemad import indexes, lint, migrations, parsecache, sqlparser
from schemad.findings import Finding, escalate

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.migrations import Parse
    from schemad.sourcefiles import SourceFile


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


def check_migration_file(
    source: SourceFile, version: int, slug: str, *, parse: Parse = sqlparser.parse
) -> tuple[migrations.Migration | None, list[Finding]]:
    """One migration file: parsed, then every statement rule."""
    migration, findings = migrations.parse_migration(source, version, slug, parse=parse)
    if migration is not None:
        findings.extend(lint.check_migration(migration))
    return migration, findings


def validate(migrations_dir: Path, indexes_dir: Path, *, strict: bool = False, cache: bool = True) -> Validation:
    """Every finding for both folders, sorted by position; ``strict`` turns warnings into errors.

    With ``cache``, a file whose exact text was checked before is not parsed and checked
    again (`parsecache`); it is still read, so any change is seen.
    """
    if cache:
        m_cache = parsecache.ParseCache.for_folder(migrations_dir)
        i_cache = parsecache.ParseCache.for_folder(indexes_dir)
        found_migrations, findings = migrations.discover(
            migrations_dir, str(migrations_dir),
            load=lambda source, version, slug: m_cache.load_migration(source, version, slug, check_migration_file),
        )
        found_indexes, index_findings = indexes.discover(indexes_dir, str(indexes_dir), parse=i_cache.parse)
        m_cache.save()
        i_cache.save()
    else:
        found_migrations, findings = migrations.discover(migrations_dir, str(migrations_dir), load=check_migration_file)
        found_indexes, index_findings = indexes.discover(indexes_dir, str(indexes_dir))
    findings.extend(index_findings)
    return Validation(
        migrations=found_migrations, indexes=found_indexes, findings=escalate(findings, strict=strict)
    )
