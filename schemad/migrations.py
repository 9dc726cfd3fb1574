"""The migrations model: `NNNN_slug.sql` files become `Migration` values (no database here).

Statements are split by the real PostgreSQL parser (`sqlparser`); the checksum is taken
over the parsed statements, so comment and whitespace edits do not change it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemad import directives, rules, sourcefiles, sqlparser

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from schemad.findings import Finding

    Parse = Callable[[str], list[sqlparser.Statement]]
    # A migration file → its migration (None when it has none) and findings.
    Load = Callable[[sourcefiles.SourceFile, int, str], tuple["Migration | None", list[Finding]]]

FILE_NAME = re.compile(r"^(?P<version>[0-9]+)_(?P<slug>[a-z0-9_]+)\.sql$")
_LOOSE_NAME = re.compile(r"^(?P<version>[0-9]+)[_-]")


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationStatement:
    """A statement of a migration with its position in the file."""

    index: int
    line: int
    col: int
    stmt: sqlparser.Statement

    @property
    def text(self) -> str:
        return self.stmt.text


class Statements:
    """A migration's statements, or how to build them on first use: a migration found in
    the parse cache (`parsecache`) that is already applied never needs its statements."""

    __slots__ = ("_build", "_value")

    def __init__(
        self, value: tuple[MigrationStatement, ...] | None = None,
        build: Callable[[], tuple[MigrationStatement, ...]] | None = None,
    ) -> None:
        if (value is None) == (build is None):
            raise ValueError("give the statements or how to build them")
        self._value = value
        self._build = build

    def get(self) -> tuple[MigrationStatement, ...]:
        if self._value is None:
            assert self._build is not None
            self._value, self._build = self._build(), None
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Statements) and self.get() == other.get()

    def __hash__(self) -> int:
        return hash(self.get())


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    version: int
    slug: str
    path: str
    body: Statements = field(repr=False)
    directives: directives.Directives
    checksum: str

    @property
    def statements(self) -> tuple[MigrationStatement, ...]:
        return self.body.get()

    @property
    def name(self) -> str:
        return f"{self.version:04d}_{self.slug}"

    @property
    def transactional(self) -> bool:
        return self.directives.transactional


def checksum(statements: list[sqlparser.Statement]) -> str:
    h = hashlib.sha256()
    for s in statements:
        h.update(s.tokens_digest.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def parse_migration(
    source: sourcefiles.SourceFile, version: int, slug: str, *, parse: Parse = sqlparser.parse
) -> tuple[Migration | None, list[Finding]]:
    """Parse one decoded migration file; returns findings for syntax and directive errors.

    ``parse`` is `sqlparser.parse` or a cache's memoised equivalent (`parsecache`).
    """
    path = source.path
    try:
        parsed = parse(source.text)
    except sqlparser.SqlSyntaxError as exc:
        line, col = source.position(exc.offset)
        return None, [rules.finding("E104", path, line, col, exc.message)]
    if not parsed:
        return None, [rules.finding("E103", path, 1, 1, "no statements in migration file")]
    stmts = tuple(
        MigrationStatement(index=i, line=pos[0], col=pos[1], stmt=s)
        for i, s in enumerate(parsed)
        for pos in [source.position(s.start)]
    )
    found, errs = directives.parse_directives(
        source.text,
        first_statement_line=stmts[0].line,
        known_rules=rules.WAIVABLE,
        statement_lines=frozenset(
            line
            for st in stmts
            for line in range(st.line + 1, source.position(max(st.stmt.start, st.stmt.end - 1))[0] + 1)
        ),
    )
    findings = [rules.finding("E108", path, e.line, e.col, e.message) for e in errs]
    migration = Migration(
        version=version, slug=slug, path=path, body=Statements(stmts), directives=found, checksum=checksum(parsed)
    )
    return migration, findings


def discover(
    folder: Path, display: str | None = None, *, load: Load = parse_migration
) -> tuple[list[Migration], list[Finding]]:
    """All migrations of ``folder`` in version order, and every file-level finding.

    ``load`` turns a file into its migration: `parse_migration`, or `validation`'s parse
    and lint, memoised by `parsecache`.
    """
    display = display if display is not None else str(folder)
    entries, findings = sourcefiles.list_folder(folder, display)
    by_version: dict[int, str] = {}
    out: list[Migration] = []
    for entry in entries:
        shown = f"{display}/{entry.name}"
        m = FILE_NAME.match(entry.name)
        if m is None:
            hint = ""
            if _LOOSE_NAME.match(entry.name) and entry.name.endswith(".sql"):
                hint = " (the slug may only hold lowercase letters, digits and underscores)"
            findings.append(rules.finding("E100", shown, 1, 1, f"not a migration file name NNNN_slug.sql{hint}"))
            continue
        version = int(m.group("version"))
        if version in by_version:
            findings.append(
                rules.finding("E101", shown, 1, 1, f"version {version} is also used by {by_version[version]}")
            )
            continue
        by_version[version] = shown
        source, errs = sourcefiles.read_source(entry, folder, shown)
        findings.extend(errs)
        if source is None:
            continue
        migration, errs = load(source, version, m.group("slug"))
        findings.extend(errs)
        if migration is not None:
            out.append(migration)
    out.sort(key=lambda mig: mig.version)
    return out, findings


def next_file_name(existing: list[int], slug: str, width: int = 4) -> str:
    """The file name ``schemad new`` writes: one past the highest version."""
    if not re.fullmatch(r"[a-z0-9_]+", slug):
        raise ValueError(f"slug {slug!r} must match [a-z0-9_]+")
    version = max(existing, default=0) + 1
    return f"{version:0{width}d}_{slug}.sql"
