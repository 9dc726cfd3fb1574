"""`schemad adopt indexes`: write the live database's own indexes into the registry.

Reads every index that is not a constraint's (primary key, unique, exclusion), not in a system
schema or the ledger schema and not an extension's, and writes ``indexes/<table>.sql`` — one
file per table, the names kept, the text from ``pg_get_indexdef`` — so that `schemad
build-indexes` afterwards finds each one ready. Invalid indexes (failed concurrent builds) are
listed, not adopted. Indexes the registry already declares are left alone. `plan` and `render`
are pure; `adopt` reads the catalog (read-only) and writes files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from schemad import db, errors, indexes, queries, sqlparser

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.config import Settings
    from schemad.indexes import IndexSpec

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

# $1: the ledger schema. Attached partition indexes come back too (is_partition) so that the
# report can say they were left to their parent.
LIVE_INDEXES = """
SELECT n.nspname AS schema, t.relname AS table_name, i.relname AS name,
       pg_get_indexdef(x.indexrelid) AS definition, x.indisvalid AS valid,
       i.relkind = 'I' AS partitioned, i.relispartition AS is_partition,
       obj_description(x.indexrelid, 'pg_class') AS description
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname <> ALL ($2::text[]) AND n.nspname !~ '^pg_(toast_)?temp_' AND n.nspname <> $1
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u', 'x'))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = t.oid
                  AND d.deptype = 'e')
