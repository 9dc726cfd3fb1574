"""The SQLSTATE table and the retry arithmetic."""

from __future__ import annotations

import pytest

from schemad import classify
from schemad.classify import Outcome


@pytest.mark.parametrize(
    ("sqlstate", "outcome"),
    [("42P07", Outcome.TOLERATED), ("23505", Outcome.FATAL), ("55P03", Outcome.LOCK_TIMEOUT),
     ("40P01", Outcome.RETRY), ("08006", Outcome.CONNECTION), ("57P01", Outcome.CONNECTION),
     ("42601", Outcome.FATAL), (None, Outcome.FATAL)],
)
def test_table(sqlstate: str | None, outcome: Outcome) -> None:
    assert classify.classify(sqlstate) is outcome


def test_strict_tolerates_nothing() -> None:
    assert classify.classify("42P07", strict=True) is Outcome.FATAL


def test_lock_timeout_is_raised_gently_and_capped_below_three_times() -> None:
    """A reader queued behind a waiting ALTER waits one attempt at most: never 3x the setting."""
    got = [classify.raised_lock_timeout_s(2.0, attempt) for attempt in range(1, 12)]
    assert got[:4] == [2.0, 3.0, 4.5, 5.0]
    assert max(got) == 2.0 * classify.LOCK_TIMEOUT_CAP_FACTOR < 3 * 2.0
