"""The index reconciler (shell): observe, let `index_plan` decide one step, act, repeat.

Rules it keeps (design §8, research §0): the index advisory lock is taken only when there
is work and released after it; every build runs on its own autocommit connection with
``lock_timeout = 0``, and no transaction is open anywhere in this process while a build
runs; ``CREATE INDEX CONCURRENTLY`` never carries ``IF NOT EXISTS``; a watchdog on a second
connection reads the progress view and cancels a build that waits for lockers longer than
``index_max_lock_wait_s``; failures are classified by SQLSTATE (`index_plan.on_error`);
admission goes through `throttle.decide`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from schemad import catalog, db, errors, index_plan, index_report, index_worker, lock, queries, throttle
from schemad.index_plan import Drifted
from schemad.index_report import IndexResult, Report
from schemad.ledger import LEDGER_VERSION, Ledger

if TYPE_CHECKING:
    from collections.abc import Iterable

    from schemad.config import Settings
    from schemad.indexes import IndexSpec
    from schemad.validation import Validation

log = logging.getLogger("schemad.indexes")

# The label values of `schemad_index_builds_total{outcome}` (schemad.metrics.IndexBuildOutcome).
BuildOutcome = Literal["success", "failed", "retried", "cancelled"]
_CLEANUP_S = 5.0
__all__ = ["Hooks", "IndexResult", "MetricsHooks", "NoHooks", "Report", "UnsafeServerVersion", "reconcile"]


class UnsafeServerVersion(errors.SchemadError):
    """PostgreSQL 14.0–14.3 can corrupt indexes built concurrently; upgrade to 14.4+."""


# --------------------------------------------------------------------------- hooks


class Hooks(Protocol):
    """What the reconciler reports as it goes. Method names match `metrics.Metrics`, so a
    `Metrics` works through `MetricsHooks`; the CLI's progress display is another one."""

    def set_index_state(self, index: str, state: index_plan.State) -> None: ...
    def set_index_progress(self, index: str, ratio: float) -> None: ...
    def build_progress(self, index: str, progress: catalog.Progress) -> None: ...
    def index_build_finished(self, outcome: BuildOutcome) -> None: ...
    def set_throttle_paused(self, signal: throttle.Signal, paused: bool) -> None: ...
    def set_invalid_indexes(self, count: int) -> None: ...
    def set_index_drift(self, index: str, drift: bool) -> None: ...


class NoHooks:
    def set_index_state(self, index: str, state: index_plan.State) -> None:
        return None

    def set_index_progress(self, index: str, ratio: float) -> None:
        return None

    def build_progress(self, index: str, progress: catalog.Progress) -> None:
        return None

    def index_build_finished(self, outcome: BuildOutcome) -> None:
        return None

    def set_throttle_paused(self, signal: throttle.Signal, paused: bool) -> None:
        return None

    def set_invalid_indexes(self, count: int) -> None:
        return None

    def set_index_drift(self, index: str, drift: bool) -> None:
        return None


class MetricsHooks(NoHooks):
    """Forwards to a `schemad.metrics.Metrics` (drift is mirrored by the "drift" state)."""

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics

    def set_index_state(self, index: str, state: index_plan.State) -> None:
        self.metrics.set_index_state(index, state)

    def set_index_progress(self, index: str, ratio: float) -> None:
        self.metrics.set_index_progress(index, ratio)

    def index_build_finished(self, outcome: BuildOutcome) -> None:
        self.metrics.index_build_finished(outcome)

    def set_throttle_paused(self, signal: throttle.Signal, paused: bool) -> None:
        self.metrics.set_throttle_paused(signal, paused)

    def set_invalid_indexes(self, count: int) -> None:
        self.metrics.set_invalid_indexes(count)


# --------------------------------------------------------------------------- entry point


