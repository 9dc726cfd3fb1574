"""Admission of index builds: a pure decision over a snapshot of load signals (no I/O here).

A running CREATE INDEX CONCURRENTLY cannot be paused, so every check happens before a
build starts. `decide` compares each signal with its limit (over = value > limit, so a
limit of 0 defers on any occurrence), honours UTC time windows and applies hysteresis:
once paused, admission resumes only after every signal has stayed below
`RESUME_FRACTION` of its limit for `resume_after_s`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

# The label values of `schemad_throttle_paused{signal}` (schemad.metrics.ThrottleSignal).
Signal = Literal[
    "replication_lag",
    "transaction_age",
    "idle_in_transaction",
    "lock_waiters",
    "active_backends",
    "autovacuum",
    "window",
]
LOAD_SIGNALS: tuple[Signal, ...] = (
    "replication_lag",
    "transaction_age",
    "idle_in_transaction",
    "lock_waiters",
    "active_backends",
    "autovacuum",
)
SIGNALS: tuple[Signal, ...] = (*LOAD_SIGNALS, "window")

# Resume only once every signal is below this share of its limit (hysteresis).
RESUME_FRACTION = 0.8
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class Window:
    """A daily UTC window in minutes after midnight; ``end < start`` wraps past midnight."""

    start_min: int
    end_min: int

    @classmethod
    def parse(cls, text: str) -> Window:
        m = _WINDOW.match(text.strip())
        if m is None:
            raise ValueError(f"window {text!r} must be HH:MM-HH:MM (UTC)")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        return cls(h1 * 60 + m1, h2 * 60 + m2)

    def contains(self, minute: int) -> bool:
        if self.start_min == self.end_min:
            return True  # "00:00-00:00": all day
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-{self.end_min // 60:02d}:{self.end_min % 60:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_replication_lag_s: float
    max_transaction_age_s: float
    max_idle_in_transaction_s: float
    max_lock_waiters: int
    max_active_backends: int
    defer_on_autovacuum: bool = True
    windows: tuple[Window, ...] = ()
    resume_after_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Load signals read from the server; ``None`` means "does not apply" (e.g. no standbys)."""

    replication_lag_s: float | None = None
    transaction_age_s: float | None = None  # oldest open transaction in this database, not ours
    idle_in_transaction_s: float | None = None  # longest idle-in-transaction session, not ours
    lock_waiters: int = 0
    active_backends: int = 0
    autovacuum_relids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseState:
    """Carried from one decision to the next: why and since when admission is paused."""

    signal: Signal
    since: dt.datetime
    clear_since: dt.datetime | None = None  # when every signal last dropped below the resume level


@dataclass(frozen=True, slots=True, kw_only=True)
class Admit:
    state: PauseState | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Defer:
    signal: Signal
    value: float
    limit: float
    reason: str
    state: PauseState | None


Decision = Admit | Defer


def limits_from(
    *,
    max_replication_lag_s: float,
    max_transaction_age_s: float,
    max_idle_in_transaction_s: float,
    max_lock_waiters: int,
    max_active_backends: int,
    defer_on_autovacuum: bool,
    windows: list[str] | tuple[str, ...],
    resume_after_s: float,
) -> Limits:
    return Limits(
        max_replication_lag_s=max_replication_lag_s,
        max_transaction_age_s=max_transaction_age_s,
        max_idle_in_transaction_s=max_idle_in_transaction_s,
        max_lock_waiters=max_lock_waiters,
        max_active_backends=max_active_backends,
        defer_on_autovacuum=defer_on_autovacuum,
        windows=tuple(Window.parse(w) for w in windows),
        resume_after_s=resume_after_s,
    )


