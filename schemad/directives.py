"""`-- schemad:...` directives at the top of a migration file (no I/O here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|min|h)$")
_UNITS_S = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}
DIRECTIVE_PREFIX = "-- schemad:"


@dataclass(frozen=True, slots=True, kw_only=True)
class Directives:
    transactional: bool = True
    lock_timeout_s: float | None = None
    statement_timeout_s: float | None = None
    allow: dict[str, str] = field(default_factory=dict)  # rule → reason


@dataclass(frozen=True, slots=True)
class DirectiveError:
    line: int
    col: int
    message: str


def parse_duration(text: str) -> float | None:
    """``5s``, ``250ms``, ``10min``, ``1h`` → seconds; None if malformed."""
    m = _DURATION.match(text.strip())
    if not m:
        return None
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def parse_directives(
    text: str,
    *,
    first_statement_line: int,
    known_rules: frozenset[str],
    statement_lines: frozenset[int] = frozenset(),
) -> tuple[Directives, list[DirectiveError]]:
    """Read directives from comment lines; a directive after the first statement is an error."""
    transactional = True
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    allow: dict[str, str] = {}
    errors: list[DirectiveError] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if not stripped.startswith(DIRECTIVE_PREFIX):
            continue
        col = len(line) - len(stripped) + 1
        if lineno in statement_lines:
            continue  # inside a statement (e.g. a function body): not a directive
        if lineno > first_statement_line:
            errors.append(DirectiveError(lineno, col, "directives must come before the first statement"))
            continue
        body = stripped[len(DIRECTIVE_PREFIX) :].strip()
        name, _, value = body.partition("=")
        name = name.strip()
        if name == "no-transaction" and not value:
            transactional = False
        elif name in ("lock-timeout", "statement-timeout"):
            seconds = parse_duration(value)
            if seconds is None or seconds <= 0:
                errors.append(
                    DirectiveError(lineno, col, f"bad duration {value.strip()!r} for {name} (use e.g. 5s, 250ms, 10min)")
                )
            elif name == "lock-timeout":
                lock_timeout = seconds
            else:
                statement_timeout = seconds
        elif name == "allow":
            rule, _, reason = value.strip().partition(" ")
            if rule not in known_rules:
                errors.append(DirectiveError(lineno, col, f"allow names unknown or non-waivable rule {rule!r}"))
            elif not reason.strip():
                errors.append(DirectiveError(lineno, col, f"allow={rule} needs a reason after the rule name"))
            else:
                allow[rule] = reason.strip()
        else:
            errors.append(DirectiveError(lineno, col, f"unknown directive {body!r}"))
    return (
        Directives(
            transactional=transactional,
            lock_timeout_s=lock_timeout,
            statement_timeout_s=statement_timeout,
            allow=allow,
        ),
        errors,
    )
