"""Prometheus metrics: one `Metrics(registry)` object owns every collector (design §10).

Components receive a `Metrics` and call its small methods; tests build one on their
own `CollectorRegistry` and read values back with `registry.get_sample_value`. Label
values come from closed sets (the `Literal` types below) so cardinality stays bounded,
and every known value is pre-initialised so that alerts never see a missing series.
`render` writes the classic text format (what `promtool check metrics` lints) without
the `*_created` series, whatever the process-wide prometheus_client setting is.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Final, Literal, get_args

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

import schemad
from schemad import throttle

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

# The classic text exposition format that `generate_latest` writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

FailureReason = Literal[
    "sql_error",  # a fatal SQLSTATE from a migration statement
    "lock_timeout",  # 55P03 retries exhausted the budget
    "lock_lost",  # the advisory lock connection died or the fence check failed
    "validation",  # files rejected before anything ran
    "connection",  # could not connect, or the connection broke mid-run
    "checksum_mismatch",  # an applied migration's file changed
    "proxy_detected",  # the DSN goes through a transaction pooler
    "timeout",  # statement_timeout or another deadline
]
IndexState = Literal["absent", "pending", "building", "valid", "invalid", "failed", "drift"]
IndexBuildOutcome = Literal["success", "failed", "retried", "cancelled"]
# One list of throttle signals: the pure throttle decides with them, the metric labels them.
ThrottleSignal = throttle.Signal

FAILURE_REASONS: Final[tuple[FailureReason, ...]] = get_args(FailureReason)
INDEX_STATES: Final[tuple[IndexState, ...]] = get_args(IndexState)
INDEX_BUILD_OUTCOMES: Final[tuple[IndexBuildOutcome, ...]] = get_args(IndexBuildOutcome)
THROTTLE_SIGNALS: Final[tuple[ThrottleSignal, ...]] = get_args(ThrottleSignal)
# The "already exists" SQLSTATEs the executor tolerates (design §7): pre-initialised.
TOLERATED_SQLSTATES: Final = ("42P07", "42701", "42710", "42P06", "42723")

# Migrations range from milliseconds (an ADD COLUMN) to an hour (a table rewrite).
DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")


class Metrics:
    """Every schemad collector, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry, *, version: str = schemad.__version__) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "schemad_build_info",
            "Always 1; the version label is the running schemad.",
            ["version"],
            registry=registry,
        )
        self.ready = Gauge(
            "schemad_ready",
            "1 when every known migration is applied (and critical indexes are valid, if required).",
            registry=registry,
        )
        self.lock_held = Gauge(
            "schemad_migration_lock_held",
            "1 while this replica holds the migration advisory lock.",
            registry=registry,
        )
        self.pending = Gauge(
            "schemad_migrations_pending",
            "Migrations in this replica's files not yet in the ledger.",
            registry=registry,
        )
        self.applied = Counter(
            "schemad_migrations_applied_total",
            "Migrations this process applied and recorded in the ledger.",
            registry=registry,
        )
        self.failures = Counter(
            "schemad_migration_failures_total",
            "Failed migration runs, by reason.",
            ["reason"],
            registry=registry,
        )
        self.last_run_success = Gauge(
            "schemad_migration_last_run_success",
            "1 if the last migration run succeeded, 0 if it failed; NaN before the first run.",
            registry=registry,
        )
        self.last_success_timestamp = Gauge(
            "schemad_migration_last_success_timestamp_seconds",
            "Unix time of the last successful migration run (0 = never in this process).",
            registry=registry,
        )
        self.duration = Histogram(
            "schemad_migration_duration_seconds",
            "Time to apply one migration, including lock-timeout retries.",
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.schema_version = Gauge(
            "schemad_schema_version",
            "Highest migration version recorded in the ledger.",
            registry=registry,
        )
        self.lock_timeout_retries = Counter(
            "schemad_lock_timeout_retries_total",
            "Migration attempts rolled back on lock_timeout and retried.",
            registry=registry,
        )
        self.statements_tolerated = Counter(
            "schemad_statements_tolerated_total",
            "Statements skipped as 'already exists', by SQLSTATE.",
            ["sqlstate"],
            registry=registry,
        )
        self.index_state = Gauge(
            "schemad_index_state",
            "1 on the current state of each registry index, 0 on the others.",
            ["index", "state"],
            registry=registry,
        )
        self.index_progress = Gauge(
            "schemad_index_build_progress_ratio",
            "Progress of a running index build, 0 to 1.",
            ["index"],
            registry=registry,
        )
        self.index_builds = Counter(
            "schemad_index_builds_total",
            "Finished index build attempts, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.invalid_indexes = Gauge(
            "schemad_invalid_indexes",
            "Indexes in the target database marked invalid in the catalog (pg_index.indisvalid = false).",
            registry=registry,
        )
        self.index_drift = Gauge(
            "schemad_index_drift",
            "1 when an index exists with a definition different from the registry.",
            ["index"],
            registry=registry,
        )
        self.throttle_paused = Gauge(
            "schemad_throttle_paused",
            "1 while index build admission is deferred by this signal.",
            ["signal"],
            registry=registry,
        )

        self.build_info.labels(version=version).set(1)
        self.last_run_success.set(math.nan)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        for sqlstate in TOLERATED_SQLSTATES:
            self.statements_tolerated.labels(sqlstate=sqlstate)
        for outcome in INDEX_BUILD_OUTCOMES:
            self.index_builds.labels(outcome=outcome)
        for signal in THROTTLE_SIGNALS:
            self.throttle_paused.labels(signal=signal).set(0)
        self._indexes: set[str] = set()

    # Readiness and the lock

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def set_lock_held(self, held: bool) -> None:
        self.lock_held.set(1 if held else 0)

    # Migrations

    def set_pending(self, count: int) -> None:
        self.pending.set(count)

    def set_schema_version(self, version: int) -> None:
        self.schema_version.set(version)

    def migration_applied(self, duration_s: float) -> None:
        """One migration committed together with its ledger row."""
        self.applied.inc()
        self.duration.observe(duration_s)

    def migration_failed(self, reason: FailureReason) -> None:
        self.failures.labels(reason=_member(reason, FAILURE_REASONS, "failure reason")).inc()

    def run_finished(self, success: bool, *, now: float | None = None) -> None:
        """A migration run (validate, then apply whatever is pending) ended."""
        self.last_run_success.set(1 if success else 0)
        if success:
            self.last_success_timestamp.set(time.time() if now is None else now)

    def lock_timeout_retry(self) -> None:
        self.lock_timeout_retries.inc()

    def statement_tolerated(self, sqlstate: str) -> None:
        if not _SQLSTATE.match(sqlstate):
            raise ValueError(f"not a SQLSTATE: {sqlstate!r}")
        self.statements_tolerated.labels(sqlstate=sqlstate).inc()

    # Indexes

    def set_index_state(self, index: str, state: IndexState) -> None:
        """Set 1 on `state` and 0 on every other state of `index`.

        `schemad_index_drift` mirrors the "drift" state, and the progress series
        exists only while the index is building.
        """
        _member(state, INDEX_STATES, "index state")
        self._indexes.add(index)
        for other in INDEX_STATES:
            self.index_state.labels(index=index, state=other).set(1 if other == state else 0)
        self.index_drift.labels(index=index).set(1 if state == "drift" else 0)
        if state == "building":
            self.index_progress.labels(index=index)  # a new child starts at 0
        else:
            self.index_progress.remove(index)

    def set_index_progress(self, index: str, ratio: float) -> None:
        self.index_progress.labels(index=index).set(min(1.0, max(0.0, ratio)))

    def index_build_finished(self, outcome: IndexBuildOutcome) -> None:
        self.index_builds.labels(outcome=_member(outcome, INDEX_BUILD_OUTCOMES, "index build outcome")).inc()

    def set_invalid_indexes(self, count: int) -> None:
        self.invalid_indexes.set(count)

    def forget_index(self, index: str) -> None:
        """Drop every series of an index that left the registry."""
        self._indexes.discard(index)
        for state in INDEX_STATES:
            self.index_state.remove(index, state)
        self.index_progress.remove(index)
        self.index_drift.remove(index)

    def retain_indexes(self, names: Iterable[str]) -> None:
        """Forget every tracked index not in `names` (after a reload of `indexes/`)."""
        keep = set(names)
        for index in sorted(self._indexes - keep):
            self.forget_index(index)

    def set_throttle_paused(self, signal: ThrottleSignal, paused: bool) -> None:
        self.throttle_paused.labels(signal=_member(signal, THROTTLE_SIGNALS, "throttle signal")).set(
            1 if paused else 0
        )


def _member(value: str, allowed: tuple[str, ...], what: str) -> str:
    # Literal types catch this under mypy; the check keeps label sets closed at runtime too.
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


class _WithoutCreated:
    """A read-only view of a registry that leaves out the `*_created` samples."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if not any(s.name.endswith("_created") for s in family.samples):
                yield family
                continue
            trimmed = Metric(family.name, family.documentation, family.type, family.unit)
            trimmed.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield trimmed


def render(registry: Collector) -> bytes:
    """The registry in the classic Prometheus text format, without `*_created` series."""
    return generate_latest(_WithoutCreated(registry))
