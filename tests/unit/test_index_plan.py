"""The index reconciler's decisions: one step per index from plain catalog facts (no database)."""

from __future__ import annotations

from typing import get_args

import pytest
from prometheus_client import CollectorRegistry

from schemad import index_builder, index_plan, indexes, metrics, sourcefiles, throttle
from schemad.index_plan import (
    Attach,
    Build,
    Builder,
    CreateParent,
    Drifted,
    Drop,
    Failed,
    IndexFacts,
    Observation,
    OnError,
    PartitionFacts,
    Ready,
    Rename,
    TableFacts,
    WaitForOtherBuilder,
)

TABLE = TableFacts(oid=100, schema="public", name="t", partitioned=False)
DEF_A = "CREATE INDEX t_a_idx ON public.t USING btree (a)"
DEF_AB = "CREATE INDEX t_a_idx ON public.t USING btree (a, b)"


def spec(text: str = "CREATE INDEX t_a_idx ON t (a);") -> indexes.IndexSpec:
    [s], findings = indexes.parse_index_file(sourcefiles.SourceFile("indexes/x.sql", text))
    assert findings == []
    return s


def facts(name: str = "t_a_idx", *, oid: int = 200, valid: bool = True, definition: str = DEF_A,
          table_oid: int = 100, **kw: object) -> IndexFacts:
    return IndexFacts(
        oid=oid, name=name, schema="public", table_oid=table_oid, valid=valid, ready=valid,
        partitioned=bool(kw.pop("partitioned", False)), definition=definition, **kw,  # type: ignore[arg-type]
    )


def step(o: Observation, *, replace: bool = False, failed: bool = False) -> index_plan.IndexAction:
    return index_plan.next_step(o, replace_drifted=replace, failed=failed)


# --------------------------------------------------------------------------- design §8's table


def test_absent_index_is_built_concurrently_never_if_not_exists() -> None:
    s = spec("CREATE UNIQUE INDEX IF NOT EXISTS t_a_idx ON t (a);")
    action = step(Observation(spec=s, table=TABLE, index=None))
    assert isinstance(action, Build)
    assert action.sql == "CREATE UNIQUE INDEX CONCURRENTLY t_a_idx ON t USING btree (a)"
    assert (action.name, action.purpose, action.table_oid, action.on) == ("t_a_idx", "build", 100, "public.t")
    assert index_plan.state_of(action) == "absent"


def test_missing_table_still_builds_so_the_server_reports_42P01() -> None:
    action = step(Observation(spec=spec(), table=None, index=None))
    assert isinstance(action, Build) and action.table_oid is None


def test_valid_matching_index_is_ready() -> None:
    action = step(Observation(spec=spec(), table=TABLE, index=facts(), wanted=DEF_A.replace("t_a_idx", "x")))
    assert isinstance(action, Ready)
    assert index_plan.state_of(action) == "valid"


def test_invalid_index_built_by_another_backend_is_waited_for() -> None:
    builder = Builder(pid=42, phase="building index: scanning table", application_name="psql")
    action = step(Observation(spec=spec(), table=TABLE, index=facts(valid=False, builder=builder)))
    assert action == WaitForOtherBuilder(spec=spec(), index=facts(valid=False, builder=builder), builder=builder)
    assert index_plan.state_of(action) == "building"


def test_abandoned_invalid_index_is_dropped_before_the_build() -> None:
    action = step(Observation(spec=spec(), table=TABLE, index=facts(valid=False)))
    assert isinstance(action, Drop) and action.why == "invalid"
    assert index_plan.state_of(action) == "invalid"


def test_invalid_index_backing_a_constraint_is_not_dropped() -> None:
    action = step(Observation(spec=spec(), table=TABLE, index=facts(valid=False, constraint="t_pkey")))
    assert isinstance(action, Failed) and "t_pkey" in action.reason


# --------------------------------------------------------------------------- drift


def test_drift_is_reported_when_replacement_is_off() -> None:
    o = Observation(spec=spec("CREATE INDEX t_a_idx ON t (a, b);"), table=TABLE, index=facts(), wanted=DEF_AB)
    action = step(o)
    assert isinstance(action, Drifted)
    assert action.reason == "catalog has btree (a); registry declares btree (a, b)"
    assert index_plan.state_of(action) == "drift"


