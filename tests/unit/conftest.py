"""Unit-test fixtures: no database, and nothing leaking in from the caller's environment."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SCHEMAD_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.upper().startswith("SCHEMAD_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`cli.run` installs a handler on the captured stderr; put the old ones back afterwards."""
    logger = logging.getLogger("schemad")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
