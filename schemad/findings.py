"""Findings: what `schemad check` reports, as plain data (no I/O here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One problem at a position: printed as ``path:line:col: CODE message``."""

    path: str
    line: int
    col: int
    code: str
    rule: str
    message: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.col, self.code)

    def format(self) -> str:
        tag = "" if self.is_error else " (warning)"
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}{tag}"

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "rule": self.rule,
            "severity": str(self.severity),
            "message": self.message,
        }


def escalate(findings: list[Finding], *, strict: bool) -> list[Finding]:
    """Under ``--strict`` warnings become errors; always sorted by position."""
    out = [
        Finding(
            path=f.path, line=f.line, col=f.col, code=f.code, rule=f.rule, message=f.message,
            severity=Severity.ERROR,
        )
        if strict and not f.is_error
        else f
        for f in findings
    ]
    return sorted(out, key=Finding.sort_key)