def test_server_rendered_definitions_compare_equal_despite_implicit_casts() -> None:
    actual = "CREATE INDEX u_l ON public.u USING btree (lower((name)::text)) WHERE ((name)::text <> ''::text)"
    wanted = "CREATE INDEX u_l ON pg_temp_3.schemad_scratch USING btree (lower((name)::text)) WHERE ((name)::text <> ''::text)"
    s = spec("CREATE INDEX u_l ON u (lower(name)) WHERE name <> '';")
    o = Observation(spec=s, table=TABLE, index=facts("u_l", definition=actual), wanted=wanted)
    assert isinstance(step(o, replace=True), Ready)
    # Without the server's spelling the parse trees differ: reported, never replaced.
    unverified = step(Observation(spec=s, table=TABLE, index=facts("u_l", definition=actual)), replace=True)
    assert isinstance(unverified, Drifted) and "not verified" in unverified.reason


def test_replacement_goes_build_then_drop_old_then_rename() -> None:
    s = spec("CREATE INDEX t_a_idx ON t (a, b);")
    rep_name = index_plan.replacement_name(s)
    old = facts()
    first = step(Observation(spec=s, table=TABLE, index=old, wanted=DEF_AB), replace=True)
    assert isinstance(first, Build) and first.purpose == "replace" and first.name == rep_name
    assert first.sql == f"CREATE INDEX CONCURRENTLY {rep_name} ON t USING btree (a, b)"

    rep = facts(rep_name, oid=300, definition=DEF_AB.replace("t_a_idx", rep_name))
    second = step(Observation(spec=s, table=TABLE, index=old, replacement=rep, wanted=DEF_AB), replace=True)
    assert second == Drop(spec=s, index=old, why="replaced")

    third = step(Observation(spec=s, table=TABLE, index=None, replacement=rep, wanted=DEF_AB), replace=True)
    assert third == Rename(spec=s, index=rep, to="t_a_idx")


def test_a_broken_or_stale_replacement_is_dropped_first() -> None:
    s = spec("CREATE INDEX t_a_idx ON t (a, b);")
    rep_name = index_plan.replacement_name(s)
    invalid = facts(rep_name, oid=300, valid=False, definition=DEF_AB)
    action = step(Observation(spec=s, table=TABLE, index=facts(), replacement=invalid, wanted=DEF_AB), replace=True)
    assert action == Drop(spec=s, index=invalid, why="leftover")
    stale = facts(rep_name, oid=300, definition=DEF_A)
    action = step(Observation(spec=s, table=TABLE, index=facts(), replacement=stale, wanted=DEF_AB), replace=True)
    assert action == Drop(spec=s, index=stale, why="leftover")


def test_leftover_replacement_next_to_a_ready_index_is_swept() -> None:
    rep = facts(index_plan.replacement_name(spec()), oid=300)
    action = step(Observation(spec=spec(), table=TABLE, index=facts(), replacement=rep, wanted=DEF_A))
    assert action == Drop(spec=spec(), index=rep, why="leftover")


def test_drift_backing_a_constraint_or_on_another_table_is_only_reported() -> None:
    s = spec("CREATE INDEX t_a_idx ON t (a, b);")
    action = step(Observation(spec=s, table=TABLE, index=facts(constraint="t_key"), wanted=DEF_AB), replace=True)
    assert isinstance(action, Drifted) and "t_key" in action.reason
    action = step(Observation(spec=s, table=TABLE, index=facts(table_oid=999), wanted=DEF_AB), replace=True)
    assert isinstance(action, Drifted) and "another table" in action.reason


def test_a_definition_the_server_rejects_is_drift_with_the_reason() -> None:
    o = Observation(spec=spec(), table=TABLE, index=facts(), wanted_error='column "zz" does not exist (SQLSTATE 42703)')
    action = step(o, replace=True)
    assert isinstance(action, Drifted) and "42703" in action.reason


# --------------------------------------------------------------------------- failed in this run


def test_failed_index_leftover_is_dropped_at_once_then_failed() -> None:
    o = Observation(spec=spec(), table=TABLE, index=facts(valid=False))
    action = step(o, failed=True)
    assert action == Drop(spec=spec(), index=facts(valid=False), why="failed")
    assert index_plan.state_of(action) == "failed"
    assert isinstance(step(Observation(spec=spec(), table=TABLE, index=None), failed=True), Failed)


