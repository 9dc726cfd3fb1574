"""What a reconcile run reports, per index and overall (plain data, no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemad import index_plan
from schemad.index_plan import (
    Attach,
    Build,
    CreateParent,
    Drifted,
    Drop,
    Failed,
    Ready,
    Rename,
    WaitForOtherBuilder,
)


@dataclass(slots=True, kw_only=True)
class IndexResult:
    name: str
    table: str
    critical: bool
    state: index_plan.State = "absent"
    actions: list[str] = field(default_factory=list)  # "built", "dropped invalid", "replaced", ...
    attempts: int = 0
    sqlstate: str | None = None
    error: str | None = None
    drift: str | None = None
    detail: str | None = None  # why it is not ready yet: deferred, built by another backend
    duration_s: float = 0.0


@dataclass(slots=True, kw_only=True)
class Report:
    results: list[IndexResult]
    server_version: int
    progress_visible: bool
    dry_run: bool = False
    lock_waited_s: float | None = None  # None: the lock was not needed
    plan: list[str] = field(default_factory=list)  # dry run: what would happen

    @property
    def failed(self) -> list[IndexResult]:
        return [r for r in self.results if r.state == "failed"]

    @property
    def all_ready(self) -> bool:
        return all(r.state == "valid" for r in self.results)


def describe(action: index_plan.IndexAction) -> str:
    match action:
        case Ready():
            return f"{action.spec.name}: ready"
        case Drifted():
            return f"{action.spec.name}: drift: {action.reason}"
        case Failed():
            return f"{action.spec.name}: failed: {action.reason}"
        case Build():
            return f"{action.spec.name}: build {action.name} on {action.on} ({action.purpose}): {action.sql}"
        case CreateParent():
            return f"{action.spec.name}: create the partitioned parent index: {action.sql}"
        case Drop():
            return f"{action.spec.name}: drop {action.why} index {action.index.name} concurrently, then continue"
        case Rename():
            return f"{action.spec.name}: rename {action.index.name} to {action.to}"
        case Attach():
            return f"{action.spec.name}: attach {action.child.name} (partition {action.partition})"
        case WaitForOtherBuilder():
            return f"{action.spec.name}: wait: pid {action.builder.pid} is building {action.index.name}"
    raise AssertionError(action)  # pragma: no cover


def settle(result: IndexResult, action: index_plan.IndexAction) -> None:
    """Record a terminal verdict on the result (non-terminal actions leave it untouched)."""
    match action:
        case Ready():
            result.state = "valid"
            result.drift = None
        case Drifted():
            result.state = "drift"
            result.drift = action.reason
        case Failed():
            result.state = "failed"
            result.error = result.error or action.reason
        case _:
            result.state = index_plan.state_of(action)
