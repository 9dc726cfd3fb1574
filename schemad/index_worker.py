"""One registry index driven to a verdict, one observed step at a time (the shell's hands).

Each worker owns two dedicated connections: ``work`` runs the DDL in autocommit with
``lock_timeout = 0`` (a CIC's waits must not die on a short lock timeout, F5) and
``watch`` runs the watchdog, which reads pg_stat_progress_create_index and cancels a
build that waits for lockers longer than ``index_max_lock_wait_s``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from schemad import catalog, classify, db, errors, index_plan, index_report
from schemad.index_plan import (
    Attach,
    Build,
    CreateParent,
    Drifted,
    Drop,
    OnError,
    Rename,
    WaitForOtherBuilder,
)
from schemad.sqlparser import quote_ident

if TYPE_CHECKING:
    from schemad.index_builder import Run
    from schemad.index_report import IndexResult
    from schemad.indexes import IndexSpec

log = logging.getLogger("schemad.indexes")

_CLEANUP_S = 5.0
# Drops that clear the way for a build go through admission; a failed unique index's
# leftover (it still enforces uniqueness) and a replaced index go at once.
_ADMITTED_DROPS = ("invalid", "leftover")


@dataclass(slots=True)
class Step:
    """The outcome of one DDL statement."""

    ok: bool
    duration_s: float
    error: errors.DatabaseError | None = None
    watchdog: dict[str, Any] | None = None  # set when our watchdog cancelled the build



class Worker:
    """Drives one registry index to a verdict, one observed step at a time."""

    def __init__(self, run: Run, spec: IndexSpec, result: IndexResult) -> None:
        self.shared = run
        self.spec = spec
        self.result = result
        self.settings = run.settings
        self.hooks = run.hooks
        self.work: db.Session | None = None  # DDL; autocommit; lock_timeout 0
        self.watch: db.Session | None = None  # the watchdog's progress reads
        self.failures = 0
        self.failed = False
        self.admitted_at: float | None = None  # when admission was last granted
        self.leased = False  # holding (a share of) the index lock
        self.backoff_due = False
        self.started = time.monotonic()
        self._waiting_logged: int | None = None

    async def run_step_loop(self) -> None:
        # The index lock is held only across consecutive DDL steps; it is let go before
        # anything that waits (admission, another backend's build, a retry's backoff).
        while True:
            obs = await self.shared.observe(self.spec, fenced=self.leased)
            action = index_plan.next_step(obs, replace_drifted=self.settings.index_replace_drifted, failed=self.failed)
            index_report.settle(self.result, action)
            self.hooks.set_index_state(self.spec.name, index_plan.state_of(action))
            self.hooks.set_index_drift(self.spec.name, isinstance(action, Drifted))
            if index_plan.is_terminal(action):
                return
            if isinstance(action, WaitForOtherBuilder):
                await self._lease(False)
                if not await self._wait_for_other(action):
                    return
                continue
            table_oid = _admission_target(action)
            if table_oid is not False and not self._admitted():
                if self.leased and await self.shared.admit(self.spec, table_oid, once=True) is None:
                    self.admitted_at = time.monotonic()
                    continue
                await self._lease(False)
                deferred = await self.shared.admit(self.spec, table_oid)
                if deferred is not None:  # only without --wait
                    self.result.state = "pending"
                    self.result.detail = f"deferred: {deferred.reason}"
                    self.hooks.set_index_state(self.spec.name, "pending")
                    return
                self.admitted_at = time.monotonic()
                continue  # take the lock, then observe again: the catalog may have moved
            if not self.leased:
                await self._lease(True)
                continue  # observe again under the lock before acting
            try:
                if not await self._act(action):
                    return
            except errors.ConnectionLost as exc:
                # Our DDL connection broke outside a statement we could classify: transient.
                await self._drop_sessions()
                self.failures += 1
                self.result.sqlstate, self.result.error = exc.sqlstate, exc.message
                if self.failures >= self.settings.index_retry_attempts:
                    self.failed = True
                    continue
                self.backoff_due = True
            if self.backoff_due:
                self.backoff_due = False
                await self._lease(False)
                await self._backoff()

    def _admitted(self) -> bool:
        """Admission holds for the next build only, and only while fresh."""
        return (
            self.admitted_at is not None
            and time.monotonic() - self.admitted_at <= max(self.settings.throttle_poll_s, 1.0)
        )

    async def _lease(self, hold: bool) -> None:
        if hold and not self.leased:
            await self.shared.hold()
            self.leased = True
        elif not hold and self.leased:
            self.leased = False
            await self.shared.let_go()

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            await self.run_step_loop()
        finally:
            self.result.duration_s = time.monotonic() - self.started
            await self._lease(False)
        if self.result.state == "valid":
            log.info("%s is valid", self.spec.name, extra={"event": "index_ready", "index": self.spec.name})

    async def _wait_for_other(self, action: WaitForOtherBuilder) -> bool:
        b = action.builder
        self.result.detail = f"being built by pid {b.pid} ({b.application_name or 'unknown'})"
        if self._waiting_logged != b.pid:
            self._waiting_logged = b.pid
            log.info(
                "%s is being built by another backend; waiting", action.index.name,
                extra={"event": "index_foreign_build", "index": self.spec.name, "pid": b.pid,
                       "application_name": b.application_name, "phase": b.phase, "source": b.source},
            )
        if not self.shared.wait:
            return False
        async with self.shared.ctl_lock:
            progress = await catalog.progress_of_index(self.shared.ctl, action.index.oid)
        if progress is not None:
            self.hooks.set_index_progress(self.spec.name, progress.ratio)
            self.hooks.build_progress(self.spec.name, progress)
        await anyio.sleep(self.settings.index_progress_poll_s)
        return True

    # ---- acting

    async def _act(self, action: index_plan.IndexAction) -> bool:
        """Perform one DDL step; False ends this index's run."""
        work = await self._work()
        match action:
            case Build():
                return await self._build(work, action)
            case CreateParent():
                step = await self._short_ddl(work, action.sql)
                return await self._after_build(step, action.spec.name, action.sql, "create parent index")
            case Drop():
                return await self._drop(work, action)
            case Rename():
                sql = (f"ALTER INDEX {catalog.qualified(action.index.schema, action.index.name)} "
                       f"RENAME TO {quote_ident(action.to)}")
                return await self._short_step(work, sql, "renamed", f"renamed {action.index.name}")
            case Attach():
                sql = (f"ALTER INDEX {catalog.qualified(action.parent.schema, action.parent.name)} "
                       f"ATTACH PARTITION {catalog.qualified(action.child.schema, action.child.name)}")
                return await self._short_step(work, sql, "attached", f"attached {action.partition}")
        raise AssertionError(action)  # pragma: no cover

    async def _build(self, work: db.Session, action: Build) -> bool:
        self.result.attempts += 1
        attempt = self.result.attempts
        name = self.spec.name
        log.info(
            "building %s on %s", action.name, action.on,
            extra={"event": "index_build_started", "index": name, "attempt": attempt, "purpose": action.purpose},
        )
        self.hooks.set_index_state(name, "building")
        self.hooks.set_index_progress(name, 0.0)
        step = await self._with_watchdog(work, action.sql)
        self.admitted_at = None  # the next build is admitted afresh
        return await self._after_build(step, action.name, action.sql, action.purpose, attempt=attempt)

    async def _after_build(
        self, step: Step, index_name: str, sql: str, purpose: str, *, attempt: int | None = None
    ) -> bool:
        spec = self.spec
        detail: dict[str, Any] = {"sql": sql, "purpose": purpose, "index_name": index_name}
        if step.watchdog is not None:
            detail["watchdog"] = step.watchdog
        if step.ok:
            self.hooks.index_build_finished("success")
            self.hooks.set_index_progress(spec.name, 1.0)
            self.result.actions.append({"build": "built", "replace": "built replacement",
                                        "partition": f"built {index_name}"}.get(purpose, purpose))
            await self.shared.record(spec, outcome="built", attempt=attempt, step=step, detail=detail, build_row=True)
            log.info("built %s in %.1fs", index_name, step.duration_s,
                     extra={"event": "index_built", "index": spec.name, "duration_s": round(step.duration_s, 3)})
            return True
        err = step.error
        assert err is not None
        verdict = index_plan.on_error(err.sqlstate, watchdog_cancelled=step.watchdog is not None)
        self.result.sqlstate, self.result.error = err.sqlstate, err.message
        if step.watchdog is not None:
            w = step.watchdog
            self.result.error = (
                f"{err.message}: cancelled after waiting {w['waited_s']}s ({w['phase']}) for pid "
                f"{w['current_locker_pid']} ({w['locker_application_name']}, {w['locker_state']}, "
                f"transaction age {w['locker_age_s']}s)"
            )
        if isinstance(err, errors.ConnectionLost):
            await self._drop_sessions()  # the server may still be building: observe, never assume
        log.warning(
            "building %s failed: %s", index_name, err.message,
            extra={"event": "index_build_failed", "index": spec.name, "sqlstate": err.sqlstate,
                   "verdict": str(verdict), "attempt": attempt},
        )
        if verdict is OnError.RECHECK and self.failures + 1 < self.settings.index_retry_attempts:
            # Someone else took the name since we looked: observe again, never drop blindly.
            self.failures += 1
            await self.shared.record(spec, outcome="retry", attempt=attempt, step=step, detail=detail, build_row=True)
            return True
        if verdict is OnError.RETRY:
            self.failures += 1
            if self.failures < self.settings.index_retry_attempts:
                self.hooks.index_build_finished("retried")
                await self.shared.record(spec, outcome="retry", attempt=attempt, step=step, detail=detail, build_row=True)
                self.backoff_due = True
                return True
        # FAIL, FAIL_NOW, or retries exhausted: the plan drops the leftover next, at once.
        self.failed = True
        self.hooks.index_build_finished("failed")
        await self.shared.record(spec, outcome="failed", attempt=attempt, step=step, detail=detail, build_row=True)
        return True

    async def _backoff(self) -> None:
        delay = classify.backoff_s(
            self.failures, base_s=self.settings.index_retry_backoff_s, cap_s=600.0, jitter=random.random()
        )
        log.info("retrying %s in %.1fs", self.spec.name, delay,
                 extra={"event": "index_build_retry", "index": self.spec.name, "delay_s": round(delay, 2)})
        await anyio.sleep(delay)

    async def _drop(self, work: db.Session, action: Drop) -> bool:
        idx = action.index
        sql = f"DROP INDEX CONCURRENTLY IF EXISTS {catalog.qualified(idx.schema, idx.name)}"
        log.info("dropping %s index %s", action.why, idx.name,
                 extra={"event": "index_drop", "index": self.spec.name, "why": action.why, "dropped": idx.name})
        # DROP CONCURRENTLY waits for every transaction using the table: bound it.
        step = await self._timed(work, sql, statement_timeout_s=self.settings.index_max_lock_wait_s)
        detail = {"sql": sql, "why": action.why, "valid": idx.valid}
        if step.ok:
            self.result.actions.append(f"dropped {action.why} {idx.name}")
            await self.shared.record(self.spec, outcome="dropped", step=step, detail=detail)
            return True
        await self.shared.record(self.spec, outcome="drop_failed", step=step, detail=detail)
        assert step.error is not None
        if isinstance(step.error, errors.ConnectionLost):
            await self._drop_sessions()
        self.failures += 1
        if self.failed or self.failures >= self.settings.index_retry_attempts:
            self.failed = True
            self.result.state = "failed"
            self.result.sqlstate, self.result.error = step.error.sqlstate, f"could not drop {idx.name}: {step.error.message}"
            self.hooks.set_index_state(self.spec.name, "failed")
            return False
        self.backoff_due = True
        return True

    async def _short_step(self, work: db.Session, sql: str, outcome: str, what: str) -> bool:
        step = await self._short_ddl(work, sql)
        if step.ok:
            self.result.actions.append(what)
            await self.shared.record(self.spec, outcome=outcome, step=step, detail={"sql": sql})
            return True
        return await self._after_build(step, self.spec.name, sql, outcome)

    # ---- statements

    async def _short_ddl(self, work: db.Session, sql: str) -> Step:
        """A catalog-only statement (rename, attach, ON ONLY parent): a short lock_timeout
        so that it never queues an exclusive lock behind a long reader."""
        ms = max(1, int(self.settings.lock_timeout_s * 1000))
        await work.execute(f"SET lock_timeout = {ms}")
        try:
            return await self._timed(work, sql, statement_timeout_s=None)
        finally:
            if not work.is_closed():
                with anyio.CancelScope(shield=True):
                    await _quietly(work, "SET lock_timeout = 0")

    async def _timed(self, work: db.Session, sql: str, *, statement_timeout_s: float | None) -> Step:
        if statement_timeout_s is not None:
            await work.execute(f"SET statement_timeout = {max(1, int(statement_timeout_s * 1000))}")
        started = time.monotonic()
        try:
            await work.execute(sql)
            return Step(ok=True, duration_s=time.monotonic() - started)
        except errors.DatabaseError as exc:
            return Step(ok=False, duration_s=time.monotonic() - started, error=exc)
        finally:
            if statement_timeout_s is not None and not work.is_closed():
                with anyio.CancelScope(shield=True):
                    await _quietly(work, self._statement_timeout_sql())

    def _statement_timeout_sql(self) -> str:
        return f"SET statement_timeout = {max(1, int(self.settings.index_statement_timeout_s * 1000))}"

    async def _with_watchdog(self, work: db.Session, sql: str) -> Step:
        """Run one CREATE INDEX CONCURRENTLY while a watchdog reads its progress."""
        watch = await self._watch()
        dog = Watchdog(self, watch, work.server_pid)
        started = time.monotonic()
        error: errors.DatabaseError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(dog.run)
                try:
                    await work.execute(sql)
                except errors.DatabaseError as exc:
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        except BaseException:
            # Cancelled (shutdown): stop the server-side build too; the invalid leftover is
            # repaired by the next run. Bounded, and shielded from the cancellation itself.
            with anyio.move_on_after(_CLEANUP_S, shield=True):
                await _cancel_quietly(watch, work.server_pid)
            self.hooks.index_build_finished("cancelled")
            raise
        return Step(ok=error is None, duration_s=time.monotonic() - started, error=error, watchdog=dog.cancelled)

    # ---- sessions

    async def _work(self) -> db.Session:
        if self.work is None or self.work.is_closed():
            s = await db.connect(self.settings, "index")
            try:
                # A CIC's waits must not die on a short lock_timeout (F5): the watchdog bounds them.
                await s.execute("SET lock_timeout = 0")
                await s.execute(self._statement_timeout_sql())
                if self.settings.index_maintenance_work_mem:
                    await s.fetchval("SELECT set_config('maintenance_work_mem', $1, false)",
                                     self.settings.index_maintenance_work_mem)
                if self.settings.index_max_parallel_workers is not None:
                    await s.fetchval("SELECT set_config('max_parallel_maintenance_workers', $1, false)",
                                     str(self.settings.index_max_parallel_workers))
            except BaseException:
                await s.close()
                raise
            self.work = s
            self.shared.our_pids.add(s.server_pid)
        return self.work

    async def _watch(self) -> db.Session:
        if self.watch is None or self.watch.is_closed():
            self.watch = await db.connect(self.settings, "index-watch")
            self.shared.our_pids.add(self.watch.server_pid)
        return self.watch

    async def _drop_sessions(self) -> None:
        for s in (self.work, self.watch):
            if s is not None:
                self.shared.our_pids.discard(s.server_pid)
                await s.close()
        self.work = self.watch = None

    async def close(self) -> None:
        await self._drop_sessions()


