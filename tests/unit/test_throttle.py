"""Admission of index builds: each signal against its limit, hysteresis, UTC windows."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from schemad import throttle
from schemad.throttle import Admit, Defer, Limits, Snapshot, Window

NOW = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits(
    max_replication_lag_s=30.0,
    max_transaction_age_s=600.0,
    max_idle_in_transaction_s=60.0,
    max_lock_waiters=5,
    max_active_backends=50,
    defer_on_autovacuum=True,
    resume_after_s=10.0,
)
QUIET = Snapshot()


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def test_quiet_database_is_admitted() -> None:
    assert throttle.decide(QUIET, LIMITS, NOW, None) == Admit()


@pytest.mark.parametrize(
    ("snapshot", "signal", "value", "limit"),
    [
        (Snapshot(replication_lag_s=31.0), "replication_lag", 31.0, 30.0),
        (Snapshot(transaction_age_s=601.0), "transaction_age", 601.0, 600.0),
        (Snapshot(idle_in_transaction_s=61.0), "idle_in_transaction", 61.0, 60.0),
        (Snapshot(lock_waiters=6), "lock_waiters", 6.0, 5.0),
        (Snapshot(active_backends=51), "active_backends", 51.0, 50.0),
        (Snapshot(autovacuum_relids=frozenset({7})), "autovacuum", 1.0, 0.0),
    ],
)
def test_each_signal_over_its_limit_defers(snapshot: Snapshot, signal: str, value: float, limit: float) -> None:
    d = throttle.decide(snapshot, LIMITS, NOW, None, target_relids=frozenset({7}))
    assert isinstance(d, Defer)
    assert (d.signal, d.value, d.limit) == (signal, value, limit)
    assert d.state is not None and d.state.signal == signal and d.state.since == NOW


def test_at_the_limit_is_not_over_and_zero_means_any() -> None:
    assert isinstance(throttle.decide(Snapshot(lock_waiters=5), LIMITS, NOW, None), Admit)
    strict = replace(LIMITS, max_idle_in_transaction_s=0.0)
    d = throttle.decide(Snapshot(idle_in_transaction_s=0.01), strict, NOW, None)
    assert isinstance(d, Defer) and d.signal == "idle_in_transaction"


def test_signals_that_do_not_apply_are_ignored() -> None:
    assert isinstance(throttle.decide(Snapshot(replication_lag_s=None), LIMITS, NOW, None), Admit)


def test_autovacuum_only_on_the_target_table_and_only_when_configured() -> None:
    busy = Snapshot(autovacuum_relids=frozenset({7}))
    assert isinstance(throttle.decide(busy, LIMITS, NOW, None, target_relids=frozenset({8})), Admit)
    off = replace(LIMITS, defer_on_autovacuum=False)
    assert isinstance(throttle.decide(busy, off, NOW, None, target_relids=frozenset({7})), Admit)


def test_hysteresis_needs_every_signal_below_80_percent_for_resume_after_s() -> None:
    d1 = throttle.decide(Snapshot(lock_waiters=6), LIMITS, NOW, None)
    assert isinstance(d1, Defer)
    # Back under the limit but above 80 % of it: still paused.
    d2 = throttle.decide(Snapshot(lock_waiters=5), LIMITS, later(1), d1.state)
    assert isinstance(d2, Defer) and d2.signal == "lock_waiters" and "resume level" in d2.reason
    # Below 80 %: the clock starts.
    d3 = throttle.decide(Snapshot(lock_waiters=1), LIMITS, later(2), d2.state)
    assert isinstance(d3, Defer) and d3.state is not None and d3.state.clear_since == later(2)
    d4 = throttle.decide(Snapshot(lock_waiters=1), LIMITS, later(11), d3.state)
    assert isinstance(d4, Defer)
    # A relapse resets the clock.
    d5 = throttle.decide(Snapshot(lock_waiters=9), LIMITS, later(11.5), d4.state)
    assert isinstance(d5, Defer) and d5.state is not None and d5.state.clear_since is None
    assert d5.state.since == NOW  # still the same pause
    d6 = throttle.decide(QUIET, LIMITS, later(12), d5.state)
    d7 = throttle.decide(QUIET, LIMITS, later(22), d6.state)
    assert isinstance(d6, Defer) and d7 == Admit()


def test_resume_after_zero_admits_as_soon_as_signals_are_low() -> None:
    limits = replace(LIMITS, resume_after_s=0.0)
    d1 = throttle.decide(Snapshot(idle_in_transaction_s=100.0), limits, NOW, None)
    assert isinstance(d1, Defer)
    assert throttle.decide(QUIET, limits, later(1), d1.state) == Admit()


@pytest.mark.parametrize(
    ("windows", "hhmm", "open_"),
    [
        ((), "12:00", True),
        (("01:00-05:00",), "03:00", True),
        (("01:00-05:00",), "05:00", False),
        (("01:00-05:00",), "00:59", False),
        (("22:00-06:00",), "23:30", True),  # wraps past midnight
        (("22:00-06:00",), "05:59", True),
        (("22:00-06:00",), "12:00", False),
        (("01:00-02:00", "12:00-13:00"), "12:30", True),
        (("00:00-00:00",), "17:45", True),
    ],
)
def test_utc_windows(windows: tuple[str, ...], hhmm: str, open_: bool) -> None:
    h, m = (int(x) for x in hhmm.split(":"))
    now = NOW.replace(hour=h, minute=m)
    parsed = tuple(Window.parse(w) for w in windows)
    assert throttle.in_window(parsed, now) is open_
    limits = replace(LIMITS, windows=parsed)
    d = throttle.decide(QUIET, limits, now, None)
    assert isinstance(d, Admit) is open_
    if not open_:
        assert isinstance(d, Defer) and d.signal == "window" and "outside the build windows" in d.reason


def test_windows_are_utc_whatever_the_clock_zone() -> None:
    limits = replace(LIMITS, windows=(Window.parse("01:00-02:00"),))
    berlin = dt.timezone(dt.timedelta(hours=2))
    assert isinstance(throttle.decide(QUIET, limits, dt.datetime(2026, 5, 4, 3, 30, tzinfo=berlin), None), Admit)


def test_critical_indexes_ignore_windows_but_not_load() -> None:
    limits = replace(LIMITS, windows=(Window.parse("01:00-02:00"),))
    assert isinstance(throttle.decide(QUIET, limits, NOW, None, ignore_windows=True), Admit)
    d = throttle.decide(Snapshot(lock_waiters=50), limits, NOW, None, ignore_windows=True)
    assert isinstance(d, Defer) and d.signal == "lock_waiters"


def test_window_deferral_keeps_the_load_pause_state() -> None:
    paused = throttle.PauseState(signal="lock_waiters", since=NOW)
    limits = replace(LIMITS, windows=(Window.parse("01:00-02:00"),))
    d = throttle.decide(QUIET, limits, NOW, paused)
    assert isinstance(d, Defer) and d.state == paused


def test_bad_windows_are_rejected() -> None:
    for bad in ("1:00-2:00", "24:00-01:00", "01:00", "01:60-02:00"):
        with pytest.raises(ValueError, match="HH:MM-HH:MM"):
            Window.parse(bad)
    assert str(Window.parse("22:05-06:30")) == "22:05-06:30"


def test_limits_from_settings_values() -> None:
    limits = throttle.limits_from(
        max_replication_lag_s=1, max_transaction_age_s=2, max_idle_in_transaction_s=3, max_lock_waiters=4,
        max_active_backends=5, defer_on_autovacuum=False, windows=["01:00-02:00"], resume_after_s=6,
    )
    assert limits.windows == (Window(60, 120),) and limits.resume_after_s == 6
