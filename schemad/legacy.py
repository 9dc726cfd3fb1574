"""Legacy migration folders as other tools write them (no database here).

Recognises Flyway (``V1__name.sql``, ``V1.1__x.sql``, ``R__x.sql``), golang-migrate
(``NNNN_name.up.sql``/``.down.sql``), dbmate (``YYYYMMDDHHMMSS_name.sql``, the ``-- migrate:up``
section), diesel (``YYYY-MM-DD-HHMMSS_name/up.sql``, ``metadata.toml``) and plain numbered files,
orders them the way the old tool applied them, and names unnamed indexes the way PostgreSQL
did. `schemad import` (importer.py) converts what this module reads.
"""

from __future__ import annotations

import enum
import re
import tomllib
import unicodedata
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from schemad import errors, sourcefiles

if TYPE_CHECKING:
    from pathlib import Path

    from schemad import sqlparser

NAMEDATALEN = 64


class Layout(enum.StrEnum):
    FLYWAY = "flyway"
    GOLANG_MIGRATE = "golang-migrate"
    DBMATE = "dbmate"
    DIESEL = "diesel"
    PLAIN = "plain"


# The table each tool keeps its own history in; it stays behind after an adoption.
TRACKING_TABLES: dict[Layout, str] = {
    Layout.FLYWAY: "flyway_schema_history",
    Layout.GOLANG_MIGRATE: "schema_migrations",
    Layout.DBMATE: "schema_migrations",
    Layout.DIESEL: "__diesel_schema_migrations",
}


class Act(enum.StrEnum):
    MOVED = "moved"  # an index statement went into the registry
    DROPPED = "dropped"  # DROP INDEX: the registry has no drops (reported)
    REMOVED = "removed"  # BEGIN/COMMIT/REINDEX taken out (reported)
    SPLIT = "split"  # statements put in their own no-transaction file
    WARNING = "warning"  # needs a human look
    SKIPPED = "skipped"  # a whole legacy file not imported (down migrations, not a migration)


@dataclass(frozen=True, slots=True)
class LegacyFile:
    """One file of the legacy folder: path relative to it (``/``-separated) and its text."""

    path: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    act: Act
    path: str
    line: int
    col: int
    message: str

    def format(self) -> str:
        return f"{self.act:<8} {self.path}:{self.line}:{self.col}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LegacyMigration:
    path: str  # the file holding the up SQL
    original_id: str  # the version as the old tool wrote it
    sort_key: tuple[int, ...]
    description: str
    text: str  # the whole file
    up_start: int  # where the up section starts in ``text``
    up_end: int
    transactional: bool = True
    repeatable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Recognised:
    layout: Layout
    migrations: tuple[LegacyMigration, ...]
    actions: tuple[Action, ...]  # files not imported, with the reason


class LegacyFolderError(errors.SchemadError):
    """The legacy folder cannot be converted (missing, no layout recognised, mixed layouts)."""



# --------------------------------------------------------------------------- layouts

_FLYWAY = re.compile(r"^(?P<prefix>[VRUB])(?P<ver>[0-9]+(?:[._][0-9]+)*)?__(?P<desc>.+)\.sql$")
_GOLANG = re.compile(r"^(?P<ver>[0-9]+)_(?P<desc>.+)\.(?P<dir>up|down)\.sql$")
_NUMBERED = re.compile(r"^(?P<ver>[0-9]+)[_-](?P<desc>.+)\.sql$")
_DIESEL_DIR = re.compile(r"^(?P<ver>[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}|[0-9]{14})_(?P<desc>.+)$")
_DBMATE_UP = re.compile(r"^--\s*migrate:up\b(?P<opts>.*)$", re.MULTILINE)
_DBMATE_DOWN = re.compile(r"^--\s*migrate:down\b.*$", re.MULTILINE)


def _ints(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.split(r"[._-]", version) if p)


def _layout_of(f: LegacyFile) -> Layout | None:
    top, _, rest = f.path.partition("/")
    if rest and _DIESEL_DIR.match(top):
        return Layout.DIESEL if rest in ("up.sql", "down.sql", "metadata.toml") else None
    if _FLYWAY.match(rest or f.path):  # Flyway also finds migrations in subfolders
        return Layout.FLYWAY
    if rest:
        return None
    if _GOLANG.match(f.path):
        return Layout.GOLANG_MIGRATE
    if _NUMBERED.match(f.path):
        return Layout.DBMATE if _DBMATE_UP.search(f.text) else Layout.PLAIN
    return None


