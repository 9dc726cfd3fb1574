"""A per-user cache of parse results: an unchanged file is not parsed again (no database here).

Two memos, keyed by the SHA-256 of a file's text (and, for migrations, its name):
`ParseCache.parse(text)` is `sqlparser.parse(text)`; `ParseCache.load_migration(source,
version, slug, check)` is ``check`` — the parse and every rule of one migration file —
for a file whose exact text was checked before by this same schemad. Every file is still
read and hashed on every run, so a changed byte is a miss. What is stored is the parser's
*description* of each statement (character range, position, node, target, token digest,
...), its directives, checksum and findings, never its text: the text is sliced from the
file each time, so the SQL that is sent is always the file's own.

One cache file per folder under ``$CACHE_DIRECTORY`` (systemd), ``$XDG_CACHE_HOME/schemad``
or ``~/.cache/schemad``,
rewritten atomically when it changed and holding only the folder's current files. It is
only ever a shortcut, never trusted blindly: a cache that is missing, unreadable, owned by
someone else or writable by others, truncated or corrupt (SHA-256 of its body), or written
by another schemad, Python, parser module or parser binding is ignored; an entry that does
not fit its file is re-parsed; a read-only or missing home directory just means no cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import marshal
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemad import __version__, directives, sqlparser
from schemad.findings import Finding, Severity
from schemad.migrations import Migration, MigrationStatement, Statements
from schemad.sqlparser import AlterCmd, IndexDef, SqlSyntaxError, Statement

if TYPE_CHECKING:
    from collections.abc import Mapping

    from schemad.migrations import Load
    from schemad.sourcefiles import SourceFile

log = logging.getLogger("schemad.parsecache")

FORMAT = 1
_MAGIC = b"SDPC\x00\x00\x00\x01"
_DIGEST_BYTES = 32

# Field order of the stored tuples. `text` and `IndexDef.source` are sliced from the file.
_STMT_FIELDS = tuple(f.name for f in dataclasses.fields(Statement) if f.name != "text")
_ALTER_FIELDS = tuple(f.name for f in dataclasses.fields(AlterCmd))
_INDEX_FIELDS = tuple(f.name for f in dataclasses.fields(IndexDef) if f.name != "source")
_OK, _SYNTAX_ERROR = 0, 1


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """``$CACHE_DIRECTORY`` (systemd's ``CacheDirectory=``), else ``$XDG_CACHE_HOME/schemad``,
    else ``~/.cache/schemad``; None without a home."""
    env = os.environ if environ is None else environ
    systemd = env.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        return Path(systemd)
    base = env.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):
        home = os.path.expanduser("~")
        if home == "~":
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "schemad"


def _stat_key(path: str | None) -> tuple[int, int]:
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return (st.st_mtime_ns, st.st_size) if st else (0, 0)


def _binding_file() -> str | None:
    """Where the parser binding would be imported from, without importing it (~30 ms)."""
    loaded = sys.modules.get("postgast")
    if loaded is not None:
        return loaded.__file__
    for entry in sys.path:
        candidate = os.path.join(entry or ".", "postgast", "__init__.py")
        if os.path.exists(candidate):
            return candidate
    return None


def fingerprint() -> tuple[Any, ...]:
    """What a stored parse depends on besides the text: any change makes the cache stale."""
    return (
        FORMAT, __version__, sys.version_info[:2], marshal.version,
        _stat_key(sqlparser.__file__), _stat_key(_binding_file()),
    )


class ParseCache:
    """The cache for one folder; `parse` is `sqlparser.parse`, `save` writes it back."""

    def __init__(self, path: Path | None, entries: dict[bytes, Any], stamp: tuple[Any, ...]) -> None:
        self.path = path
        self._stored = entries
        self._stamp = stamp
        self._used: dict[bytes, Any] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_folder(cls, folder: Path, *, directory: Path | None = None) -> ParseCache:
        """The cache of ``folder`` (by absolute path); empty when there is none or it cannot be used."""
        directory = directory if directory is not None else cache_dir()
        stamp = fingerprint()
        if directory is None:
            return cls(None, {}, stamp)
        name = hashlib.sha256(os.fsencode(os.path.abspath(folder))).hexdigest()[:32]
        path = directory / f"{name}.parse"
        return cls(path, _load(path, stamp), stamp)

    def parse(self, text: str) -> list[Statement]:
        """`sqlparser.parse(text)`, from the cache when this exact text was parsed before."""
        key = hashlib.sha256(text.encode("utf-8")).digest()
        entry = self._stored.get(key)
        if entry is not None:
            try:
                result = _decode(entry, text)
            except (TypeError, ValueError, IndexError, KeyError):
                result = None  # an entry that does not fit this text: parse it again
            if result is not None:
                self.hits += 1
                self._used[key] = entry
                if isinstance(result, SqlSyntaxError):
                    raise result
                return result
        self.misses += 1
        self._dirty = True
        try:
            parsed = sqlparser.parse(text)
        except SqlSyntaxError as exc:
            self._used[key] = (_SYNTAX_ERROR, exc.message, exc.offset)
            raise
        self._used[key] = (_OK, tuple(_encode(s) for s in parsed))
        return parsed

    def load_migration(
        self, source: SourceFile, version: int, slug: str, check: Load
    ) -> tuple[Migration | None, list[Finding]]:
        """``check(source, version, slug)``, from the cache when this file (name and text) was checked before."""
        key = hashlib.sha256(f"M\0{source.path}\0{version}\0{slug}\0".encode() + source.text.encode("utf-8")).digest()
        entry = self._stored.get(key)
        if entry is not None:
            try:
                result = _decode_migration(entry, source, version, slug)
            except (TypeError, ValueError, IndexError, KeyError):
                result = None
            if result is not None:
                self.hits += 1
                self._used[key] = entry
                return result
        self.misses += 1
        self._dirty = True
        migration, findings = check(source, version, slug)
        self._used[key] = _encode_migration(migration, findings)
        return migration, findings

    def save(self) -> None:
        """Write the cache back if anything changed (new files, or files gone); never raises."""
        if self.path is None or not (self._dirty or len(self._used) != len(self._stored)):
            return
        try:
            _store(self.path, self._stamp, self._used)
        except (OSError, ValueError) as exc:
            log.debug("parse cache not written: %s", exc, extra={"event": "parse_cache_unwritable"})


# --------------------------------------------------------------------------- encoding


def _encode(s: Statement) -> tuple[Any, ...]:
    values = []
    for name in _STMT_FIELDS:
        value = getattr(s, name)
        if name == "alter_cmds":
            value = tuple(tuple(getattr(c, n) for n in _ALTER_FIELDS) for c in value)
        elif name == "index" and value is not None:
            value = tuple(getattr(value, n) for n in _INDEX_FIELDS)
        values.append(value)
    return tuple(values)


def _decode(entry: Any, text: str) -> list[Statement] | SqlSyntaxError | None:
    if entry[0] == _SYNTAX_ERROR:
        _tag, message, offset = entry
        if not isinstance(message, str) or not isinstance(offset, int) or not 0 <= offset <= len(text):
            return None
        return SqlSyntaxError(message, offset)
    out: list[Statement] = []
    for values in entry[1]:
        fields = dict(zip(_STMT_FIELDS, values, strict=True))
        start, end = fields["start"], fields["end"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
            return None
        fields["text"] = stmt_text = text[start:end].strip()
        fields["alter_cmds"] = tuple(AlterCmd(**dict(zip(_ALTER_FIELDS, c, strict=True))) for c in fields["alter_cmds"])
        if fields["index"] is not None:
            fields["index"] = IndexDef(**dict(zip(_INDEX_FIELDS, fields["index"], strict=True)), source=stmt_text)
        out.append(Statement(**fields))
    return out


def _encode_migration(m: Migration | None, findings: list[Finding]) -> tuple[Any, ...]:
    found = tuple((f.path, f.line, f.col, f.code, f.rule, f.message, f.severity.value) for f in findings)
    if m is None:
        return (None, found)
    d = m.directives
    return (
        tuple((st.index, st.line, st.col, _encode(st.stmt)) for st in m.statements),
        (d.transactional, d.lock_timeout_s, d.statement_timeout_s, tuple(d.allow.items())),
        m.checksum,
        found,
    )


def _decode_migration(
    entry: Any, source: SourceFile, version: int, slug: str
) -> tuple[Migration | None, list[Finding]] | None:
    found = [
        Finding(path=path, line=line, col=col, code=code, rule=rule, message=message, severity=Severity(severity))
        for path, line, col, code, rule, message, severity in entry[-1]
    ]
    if entry[0] is None:
        return None, found
    stmts_raw, (transactional, lock_timeout_s, statement_timeout_s, allow), checksum, _ = entry
    text = source.text
    # Checked now, built when first used (an applied migration's never are).
    if not isinstance(checksum, str) or not all(
        isinstance(i, int) and isinstance(line, int) and isinstance(col, int)
        and isinstance(raw[0], int) and isinstance(raw[1], int) and 0 <= raw[0] <= raw[1] <= len(text)
        for i, line, col, raw in stmts_raw
    ):
        return None

    def build() -> tuple[MigrationStatement, ...]:
        decoded = _decode((_OK, tuple(raw for _i, _l, _c, raw in stmts_raw)), text)
        assert isinstance(decoded, list)
        return tuple(
            MigrationStatement(index=i, line=line, col=col, stmt=st)
            for (i, line, col, _raw), st in zip(stmts_raw, decoded, strict=True)
        )

    d = directives.Directives(
        transactional=bool(transactional), lock_timeout_s=lock_timeout_s, statement_timeout_s=statement_timeout_s,
        allow=dict(allow),
    )
    return Migration(
        version=version, slug=slug, path=source.path, body=Statements(build=build), directives=d, checksum=checksum
    ), found


# --------------------------------------------------------------------------- file


def _trusted(st: os.stat_result) -> bool:
    """Ours, and not writable by anyone else (who could otherwise feed us parse results)."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _load(path: Path, stamp: tuple[Any, ...]) -> dict[bytes, Any]:
    try:
        if not _trusted(os.stat(path.parent)):
            return {}
        with open(path, "rb") as fh:
            if not _trusted(os.fstat(fh.fileno())):
                return {}
            raw = fh.read()
    except OSError:
        return {}
    head = len(_MAGIC) + _DIGEST_BYTES
    if raw[: len(_MAGIC)] != _MAGIC or hashlib.sha256(raw[head:]).digest() != raw[len(_MAGIC) : head]:
        return {}
    try:
        stored_stamp, entries = marshal.loads(raw[head:])
    except (EOFError, ValueError, TypeError):
        return {}
    if stored_stamp != stamp or not isinstance(entries, dict):
        return {}
    return entries


def _store(path: Path, stamp: tuple[Any, ...], entries: dict[bytes, Any]) -> None:
    import tempfile

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = marshal.dumps((stamp, entries))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parse")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
