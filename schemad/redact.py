"""Secrets never leak: every secret schemad learns is registered here and scrubbed from
anything it prints or logs."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

_secrets: set[str] = set()
_DSN_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def register(secret: str | None) -> None:
    if secret and len(secret) >= 1:
        _secrets.add(secret)
        _secrets.add(quote(secret, safe=""))


def dsn_password(dsn: str) -> str | None:
    """The password inside a DSN (URL or key=value form), if it has one."""
    try:
        parts = urlsplit(dsn)
        if parts.password:
            return unquote(parts.password)
    except ValueError:
        pass
    m = _KV_PASSWORD.search(dsn)
    return m.group(2).strip("'") if m else None


def register_dsn(dsn: str | None) -> None:
    """Register the password inside a DSN (URL or key=value form)."""
    if not dsn:
        return
    try:
        parts = urlsplit(dsn)
        if parts.password:
            register(unquote(parts.password))
    except ValueError:
        pass
    for m in _KV_PASSWORD.finditer(dsn):
        register(m.group(2).strip("'"))


def scrub(text: str) -> str:
    """Remove every registered secret and any DSN password from ``text``."""
    for s in sorted(_secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    text = _DSN_PASSWORD.sub(r"\1***\3", text)
    return _KV_PASSWORD.sub(r"\1***", text)


def display_dsn(dsn: str | None) -> str:
    """A DSN fit for printing: the password removed."""
    if not dsn:
        return "(from PG* environment)"
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return scrub(dsn)
    if parts.password is None:
        return dsn if parts.scheme else scrub(dsn)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}@{netloc}" if user else netloc, parts.path, parts.query, ""))
