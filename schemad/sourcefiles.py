"""Reading migration and index folders safely: names, symlinks, size, encoding, positions.

The only file-system reads of the core; everything past `SourceFile` is pure.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemad import rules

if TYPE_CHECKING:
    from pathlib import Path

    from schemad.findings import Finding

MAX_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A decoded file and its line table, for turning character offsets into line:col."""

    path: str
    text: str
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        starts = [0]
        for i, ch in enumerate(self.text):
            if ch == "\n":
                starts.append(i + 1)
        self._starts.extend(starts)

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column in characters) of a 0-based character offset."""
        line = bisect.bisect_right(self._starts, offset) - 1
        return line + 1, offset - self._starts[line] + 1


def is_ignored(name: str) -> bool:
    """README files and dotfiles may sit beside migrations and indexes."""
    return name.startswith(".") or name.upper().startswith("README")


def list_folder(folder: Path, display: str) -> tuple[list[Path], list[Finding]]:
    """The entries of ``folder`` that are not ignored, sorted; a missing folder is a finding."""
    if not folder.is_dir():
        return [], [rules.finding("E111", display, 1, 1, f"folder {display} does not exist")]
    entries = sorted(p for p in folder.iterdir() if not is_ignored(p.name))
    return entries, []


def read_source(path: Path, root: Path, display: str) -> tuple[SourceFile | None, list[Finding]]:
    """Read one file, refusing symlinks out of ``root``, non-files, huge files and non-UTF-8."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None, [rules.finding("E109", display, 1, 1, "dangling or looping symlink")]
    if path.is_symlink() and not resolved.is_relative_to(root.resolve()):
        return None, [rules.finding("E109", display, 1, 1, f"symlink points outside {root}: refusing to read it")]
    if not resolved.is_file():
        return None, [rules.finding("E109", display, 1, 1, "not a regular file")]
    size = resolved.stat().st_size
    if size > MAX_FILE_BYTES:
        return None, [
            rules.finding("E110", display, 1, 1, f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        ]
    data = resolved.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        return None, [rules.finding("E102", display, line, col, f"invalid UTF-8 byte 0x{data[exc.start]:02x}")]
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        good = text[: text.index("\x00")]
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        return None, [rules.finding("E102", display, line, col, "NUL byte in a SQL file")]
    return SourceFile(display, text), []
