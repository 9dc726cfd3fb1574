"""`schemad import`: turn a legacy migrations folder into `migrations/` and `indexes/` (no database).

`legacy` reads the folder (Flyway, golang-migrate, dbmate, diesel, plain numbered files);
`convert` is a pure function from those texts to output texts and a report; `run` does the
file I/O around it.

Rule: no statement disappears silently. Every index statement is moved into the registry (or
reported, for drops), removed transaction control is reported, statements that cannot run in a
transaction go to their own ``-- schemad:no-transaction`` file, and each output file is checked
with the real `schemad check` rules so the report names what still needs a hand.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemad import errors, indexes, legacy, lint, migrations, rules, sourcefiles, sqlparser, statements
from schemad.legacy import Act, Action, Layout, LegacyMigration
from schemad.statements import Kind

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from schemad.findings import Finding

    _ActFn = Callable[[Act, str], None]

MOVED_PREFIX = "-- [import]"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFile:
    name: str
    text: str


@dataclass(slots=True, kw_only=True)
class FileReport:
    """What happened to one legacy migration."""

    legacy: str
    original_id: str
    outputs: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # `schemad check` on its output files

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    layout: Layout
    migrations: tuple[OutputFile, ...]
    index_files: tuple[OutputFile, ...]
    reports: tuple[FileReport, ...]
    skipped: tuple[Action, ...]
    index_findings: tuple[Finding, ...]
    index_count: int

    @property
    def errors(self) -> list[Finding]:
        found = [f for r in self.reports for f in r.errors]
        return found + [f for f in self.index_findings if f.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors



# --------------------------------------------------------------------------- conversion


@dataclass(slots=True, kw_only=True)
class _Entry:
    """A registry index being assembled while the history is replayed on paper."""

    name: str
    idx: sqlparser.IndexDef
    sql: str
    description: list[str]
    origin: str


@dataclass(slots=True, kw_only=True)
class _Piece:
    lead: str
    body: str | None  # None: taken out, ``note`` explains
    note: str = ""
    transactional: bool | None = None  # None: sticks to its neighbours
    offset: int = 0  # where the statement starts in the up section


@dataclass(slots=True, kw_only=True)
class _Segment:
    transactional: bool | None = None
    pieces: list[_Piece] = field(default_factory=list)
    reason: str = ""


def _file_stem(schema: str | None, table: str) -> str:
    base = table if schema in (None, "", "public") else f"{schema}.{table}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".") or "index"


def _same_table(entry: _Entry, qualified: str) -> bool:
    schema, _, table = qualified.rpartition(".")
    e_schema = entry.idx.schema or "public"
    return entry.idx.table == table and (not schema or schema == e_schema)


def _last_name(qualified: str) -> str:
    return qualified.rpartition(".")[2]


def _description_above(lead: str) -> list[str]:
    lines = lead.rstrip(" \t").split("\n")
    if lines and not lines[-1].strip():
        lines.pop()
    out: list[str] = []
    while lines and lines[-1].lstrip().startswith("--"):
        out.append(lines.pop().strip())
    return [ln for ln in reversed(out) if not ln.startswith("-- schemad:")]


_INDEX_IN_CODE = re.compile(r"\b(create\s+(unique\s+)?index|drop\s+index|reindex)\b", re.IGNORECASE)
_USING_INDEX = re.compile(r'\busing\s+index\s+(?P<name>"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)', re.IGNORECASE)


class _Converter:
    def __init__(self, layout: Layout, migrations_display: str, indexes_display: str) -> None:
        self.layout = layout
        self.mig_display = migrations_display
        self.idx_display = indexes_display
        self.registry: dict[str, _Entry] = {}
        self.reports: list[FileReport] = []
        self.outputs: list[tuple[LegacyMigration, _Segment, int, int, FileReport]] = []

    def index_file(self, e: _Entry) -> str:
        return f"{self.idx_display}/{_file_stem(e.idx.schema, e.idx.table)}.sql"

    # One legacy migration → segments; the registry changes as its statements would have.
    def migration(self, lm: LegacyMigration) -> None:
        report = FileReport(legacy=lm.path, original_id=lm.original_id)
        self.reports.append(report)
        src = sourcefiles.SourceFile(lm.path, lm.text)
        up = lm.text[lm.up_start : lm.up_end]

        def act(kind: Act, message: str, *, offset: int) -> None:
            line, col = src.position(lm.up_start + offset)
            report.actions.append(Action(act=kind, path=lm.path, line=line, col=col, message=message))

        if lm.repeatable:
            act(Act.WARNING, "Flyway repeatable migration: imported once, after the versioned ones", offset=0)
        try:
            parsed = sqlparser.parse(up)
        except sqlparser.SqlSyntaxError as exc:
            # Written as it is: `schemad check` reports the position, nothing is lost.
            act(Act.WARNING, f"the PostgreSQL parser rejects this file ({exc.message}): copied unchanged",
                offset=exc.offset)
            seg = _Segment(transactional=lm.transactional, pieces=[_Piece(lead="", body=up.strip())])
            self._emit(lm, [seg], report)
            return
        if not parsed:
            act(Act.SKIPPED, "no statements: nothing to import", offset=0)
            return
        pieces: list[_Piece] = []
        cut = 0
        for st in parsed:
            lead = up[cut : st.start]
            j = st.end
            while j < len(up) and up[j] in " \t\r\n":
                j += 1
            cut = j + 1 if j < len(up) and up[j] == ";" else st.end
            body = up[st.start : st.end].rstrip()
            piece = self._statement(st, lead, body, functools.partial(act, offset=st.start), lm)
            piece.offset = st.start
            pieces.append(piece)
        segments = self._segments(pieces, lm)
        if not segments:
            act(Act.MOVED, "every statement moved out: no migration file written for it", offset=0)
            return
        tail = up[cut:]
        if tail.strip():
            segments[-1].pieces.append(_Piece(lead=tail.rstrip(), body=None))
        if not lm.transactional and segments[0].transactional:
            act(Act.WARNING, "the old tool ran this file outside a transaction; with its index statements "
                "moved out the rest can run in one, so it is now all-or-nothing", offset=0)
        for seg in segments:
            if seg.transactional is False and lm.transactional:
                first = next(p for p in seg.pieces if p.body is not None)
                act(Act.SPLIT, f"{seg.reason}: put in its own -- schemad:no-transaction file (its statements "
                    "must be safe to re-run)", offset=first.offset)
        report.actions.sort(key=lambda a: (a.line, a.col))
        self._emit(lm, segments, report)

    def _statement(self, st: sqlparser.Statement, lead: str, body: str, act: _ActFn, lm: LegacyMigration) -> _Piece:
        k = statements.kind(st)
        tx_reason = statements.not_in_transaction_reason(st)
        keep = _Piece(lead=lead, body=body, transactional=tx_reason is None)
        if st.node == "index_stmt" and st.index is not None:
            line, col = sourcefiles.SourceFile(lm.path, lm.text).position(lm.up_start + st.start)
            return self._create_index(st.index, lead, body, act, f"{lm.path}:{line}:{col}")
        if k is Kind.INDEX_DDL and st.node == "drop_stmt":
            return self._drop_index(st, lead, act)
        if st.node == "reindex_stmt":
            act(Act.REMOVED, f"{st.command} taken out: maintenance, not schema (schemad rebuilds invalid "
                "registry indexes itself)")
            return _Piece(lead=lead, body=None, note=f"{MOVED_PREFIX} removed: {_one_line(body)}")
        if k is Kind.TRANSACTION_CONTROL and st.transaction_kind in ("BEGIN", "START", "COMMIT"):
            act(Act.REMOVED, f"{st.command} taken out: schemad runs each migration in its own transaction")
            return _Piece(lead=lead, body=None, note=f"{MOVED_PREFIX} removed: {_one_line(body)}")
        if st.node == "rename_stmt" and st.rename_type == "INDEX" and st.relation and st.new_name:
            entry = self.registry.get(_last_name(st.relation))
            if entry is not None:
                self._rename(entry, st.new_name)
                act(Act.MOVED, f"ALTER INDEX {entry.name} RENAME applied to the registry entry "
                    f"({self.index_file(entry)})")
                return _Piece(lead=lead, body=None, note=f"{MOVED_PREFIX} applied to the registry: {_one_line(body)}")
        if st.command == "ALTER INDEX" and st.relation and _last_name(st.relation) in self.registry:
            act(Act.WARNING, f"{_one_line(body)} changes registry index {_last_name(st.relation)}: taken out; "
                "put the option into its CREATE INDEX in the registry")
            return _Piece(lead=lead, body=None, note=f"{MOVED_PREFIX} taken out: {_one_line(body)}")
        self._track_schema_changes(st, body, act)
        if st.node in ("do_stmt", "create_function_stmt") and _INDEX_IN_CODE.search(body):
            act(Act.WARNING, "procedural code mentions index DDL: schemad cannot move it out of a "
                "function or DO body; move it into indexes/ by hand")
        return keep

    def _create_index(self, idx: sqlparser.IndexDef, lead: str, body: str, act: _ActFn, origin: str) -> _Piece:
        name = idx.name
        sql = body
        if name is None:
            name = legacy.postgres_index_name(idx, set(self.registry))
            sql = sqlparser.render_index(idx, name=name, concurrently=False)
            act(Act.WARNING, f"unnamed index: named {name}, the name PostgreSQL gives it (check it with "
                "`schemad verify` after the baseline)")
            idx = sqlparser.parse(sql)[0].index or idx
        placeholder = f"{MOVED_PREFIX} moved to the index registry: {_one_line(body)}"
        if name in self.registry:
            other = self.registry[name]
            act(Act.WARNING, f"index {name} is already declared (from {other.origin}): this statement "
                f"{'was a no-op (IF NOT EXISTS)' if idx.if_not_exists else 'failed or was tolerated'}; "
                "the first definition is kept")
            return _Piece(lead=lead, body=None, note=placeholder)
        entry = _Entry(name=name, idx=idx, sql=sql, description=_description_above(lead), origin=origin)
        self.registry[name] = entry
        act(Act.MOVED, f"CREATE INDEX {name} → {self.index_file(entry)}")
        if idx.unique:
            act(Act.WARNING, f"{name} is UNIQUE: the registry builds it after the migrations, so on a new "
                "database uniqueness holds only once it is built (use a UNIQUE constraint if a later "
                "foreign key needs it)")
        return _Piece(lead=lead, body=None, note=placeholder)

    def _drop_index(self, st: sqlparser.Statement, lead: str, act: _ActFn) -> _Piece:
        for target in st.objects:
            entry = self.registry.pop(_last_name(target), None)
            if entry is not None:
                act(Act.DROPPED, f"DROP INDEX {target}: the registry has no drops; {entry.name} (from "
                    f"{entry.origin}) was taken out of the imported registry instead")
            else:
                act(Act.DROPPED, f"DROP INDEX {target}: the registry has no drops and does not declare it; "
                    "if it still exists in a database, drop it by hand (DROP INDEX CONCURRENTLY)")
        return _Piece(lead=lead, body=None, note=f"{MOVED_PREFIX} taken out (index drop): {_one_line(st.text)}")

    def _rename(self, entry: _Entry, new_name: str, *, schema: str | None = None, table: str | None = None) -> None:
        sql = sqlparser.render_index(
            entry.idx, name=new_name, concurrently=False,
            schema=schema if table else entry.idx.schema, table=table or entry.idx.table,
        )
        idx = sqlparser.parse(sql)[0].index
        assert idx is not None
        del self.registry[entry.name]
        entry.name, entry.idx, entry.sql = new_name, idx, sql
        self.registry[new_name] = entry

    def _track_schema_changes(self, st: sqlparser.Statement, body: str, act: _ActFn) -> None:
        """DROP TABLE, DROP COLUMN and table renames change what registry entries mean."""
        if st.node == "drop_stmt" and st.drop_type in ("TABLE", "MATERIALIZED_VIEW"):
            for target in st.objects:
                for e in [e for e in self.registry.values() if _same_table(e, target)]:
                    del self.registry[e.name]
                    act(Act.DROPPED, f"{st.command} {target} also drops registry index {e.name}: taken out of "
                        "the imported registry")
        if st.node == "rename_stmt" and st.rename_type == "TABLE" and st.relation and st.new_name:
            for e in [e for e in self.registry.values() if _same_table(e, st.relation)]:
                self._rename(e, e.name, schema=e.idx.schema, table=st.new_name)
                act(Act.MOVED, f"table renamed: registry index {e.name} now on {st.new_name}")
        if st.node == "rename_stmt" and st.rename_type == "COLUMN" and st.relation:
            for e in [e for e in self.registry.values() if _same_table(e, st.relation)]:
                act(Act.WARNING, f"a column of {st.relation} is renamed: check registry index {e.name} "
                    f"({self.index_file(e)}) still names the right columns")
        for cmd in st.alter_cmds:
            if cmd.subtype == "DropColumn" and cmd.column and st.relation:
                pattern = re.compile(rf'(?<![\w$"]){re.escape(cmd.column)}(?![\w$"])|"{re.escape(cmd.column)}"')
                for e in [e for e in self.registry.values() if _same_table(e, st.relation or "")]:
                    if any(pattern.search(t) for t in (*e.idx.columns, *e.idx.include, e.idx.predicate or "")):
                        del self.registry[e.name]
                        act(Act.DROPPED, f"DROP COLUMN {cmd.column} also drops registry index {e.name}: taken "
                            "out of the imported registry")
        if st.node == "alter_table_stmt":
            for m in _USING_INDEX.finditer(body):
                gone = self.registry.pop(legacy.unquote(m.group("name")), None)
                if gone is not None:
                    act(Act.WARNING, f"USING INDEX {gone.name}: that index was moved to the registry, so on a new "
                        "database this statement runs before it exists; rewrite it as ADD CONSTRAINT ... UNIQUE "
                        f"(columns). The registry entry from {gone.origin} was taken out (the constraint owns the "
                        "index now)")

    @staticmethod
    def _segments(pieces: list[_Piece], lm: LegacyMigration) -> list[_Segment]:
        """Runs of statements that can share a transaction; each other run gets its own file."""
        kept = [p for p in pieces if p.body is not None]
        if not kept:
            return []
        if not lm.transactional:
            # The old tool ran the file outside a transaction. If what is left can run in one
            # (the CONCURRENTLY index that needed it moved out), all-or-nothing is the safer way.
            tx = all(p.transactional for p in kept)
            reason = "" if tx else "the old tool ran this migration outside a transaction"
            return [_Segment(transactional=tx, pieces=pieces, reason=reason)]
        segments: list[_Segment] = []
        cur = _Segment()
        for p in pieces:
            if p.body is not None:
                tx = bool(p.transactional)
                if cur.transactional is not None and cur.transactional != tx:
                    segments.append(cur)
                    cur = _Segment()
                if cur.transactional is None:
                    cur.transactional = tx
                    cur.reason = "" if tx else _nontx_reason(p.body)
            cur.pieces.append(p)
        if cur.transactional is None:
            segments[-1].pieces.extend(cur.pieces)
        else:
            segments.append(cur)
        return segments

    def _emit(self, lm: LegacyMigration, segments: list[_Segment], report: FileReport) -> None:
        for i, seg in enumerate(segments, start=1):
            self.outputs.append((lm, seg, i, len(segments), report))


def _nontx_reason(body: str) -> str:
    try:
        st = sqlparser.parse(body)[0]
    except (sqlparser.SqlSyntaxError, IndexError):
        return "cannot run inside a transaction block"
    return statements.not_in_transaction_reason(st) or "cannot run inside a transaction block"


def _one_line(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _header(layout: Layout, lm: LegacyMigration, part: int, parts: int, seg: _Segment) -> list[str]:
    kind = "repeatable migration" if lm.repeatable else f"version {lm.original_id}"
    lines = [f"-- Imported by `schemad import` from {layout} {lm.path} ({kind})."]
    if parts > 1:
        lines.append(f"-- Part {part} of {parts}" + (f": {seg.reason}." if seg.reason else "."))
    if seg.transactional is False:
        lines.append("-- schemad:no-transaction")
    return lines


def _migration_text(layout: Layout, lm: LegacyMigration, seg: _Segment, part: int, parts: int) -> str:
    out = _header(layout, lm, part, parts, seg)
    out.append("")
    body: list[str] = []
    for p in seg.pieces:
        body.append(p.lead)
        body.append(f"{p.body};" if p.body is not None else p.note)
    text = "".join(body).strip("\n")
    return "\n".join(out) + "\n" + text + "\n"


def _index_text(entries: list[_Entry]) -> str:
    lines = ["-- Imported by `schemad import` from the index statements of the legacy migrations."]
    for e in entries:
        lines += ["", f"-- from {e.origin}", "", *e.description, f"{e.sql.rstrip().rstrip(';')};"]
    return "\n".join(lines) + "\n"


def convert(
    recognised: legacy.Recognised,
    *,
    migrations_display: str = "migrations",
    indexes_display: str = "indexes",
    waive_warnings: bool = False,
) -> ImportResult:
    """Legacy migrations → schemad migrations renumbered 1..n, the index registry and a report."""
    conv = _Converter(recognised.layout, migrations_display, indexes_display)
    for lm in recognised.migrations:
        conv.migration(lm)
    width = max(4, len(str(len(conv.outputs))))
    out_files: list[OutputFile] = []
    for version, (lm, seg, part, parts, report) in enumerate(conv.outputs, start=1):
        slug = legacy.slugify(lm.description) + (f"_part{part}" if part > 1 else "")
        name = f"{version:0{width}d}_{slug}.sql"
        text = _migration_text(recognised.layout, lm, seg, part, parts)
        display = f"{migrations_display}/{name}"
        findings = check_migration_text(display, text, version, slug)
        if waive_warnings and any(not f.is_error for f in findings):
            text = _waive(text, findings, recognised.layout)
            findings = check_migration_text(display, text, version, slug)
        report.outputs.append(display)
        report.findings.extend(findings)
        out_files.append(OutputFile(name=name, text=text))
    by_file: dict[str, list[_Entry]] = {}
    for e in conv.registry.values():
        by_file.setdefault(f"{_file_stem(e.idx.schema, e.idx.table)}.sql", []).append(e)
    index_files: list[OutputFile] = []
    index_findings: list[Finding] = []
    for fname in sorted(by_file):
        text = _index_text(by_file[fname])
        _specs, found = indexes.parse_index_file(sourcefiles.SourceFile(f"{indexes_display}/{fname}", text))
        index_findings.extend(found)
        index_files.append(OutputFile(name=fname, text=text))
    return ImportResult(
        layout=recognised.layout, migrations=tuple(out_files), index_files=tuple(index_files),
        reports=tuple(conv.reports), skipped=recognised.actions, index_findings=tuple(index_findings),
        index_count=len(conv.registry),
    )


def check_migration_text(display: str, text: str, version: int, slug: str) -> list[Finding]:
    """What `schemad check` says about one migration file's text."""
    source = sourcefiles.SourceFile(display, text)
    mig, findings = migrations.parse_migration(source, version, slug)
    if mig is not None:
        findings.extend(lint.check_migration(mig))
    return sorted(findings, key=lambda f: f.sort_key())


