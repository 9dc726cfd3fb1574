"""Hide a password given on the command line (`--dsn postgresql://app:PW@db/app`) from the
process list: overwrite it, in place, in this process's own argument memory, which is what
`/proc/<pid>/cmdline` and `ps` show to every local user.

Linux only (the argument area's address comes from `/proc/self/stat`); elsewhere, or if
anything looks unexpected, nothing is changed. Not a guarantee: the password is visible from
exec until this runs (the interpreter's start-up, a few hundred ms) and stays in the shell's
history, so the CLI also warns. `SCHEMAD_PASSWORD_FILE`, `$CREDENTIALS_DIRECTORY/db-password`
or a password-less DSN in `SCHEMAD_DSN` (`/proc/<pid>/environ` is readable by the process's
own user only) avoid the exposure altogether. No setproctitle dependency: this needs ~20
lines of ctypes, and no process title change.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from urllib.parse import quote

# /proc/<pid>/stat fields 48 and 49 (since Linux 3.5), counted after the ")" that ends field 2.
_ARG_START, _ARG_END = 48 - 3, 49 - 3


def _argument_area() -> tuple[int, int] | None:
    try:
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[_ARG_START]), int(fields[_ARG_END])
    except (OSError, ValueError, IndexError):
        return None
    return (start, end) if 0 < start < end and end - start < 1 << 20 else None


def hide(secrets: list[str]) -> bool:
    """Replace each secret (and its URL-quoted form) in our argv memory by asterisks of the same
    length; True if anything was replaced."""
    if not sys.platform.startswith("linux"):
        return False
    area = _argument_area()
    if area is None:
        return False
    start, end = area
    buffer = (ctypes.c_char * (end - start)).from_address(start)
    original = bytes(buffer)
    if original.count(b"\0") < 1:  # not the NUL-separated argument list we expect
        return False
    changed = original
    for secret in secrets:
        for form in {secret, quote(secret, safe="")}:
            raw = form.encode()
            if raw:
                changed = changed.replace(raw, b"*" * len(raw))
    if changed == original:
        return False
    ctypes.memmove(start, changed, len(changed))
    return True
