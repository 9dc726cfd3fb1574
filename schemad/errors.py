"""The one exception tree: every error schemad raises on purpose derives from SchemadError.

Errors carry attributes (path, line, sqlstate, version), never strings to parse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemad.findings import Finding


class SchemadError(Exception):
    """schemad failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SchemadError):
    """The configuration is invalid (exit 78)."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class ValidationFailed(SchemadError):
    """Migration or index files were rejected before anything ran (exit 3)."""

    def __init__(self, findings: list[Finding]) -> None:
        errors = [f for f in findings if f.is_error]
        super().__init__(f"validation failed with {len(errors)} error(s)")
        self.findings = findings


class DatabaseError(SchemadError):
    """A statement failed in PostgreSQL; carries the SQLSTATE as data."""

    def __init__(self, message: str, *, sqlstate: str | None, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
        self.position: int | None = None  # 1-based character position in the query, if the server gave one


class ConnectionLost(DatabaseError):
    """The connection to PostgreSQL was lost or could not be opened."""


class LockBusy(SchemadError):
    """The advisory lock could not be taken within the allowed wait (exit 4)."""


class LockLost(SchemadError):
    """The advisory lock was lost while work was in progress; all work stopped."""


class ProxyDetected(SchemadError):
    """schemad is connected through a connection pooler or proxy, which breaks session advisory locks."""


class MigrationFailed(SchemadError):
    """A migration failed in the database; nothing of it was recorded (exit 1)."""

    def __init__(
        self,
        message: str,
        *,
        version: int,
        name: str,
        path: str,
        line: int | None,
        col: int | None,
        sqlstate: str | None,
        reason: str,
    ) -> None:
        super().__init__(message)
        self.version = version
        self.name = name
        self.path = path
        self.line = line
        self.col = col
        self.sqlstate = sqlstate
        self.reason = reason


class IndexBuildFailed(SchemadError):
    """One or more index builds failed (exit 1)."""


class NoPostgres(SchemadError):
    """No PostgreSQL server binaries were found for the demo."""