ORDER BY n.nspname, t.relname, i.relname
"""

_ON_ONLY = re.compile(r'^(CREATE (?:UNIQUE )?INDEX (?:"(?:[^"]|"")*"|\S+) ON )ONLY ')


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveIndex:
    schema: str
    table: str
    name: str
    definition: str
    valid: bool = True
    partitioned: bool = False
    is_partition: bool = False
    description: str | None = None

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def registry_sql(self) -> str:
        """The registry statement: pg_get_indexdef, without ``ONLY`` (schemad builds partitions itself)."""
        return _ON_ONLY.sub(r"\1", self.definition) if self.partitioned else self.definition


@dataclass(slots=True, kw_only=True)
class AdoptPlan:
    adopt: list[LiveIndex] = field(default_factory=list)
    declared: list[tuple[LiveIndex, IndexSpec]] = field(default_factory=list)  # same name in the registry
    same_as: list[tuple[LiveIndex, IndexSpec]] = field(default_factory=list)  # same definition, other name
    invalid: list[LiveIndex] = field(default_factory=list)
    partitions: list[LiveIndex] = field(default_factory=list)  # attached to a partitioned parent index


def file_stem(schema: str, table: str) -> str:
    """``<table>`` for the public schema, else ``<schema>.<table>``; safe as a file name."""
    base = table if schema == "public" else f"{schema}.{table}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".") or "index"


def _shape(sql: str) -> str:
    """An index definition without its name, for spotting one index declared under another name."""
    return sqlparser.canonical_index(sql)


def plan(live: list[LiveIndex], registry: list[IndexSpec]) -> AdoptPlan:
    """Which live indexes to adopt; the rest, each with the reason it is left out."""
    out = AdoptPlan()
    by_name = {s.name: s for s in registry}
    shapes = {_shape(s.definition.source): s for s in registry}
    for li in live:
        if li.is_partition:
            out.partitions.append(li)
        elif li.name in by_name:
            out.declared.append((li, by_name[li.name]))
        elif not li.valid:
            out.invalid.append(li)
        elif (sh := _shape(li.registry_sql())) in shapes:
            out.same_as.append((li, shapes[sh]))
        else:
            out.adopt.append(li)
    return out


def _by_file(p: AdoptPlan) -> dict[str, list[LiveIndex]]:
    by_file: dict[str, list[LiveIndex]] = {}
    for li in p.adopt:
        by_file.setdefault(f"{file_stem(li.schema, li.table)}.sql", []).append(li)
    return by_file


def targets(p: AdoptPlan) -> list[str]:
    """The registry file names adopt writes or appends to."""
    return sorted(_by_file(p))


def render(p: AdoptPlan, existing: dict[str, str], *, source: str) -> dict[str, str]:
    """File name → full new text, for every registry file adopt writes (appending to ``existing``)."""
    out: dict[str, str] = {}
    for name, items in sorted(_by_file(p).items()):
        before = existing.get(name)
        lines = [f"-- Adopted by `schemad adopt indexes` from the live database {source}."]
        for li in items:
            lines.append("")
            if li.description:
                lines.extend(f"-- {ln}".rstrip() for ln in li.description.splitlines())
            lines.append(f"{li.registry_sql()};")
        block = "\n".join(lines) + "\n"
        out[name] = block if before is None else before.rstrip("\n") + "\n\n" + block
    return out


def report(p: AdoptPlan, written: dict[str, str], *, out_display: str, dry_run: bool) -> list[str]:
    verb = "would adopt" if dry_run else "adopted"
    lines = [
        f"{verb} {', '.join(li.name for li in items)} → {out_display}/{name}" for name, items in _by_file(p).items()
    ]
    lines.extend(f"already in the registry: {li.name} ({s.path}:{s.line})" for li, s in p.declared)
    lines.extend(
        f"not adopted: {li.name} on {li.qualified_table} has the definition of registry index {s.name} "
        f"({s.path}:{s.line}): rename one of them so that they agree"
        for li, s in p.same_as
    )
    lines.extend(
        f"not adopted: {li.name} on {li.qualified_table} is INVALID (a failed or running concurrent build): "
        "drop it (DROP INDEX CONCURRENTLY) or declare it in the registry and let build-indexes rebuild it"
        for li in p.invalid
    )
    if p.partitions:
        lines.append(f"{len(p.partitions)} partition index(es) belong to their partitioned parent's index: not adopted")
    total = len(p.adopt)
    lines.append(
        f"{verb} {total} index(es) into {len(written)} file(s); {len(p.declared)} already declared, "
        f"{len(p.invalid)} invalid"
    )
    return lines


async def read_live(settings: Settings) -> tuple[list[LiveIndex], str]:
    """The catalog's indexes (read-only) and the database's name."""
    s = await db.connect(settings, "adopt")
    try:
        await s.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = await s.fetch(LIVE_INDEXES, settings.ledger_schema, list(SYSTEM_SCHEMAS))
        dbname = str(await s.fetchval(queries.CURRENT_DATABASE))
        await s.execute("COMMIT")
    finally:
        await s.close()
    live = [
        LiveIndex(
            schema=r["schema"], table=r["table_name"], name=r["name"], definition=r["definition"],
            valid=bool(r["valid"]), partitioned=bool(r["partitioned"]), is_partition=bool(r["is_partition"]),
            description=r["description"],
        )
        for r in rows
    ]
    return live, dbname


def load_registry(folder: Path) -> list[IndexSpec]:
    """The registry as it is; a missing folder is an empty registry, any other error stops adopt."""
    specs, findings = indexes.discover(folder, str(folder))
    problems = [f for f in findings if f.is_error and f.code != "E111"]
    if problems:
        raise errors.ValidationFailed(problems)
    return specs


def write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def existing_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {n: (folder / n).read_text(encoding="utf-8") for n in names if (folder / n).is_file()}


def run(settings: Settings, *, dry_run: bool, out: Path | None) -> list[str]:
    """The whole command: read the registry and the catalog, decide, write (unless ``dry_run``)."""
    out_dir = out or settings.indexes_dir
    registry = load_registry(settings.indexes_dir)
    if out_dir.resolve() != settings.indexes_dir.resolve():
        registry += load_registry(out_dir)  # a second run into --out must not add them twice
    live, dbname = anyio.run(read_live, settings, backend="asyncio")
    p = plan(live, registry)
    files = render(p, existing_files(out_dir, targets(p)), source=dbname)
    if not dry_run:
        write(out_dir, files)
    return report(p, files, out_display=str(out_dir), dry_run=dry_run)