def _waive(text: str, findings: list[Finding], layout: Layout) -> str:
    """Add ``-- schemad:allow=RULE`` lines for the lock-safety warnings of history already applied."""
    names = sorted({rules.BY_CODE[f.code].name for f in findings if not f.is_error})
    lines = text.split("\n")
    at = next(i for i, ln in enumerate(lines) if not ln.startswith("--"))
    allow = [f"-- schemad:allow={n} imported from {layout}: applied before schemad" for n in names]
    return "\n".join([*lines[:at], *allow, *lines[at:]])


# --------------------------------------------------------------------------- I/O


def existing_targets(result: ImportResult, migrations_dir: Path, indexes_dir: Path) -> list[Path]:
    """Files the import would write that already exist (or migrations already in the folder)."""
    clash: list[Path] = []
    if migrations_dir.is_dir():
        clash += [p for p in sorted(migrations_dir.iterdir()) if migrations.FILE_NAME.match(p.name)]
    if indexes_dir.is_dir():
        clash += [indexes_dir / f.name for f in result.index_files if (indexes_dir / f.name).exists()]
    return clash


def write(result: ImportResult, migrations_dir: Path, indexes_dir: Path) -> None:
    migrations_dir.mkdir(parents=True, exist_ok=True)
    for f in result.migrations:
        (migrations_dir / f.name).write_text(f.text, encoding="utf-8")
    if result.index_files:
        indexes_dir.mkdir(parents=True, exist_ok=True)
    for f in result.index_files:
        (indexes_dir / f.name).write_text(f.text, encoding="utf-8")


