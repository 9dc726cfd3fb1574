"""What to do with each registry index, given what the catalog says (no I/O here).

The shell (`catalog.py`) observes; `next_step` decides ONE step for one index (a single
DDL statement, a wait, or a verdict); the shell (`index_builder.py`) performs it and
observes again. Design §8's table, plus the repair paths: an invalid leftover is dropped
concurrently before a build, a drifted index is replaced under a temporary name, a
partitioned table gets ``CREATE INDEX ON ONLY`` on the parent and one concurrent build
plus ``ATTACH PARTITION`` per partition. The SQLSTATE table for failed builds is here too.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from schemad import sqlparser

if TYPE_CHECKING:
    from schemad.indexes import IndexSpec

MAX_IDENT_BYTES = 63
REPLACEMENT_SUFFIX = "sdnew"

# The label values of `schemad_index_state{state}` (schemad.metrics.IndexState).
State = Literal["absent", "pending", "building", "valid", "invalid", "failed", "drift"]


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True, kw_only=True)
class Builder:
    """A backend (not ours) building an index right now."""

    pid: int
    phase: str | None = None
    application_name: str | None = None
    source: Literal["progress", "locks"] = "progress"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexFacts:
    oid: int
    name: str
    schema: str
    table_oid: int
    valid: bool
    ready: bool
    partitioned: bool  # relkind 'I': an index on a partitioned table
    definition: str  # pg_get_indexdef
    constraint: str | None = None  # the constraint it backs (not droppable concurrently)
    builder: Builder | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionFacts:
    oid: int
    schema: str
    name: str
    partitioned: bool  # sub-partitioned: not handled
    attached: IndexFacts | None = None  # its index attached to the registry index
    child: IndexFacts | None = None  # an index under the child name schemad gives it


@dataclass(frozen=True, slots=True, kw_only=True)
class TableFacts:
    oid: int
    schema: str
    name: str
    partitioned: bool
    partitions: tuple[PartitionFacts, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One registry index as the catalog shows it."""

    spec: IndexSpec
    table: TableFacts | None
    index: IndexFacts | None  # the index holding the registry name in the table's schema
    replacement: IndexFacts | None = None  # schemad's temporary replacement, if one exists
    wanted: str | None = None  # the registry definition rendered by the server (scratch copy)
    wanted_error: str | None = None  # why the server could not render it


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    spec: IndexSpec
    index: IndexFacts


@dataclass(frozen=True, slots=True, kw_only=True)
class Drifted:
    """Valid, but not what the registry says; reported (and not replaced)."""

    spec: IndexSpec
    index: IndexFacts
    reason: str


