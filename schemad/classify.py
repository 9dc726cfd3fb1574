"""SQLSTATE → outcome: the table that decides whether a failed statement is tolerated,
retried or fatal. Exact code first, then the two-character class. No I/O here.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    TOLERATED = "tolerated"  # "already exists": roll back to the savepoint, count, continue
    RETRY = "retry"  # transient: roll back the whole migration, back off, try again
    LOCK_TIMEOUT = "lock_timeout"  # lock_timeout hit: retry, report blockers, raise the timeout
    CONNECTION = "connection"  # connection lost: reconnect (if the lock is still ours) and retry
    FATAL = "fatal"  # everything else: roll back, record the failure, stop


EXACT: dict[str, Outcome] = {
    "42P07": Outcome.TOLERATED,  # duplicate_table
    "42701": Outcome.TOLERATED,  # duplicate_column
    "42710": Outcome.TOLERATED,  # duplicate_object
    "42P06": Outcome.TOLERATED,  # duplicate_schema
    "42723": Outcome.TOLERATED,  # duplicate_function
    # 23505 unique_violation is never tolerated: it means data broke a constraint.
    "23505": Outcome.FATAL,
    "55P03": Outcome.LOCK_TIMEOUT,  # lock_not_available
    "40P01": Outcome.RETRY,  # deadlock_detected
    "40001": Outcome.RETRY,  # serialization_failure
    "57P01": Outcome.CONNECTION,  # admin_shutdown
    "57P02": Outcome.CONNECTION,  # crash_shutdown
    "57P03": Outcome.CONNECTION,  # cannot_connect_now
}

BY_CLASS: dict[str, Outcome] = {
    "08": Outcome.CONNECTION,  # connection_exception
}

FAILURE_REASONS: dict[Outcome, str] = {
    Outcome.TOLERATED: "tolerated",
    Outcome.RETRY: "retry_exhausted",
    Outcome.LOCK_TIMEOUT: "lock_timeout",
    Outcome.CONNECTION: "connection",
    Outcome.FATAL: "sql_error",
}


def classify(sqlstate: str | None, *, strict: bool = False) -> Outcome:
    """The outcome for a SQLSTATE; unknown or missing codes are fatal.

    Under ``strict`` nothing is tolerated: an "already exists" is fatal too.
    """
    if sqlstate is None:
        return Outcome.FATAL
    outcome = EXACT.get(sqlstate) or BY_CLASS.get(sqlstate[:2], Outcome.FATAL)
    if outcome is Outcome.TOLERATED and strict:
        return Outcome.FATAL
    return outcome


def backoff_s(attempt: int, *, base_s: float, cap_s: float = 30.0, jitter: float) -> float:
    """Exponential backoff with full jitter; ``jitter`` is a number in [0, 1) from the caller."""
    return min(cap_s, base_s * 2.0 ** max(0, attempt - 1)) * (0.5 + jitter / 2)


# A reader that queues behind our waiting ALTER waits at most one attempt's lock_timeout:
# the cap keeps that under 3x the configured timeout (bench/RESULTS.md, lock-queue safety).
LOCK_TIMEOUT_CAP_FACTOR = 2.5


def raised_lock_timeout_s(base_s: float, attempt: int, *, cap_factor: float = LOCK_TIMEOUT_CAP_FACTOR) -> float:
    """Raise the lock timeout gently with each retry (×1.5 per attempt, capped at 2.5×); never none."""
    return float(min(base_s * cap_factor, base_s * 1.5 ** max(0, attempt - 1)))