def render_report(result: ImportResult, problems: list[Action], *, source: str) -> list[str]:
    """The human report: per legacy file what moved, what was split, what `schemad check` still rejects."""
    n_in = len(result.reports)
    head = f"{source}: {result.layout} layout, {n_in} migration(s) → {len(result.migrations)} schemad migration(s)"
    lines = [f"{head}, {result.index_count} registry index(es) in {len(result.index_files)} file(s)"]
    lines.extend(f"  {a.format()}" for a in [*problems, *result.skipped])
    for r in result.reports:
        target = ", ".join(r.outputs) if r.outputs else "(no file)"
        lines.append(f"{r.legacy} ({r.original_id}) → {target}")
        lines.extend(f"  {a.format()}" for a in r.actions)
        warnings = [f for f in r.findings if not f.is_error]
        if r.errors:
            lines.append("  schemad check still rejects:")
            lines.extend(f"    {f.format()}" for f in r.errors)
        if warnings:
            lines.append(f"  {len(warnings)} lock-safety warning(s) (see `schemad check`; --waive-warnings "
                         "waives them for history that already ran)")
    if result.index_findings:
        lines.append("index registry:")
        lines.extend(f"  {f.format()}" for f in result.index_findings)
    table = legacy.TRACKING_TABLES.get(result.layout)
    if table:
        lines.append(
            f"note: {result.layout}'s own table ({table}) stays in the database: drop it once schemad has taken "
            f"over, or pass --ignore 'public.{table}' to `schemad verify`"
        )
    errors = len(result.errors)
    lines.append(
        "schemad check: no errors" if not errors else f"schemad check: {errors} error(s) to fix by hand (listed above)"
    )
    return lines


