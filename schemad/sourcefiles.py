"""Reading migration and index folders safely: names, symlinks, size, encoding, positions.

The only file-system reads of the core; everything past `SourceFile` is pure.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
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
    _starts: list[int] = field(default_factory=list, repr=False, compare=False)

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column in characters) of a 0-based character offset."""
        starts = self._starts
        if not starts:  # built on first use: a file found in the parse cache may never need it
            starts.append(0)
            text = self.text
            i = text.find("\n")
            while i >= 0:
                starts.append(i + 1)
                i = text.find("\n", i + 1)
        line = bisect.bisect_right(starts, offset) - 1
        return line + 1, offset - starts[line] + 1


def is_ignored(name: str) -> bool:
    """README files and dotfiles may sit beside migrations and indexes."""
    return name.startswith(".") or name.upper().startswith("README")


def list_folder(folder: Path, display: str) -> tuple[list[Path], list[Finding]]:
    """The entries of ``folder`` that are not ignored, sorted; a missing folder is a finding."""
    if not folder.is_dir():
        return [], [rules.finding("E111", display, 1, 1, f"folder {display} does not exist")]
    # Sorted by name (all in one folder): comparing Path objects part by part is slow.
    names = sorted(name for name in os.listdir(folder) if not is_ignored(name))
    return [folder / name for name in names], []


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us


def read_bytes(path: Path, root: Path, display: str) -> tuple[bytes | None, list[Finding]]:
    """The raw bytes of one file, refusing symlinks out of ``root``, non-files and huge files."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # ELOOP: the name is a symlink (O_NOFOLLOW)
            return None, [rules.finding("E109", display, 1, 1, f"cannot open it: {exc.strerror}")]
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None, [rules.finding("E109", display, 1, 1, "dangling or looping symlink")]
        if not resolved.is_relative_to(root.resolve()):
            return None, [rules.finding("E109", display, 1, 1, f"symlink points outside {root}: refusing to read it")]
        try:
            fd = os.open(resolved, _OPEN_FLAGS)
        except OSError:
            return None, [rules.finding("E109", display, 1, 1, "not a regular file")]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, [rules.finding("E109", display, 1, 1, "not a regular file")]
        if st.st_size > MAX_FILE_BYTES:
            return None, [
                rules.finding("E110", display, 1, 1, f"file is {st.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit")
            ]
        chunks = [os.read(fd, st.st_size + 1)]
        size = len(chunks[0])
        while chunks[-1] and size <= MAX_FILE_BYTES:  # the file may have grown since the fstat
            chunks.append(os.read(fd, 1 << 20))
            size += len(chunks[-1])
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        return None, [rules.finding("E110", display, 1, 1, f"file is over the {MAX_FILE_BYTES}-byte limit")]
    return b"".join(chunks), []


def read_source(path: Path, root: Path, display: str) -> tuple[SourceFile | None, list[Finding]]:
    """Read one file, refusing symlinks out of ``root``, non-files, huge files and non-UTF-8."""
    data, findings = read_bytes(path, root, display)
    if data is None:
        return None, findings
    return decode(data, display)


def decode(data: bytes, display: str) -> tuple[SourceFile | None, list[Finding]]:
    """UTF-8 text without a BOM and without NUL bytes, or the finding that says where it is not."""
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