def detect_layout(files: list[LegacyFile]) -> Layout:
    """The one layout the folder's migration files follow."""
    found = {lay for f in files if (lay := _layout_of(f)) is not None}
    if found == {Layout.DBMATE, Layout.PLAIN}:
        return Layout.DBMATE  # numbered files without the up marker are reported as broken dbmate files
    if len(found) == 1:
        return found.pop()
    if not found:
        raise LegacyFolderError(
            "no migration files recognised: expected Flyway V1__name.sql, golang-migrate NNNN_name.up.sql, "
            "dbmate YYYYMMDDHHMMSS_name.sql, diesel YYYY-MM-DD-HHMMSS_name/up.sql or NNNN_name.sql"
        )
    names = ", ".join(sorted(found))
    raise LegacyFolderError(f"the folder mixes migration layouts ({names}): pass --layout to choose one")


def recognise(files: list[LegacyFile], layout: Layout | None = None) -> Recognised:
    """The legacy migrations in the order the old tool applied them, and the files left out."""
    layout = layout or detect_layout(files)
    migs: list[LegacyMigration] = []
    skipped: list[Action] = []

    def skip(path: str, why: str) -> None:
        skipped.append(Action(act=Act.SKIPPED, path=path, line=1, col=1, message=why))

    diesel_meta = {f.path.partition("/")[0]: f.text for f in files if f.path.endswith("/metadata.toml")}
    for f in sorted(files, key=lambda x: x.path):
        name = f.path
        whole = len(f.text)
        if layout is Layout.FLYWAY and (m := _FLYWAY.match(name.rpartition("/")[2])):
            prefix, ver = m.group("prefix"), m.group("ver")
            if prefix == "V" and ver:
                migs.append(_legacy(f, ver.replace("_", "."), _ints(ver), m.group("desc"), 0, whole))
            elif prefix == "R":
                # Repeatable migrations ran after the versioned ones; they become ordinary migrations.
                migs.append(replace(_legacy(f, "R", (1 << 62,), m.group("desc"), 0, whole), repeatable=True))
            elif prefix == "U":
                skip(name, "Flyway undo migration: schemad is forward-only, not imported")
            else:
                skip(name, "Flyway baseline migration (B): not imported; baseline with `schemad baseline`")
        elif layout is Layout.GOLANG_MIGRATE and (m := _GOLANG.match(name)):
            if m.group("dir") == "down":
                skip(name, "down migration: schemad is forward-only, not imported")
            else:
                migs.append(_legacy(f, m.group("ver"), _ints(m.group("ver")), m.group("desc"), 0, whole))
        elif layout in (Layout.DBMATE, Layout.PLAIN) and "/" not in name and (m := _NUMBERED.match(name)):
            ver, desc = m.group("ver"), m.group("desc")
            if layout is Layout.PLAIN:
                migs.append(_legacy(f, ver, _ints(ver), desc, 0, whole))
                continue
            up = _DBMATE_UP.search(f.text)
            if up is None:
                skip(name, "no `-- migrate:up` line: dbmate would refuse this file; not imported")
                continue
            down = _DBMATE_DOWN.search(f.text, up.end())
            start = up.end() + 1 if up.end() < whole else whole
            end = down.start() if down else whole
            legacy = _legacy(f, ver, _ints(ver), desc, start, end)
            if "transaction:false" in up.group("opts").replace(" ", ""):
                legacy = replace(legacy, transactional=False)
            migs.append(legacy)
            if down is not None and f.text[down.end() :].strip():
                skip(name, "the `-- migrate:down` section: schemad is forward-only, not imported")
        elif layout is Layout.DIESEL and (m := _DIESEL_DIR.match(name.partition("/")[0])):
            folder, _, leaf = name.partition("/")
            if leaf == "up.sql":
                ver = m.group("ver").replace("-", "")
                legacy = _legacy(f, m.group("ver"), _ints(ver), m.group("desc"), 0, whole)
                if _diesel_no_transaction(diesel_meta.get(folder)):
                    legacy = replace(legacy, transactional=False)
                migs.append(legacy)
            elif leaf == "down.sql":
                skip(name, "down migration: schemad is forward-only, not imported")
            elif leaf != "metadata.toml":
                skip(name, f"not part of a {layout} migration: not imported")
        else:
            skip(name, f"not a {layout} migration file: not imported")
    migs.sort(key=lambda lm: (lm.sort_key, lm.path))
    return Recognised(layout=layout, migrations=tuple(migs), actions=tuple(skipped))