def test_failed_index_never_drops_what_another_backend_builds() -> None:
    busy = facts(valid=False, builder=Builder(pid=7))
    assert isinstance(step(Observation(spec=spec(), table=TABLE, index=busy), failed=True), Failed)


# --------------------------------------------------------------------------- partitioned tables


def parted(*parts: PartitionFacts) -> TableFacts:
    return TableFacts(oid=100, schema="public", name="ev", partitioned=True, partitions=parts)


def part(name: str, oid: int, **kw: object) -> PartitionFacts:
    return PartitionFacts(oid=oid, schema="public", name=name, partitioned=False, **kw)  # type: ignore[arg-type]


EV = "CREATE INDEX ev_v_idx ON ev (v);"
PARENT = facts("ev_v_idx", oid=500, valid=False, partitioned=True, definition="CREATE INDEX ev_v_idx ON ONLY public.ev USING btree (v)")


def test_partitioned_parent_is_created_on_only_first() -> None:
    action = step(Observation(spec=spec(EV), table=parted(part("ev_1", 101)), index=None))
    assert action == CreateParent(
        spec=spec(EV), sql="CREATE INDEX ev_v_idx ON ONLY public.ev USING btree (v)", table_oid=100
    )


def test_each_partition_is_built_concurrently_then_attached() -> None:
    s = spec(EV)
    child = facts("ev_v_idx_ev_1", oid=601, table_oid=101)
    table = parted(part("ev_1", 101, attached=child), part("ev_2", 102))
    action = step(Observation(spec=s, table=table, index=PARENT))
    assert isinstance(action, Build) and action.purpose == "partition"
    assert action.sql == "CREATE INDEX CONCURRENTLY ev_v_idx_ev_2 ON public.ev_2 USING btree (v)"
    assert (action.table_oid, action.on) == (102, "public.ev_2")

    built = facts("ev_v_idx_ev_2", oid=602, table_oid=102)
    table = parted(part("ev_1", 101, attached=child), part("ev_2", 102, child=built))
    assert step(Observation(spec=s, table=table, index=PARENT)) == Attach(
        spec=s, parent=PARENT, child=built, partition="ev_2"
    )


def test_invalid_partition_index_is_dropped_and_subpartitions_fail() -> None:
    s = spec(EV)
    broken = facts("ev_v_idx_ev_1", oid=601, table_oid=101, valid=False)
    action = step(Observation(spec=s, table=parted(part("ev_1", 101, child=broken)), index=PARENT))
    assert action == Drop(spec=s, index=broken, why="invalid")
    sub = PartitionFacts(oid=101, schema="public", name="ev_1", partitioned=True)
    assert isinstance(step(Observation(spec=s, table=parted(sub), index=PARENT)), Failed)


def test_valid_partitioned_index_is_ready_and_its_drift_only_reported() -> None:
    s = spec(EV)
    valid = facts("ev_v_idx", oid=500, partitioned=True, definition="CREATE INDEX ev_v_idx ON ONLY public.ev USING btree (v)")
    wanted = "CREATE INDEX ev_v_idx ON pg_temp_1.schemad_scratch USING btree (v)"
    assert isinstance(step(Observation(spec=s, table=parted(), index=valid, wanted=wanted)), Ready)
    other = "CREATE INDEX x ON pg_temp_1.schemad_scratch USING btree (v DESC)"
    action = step(Observation(spec=s, table=parted(), index=valid, wanted=other), replace=True)
    assert isinstance(action, Drifted) and "partitioned" in action.reason


# --------------------------------------------------------------------------- ordering, names, errors, progress


def test_plan_puts_critical_indexes_first_keeping_registry_order() -> None:
    a = spec("CREATE INDEX a_idx ON t (a);")
    b = spec("-- schemad:critical\nCREATE INDEX b_idx ON t (b);")
    c = spec("CREATE INDEX c_idx ON t (c);")
    actions = index_plan.plan(
        [Observation(spec=x, table=TABLE, index=None) for x in (a, b, c)], replace_drifted=False
    )
    assert [x.spec.name for x in actions] == ["b_idx", "a_idx", "c_idx"]
    assert not any(index_plan.is_terminal(x) for x in actions)


