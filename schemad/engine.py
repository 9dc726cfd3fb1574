"""One migration run: plan against the ledger, take the lock only if something is pending,
apply, release, notify. Shared by `schemad migrate` and the daemon.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import anyio

from schemad import db, errors, lock, plan, queries, rules
from schemad.ledger import Ledger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from schemad.config import Settings
    from schemad.executor import ApplyResult, ExecutorSettings, Hooks
    from schemad.findings import Finding
    from schemad.migrations import Migration
    from schemad.validation import Validation

log = logging.getLogger("schemad.engine")

# Identifies this process's own NOTIFY payloads, which its daemon need not act on.
NOTIFY_SENDER = f"{db.HOSTNAME}:{os.getpid()}"


@dataclass(slots=True, kw_only=True)
class RunReport:
    plan: plan.Plan
    applied: list[ApplyResult] = field(default_factory=list)
    lock_waited_s: float = 0.0


def executor_settings(settings: Settings) -> ExecutorSettings:
    from schemad.executor import ExecutorSettings

    return ExecutorSettings(
        lock_timeout_s=settings.lock_timeout_s,
        statement_timeout_s=settings.statement_timeout_s,
        retry_max_attempts=settings.retry_max_attempts,
        retry_budget_s=settings.retry_budget_s,
        retry_backoff_s=settings.retry_backoff_s,
        strict=settings.strict,
    )


def mismatch_findings(p: plan.Plan) -> list[Finding]:
    return [
        rules.finding(
            "E130", mm.path, 1, 1,
            f"migration {mm.name} was changed after it was applied "
            f"(recorded checksum {mm.recorded[:12]}, file now {mm.current[:12]}): "
            "restore the file and put the change in a new migration",
        )
        for mm in p.mismatches
    ]


async def namespace(settings: Settings, s: db.Session) -> str:
    return settings.lock_namespace or str(await s.fetchval(queries.CURRENT_DATABASE))


async def read_plan(settings: Settings, s: db.Session, validation: Validation) -> plan.Plan:
    p = plan.make(validation.migrations, await Ledger(settings.ledger_schema).applied(s))
    if p.blocked:
        raise errors.ValidationFailed(mismatch_findings(p))
    return p


async def migrate(
    settings: Settings,
    validation: Validation,
    *,
    dry_run: bool = False,
    hooks: Hooks | None = None,
    on_lock: Any = None,
    lock_wait_s: float | None = None,
) -> RunReport:
    """Apply every pending migration under the migration lock; raises on the first failure."""
    if not validation.ok:
        raise errors.ValidationFailed(validation.findings)
    work = await db.connect(settings, "migrate")
    try:
        await lock.refuse_proxy(work, allow=settings.allow_proxy)
        p = await read_plan(settings, work, validation)
        if dry_run or not p.pending:
            return RunReport(plan=p)
        ns = await namespace(settings, work)
        lock_conn = await db.connect(settings, "lock")
        try:
            await lock.refuse_proxy(lock_conn, allow=settings.allow_proxy)
            lk = lock.AdvisoryLock(lock_conn, lock.lock_key(ns, "migrations"), name="migration")
            wait = settings.lock_wait_s if lock_wait_s is None else lock_wait_s
            waited = await lk.acquire(wait_s=wait, poll_s=settings.lock_poll_s)
            if on_lock is not None:
                on_lock(True)
            try:
                report = await lock.renewing(
                    lk, settings.lock_lease_s, lambda: _apply_locked(settings, validation, work, lk, hooks)
                )
                report.lock_waited_s = waited
                return report
            finally:
                await lk.release()
                if on_lock is not None:
                    on_lock(False)
        finally:
            await lock_conn.close()
    finally:
        await work.close()


async def _apply_locked(
    settings: Settings, validation: Validation, work: db.Session, lk: lock.AdvisoryLock, hooks: Hooks | None
) -> RunReport:
    ledger = Ledger(settings.ledger_schema)
    await _end_stale_holders(work)
    await ledger.ensure(work)
    # Re-plan under the lock: another replica may have applied while we waited.
    p = await read_plan(settings, work, validation)
    report = RunReport(plan=p)

    async def reconnect() -> db.Session:
        return await db.connect(settings, "migrate")

    # Imported only when something is to be applied: a run with nothing pending never needs it.
    from schemad.executor import Executor, next_batch

    logged = 0

    def announce() -> None:
        """Log the migrations applied since the last call."""
        nonlocal logged
        for result in report.applied[logged:]:
            log.info(
                "applied %s", result.name,
                extra={"event": "migration_applied", "version": result.version, "migration": result.name,
                       "duration_s": round(result.duration_s, 4), "statements": result.statements_run,
                       "tolerated": len(result.tolerated), "attempts": result.attempts},
            )
        logged = len(report.applied)

    ex = Executor(work, ledger, lk, executor_settings(settings), reconnect=reconnect, hooks=hooks)
    try:
        start = 0
        while start < len(p.pending):
            # Consecutive transactional migrations travel together, each in its own transaction
            # (executor.apply_batch). No separate fence round trip: every path fences inside
            # each migration's transaction.
            batch = next_batch(p.pending, start)
            after = start + len(batch)
            before = len(report.applied)
            handled = 0

            def meanwhile(after: int = after) -> None:
                # While the server runs this batch: log the last one's, build the next one's message.
                announce()
                if after < len(p.pending):
                    ex.render(next_batch(p.pending, after))

            with anyio.CancelScope() as applying:
                # The moment the lock is known lost (its connection ended, a lease renewal
                # failed), cancel the statement in flight: asyncpg asks the server to cancel it,
                # and nothing more of this migration runs without the lock.
                lk.on_lost = applying.cancel
                try:
                    handled = await ex.apply_batch(batch, report.applied.append, meanwhile=meanwhile)
                finally:
                    lk.on_lost = None
            if applying.cancelled_caught:
                await _stopped_by_lost_lock(settings, ex.work, ledger, batch[len(report.applied) - before :])
            start += handled
    finally:
        announce()
        if report.applied and not ex.work.is_closed():
            # Waiting replicas LISTEN on this channel and re-check at once.
            last = report.applied[-1].version
            try:
                await ex.work.execute(f"NOTIFY {settings.notify_channel}, 'applied:{last}:{NOTIFY_SENDER}'")
            except errors.SchemadError:
                pass
        if ex.work is not work:
            await ex.work.close()
    return report


async def _end_stale_holders(work: db.Session) -> None:
    """A previous holder that lost the lock (frozen, cut off) may still run a migration
    statement: it can never commit (its fence fails), but it holds locks we are about to need."""
    try:
        ended = int(await work.fetchval(queries.END_STALE_MIGRATIONS, db.application_name("migrate")))
    except errors.DatabaseError as exc:  # e.g. not allowed to signal that role's backends
        log.warning("could not end a previous holder's sessions: %s", exc.message,
                    extra={"event": "stale_holder_not_ended", "sqlstate": exc.sqlstate})
        return
    if ended:
        log.warning("ended %d migration session(s) left by a previous lock holder", ended,
                    extra={"event": "stale_holder_ended", "sessions": ended})


async def _stopped_by_lost_lock(
    settings: Settings, work: db.Session, ledger: Ledger, unreported: Sequence[Migration]
) -> NoReturn:
    """The lock went while the first of ``unreported`` (or, in a batch, one after it) was being
    applied and its statement was cancelled: end that session for certain (its transaction
    rolls back now), put the stop on record, stop."""
    from schemad.executor import FENCE_SQLSTATE, sent_together

    pid = work.server_pid
    work.terminate()
    m = unreported[0]
    message = f"the migration lock was lost while applying {m.name}: its statement was cancelled at once"
    try:
        s = await db.connect(settings, "migrate")
    except errors.SchemadError:
        what = f"whether {m.name}"
        if len(unreported) > 1:  # a batch: which of them had committed cannot be told from here
            message = (f"the migration lock was lost while applying one of {sent_together(unreported)}: "
                       "its statement was cancelled at once")
            what = "which of them"
        raise errors.LockLost(
            f"{message}; the database cannot be reached to tell {what} committed just before: "
            "`schemad status` shows it, and a rerun continues from there"
        ) from None
    try:
        await s.fetchval(queries.TERMINATE_BACKEND, pid)
        # Our COMMITs already on their way when the lock went are the only way our attempt is recorded.
        ours = {
            int(r["version"]) for r in await ledger.applied_full(s)
            if r["applied_by_host"] == db.HOSTNAME and r["applied_by_pid"] == os.getpid()
        }
        committed = list(itertools.takewhile(lambda u: u.version in ours, unreported))
        if committed:
            stopped = unreported[len(committed)] if len(committed) < len(unreported) else None
            names = ", ".join(u.name for u in committed)
            message = (
                f"the migration lock was lost while applying {stopped.name}: its statement was cancelled at once"
                if stopped is not None else f"the migration lock was lost after {committed[-1].name}"
            ) + f"; {names} had committed just before"
            m = stopped or committed[-1]
        else:
            message += f"; this attempt recorded nothing of {m.name}"
        await ledger.event_quietly(
            s, kind="migration", subject=m.name, version=m.version, outcome="failed", sqlstate=FENCE_SQLSTATE,
            message=message, detail={"reason": "lock_lost"},
        )
    finally:
        await s.close()
    raise errors.LockLost(message)