def readings(snapshot: Snapshot, limits: Limits, target_relids: frozenset[int]) -> list[tuple[Signal, float, float]]:
    """(signal, value, limit) for every load signal that applies, in a fixed order."""
    out: list[tuple[Signal, float, float]] = []
    if snapshot.replication_lag_s is not None:
        out.append(("replication_lag", snapshot.replication_lag_s, limits.max_replication_lag_s))
    if snapshot.transaction_age_s is not None:
        out.append(("transaction_age", snapshot.transaction_age_s, limits.max_transaction_age_s))
    if snapshot.idle_in_transaction_s is not None:
        out.append(("idle_in_transaction", snapshot.idle_in_transaction_s, limits.max_idle_in_transaction_s))
    out.append(("lock_waiters", float(snapshot.lock_waiters), float(limits.max_lock_waiters)))
    out.append(("active_backends", float(snapshot.active_backends), float(limits.max_active_backends)))
    if limits.defer_on_autovacuum:
        busy = len(snapshot.autovacuum_relids & target_relids)
        out.append(("autovacuum", float(busy), 0.0))
    return out


def in_window(windows: tuple[Window, ...], now: dt.datetime) -> bool:
    if not windows:
        return True
    utc = now.astimezone(dt.UTC) if now.tzinfo is not None else now
    minute = utc.hour * 60 + utc.minute
    return any(w.contains(minute) for w in windows)


def decide(
    snapshot: Snapshot,
    limits: Limits,
    now: dt.datetime,
    last: PauseState | None,
    *,
    target_relids: frozenset[int] = frozenset(),
    ignore_windows: bool = False,
) -> Decision:
    """Admit a build now, or defer it naming the signal, its value and its limit.

    ``last`` is the `PauseState` of the previous decision (``Defer.state``/``Admit.state``);
    ``target_relids`` are the tables the build would lock (autovacuum on them defers);
    critical indexes pass ``ignore_windows``.
    """
    if not ignore_windows and not in_window(limits.windows, now):
        utc = now.astimezone(dt.UTC) if now.tzinfo is not None else now
        windows = ", ".join(str(w) for w in limits.windows)
        # Windows are a schedule, not a load signal: they do not touch the load hysteresis.
        return Defer(
            signal="window", value=float(utc.hour * 60 + utc.minute), limit=0.0,
            reason=f"{utc:%H:%M} UTC is outside the build windows {windows}", state=last,
        )
    current = readings(snapshot, limits, target_relids)
    over = [(sig, value, limit) for sig, value, limit in current if value > limit]
    if over:
        sig, value, limit = over[0]
        state = PauseState(signal=sig, since=last.since if last is not None else now)
        return Defer(signal=sig, value=value, limit=limit, reason=f"{sig} {value:g} > limit {limit:g}", state=state)
    if last is None:
        return Admit()
    # Paused before: resume only below RESUME_FRACTION of every limit, for resume_after_s.
    high = [(sig, value, limit) for sig, value, limit in current if value > limit * RESUME_FRACTION]
    if high:
        sig, value, limit = high[0]
        state = PauseState(signal=last.signal, since=last.since)
        return Defer(
            signal=last.signal, value=value, limit=limit,
            reason=f"{sig} {value:g} is under its limit {limit:g} but above the resume level "
            f"{limit * RESUME_FRACTION:g}",
            state=state,
        )
    clear_since = last.clear_since or now
    waited = (now - clear_since).total_seconds()
    if waited >= limits.resume_after_s:
        return Admit()
    value = _value_of(current, last.signal)
    return Defer(
        signal=last.signal, value=value, limit=_limit_of(current, last.signal),
        reason=f"signals back to normal for {waited:.1f}s of the {limits.resume_after_s:g}s needed to resume",
        state=PauseState(signal=last.signal, since=last.since, clear_since=clear_since),
    )


def _value_of(current: list[tuple[Signal, float, float]], signal: Signal) -> float:
    return next((v for s, v, _ in current if s == signal), 0.0)


def _limit_of(current: list[tuple[Signal, float, float]], signal: Signal) -> float:
    return next((lim for s, _, lim in current if s == signal), 0.0)