def test_derived_names_fit_63_bytes_and_stay_distinct() -> None:
    assert index_plan.derived_name("t_a_idx", "sdnew") == "t_a_idx_sdnew"
    long_a = index_plan.derived_name("x" * 60, "partition_a")
    long_b = index_plan.derived_name("x" * 60, "partition_b")
    assert len(long_a.encode()) <= 63 and len(long_b.encode()) <= 63 and long_a != long_b
    assert index_plan.derived_name("ü" * 40, "p") == index_plan.derived_name("ü" * 40, "p")
    assert len(index_plan.derived_name("ü" * 40, "p").encode()) <= 63


@pytest.mark.parametrize(
    ("sqlstate", "watchdog", "expected"),
    [
        ("23505", False, OnError.FAIL_NOW),
        ("42P07", False, OnError.RECHECK),
        ("55P03", False, OnError.RETRY),
        ("40P01", False, OnError.RETRY),
        ("08006", False, OnError.RETRY),
        ("57P01", False, OnError.RETRY),
        ("53100", False, OnError.RETRY),
        ("57014", True, OnError.RETRY),  # our watchdog cancelled a long lock wait
        ("57014", False, OnError.FAIL),  # statement_timeout or an operator's cancel
        ("42P01", False, OnError.FAIL),
        ("42703", False, OnError.FAIL),
        ("42704", False, OnError.FAIL),
        ("XX000", False, OnError.FAIL),
        (None, False, OnError.FAIL),
    ],
)
def test_build_errors_are_classified_by_sqlstate(sqlstate: str | None, watchdog: bool, expected: OnError) -> None:
    assert index_plan.on_error(sqlstate, watchdog_cancelled=watchdog) is expected


def test_progress_ratio_follows_the_phases() -> None:
    def r(phase: str | None, done: int | None = None, total: int | None = None) -> float:
        return index_plan.progress_ratio(phase, blocks_done=done, blocks_total=total, tuples_done=None,
                                         tuples_total=None)

    assert r(None) == 0.0
    assert r("waiting for writers before build") == 0.0
    assert r("building index: scanning table", 50, 100) == pytest.approx(0.225)
    assert r("building index: loading tuples in tree") == pytest.approx(0.5)
    assert r("waiting for writers before validation") == 0.6
    assert r("index validation: scanning table", 100, 100) == pytest.approx(0.95)
    assert r("waiting for old snapshots") == 0.95
    assert index_plan.is_waiting_phase("waiting for old snapshots")
    assert not index_plan.is_waiting_phase("building index")
    assert not index_plan.is_waiting_phase(None)


@pytest.mark.parametrize(("version", "unsafe"), [(130011, False), (140000, True), (140003, True), (140004, False),
                                                 (150010, False)])
def test_postgres_14_0_to_14_3_is_unsafe(version: int, unsafe: bool) -> None:
    assert index_plan.unsafe_cic_version(version) is unsafe


def test_metrics_hooks_drive_the_prometheus_metrics() -> None:
    registry = CollectorRegistry()
    hooks = index_builder.MetricsHooks(metrics.Metrics(registry))
    hooks.set_index_state("t_a_idx", "building")
    hooks.set_index_progress("t_a_idx", 0.5)
    assert registry.get_sample_value("schemad_index_build_progress_ratio", {"index": "t_a_idx"}) == 0.5
    hooks.set_index_state("t_a_idx", "drift")
    hooks.index_build_finished("retried")
    hooks.set_throttle_paused("idle_in_transaction", True)
    hooks.set_invalid_indexes(2)
    assert registry.get_sample_value("schemad_index_state", {"index": "t_a_idx", "state": "drift"}) == 1
    assert registry.get_sample_value("schemad_index_drift", {"index": "t_a_idx"}) == 1
    assert registry.get_sample_value("schemad_index_builds_total", {"outcome": "retried"}) == 1
    assert registry.get_sample_value("schemad_throttle_paused", {"signal": "idle_in_transaction"}) == 1
    assert registry.get_sample_value("schemad_invalid_indexes") == 2
    # Every value the reconciler can report is a label value the metrics accept.
    assert set(get_args(index_plan.State)) == set(metrics.INDEX_STATES)
    assert set(throttle.SIGNALS) == set(metrics.THROTTLE_SIGNALS)
    assert set(get_args(index_builder.BuildOutcome)) == set(metrics.INDEX_BUILD_OUTCOMES)