Purpose = Literal["build", "replace", "partition"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    """``CREATE [UNIQUE] INDEX CONCURRENTLY`` — never ``IF NOT EXISTS``."""

    spec: IndexSpec
    name: str
    sql: str
    purpose: Purpose
    table_oid: int | None  # what the build locks (the partition for a per-partition build)
    on: str  # the table as shown to people


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateParent:
    """``CREATE INDEX ON ONLY parent``: catalog-only, invalid until every partition is attached."""

    spec: IndexSpec
    sql: str
    table_oid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Drop:
    """``DROP INDEX CONCURRENTLY`` one index."""

    spec: IndexSpec
    index: IndexFacts
    why: Literal["invalid", "leftover", "replaced", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rename:
    spec: IndexSpec
    index: IndexFacts
    to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach:
    spec: IndexSpec
    parent: IndexFacts
    child: IndexFacts
    partition: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForOtherBuilder:
    spec: IndexSpec
    index: IndexFacts
    builder: Builder


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    spec: IndexSpec
    reason: str


IndexAction = Ready | Drifted | Build | CreateParent | Drop | Rename | Attach | WaitForOtherBuilder | Failed
DDL_ACTIONS = (Build, CreateParent, Drop, Rename, Attach)


def is_terminal(action: IndexAction) -> bool:
    """Nothing more to do for this index in this run."""
    return isinstance(action, (Ready, Drifted, Failed))


def state_of(action: IndexAction) -> State:
    """The `schemad_index_state` value an action implies before the shell acts on it."""
    match action:
        case Ready():
            return "valid"
        case Drifted():
            return "drift"
        case Failed():
            return "failed"
        case Build(purpose="replace") | Rename():
            return "drift"
        case Build() | CreateParent() | Attach():
            return "absent" if isinstance(action, Build) and action.purpose == "build" else "pending"
        case Drop(why="replaced"):
            return "drift"
        case Drop(why="failed"):
            return "failed"
        case Drop():
            return "invalid"
        case WaitForOtherBuilder():
            return "building"
    raise AssertionError(action)  # pragma: no cover


# --------------------------------------------------------------------------- names


def derived_name(base: str, suffix: str) -> str:
    """``base_suffix`` within PostgreSQL's 63 bytes; a hash keeps cut names distinct and stable."""
    name = f"{base}_{suffix}"
    if len(name.encode()) <= MAX_IDENT_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = MAX_IDENT_BYTES - len(digest) - 1
    cut = name.encode()[:room].decode(errors="ignore")
    return f"{cut}_{digest}"


def replacement_name(spec: IndexSpec) -> str:
    return derived_name(spec.name, REPLACEMENT_SUFFIX)


def child_name(spec: IndexSpec, partition: str) -> str:
    return derived_name(spec.name, partition)


# --------------------------------------------------------------------------- deciding


def plan(
    observations: list[Observation], *, replace_drifted: bool, failed: frozenset[str] = frozenset()
) -> list[IndexAction]:
    """The next step for every index, critical indexes first (then registry order)."""
    ordered = sorted(enumerate(observations), key=lambda p: (not p[1].spec.critical, p[0]))
    return [next_step(o, replace_drifted=replace_drifted, failed=o.spec.name in failed) for _, o in ordered]


def next_step(o: Observation, *, replace_drifted: bool, failed: bool = False) -> IndexAction:
    """One step for one index. ``failed``: this run gave up on it; only clean up leftovers."""
    spec = o.spec
    if failed:
        return _failed_step(o)
    if o.table is None:
        # The build reports the missing table by SQLSTATE (42P01) and the index fails.
        return Build(spec=spec, name=spec.name, sql=spec.create_sql(), purpose="build", table_oid=None,
                     on=spec.qualified_table)
    if o.table.partitioned:
        return _partitioned_step(o, o.table)
    idx = o.index
    if idx is None:
        return _absent_step(o, o.table)
    if idx.table_oid != o.table.oid:
        return Drifted(spec=spec, index=idx, reason=f"an index named {idx.name} exists on another table")
    if idx.builder is not None:
        return WaitForOtherBuilder(spec=spec, index=idx, builder=idx.builder)
    if not idx.valid:
        if idx.constraint is not None:
            return Failed(spec=spec, reason=f"invalid index {idx.name} backs constraint {idx.constraint}")
        return Drop(spec=spec, index=idx, why="invalid")
    drift = drift_reason(o, idx)
    rep = o.replacement
    if drift is None:
        if rep is not None and rep.builder is None:
            return Drop(spec=spec, index=rep, why="leftover")
        return Ready(spec=spec, index=idx)
    if not replace_drifted:
        return Drifted(spec=spec, index=idx, reason=drift)
    if o.wanted is None:
        # Only a drift the server confirmed is acted on; an unverified one is reported.
        return Drifted(spec=spec, index=idx, reason=f"{drift}; not replaced: not verified by the server")
    if idx.constraint is not None:
        return Drifted(spec=spec, index=idx, reason=f"{drift}; not replaced: it backs constraint {idx.constraint}")
    if rep is None:
        return _build(spec, replacement_name(spec), o.table, "replace")
    if rep.builder is not None:
        return WaitForOtherBuilder(spec=spec, index=rep, builder=rep.builder)
    if not rep.valid or not _matches(o, rep):
        return Drop(spec=spec, index=rep, why="leftover")
    # The replacement is built and right: drop the old one; the rename follows.
    return Drop(spec=spec, index=idx, why="replaced")


def _absent_step(o: Observation, table: TableFacts) -> IndexAction:
    spec = o.spec
    rep = o.replacement
    if rep is None:
        return _build(spec, spec.name, table, "build")
    # A replacement outlived the old index (stopped between the drop and the rename).
    if rep.builder is not None:
        return WaitForOtherBuilder(spec=spec, index=rep, builder=rep.builder)
    if rep.valid and _matches(o, rep):
        return Rename(spec=spec, index=rep, to=spec.name)
    return Drop(spec=spec, index=rep, why="leftover")


def _partitioned_step(o: Observation, table: TableFacts) -> IndexAction:
    spec = o.spec
    parent = o.index
    if parent is None:
        sql = sqlparser.render_index(
            spec.definition, name=spec.name, concurrently=False, schema=table.schema, table=table.name, only=True
        )
        return CreateParent(spec=spec, sql=sql, table_oid=table.oid)
    if parent.table_oid != table.oid:
        return Drifted(spec=spec, index=parent, reason=f"an index named {parent.name} exists on another table")
    if parent.valid:
        drift = drift_reason(o, parent)
        if drift is None:
            return Ready(spec=spec, index=parent)
        return Drifted(spec=spec, index=parent, reason=f"{drift} (partitioned indexes are not replaced automatically)")
    for part in table.partitions:
        if part.attached is not None:
            continue
        if part.partitioned:
            return Failed(spec=spec, reason=f"partition {part.schema}.{part.name} is itself partitioned (not supported)")
        child = part.child
        if child is None:
            sql = sqlparser.render_index(
                spec.definition, name=child_name(spec, part.name), concurrently=True,
                schema=part.schema, table=part.name,
            )
            return Build(spec=spec, name=child_name(spec, part.name), sql=sql, purpose="partition",
                         table_oid=part.oid, on=f"{part.schema}.{part.name}")
        if child.builder is not None:
            return WaitForOtherBuilder(spec=spec, index=child, builder=child.builder)
        if not child.valid:
            return Drop(spec=spec, index=child, why="invalid")
        return Attach(spec=spec, parent=parent, child=child, partition=part.name)
    return Failed(spec=spec, reason=f"{parent.name} stays invalid with every partition attached (an attached index is invalid)")


def _failed_step(o: Observation) -> IndexAction:
    """A failed index must not leave an invalid leftover: a unique one would still enforce."""
    spec = o.spec
    candidates = [o.index, o.replacement]
    if o.table is not None and o.table.partitioned:
        candidates.extend(p.child for p in o.table.partitions if p.attached is None)
    for idx in candidates:
        if idx is not None and not idx.valid and not idx.partitioned and idx.builder is None and idx.constraint is None:
            if idx is o.index and o.table is not None and idx.table_oid != o.table.oid:
                continue
            return Drop(spec=spec, index=idx, why="failed")
    return Failed(spec=spec, reason="failed in this run")


def _build(spec: IndexSpec, name: str, table: TableFacts, purpose: Purpose) -> Build:
    sql = sqlparser.render_index(spec.definition, name=name, concurrently=True)
    return Build(spec=spec, name=name, sql=sql, purpose=purpose, table_oid=table.oid, on=f"{table.schema}.{table.name}")


def drift_reason(o: Observation, idx: IndexFacts) -> str | None:
    """None if ``idx`` is what the registry declares, else why not.

    Both sides are compared as the server renders them (``pg_get_indexdef`` of the real
    index, and of the registry definition created on an empty scratch copy of the table),
    with name and table blanked: implicit casts such as ``lower((b)::text)`` then match.
    """
    if o.wanted is not None:
        if _shape(o.wanted) == _shape(idx.definition):
            return None
        return f"catalog has {_shape(idx.definition)}; registry declares {_shape(o.wanted)}"
    if o.wanted_error is not None:
        return f"the registry definition does not apply to the table: {o.wanted_error}"
    # Not canonicalised by the server: compare the parse trees as written (may over-report).
    wanted = o.spec.create_sql()
    if _shape(wanted) == _shape(idx.definition):
        return None
    return f"catalog has {_shape(idx.definition)}; registry declares {_shape(wanted)}"


def _matches(o: Observation, idx: IndexFacts) -> bool:
    return drift_reason(o, idx) is None


def _shape(sql: str) -> str:
    """e.g. ``btree (business_id, priority)`` or ``UNIQUE btree (lower(email::text))``."""
    return sqlparser.index_shape(sql).removeprefix("CREATE ").replace("INDEX ON _ USING ", "", 1)


# --------------------------------------------------------------------------- failures


class OnError(enum.StrEnum):
    RETRY = "retry"  # transient: drop the leftover, back off, build again
    FAIL = "fail"  # the definition cannot be built: drop any leftover, mark failed
    FAIL_NOW = "fail_now"  # 23505: drop the leftover at once (it still enforces uniqueness), failed
    RECHECK = "recheck"  # 42P07: someone else took the name; observe again, never drop blindly


BUILD_ERRORS: dict[str, OnError] = {
    "23505": OnError.FAIL_NOW,  # unique_violation: duplicates in the data
    "42P07": OnError.RECHECK,  # duplicate_table: the name appeared since we looked
    "55P03": OnError.RETRY,  # lock_not_available
    "40P01": OnError.RETRY,  # deadlock_detected
    "40001": OnError.RETRY,  # serialization_failure
    "57P01": OnError.RETRY,  # admin_shutdown
    "57P02": OnError.RETRY,  # crash_shutdown
    "57P03": OnError.RETRY,  # cannot_connect_now
    "42P01": OnError.FAIL,  # undefined_table
    "42703": OnError.FAIL,  # undefined_column
    "42704": OnError.FAIL,  # undefined_object (opclass, collation)
    "42883": OnError.FAIL,  # undefined_function
    "0A000": OnError.FAIL,  # feature_not_supported
}
BUILD_ERROR_CLASSES: dict[str, OnError] = {
    "08": OnError.RETRY,  # connection_exception
    "53": OnError.RETRY,  # insufficient_resources (disk, memory, connections)
}
CANCELED = "57014"


def on_error(sqlstate: str | None, *, watchdog_cancelled: bool) -> OnError:
    """What a failed build statement means. 57014 is retried only when our own watchdog
    cancelled the build (a lock wait too long); a statement_timeout or an operator's
    cancel fails the index. Unknown codes fail."""
    if sqlstate is None:
        return OnError.FAIL
    if sqlstate == CANCELED:
        return OnError.RETRY if watchdog_cancelled else OnError.FAIL
    return BUILD_ERRORS.get(sqlstate) or BUILD_ERROR_CLASSES.get(sqlstate[:2], OnError.FAIL)


# --------------------------------------------------------------------------- progress and versions

# Where each CREATE INDEX CONCURRENTLY phase sits on a 0..1 bar: the build scan is most of
# the work; waits hold the last value (research §4.5).
_PHASES: tuple[tuple[str, float, float], ...] = (
    ("initializing", 0.0, 0.0),
    ("waiting for writers before build", 0.0, 0.0),
    ("building index: scanning table", 0.0, 0.45),
    ("building index: sorting live tuples", 0.45, 0.5),
    ("building index: loading tuples in tree", 0.5, 0.6),
    ("building index", 0.0, 0.6),
    ("waiting for writers before validation", 0.6, 0.6),
    ("index validation: scanning index", 0.6, 0.7),
    ("index validation: sorting tuples", 0.7, 0.75),
    ("index validation: scanning table", 0.75, 0.95),
    ("waiting for old snapshots", 0.95, 0.95),
    ("waiting for readers before marking dead", 0.95, 0.95),
    ("waiting for readers before dropping", 0.95, 0.95),
)


def progress_ratio(
    phase: str | None, *, blocks_done: int | None, blocks_total: int | None,
    tuples_done: int | None, tuples_total: int | None,
) -> float:
    """A 0..1 estimate for one build from a pg_stat_progress_create_index row."""
    if not phase:
        return 0.0
    for prefix, lo, hi in _PHASES:
        if phase.startswith(prefix):
            if hi == lo:
                return lo
            frac = _fraction(blocks_done, blocks_total)
            if frac is None:
                frac = _fraction(tuples_done, tuples_total) or 0.0
            return lo + (hi - lo) * frac
    return 0.0


def _fraction(done: int | None, total: int | None) -> float | None:
    if not total or done is None:
        return None
    return min(1.0, max(0.0, done / total))


def is_waiting_phase(phase: str | None) -> bool:
    return bool(phase) and str(phase).startswith("waiting")


def unsafe_cic_version(server_version_num: int) -> bool:
    """PostgreSQL 14.0–14.3: CREATE/REINDEX CONCURRENTLY could miss rows (fixed in 14.4)."""
    return 140000 <= server_version_num < 140004