class Watchdog:
    """Reads one build's progress; cancels it after too long a wait for lockers."""

    def __init__(self, worker: Worker, watch: db.Session, pid: int) -> None:
        self.worker = worker
        self.watch = watch
        self.pid = pid
        self.cancelled: dict[str, Any] | None = None

    async def run(self) -> None:
        w = self.worker
        name = w.spec.name
        max_wait = w.settings.index_max_lock_wait_s
        waiting_since: float | None = None
        phase: str | None = None
        while True:
            await anyio.sleep(w.settings.index_progress_poll_s)
            try:
                p = await catalog.build_progress(self.watch, self.pid)
            except errors.SchemadError as exc:
                # Losing the watch must not cancel the build; keep trying while it runs.
                log.warning("cannot read the progress of %s: %s", name, exc,
                            extra={"event": "index_watch_failed", "index": name})
                if self.watch.is_closed():
                    return
                continue
            if p is None:
                continue
            w.hooks.set_index_progress(name, p.ratio)
            w.hooks.build_progress(name, p)
            if p.phase != phase:
                phase = p.phase
                waiting_since = time.monotonic() if p.waiting else None
                log.debug("%s: %s", name, phase, extra={"event": "index_build_phase", "index": name, "phase": phase})
            if waiting_since is None or time.monotonic() - waiting_since <= max_wait:
                continue
            locker = await catalog.locker(self.watch, p.current_locker_pid) if p.current_locker_pid else None
            self.cancelled = {
                "phase": phase, "waited_s": round(time.monotonic() - waiting_since, 1),
                "current_locker_pid": p.current_locker_pid,
                "locker_age_s": round(float(locker["age_s"]), 1) if locker and locker["age_s"] is not None else None,
                "locker_application_name": locker["application_name"] if locker else None,
                "locker_state": locker["state"] if locker else None,
            }
            log.warning(
                "cancelling the build of %s: waited %.0fs for pid %s (%s)", name, self.cancelled["waited_s"],
                p.current_locker_pid, self.cancelled["locker_application_name"],
                extra={"event": "index_build_watchdog_cancel", "index": name, **self.cancelled},
            )
            await _cancel_quietly(self.watch, self.pid)
            return


def _admission_target(action: index_plan.IndexAction) -> int | Literal[False] | None:
    """The table a step must be admitted for (None: unknown), or False: no admission."""
    if isinstance(action, Build):
        return action.table_oid
    if isinstance(action, Drop) and action.why in _ADMITTED_DROPS:
        return action.index.table_oid
    return False


async def _quietly(s: db.Session, sql: str) -> None:
    try:
        await s.execute(sql)
    except errors.SchemadError:
        pass


async def _cancel_quietly(watch: db.Session, pid: int) -> None:
    try:
        await catalog.cancel_backend(watch, pid)
    except errors.SchemadError:
        pass
