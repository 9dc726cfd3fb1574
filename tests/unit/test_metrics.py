"""Metrics: every design §10 collector exists, known labels are pre-initialised, the scrape lints."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from schemad import metrics

# Design §10, verbatim: the contract alert rules and dashboards rely on.
DESIGN_METRICS = {
    "schemad_build_info": {"version"},
    "schemad_ready": set(),
    "schemad_migration_lock_held": set(),
    "schemad_migrations_pending": set(),
    "schemad_migrations_applied_total": set(),
    "schemad_migration_failures_total": {"reason"},
    "schemad_migration_last_run_success": set(),
    "schemad_migration_last_success_timestamp_seconds": set(),
    "schemad_migration_duration_seconds": set(),
    "schemad_schema_version": set(),
    "schemad_lock_timeout_retries_total": set(),
    "schemad_statements_tolerated_total": {"sqlstate"},
    "schemad_index_state": {"index", "state"},
    "schemad_index_build_progress_ratio": {"index"},
    "schemad_index_builds_total": {"outcome"},
    "schemad_invalid_indexes": set(),
    "schemad_index_drift": {"index"},
    "schemad_throttle_paused": {"signal"},
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(registry: CollectorRegistry) -> metrics.Metrics:
    return metrics.Metrics(registry, version="1.2.3")


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def _families(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name (as a scrape shows it) → label names seen on its samples."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render(registry).decode()):
        # The text parser strips `_total` from counter family names; the scrape has it.
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = out.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    return out


def test_every_design_metric_is_exposed_with_its_labels(
    m: metrics.Metrics, registry: CollectorRegistry
) -> None:
    m.set_index_state("ix_a", "building")
    assert _families(registry) == DESIGN_METRICS


def test_known_label_values_are_preinitialised(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    assert _value(registry, "schemad_build_info", version="1.2.3") == 1
    for reason in ("sql_error", "lock_timeout", "lock_lost", "validation", "connection", "checksum_mismatch"):
        assert _value(registry, "schemad_migration_failures_total", reason=reason) == 0
    for sqlstate in ("42P07", "42701", "42710", "42P06", "42723"):
        assert _value(registry, "schemad_statements_tolerated_total", sqlstate=sqlstate) == 0
    for outcome in ("success", "failed", "retried", "cancelled"):
        assert _value(registry, "schemad_index_builds_total", outcome=outcome) == 0
    for signal in (
        "replication_lag",
        "transaction_age",
        "idle_in_transaction",
        "lock_waiters",
        "active_backends",
        "autovacuum",
        "window",
    ):
        assert _value(registry, "schemad_throttle_paused", signal=signal) == 0
    assert math.isnan(_value(registry, "schemad_migration_last_run_success"))
    assert _value(registry, "schemad_migration_last_success_timestamp_seconds") == 0


def test_no_created_series_even_when_enabled_process_wide(
    m: metrics.Metrics, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process-wide switch that prometheus_client.enable_created_metrics() flips.
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", True)
    m.migration_applied(0.2)
    assert b"_created" not in metrics.render(registry)


def test_render_is_deterministic(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    m.set_index_state("ix_b", "valid")
    m.set_index_state("ix_a", "pending")
    assert metrics.render(registry) == metrics.render(registry)


def test_migration_run_lifecycle(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    m.set_pending(2)
    m.set_lock_held(True)
    m.migration_applied(0.7)
    m.lock_timeout_retry()
    m.statement_tolerated("42P07")
    m.set_schema_version(12)
    m.set_lock_held(False)
    m.run_finished(True, now=1_700_000_000.0)
    assert _value(registry, "schemad_migrations_applied_total") == 1
    assert _value(registry, "schemad_migration_duration_seconds_count") == 1
    assert _value(registry, "schemad_migration_duration_seconds_sum") == pytest.approx(0.7)
    assert _value(registry, "schemad_migration_duration_seconds_bucket", le="1.0") == 1
    assert _value(registry, "schemad_lock_timeout_retries_total") == 1
    assert _value(registry, "schemad_statements_tolerated_total", sqlstate="42P07") == 1
    assert _value(registry, "schemad_schema_version") == 12
    assert _value(registry, "schemad_migrations_pending") == 2
    assert _value(registry, "schemad_migration_lock_held") == 0
    assert _value(registry, "schemad_migration_last_run_success") == 1
    assert _value(registry, "schemad_migration_last_success_timestamp_seconds") == 1_700_000_000.0

    m.migration_failed("sql_error")
    m.run_finished(False, now=1_700_000_100.0)
    assert _value(registry, "schemad_migration_failures_total", reason="sql_error") == 1
    assert _value(registry, "schemad_migration_last_run_success") == 0
    # A failure leaves the last success where it was.
    assert _value(registry, "schemad_migration_last_success_timestamp_seconds") == 1_700_000_000.0


def test_ready_gauge(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    assert _value(registry, "schemad_ready") == 0
    m.set_ready(True)
    assert _value(registry, "schemad_ready") == 1
    m.set_ready(False)
    assert _value(registry, "schemad_ready") == 0


def test_index_state_is_one_hot(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    for state in metrics.INDEX_STATES:
        m.set_index_state("ix_a", state)
        values = {
            s: _value(registry, "schemad_index_state", index="ix_a", state=s) for s in metrics.INDEX_STATES
        }
        assert values == {s: (1.0 if s == state else 0.0) for s in metrics.INDEX_STATES}
        assert _value(registry, "schemad_index_drift", index="ix_a") == (1.0 if state == "drift" else 0.0)


def test_progress_exists_only_while_building(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    m.set_index_state("ix_a", "building")
    assert _value(registry, "schemad_index_build_progress_ratio", index="ix_a") == 0
    m.set_index_progress("ix_a", 0.25)
    assert _value(registry, "schemad_index_build_progress_ratio", index="ix_a") == 0.25
    m.set_index_progress("ix_a", 1.7)
    assert _value(registry, "schemad_index_build_progress_ratio", index="ix_a") == 1.0
    m.set_index_state("ix_a", "valid")
    assert registry.get_sample_value("schemad_index_build_progress_ratio", {"index": "ix_a"}) is None


def test_forget_and_retain_indexes(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    m.set_index_state("ix_a", "building")
    m.set_index_state("ix_b", "valid")
    m.set_index_state("ix_c", "drift")
    m.forget_index("ix_a")
    m.forget_index("ix_never_seen")  # a no-op, not an error
    text = metrics.render(registry).decode()
    assert 'index="ix_a"' not in text
    assert 'index="ix_b"' in text
    m.retain_indexes(["ix_b"])
    text = metrics.render(registry).decode()
    assert 'index="ix_c"' not in text
    assert _value(registry, "schemad_index_state", index="ix_b", state="valid") == 1


def test_index_builds_invalid_and_throttle(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    m.index_build_finished("retried")
    m.index_build_finished("success")
    m.set_invalid_indexes(2)
    m.set_throttle_paused("replication_lag", True)
    assert _value(registry, "schemad_index_builds_total", outcome="retried") == 1
    assert _value(registry, "schemad_index_builds_total", outcome="success") == 1
    assert _value(registry, "schemad_invalid_indexes") == 2
    assert _value(registry, "schemad_throttle_paused", signal="replication_lag") == 1
    m.set_throttle_paused("replication_lag", False)
    assert _value(registry, "schemad_throttle_paused", signal="replication_lag") == 0


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        ("migration_failed", "oops"),
        ("index_build_finished", "maybe"),
        ("set_throttle_paused", "moon_phase"),
        ("statement_tolerated", "duplicate key"),
    ],
)
def test_label_sets_stay_closed(m: metrics.Metrics, call: str, arg: str) -> None:
    method = getattr(m, call)
    with pytest.raises(ValueError, match=r"unknown|not a SQLSTATE"):
        if call == "set_throttle_paused":
            method(arg, True)
        else:
            method(arg)


def test_unknown_index_state_is_rejected(m: metrics.Metrics) -> None:
    with pytest.raises(ValueError, match="unknown index state"):
        m.set_index_state("ix_a", "sideways")  # type: ignore[arg-type]


def test_two_instances_on_separate_registries(registry: CollectorRegistry) -> None:
    first = metrics.Metrics(registry)
    second_registry = CollectorRegistry()
    metrics.Metrics(second_registry)
    first.set_ready(True)
    assert second_registry.get_sample_value("schemad_ready") == 0


def test_dump_module_output_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is required (apt-get install prometheus)"
    dump = subprocess.run(
        [sys.executable, "-m", "schemad._dump_metrics"], check=True, capture_output=True, timeout=60
    )
    assert b"schemad_build_info" in dump.stdout
    lint = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=dump.stdout, capture_output=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


def test_full_scrape_passes_promtool(m: metrics.Metrics, registry: CollectorRegistry) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is required (apt-get install prometheus)"
    m.set_index_state("ix_a", "building")
    m.set_index_progress("ix_a", 0.5)
    m.set_index_state("ix_b", "drift")
    m.migration_applied(3.0)
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=metrics.render(registry),
        capture_output=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
