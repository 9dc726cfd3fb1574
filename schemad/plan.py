"""What to apply: compare the files with the ledger (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemad.migrations import Migration


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """A ledger row."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    version: int
    name: str
    path: str
    recorded: str
    current: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    pending: tuple[Migration, ...]
    mismatches: tuple[Mismatch, ...]
    unknown: tuple[Applied, ...]  # applied versions this replica's files do not know (newer release)
    applied: tuple[Applied, ...]

    @property
    def blocked(self) -> bool:
        """A changed applied migration blocks every further apply."""
        return bool(self.mismatches)

    @property
    def schema_version(self) -> int:
        return max((a.version for a in self.applied), default=0)


def make(available: list[Migration], applied: list[Applied]) -> Plan:
    """Pending migrations in version order (including gaps below the head), checksum
    mismatches of applied ones, and applied versions unknown to these files."""
    by_version = {a.version: a for a in applied}
    files = {m.version: m for m in available}
    pending = tuple(m for m in available if m.version not in by_version)
    mismatches = tuple(
        Mismatch(version=m.version, name=m.name, path=m.path, recorded=by_version[m.version].checksum, current=m.checksum)
        for m in available
        if m.version in by_version and by_version[m.version].checksum != m.checksum
    )
    unknown = tuple(a for a in sorted(applied, key=lambda a: a.version) if a.version not in files)
    return Plan(
        pending=pending,
        mismatches=mismatches,
        unknown=unknown,
        applied=tuple(sorted(applied, key=lambda a: a.version)),
    )