class TargetsExist(errors.SchemadError):
    """The output folders already hold migrations or the registry files the import would write."""


def run(
    source: Path, *, migrations_dir: Path, indexes_dir: Path, layout: str | None = None, dry_run: bool = False,
    waive_warnings: bool = False,
) -> tuple[list[str], bool]:
    """The whole command: read, convert, write (unless ``dry_run``); the report and whether it is clean."""
    files, problems = legacy.read_folder(source)
    recognised = legacy.recognise(files, Layout(layout) if layout else None)
    result = convert(
        recognised, migrations_display=str(migrations_dir), indexes_display=str(indexes_dir),
        waive_warnings=waive_warnings,
    )
    lines = render_report(result, problems, source=str(source))
    if dry_run:
        lines.append("dry run: nothing written")
        return lines, result.ok
    clash = existing_targets(result, migrations_dir, indexes_dir)
    if clash:
        shown = ", ".join(str(p) for p in clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        raise TargetsExist(f"refusing to overwrite: {shown} already exist(s); import into empty folders (--out, "
                           "--indexes-out)")
    write(result, migrations_dir, indexes_dir)
    lines.append(f"wrote {len(result.migrations)} migration(s) to {migrations_dir} and "
                 f"{len(result.index_files)} registry file(s) to {indexes_dir}")
    if result.migrations:
        head = result.migrations[-1].name.partition("_")[0].lstrip("0")
        lines.append(f"next, for a database that has the whole legacy history: schemad baseline --version {head}")
    return lines, result.ok