async def reconcile(
    settings: Settings,
    source: Validation | Iterable[IndexSpec],
    *,
    hooks: Hooks | None = None,
    wait: bool = True,
    dry_run: bool = False,
) -> Report:
    """Bring every registry index to valid (or failed/drift), and report.

    ``wait``: keep going until every index is ready or failed (deferrals and other
    backends' builds are waited out); without it, one pass that skips what would wait.
    Raises `errors.ValidationFailed`, `errors.LockBusy`, `UnsafeServerVersion`.
    """
    specs = _specs(source)
    hooks = hooks or NoHooks()
    our_pids: set[int] = set()
    ctl = await db.connect(settings, "index-ctl")
    try:
        our_pids.add(ctl.server_pid)
        version = await catalog.server_version(ctl)
        if index_plan.unsafe_cic_version(version) and not settings.allow_unsafe_pg14:
            raise UnsafeServerVersion(
                f"PostgreSQL {version // 10000}.{version % 100} may corrupt indexes built concurrently "
                "(fixed in 14.4): upgrade, or set allow_unsafe_pg14 to build anyway"
            )
        visible = await catalog.progress_visible(ctl)
        if not visible:
            log.warning(
                "this role cannot see other roles' index builds; grant it pg_read_all_stats (or pg_monitor)",
                extra={"event": "index_progress_invisible"},
            )
        observer = catalog.Observer(ctl, our_pids=our_pids, visible=visible, lock_timeout_s=settings.lock_timeout_s)
        actions = index_plan.plan(await observer.observe_all(specs), replace_drifted=settings.index_replace_drifted)
        report = Report(
            results=[
                IndexResult(name=s.name, table=s.qualified_table, critical=s.critical)
                for s in (a.spec for a in actions)
            ],
            server_version=version, progress_visible=visible, dry_run=dry_run,
        )
        for action, result in zip(actions, report.results, strict=True):
            index_report.settle(result, action)
            hooks.set_index_state(result.name, index_plan.state_of(action))
            hooks.set_index_drift(result.name, isinstance(action, Drifted))
        hooks.set_invalid_indexes(await catalog.invalid_indexes(ctl))
        if dry_run:
            report.plan = [index_report.describe(a) for a in actions]
            return report
        if all(index_plan.is_terminal(a) for a in actions):
            return report
        run = Run(settings, ctl, observer, hooks, report, our_pids, wait=wait)
        await run.run([a.spec for a in actions])
        return report
    finally:
        await ctl.close()


def _specs(source: Validation | Iterable[IndexSpec]) -> list[IndexSpec]:
    from schemad.validation import Validation

    if isinstance(source, Validation):
        if not source.ok:
            raise errors.ValidationFailed(source.findings)
        return list(source.indexes)
    return list(source)


# --------------------------------------------------------------------------- one run