def _legacy(f: LegacyFile, original: str, key: tuple[int, ...], desc: str, start: int, end: int) -> LegacyMigration:
    return LegacyMigration(
        path=f.path, original_id=original, sort_key=key, description=desc, text=f.text, up_start=start, up_end=end
    )


def _diesel_no_transaction(meta: str | None) -> bool:
    if meta is None:
        return False
    try:
        return tomllib.loads(meta).get("run_in_transaction") is False
    except tomllib.TOMLDecodeError:
        return False


def slugify(text: str) -> str:
    """A migration slug: ``[a-z0-9_]+``, accents folded, never empty."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", folded).strip("_")
    return slug[:60].rstrip("_") or "migration"


# --------------------------------------------------------------------------- index names


def _clip(name: str, n_bytes: int) -> str:
    """The longest prefix of ``name`` within ``n_bytes`` UTF-8 bytes (pg_mbcliplen)."""
    out = name.encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")
    return out


def make_object_name(name1: str, name2: str | None, label: str) -> str:
    """PostgreSQL's makeObjectName: ``name1_name2_label`` cut to 63 bytes, longer part first."""
    n1 = len(name1.encode("utf-8"))
    n2 = len(name2.encode("utf-8")) if name2 else 0
    overhead = len(label) + 1 + (1 if name2 else 0)
    avail = NAMEDATALEN - 1 - overhead
    while n1 + n2 > avail:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    parts = [_clip(name1, n1)]
    if name2:
        parts.append(_clip(name2, n2))
    return "_".join([*parts, label])


_FUNC = re.compile(r"^(?:[a-z_][a-z0-9_$]*\.)?(?P<name>[a-z_][a-z0-9_$]*)\s*\(", re.IGNORECASE)
_CAST = re.compile(r'^(?P<name>"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\s*::', re.IGNORECASE)


def _element_name(elem: str) -> str:
    """The column name PostgreSQL's ChooseIndexColumnNames gives one rendered index element."""
    if elem.startswith("("):
        expr = elem[1 : elem.rfind(")")].strip()
        if m := _FUNC.match(expr):
            return m.group("name").lower()
        if m := _CAST.match(expr):
            return unquote(m.group("name"))
        return "expr"
    if elem.startswith('"'):
        end = 1
        while end < len(elem):
            if elem[end] == '"' and not elem.startswith('""', end):
                break
            end += 2 if elem.startswith('""', end) else 1
        return elem[1:end].replace('""', '"')
    return elem.split(" ", 1)[0]


def unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def postgres_index_name(idx: sqlparser.IndexDef, taken: set[str]) -> str:
    """The name PostgreSQL gives ``CREATE INDEX ON t (...)``: ``t_col1_col2_idx``, then ``idx1``..."""
    names: list[str] = []
    for elem in (*idx.columns, *idx.include):
        base = _element_name(elem)
        cur, i = base, 0
        while cur in names:
            i += 1
            cur = f"{_clip(base, NAMEDATALEN - 1 - len(str(i)))}{i}"
        names.append(cur)
    addition = ""
    for n in names:  # ChooseIndexNameAddition: stop once past NAMEDATALEN
        addition = f"{addition}_{n}" if addition else n
        if len(addition.encode("utf-8")) >= NAMEDATALEN:
            addition = _clip(addition, NAMEDATALEN - 1)
            break
    label, attempt = "idx", 0
    while True:
        name = make_object_name(idx.table, addition or None, label)
        if name not in taken:
            return name
        attempt += 1
        label = f"idx{attempt}"


# --------------------------------------------------------------------------- I/O


def read_folder(folder: Path) -> tuple[list[LegacyFile], list[Action]]:
    """Every file of the legacy folder (one level of subfolders, for diesel), decoded as UTF-8."""
    files: list[LegacyFile] = []
    problems: list[Action] = []
    if not folder.is_dir():
        raise LegacyFolderError(f"{folder} is not a folder")
    for entry in sorted(folder.iterdir()):
        if sourcefiles.is_ignored(entry.name):
            continue
        children = sorted(entry.iterdir()) if entry.is_dir() and not entry.is_symlink() else [entry]
        for child in children:
            rel = child.relative_to(folder).as_posix()
            if child.is_dir() or sourcefiles.is_ignored(child.name):
                continue
            source, errs = sourcefiles.read_source(child, folder, rel)
            problems.extend(
                Action(act=Act.SKIPPED, path=e.path, line=e.line, col=e.col, message=f"{e.message}: not imported")
                for e in errs
            )
            if source is not None:
                files.append(LegacyFile(rel, source.text))
    return files, problems
