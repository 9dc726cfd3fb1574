"""Integration-tier fixtures shared by several test modules."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record the schemad loggers emit (independent of caplog and of `logs.setup`)."""
    got: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Collect(logging.DEBUG)
    root = logging.getLogger("schemad")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield got
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