class Run:
    """Shared by the workers of one run: the control session, the index lock, admission."""

    def __init__(
        self,
        settings: Settings,
        ctl: db.Session,
        observer: catalog.Observer,
        hooks: Hooks,
        report: Report,
        our_pids: set[int],
        *,
        wait: bool,
    ) -> None:
        self.settings = settings
        self.ctl = ctl
        self.observer = observer
        self.hooks = hooks
        self.report = report
        self.our_pids = our_pids
        self.wait = wait
        self.ledger = Ledger(settings.ledger_schema)
        self.ctl_lock = anyio.Lock()  # the control session serves one operation at a time
        self.limits = throttle.limits_from(
            max_replication_lag_s=settings.throttle_max_replication_lag_s,
            max_transaction_age_s=settings.throttle_max_transaction_age_s,
            max_idle_in_transaction_s=settings.throttle_max_idle_in_transaction_s,
            max_lock_waiters=settings.throttle_max_lock_waiters,
            max_active_backends=settings.throttle_max_active_backends,
            defer_on_autovacuum=settings.throttle_defer_on_autovacuum,
            windows=settings.throttle_windows,
            resume_after_s=settings.throttle_resume_after_s,
        )
        self.pause: throttle.PauseState | None = None
        self.paused: set[throttle.Signal] = set()
        self.index_lock: lock.AdvisoryLock | None = None
        self._holders = 0  # workers currently holding the index lock (one session lock, shared)
        self._lock_mutex = anyio.Lock()
        self._last_deferral_log: tuple[str, float] = ("", 0.0)

    async def run(self, specs: list[IndexSpec]) -> None:
        """Reconcile every index; the index lock is held only around DDL steps (`hold`)."""
        settings = self.settings
        ns = settings.lock_namespace or str(await self.ctl.fetchval(queries.CURRENT_DATABASE))
        await lock.refuse_proxy(self.ctl, allow=settings.allow_proxy)
        lock_conn = await db.connect(settings, "index-lock")
        self.our_pids.add(lock_conn.server_pid)
        try:
            await lock.refuse_proxy(lock_conn, allow=settings.allow_proxy)
            self.index_lock = lock.AdvisoryLock(lock_conn, lock.lock_key(ns, "indexes"), name="index")
            await self._ensure_ledger(ns)
            # Render every registry definition now: no transaction may open once builds run.
            await self.observer.prime(specs)
            # The lease lets a frozen builder's lock go (see lock.py), between builds and during one.
            await lock.renewing(self.index_lock, settings.lock_lease_s, lambda: self._all(specs))
        finally:
            if self.index_lock is not None:
                await self.index_lock.release()
            await lock_conn.close()
            self.hooks.set_invalid_indexes(await _quietly_count(self.ctl))

    async def hold(self) -> None:
        """Take (or join) the index lock; raises `errors.LockBusy` after ``lock_wait_s``."""
        assert self.index_lock is not None
        async with self._lock_mutex:
            if self._holders == 0:
                waited = await self.index_lock.acquire(
                    wait_s=self.settings.lock_wait_s, poll_s=self.settings.lock_poll_s
                )
                self.report.lock_waited_s = (self.report.lock_waited_s or 0.0) + waited
            self._holders += 1

    async def let_go(self) -> None:
        """Leave the index lock; the last holder releases it (a waiting replica may take it)."""
        assert self.index_lock is not None
        with anyio.CancelScope(shield=True):
            async with self._lock_mutex:
                self._holders -= 1
                if self._holders == 0:
                    await self.index_lock.release()

    async def _ensure_ledger(self, ns: str) -> None:
        """The ledger's tables are created under the migration lock, briefly, if missing."""
        if await self.ledger.exists(self.ctl):
            current = int(await self.ctl.fetchval(self.ledger.sql(queries.LEDGER_VERSION)))
            if current >= LEDGER_VERSION:
                return
        conn = await db.connect(self.settings, "lock")
        try:
            mlock = lock.AdvisoryLock(conn, lock.lock_key(ns, "migrations"), name="migration")
            await mlock.acquire(wait_s=self.settings.lock_wait_s, poll_s=self.settings.lock_poll_s)
            try:
                await self.ledger.ensure(self.ctl)
            finally:
                await mlock.release()
        finally:
            await conn.close()

    async def _all(self, specs: list[IndexSpec]) -> None:
        limiter = anyio.CapacityLimiter(self.settings.index_concurrency)
        # One build per table at a time: concurrent builds on one table queue on its SUE lock.
        tables: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        results = {r.name: r for r in self.report.results}
        try:
            async with anyio.create_task_group() as tg:
                for spec in specs:  # already critical-first
                    tg.start_soon(self._one_guarded, spec, results[spec.name], limiter, tables[spec.qualified_table])
        except BaseExceptionGroup as group:
            # A worker's schemad error (LockBusy, LockLost, ConnectionLost...) ends the run:
            # raise it as itself so that callers (the CLI's exit codes) see what it is.
            leaves = _leaves(group)
            if leaves and all(isinstance(e, errors.SchemadError) for e in leaves):
                raise leaves[0] from None
            raise

    async def _one_guarded(
        self, spec: IndexSpec, result: IndexResult, limiter: anyio.CapacityLimiter, table_lock: anyio.Lock
    ) -> None:
        # The limiter first: it serves waiters in order, so critical indexes go first.
        async with limiter, table_lock:
            worker = index_worker.Worker(self, spec, result)
            try:
                await worker.run()
            finally:
                await worker.close()

    # ---- shared services for workers

    async def observe(self, spec: IndexSpec, *, fenced: bool) -> index_plan.Observation:
        async with self.ctl_lock:
            if fenced:
                assert self.index_lock is not None
                await self.index_lock.fence(self.ctl)  # never act without the lock
            return await self.observer.observe(spec)

    async def admit(self, spec: IndexSpec, table_oid: int | None, *, once: bool = False) -> throttle.Defer | None:
        """Wait for admission (or, without ``wait`` or with ``once``, return the deferral)."""
        relids = frozenset({table_oid}) if table_oid is not None else frozenset()
        while True:
            async with self.ctl_lock:
                snap = await catalog.throttle_snapshot(self.ctl, self.our_pids)
            decision = throttle.decide(
                snap, self.limits, dt.datetime.now(dt.UTC), self.pause, target_relids=relids,
                ignore_windows=spec.critical,
            )
            self.pause = decision.state
            if isinstance(decision, throttle.Admit):
                self._set_paused(None)
                return None
            self._set_paused(decision.signal)
            self._log_deferral(spec, decision)
            if once or not self.wait:
                return decision
            await anyio.sleep(self.settings.throttle_poll_s)

    def _set_paused(self, signal: throttle.Signal | None) -> None:
        for s in list(self.paused):
            if s != signal:
                self.paused.discard(s)
                self.hooks.set_throttle_paused(s, False)
                log.info("admission resumed", extra={"event": "index_throttle_resumed", "signal": s})
        if signal is not None and signal not in self.paused:
            self.paused.add(signal)
            self.hooks.set_throttle_paused(signal, True)

    def _log_deferral(self, spec: IndexSpec, d: throttle.Defer) -> None:
        key, at = self._last_deferral_log
        now = time.monotonic()
        if key == f"{spec.name}:{d.signal}" and now - at < 60:
            return
        self._last_deferral_log = (f"{spec.name}:{d.signal}", now)
        log.info(
            "index build deferred: %s", d.reason,
            extra={"event": "index_build_deferred", "index": spec.name, "signal": d.signal,
                   "value": round(d.value, 3), "limit": d.limit},
        )

    async def record(
        self, spec: IndexSpec, *, outcome: str, attempt: int | None = None, step: index_worker.Step | None = None,
        detail: dict[str, Any] | None = None, build_row: bool = False,
    ) -> None:
        """An event in {schema}.events (and, for build attempts, {schema}.index_builds)."""
        err = step.error if step is not None else None
        message = err.message if err is not None else None
        sqlstate = err.sqlstate if err is not None else None
        async with self.ctl_lock:
            await self.ledger.event_quietly(
                self.ctl, kind="index", subject=spec.name, outcome=outcome, sqlstate=sqlstate, message=message,
                duration_s=step.duration_s if step is not None else None, attempt=attempt, detail=detail,
            )
            if build_row:
                try:
                    await self.ctl.execute(
                        self.ledger.sql(catalog.RECORD_ATTEMPT), spec.name, spec.qualified_table, outcome,
                        sqlstate, message,
                    )
                except errors.SchemadError as exc:
                    log.warning("could not record the attempt: %s", exc, extra={"event": "index_record_failed"})


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _quietly_count(s: db.Session) -> int:
    with anyio.move_on_after(_CLEANUP_S, shield=True):
        try:
            return await catalog.invalid_indexes(s)
        except errors.SchemadError:
            pass
    return 0

