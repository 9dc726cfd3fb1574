"""The index registry: `indexes/*.sql` files become `IndexSpec` values (no database here).

Name, table, columns and predicate come from the parse tree, never from a second copy
typed by hand (the seed's dict format let name and SQL disagree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemad import rules, sourcefiles, sqlparser

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.findings import Finding
    from schemad.migrations import Parse

CRITICAL_DIRECTIVE = "-- schemad:critical"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexSpec:
    name: str
    schema: str | None
    table: str
    unique: bool
    method: str
    columns: tuple[str, ...]
    include: tuple[str, ...]
    predicate: str | None
    description: str | None
    critical: bool
    path: str
    line: int
    col: int
    definition: sqlparser.IndexDef

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def create_sql(self, *, name: str | None = None) -> str:
        """``CREATE [UNIQUE] INDEX CONCURRENTLY`` as sent to the server; never ``IF NOT EXISTS``."""
        return sqlparser.render_index(self.definition, name=name, concurrently=True)

    def canonical(self, default_schema: str = "public") -> str:
        return sqlparser.canonical_index(self.definition.source, default_schema=default_schema)


def _comment_block_above(lines: list[str], line: int) -> tuple[str | None, bool]:
    """The comment lines directly above 1-based ``line``: (description, critical)."""
    desc: list[str] = []
    critical = False
    i = line - 2
    while i >= 0 and lines[i].lstrip().startswith("--"):
        text = lines[i].strip()
        if text.startswith(CRITICAL_DIRECTIVE):
            critical = True
        elif not text.startswith("-- schemad:"):
            desc.append(text[2:].strip())
        i -= 1
    desc.reverse()
    return (" ".join(d for d in desc if d) or None), critical


def parse_index_file(
    source: sourcefiles.SourceFile, *, parse: Parse = sqlparser.parse
) -> tuple[list[IndexSpec], list[Finding]]:
    path = source.path
    try:
        parsed = parse(source.text)
    except sqlparser.SqlSyntaxError as exc:
        line, col = source.position(exc.offset)
        return [], [rules.finding("E104", path, line, col, exc.message)]
    if not parsed:
        return [], [rules.finding("E103", path, 1, 1, "no statements in index file")]
    lines = source.text.splitlines()
    specs: list[IndexSpec] = []
    findings: list[Finding] = [
        rules.finding("E108", path, n, len(line) - len(line.lstrip()) + 1, f"unknown directive {line.strip()!r}")
        for n, line in enumerate(lines, start=1)
        if line.lstrip().startswith("-- schemad:") and line.strip() != CRITICAL_DIRECTIVE
    ]
    for stmt in parsed:
        line, col = source.position(stmt.start)
        idx = stmt.index
        if idx is None:
            findings.append(
                rules.finding("E120", path, line, col, f"{stmt.command}: index files hold only CREATE INDEX statements")
            )
            continue
        if idx.name is None:
            findings.append(rules.finding("E121", path, line, col, "index has no name: name it explicitly"))
            continue
        if idx.only:
            findings.append(
                rules.finding(
                    "E123", path, line, col,
                    "ON ONLY is not declared by hand: schemad builds partitioned indexes per partition and attaches them",
                )
            )
            continue
        description, critical = _comment_block_above(lines, line)
        specs.append(
            IndexSpec(
                name=idx.name,
                schema=idx.schema,
                table=idx.table,
                unique=idx.unique,
                method=idx.method,
                columns=idx.columns,
                include=idx.include,
                predicate=idx.predicate,
                description=description,
                critical=critical,
                path=path,
                line=line,
                col=col,
                definition=idx,
            )
        )
    return specs, findings


def discover(
    folder: Path, display: str | None = None, *, parse: Parse = sqlparser.parse
) -> tuple[list[IndexSpec], list[Finding]]:
    """Every registry index under ``folder`` (critical first, then by name) and the findings."""
    display = display if display is not None else str(folder)
    entries, findings = sourcefiles.list_folder(folder, display)
    specs: list[IndexSpec] = []
    seen: dict[str, IndexSpec] = {}
    for entry in entries:
        shown = f"{display}/{entry.name}"
        if not entry.name.endswith(".sql"):
            findings.append(rules.finding("E100", shown, 1, 1, "index files end in .sql"))
            continue
        source, errs = sourcefiles.read_source(entry, folder, shown)
        findings.extend(errs)
        if source is None:
            continue
        found, errs = parse_index_file(source, parse=parse)
        findings.extend(errs)
        for spec in found:
            key = spec.name.lower() if spec.name == spec.name.lower() else spec.name
            if key in seen:
                other = seen[key]
                findings.append(
                    rules.finding(
                        "E122", spec.path, spec.line, spec.col,
                        f"index name {spec.name!r} is also declared at {other.path}:{other.line}:{other.col}",
                    )
                )
                continue
            seen[key] = spec
            specs.append(spec)
    specs.sort(key=lambda s: (not s.critical, s.name))
    return specs, findings
