"""The DDL executor: one transaction per migration, its ledger row inside it, a savepoint per
statement, the SQLSTATE table deciding what a failure means, lock-safe timeouts and retries.

Fast path: a transactional migration first travels as one round trip (BEGIN, timeouts,
fence, statements, fence, ledger row, `applied` event, COMMIT). Any error rolls all of it
back; the migration is then run statement by statement under savepoints, which classifies
the error exactly (tolerated "already exists", retry, or fatal) with the statement's
position. Either way, commit or nothing: the ledger row and the `applied` event commit
with the migration's statements or not at all.

Batches (`apply_batch`): consecutive transactional migrations travel together, each still
in its own BEGIN ... COMMIT with its own fences, ledger row and event. The server runs a
simple-query message statement by statement and skips everything after an error, so the
migrations before a failure are committed, the failing one is rolled back and nothing
after it runs; the ledger tells which is which, and the failing one continues as a failed
fast path (savepoints, retries). One round trip for many migrations instead of one each.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from schemad import classify, db, errors, queries
from schemad.classify import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from schemad.db import Session
    from schemad.ledger import Ledger
    from schemad.lock import AdvisoryLock
    from schemad.migrations import Migration, MigrationStatement

log = logging.getLogger("schemad.executor")

FENCE_SQLSTATE = "SD001"
_SAVEPOINT = "schemad_stmt"
# The one-round-trip send's start of this migration (a transaction-local setting) and its age.
_STARTED = "schemad.migration_started"
# Qualified (like queries.BATCH_FUNCTIONS): a migration's `SET search_path` must not redirect them.
_ELAPSED_S = (
    f"extract(epoch FROM pg_catalog.clock_timestamp() "
    f"- pg_catalog.current_setting('{_STARTED}')::pg_catalog.timestamptz)"
)
# A batch is bounded so that progress (logs, metrics) keeps coming and a message stays small.
BATCH_MAX_MIGRATIONS = 200
BATCH_MAX_BYTES = 1 << 20
# Before PostgreSQL 13, statement_timeout covered a whole simple-query message, not each statement.
BATCH_MIN_SERVER_VERSION = 130000


def next_batch(
    pending: Sequence[Migration], start: int, *, max_migrations: int = BATCH_MAX_MIGRATIONS,
    max_bytes: int = BATCH_MAX_BYTES,
) -> list[Migration]:
    """The migrations from ``start`` that travel together: consecutive transactional ones,
    bounded in count and size. A no-transaction migration always goes alone."""
    first = pending[start]
    if not first.transactional:
        return [first]
    out = [first]
    size = sum(len(st.text) for st in first.statements)
    for m in pending[start + 1 :]:
        size += sum(len(st.text) for st in m.statements)
        if not m.transactional or len(out) >= max_migrations or size > max_bytes:
            break
        out.append(m)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorSettings:
    lock_timeout_s: float
    statement_timeout_s: float
    retry_max_attempts: int
    retry_budget_s: float
    retry_backoff_s: float
    strict: bool = False
    fast_path: bool = True


@dataclass(frozen=True, slots=True)
class Tolerated:
    sqlstate: str
    line: int
    col: int
    message: str


@dataclass(slots=True, kw_only=True)
class ApplyResult:
    version: int
    name: str
    duration_s: float
    statements_run: int
    attempts: int
    tolerated: list[Tolerated] = field(default_factory=list)
    fast_path: bool = False
    applied_by_other: bool = False


class Hooks(Protocol):
    """What the executor reports as it goes (metrics, status); all no-ops by default."""

    def tolerated(self, sqlstate: str) -> None: ...
    def lock_timeout_retry(self) -> None: ...


class NoHooks:
    def tolerated(self, sqlstate: str) -> None:
        return None

    def lock_timeout_retry(self) -> None:
        return None


class _Retryable(Exception):
    def __init__(self, outcome: Outcome, err: errors.DatabaseError, stmt: MigrationStatement | None) -> None:
        super().__init__(err.message)
        self.outcome = outcome
        self.err = err
        self.stmt = stmt


def sent_together(batch: Sequence[Migration]) -> str:
    """A batch's migrations for a message: all of them, or the first and last of many."""
    names = ", ".join(m.name for m in batch) if len(batch) <= 5 else f"{batch[0].name} … {batch[-1].name} ({len(batch)})"
    return f"{names} (sent together)"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Executor:
    def __init__(
        self,
        work: Session,
        ledger: Ledger,
        lock: AdvisoryLock,
        settings: ExecutorSettings,
        *,
        reconnect: Any = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.work = work
        self.ledger = ledger
        self.lock = lock
        self.settings = settings
        self._reconnect = reconnect
        self.hooks: Hooks = hooks or NoHooks()
        self._rendered: tuple[tuple[int, ...], str] | None = None  # ((functions?, *versions), message): `render`
        # The session the batch functions were created on, and whether they could be.
        self._functions_on: Session | None = None
        self._functions = False

    # ------------------------------------------------------------------ public

    def batches(self, batch: Sequence[Migration]) -> bool:
        """Whether ``batch`` travels as one round trip (else one migration at a time)."""
        return len(batch) > 1 and self.settings.fast_path and self.work.server_version >= BATCH_MIN_SERVER_VERSION

    def render(self, batch: Sequence[Migration]) -> None:
        """Build a batch's message ahead of time (while the server runs the one before)."""
        if self.batches(batch):
            self._rendered = (self._render_key(batch), self.message(batch))

    def _render_key(self, batch: Sequence[Migration]) -> tuple[int, ...]:
        """What a rendered message depends on: the fence form and the migrations."""
        return (int(self._functions), *(m.version for m in batch))

    def message(self, batch: Sequence[Migration], *, functions: bool | None = None) -> str:
        """The one message that applies ``batch``, each migration in its own transaction.
        ``functions``: with or without the batch functions (default: as the session allows)."""
        use = self._functions if functions is None else functions
        return "\n;\n".join(
            part for m in batch for part in self._one_trip(m, self.settings.lock_timeout_s, functions=use)
        )

    async def apply_batch(
        self, batch: Sequence[Migration], on_applied: Callable[[ApplyResult], None], *,
        meanwhile: Callable[[], None] | None = None,
    ) -> int:
        """Apply ``batch`` (from `next_batch`) in order, or raise like `apply` at the first that
        fails for good; ``on_applied`` hears of each migration as soon as it is known committed.
        ``meanwhile`` is client work (logging, the next batch's message) to do while the server
        runs this batch. Returns how many of ``batch`` were applied: all, or up to and including
        one that failed in the batch and then got through alone (the rest go in a new batch)."""
        if not self.batches(batch):
            for m in batch:
                result = await self.apply(m)
                on_applied(result)
            if meanwhile is not None:
                meanwhile()
            return len(batch)
        await self._ready_functions()
        rendered, self._rendered = self._rendered, None
        if rendered is None or rendered[0] != self._render_key(batch):
            self.render(batch)
            rendered, self._rendered = self._rendered, None
        assert rendered is not None
        failure: errors.DatabaseError | None = None
        deferred: Exception | None = None

        async def send() -> None:
            nonlocal failure
            try:
                await self.work.execute(rendered[1])
            except errors.DatabaseError as exc:  # ConnectionLost included; handled below
                failure = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            if meanwhile is not None:
                await anyio.lowlevel.checkpoint()  # `send` puts the message on the wire first
                try:
                    meanwhile()
                except Exception as exc:  # noqa: BLE001 (re-raised as itself below, not as an ExceptionGroup)
                    deferred = exc
        if isinstance(failure, errors.ConnectionLost):
            if self._reconnect is None:
                raise failure
            await self._reconnect_work(batch[0].name if len(batch) == 1 else f"one of {sent_together(batch)}")
        elif failure is not None:
            await self._rollback()
        # Which migrations committed, and how long each took (measured by the server).
        versions = {m.version for m in batch}
        recorded = {
            int(r["version"]): float(r["duration_s"])
            for r in await self.work.fetch(
                self.ledger.sql(queries.RECORDED_DURATIONS), batch[0].version, batch[-1].version
            )
            if int(r["version"]) in versions
        }
        done = list(itertools.takewhile(lambda m: m.version in recorded, batch))
        if len(done) != len(recorded) or (failure is None and len(done) != len(batch)):
            raise errors.SchemadError(
                f"the ledger holds {sorted(recorded)} of the batch {[m.version for m in batch]}: not the applied prefix"
            )
        for m in done:
            on_applied(ApplyResult(version=m.version, name=m.name, duration_s=recorded[m.version],
                                   statements_run=len(m.statements), attempts=1, fast_path=True))
        if deferred is not None:
            raise deferred
        if failure is None:
            return len(batch)
        on_applied(await self.apply(batch[len(done)], first_failure=failure))
        return len(done) + 1

    async def apply(self, m: Migration, *, first_failure: errors.DatabaseError | None = None) -> ApplyResult:
        """Apply one migration exactly once, or raise `errors.MigrationFailed` with nothing recorded.

        ``first_failure``: its one-round-trip send (in a batch) already failed with this error.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            lock_timeout_s = classify.raised_lock_timeout_s(self.settings.lock_timeout_s, attempt)
            try:
                # The fast path only on the first attempt: after any failure, savepoints
                # name the exact statement (and its table's blockers) on every retry.
                # The `applied` event travels inside the migration's own transaction.
                result = await self._attempt(
                    m, lock_timeout_s=lock_timeout_s, attempt=attempt,
                    first_failure=first_failure if attempt == 1 else None,
                )
                result.attempts = attempt
                return result
            except errors.LockLost as exc:
                # On record for `status` and the operator: this attempt stopped, nothing committed.
                await self.ledger.event_quietly(
                    self.work, kind="migration", subject=m.name, version=m.version, outcome="failed",
                    sqlstate=FENCE_SQLSTATE, message=exc.message, attempt=attempt, detail={"reason": "lock_lost"},
                )
                raise
            except _Retryable as r:
                elapsed = time.monotonic() - started
                delay = classify.backoff_s(attempt, base_s=self.settings.retry_backoff_s, jitter=random.random())
                exhausted = attempt >= self.settings.retry_max_attempts or elapsed + delay > self.settings.retry_budget_s
                blockers = await self._blockers(r.stmt, lock_timeout_s) if r.outcome is Outcome.LOCK_TIMEOUT else []
                if r.outcome is Outcome.LOCK_TIMEOUT:
                    self.hooks.lock_timeout_retry()
                line, col = (r.stmt.line, r.stmt.col) if r.stmt else (1, 1)
                log.warning(
                    "migration attempt failed, %s",
                    "giving up" if exhausted else f"retrying in {delay:.2f}s",
                    extra={
                        "event": "migration_retry" if not exhausted else "migration_retry_exhausted",
                        "version": m.version, "migration": m.name, "sqlstate": r.err.sqlstate,
                        "attempt": attempt, "lock_timeout_s": round(lock_timeout_s, 3),
                        "blockers": _describe_blockers(blockers), "position": f"{m.path}:{line}:{col}",
                    },
                )
                await self.ledger.event_quietly(
                    self.work, kind="migration", subject=m.name, version=m.version,
                    outcome="failed" if exhausted else "retry", sqlstate=r.err.sqlstate, message=r.err.message,
                    attempt=attempt, detail={"blockers": blockers, "path": m.path, "line": line, "col": col},
                )
                if exhausted:
                    reason = classify.FAILURE_REASONS[r.outcome]
                    raise errors.MigrationFailed(
                        f"migration {m.name} failed after {attempt} attempt(s) in {elapsed:.1f}s at "
                        f"{m.path}:{line}:{col}: SQLSTATE {r.err.sqlstate}: {r.err.message}"
                        f"{'; blocked by ' + _describe_blockers(blockers) if blockers else ''}; "
                        f"{_nothing_recorded(m)}",
                        version=m.version, name=m.name, path=m.path, line=line, col=col,
                        sqlstate=r.err.sqlstate, reason=reason,
                    ) from None
                await anyio.sleep(delay)

    # ------------------------------------------------------------------ attempts

    async def _attempt(
        self, m: Migration, *, lock_timeout_s: float, attempt: int, first_failure: errors.DatabaseError | None
    ) -> ApplyResult:
        try:
            if not m.transactional:
                return await self._run_autocommit(m, lock_timeout_s, attempt)
            if first_failure is not None:
                self._fast_path_failed(m, first_failure)
                return await self._run_savepoints(m, lock_timeout_s, attempt)
            if self.settings.fast_path and attempt == 1:
                one_trip = await self._run_fast(m, lock_timeout_s)
                if one_trip is not None:
                    return one_trip
            return await self._run_savepoints(m, lock_timeout_s, attempt)
        except errors.ConnectionLost as exc:
            return await self._after_connection_loss(m, exc)

    async def _after_connection_loss(self, m: Migration, exc: errors.ConnectionLost) -> ApplyResult:
        """The work connection died: the lock decides whether we may go on at all."""
        if self._reconnect is None:
            raise exc
        await self._reconnect_work(m.name)
        # A COMMIT may have reached the server before the connection died (its `applied`
        # event committed with it).
        if any(a.version == m.version for a in await self.ledger.applied(self.work)):
            return ApplyResult(
                version=m.version, name=m.name, duration_s=0.0, statements_run=0, attempts=1, applied_by_other=True
            )
        raise _Retryable(Outcome.CONNECTION, exc, None) from None

    async def _reconnect_work(self, in_flight: str) -> None:
        """A new work session after the old one died, or stop. Then the lock decides whether we
        may go on: `lock.fence` raises LockLost if it went with the connection (a server
        restart ends both; which of the two is noticed first is a race)."""
        assert self._reconnect is not None
        try:
            self.work = await self._reconnect()
        except errors.DatabaseError as exc:  # e.g. 57P03: the server is still shutting down
            raise errors.ConnectionLost(
                f"the connection was lost while applying {in_flight}, and the database cannot be reached "
                f"again ({exc.message}): whether it committed cannot be told from here; `schemad status` "
                "shows it, and a rerun continues from there",
                sqlstate=exc.sqlstate,
            ) from None
        await self.lock.fence(self.work)

    async def _ready_functions(self) -> None:
        """Create the batch functions (queries.BATCH_FUNCTIONS) on the work session: once per
        session, so again after a reconnect, before any message that calls them. Without the
        TEMPORARY privilege the same steps travel as SQL (DO-block fences, INSERTs)."""
        if self._functions_on is self.work:
            return
        try:
            await self.work.execute(self.ledger.sql(queries.BATCH_FUNCTIONS))
            self._functions = True
        except errors.ConnectionLost:
            raise
        except errors.DatabaseError as exc:
            log.info("batch functions unavailable, sending their SQL instead",
                     extra={"event": "batch_functions_unavailable", "sqlstate": exc.sqlstate})
            self._functions = False
        self._functions_on = self.work

    def _one_trip(self, m: Migration, lock_timeout_s: float, *, functions: bool) -> list[str]:
        """One migration as one transaction of statements to send together, calling the batch
        functions or (``functions`` false) sending their SQL."""
        s = self.settings
        lock_timeout = _ms(max(lock_timeout_s, m.directives.lock_timeout_s or 0))
        statement_timeout = _ms(m.directives.statement_timeout_s or s.statement_timeout_s)
        if functions:
            token = int(self.lock.token or 0)
            return [
                "BEGIN",
                f"SELECT pg_temp.schemad_begin({token}, '{lock_timeout}ms', '{statement_timeout}ms')",
                *(st.text for st in m.statements),
                # Fences again before the ledger row: if the lock went while the statements ran
                # (a slow migration, a killed lock connection), nothing of them may commit.
                (
                    f"SELECT pg_temp.schemad_record({token}, {int(m.version)}, {db.quote_literal(m.name)}, "
                    f"{db.quote_literal(m.checksum)}, {db.quote_literal(db.HOSTNAME)}, {os.getpid()}, "
                    f"{len(m.statements)})"
                ),
                "COMMIT",
            ]
        # As SET LOCAL, and the start time for the ledger row: in a batch, now() and
        # statement_timestamp() are the batch's, not this migration's.
        settings = (
            f"SELECT pg_catalog.set_config('lock_timeout', '{lock_timeout}ms', true), "
            f"pg_catalog.set_config('statement_timeout', '{statement_timeout}ms', true), "
            f"pg_catalog.set_config('{_STARTED}', pg_catalog.clock_timestamp()::text, true)"
        )
        return [
            "BEGIN",
            settings,
            self.lock.fence_sql(),
            *(st.text for st in m.statements),
            self.lock.fence_sql(),  # as in schemad_record
            self._ledger_insert_sql(m, tolerated=0),
            self._applied_event_sql(m),
            "COMMIT",
        ]

    async def _run_fast(self, m: Migration, lock_timeout_s: float) -> ApplyResult | None:
        """One round trip; None when it failed in a way the savepoint path must classify."""
        started = time.monotonic()
        await self._ready_functions()
        try:
            # Newlines around each statement: a trailing "-- comment" must not swallow the next one.
            await self.work.execute("\n;\n".join(self._one_trip(m, lock_timeout_s, functions=self._functions)))
        except errors.ConnectionLost:
            raise
        except errors.DatabaseError as exc:
            await self._rollback()
            self._fast_path_failed(m, exc)
            return None
        return ApplyResult(
            version=m.version, name=m.name, duration_s=time.monotonic() - started,
            statements_run=len(m.statements), attempts=1, fast_path=True,
        )

    def _fast_path_failed(self, m: Migration, exc: errors.DatabaseError) -> None:
        """After a failed (and rolled back) one-round-trip send: raise what ends or retries
        the attempt, or return for the savepoint path to find the statement."""
        if exc.sqlstate == FENCE_SQLSTATE:
            raise errors.LockLost(
                f"the migration lock was lost while applying {m.name}; nothing of {m.name} was recorded"
            ) from None
        if isinstance(exc, errors.ConnectionLost):  # reconnected and fenced already (`apply_batch`)
            raise _Retryable(Outcome.CONNECTION, exc, None) from None
        outcome = classify.classify(exc.sqlstate, strict=self.settings.strict)
        if outcome in (Outcome.RETRY, Outcome.LOCK_TIMEOUT):
            raise _Retryable(outcome, exc, None) from None

    async def _run_savepoints(self, m: Migration, lock_timeout_s: float, attempt: int) -> ApplyResult:
        s = self.settings
        w = self.work
        started = time.monotonic()
        tolerated: list[Tolerated] = []
        lt = max(lock_timeout_s, m.directives.lock_timeout_s or 0)
        await w.execute("BEGIN")
        try:
            await w.execute(
                f"SET LOCAL lock_timeout = '{_ms(lt)}ms';"
                f"SET LOCAL statement_timeout = '{_ms(m.directives.statement_timeout_s or s.statement_timeout_s)}ms'"
            )
            await self.lock.fence(w)
            for st in m.statements:
                try:
                    await w.execute(f"SAVEPOINT {_SAVEPOINT};\n{st.text}\n;\nRELEASE SAVEPOINT {_SAVEPOINT}")
                except errors.ConnectionLost:
                    raise
                except errors.DatabaseError as exc:
                    outcome = classify.classify(exc.sqlstate, strict=s.strict)
                    if outcome is Outcome.TOLERATED:
                        await w.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
                        tolerated.append(Tolerated(exc.sqlstate or "", st.line, st.col, exc.message))
                        self.hooks.tolerated(exc.sqlstate or "")
                        log.warning(
                            "tolerated: %s", exc.message,
                            extra={"event": "statement_tolerated", "version": m.version, "sqlstate": exc.sqlstate,
                                   "position": f"{m.path}:{st.line}:{st.col}"},
                        )
                        continue
                    await self._rollback()
                    if outcome in (Outcome.RETRY, Outcome.LOCK_TIMEOUT):
                        raise _Retryable(outcome, exc, st) from None
                    await self._fatal(m, st, exc)
            duration = time.monotonic() - started
            await self._record_and_commit(m, duration, attempt, tolerated, transactional=True)
        except BaseException:
            if not w.is_closed():
                await self._rollback()
            raise
        return ApplyResult(
            version=m.version, name=m.name, duration_s=duration, statements_run=len(m.statements),
            attempts=1, tolerated=tolerated,
        )

    async def _record_and_commit(
        self, m: Migration, duration: float, attempt: int, tolerated: list[Tolerated], *, transactional: bool
    ) -> None:
        """The end of every recorded migration: fence, ledger row, applied event, COMMIT."""
        w = self.work
        await self.lock.fence(w)
        await w.execute(
            self.ledger.sql(queries.INSERT_MIGRATION), m.version, m.name, m.checksum, duration, db.HOSTNAME,
            os.getpid(), len(m.statements), len(tolerated), transactional,
        )
        await self._record_applied(m, duration, attempt, tolerated, fast_path=False)
        await w.execute("COMMIT")

    async def _run_autocommit(self, m: Migration, lock_timeout_s: float, attempt: int) -> ApplyResult:
        """`-- schemad:no-transaction`: statement by statement; recorded only when all succeed."""
        s = self.settings
        w = self.work
        started = time.monotonic()
        tolerated: list[Tolerated] = []
        lt = max(lock_timeout_s, m.directives.lock_timeout_s or 0)
        await w.execute(
            f"SET lock_timeout = '{_ms(lt)}ms';"
            f"SET statement_timeout = '{_ms(m.directives.statement_timeout_s or s.statement_timeout_s)}ms'"
        )
        try:
            for st in m.statements:
                await self.lock.fence(w)
                try:
                    await w.execute(st.text)
                except errors.ConnectionLost:
                    raise
                except errors.DatabaseError as exc:
                    outcome = classify.classify(exc.sqlstate, strict=s.strict)
                    if outcome is Outcome.TOLERATED:
                        tolerated.append(Tolerated(exc.sqlstate or "", st.line, st.col, exc.message))
                        self.hooks.tolerated(exc.sqlstate or "")
                        continue
                    if outcome in (Outcome.RETRY, Outcome.LOCK_TIMEOUT):
                        raise _Retryable(outcome, exc, st) from None
                    await self._fatal(m, st, exc)
            duration = time.monotonic() - started
            await w.execute("BEGIN")
            try:
                await self._record_and_commit(m, duration, attempt, tolerated, transactional=False)
            except BaseException:
                if not w.is_closed():
                    await self._rollback()
                raise
        finally:
            if not w.is_closed():
                with anyio.CancelScope(shield=True):
                    await w.execute("RESET lock_timeout; RESET statement_timeout")
        return ApplyResult(
            version=m.version, name=m.name, duration_s=duration, statements_run=len(m.statements),
            attempts=1, tolerated=tolerated,
        )

    # ------------------------------------------------------------------ helpers

    async def _fatal(self, m: Migration, st: MigrationStatement, exc: errors.DatabaseError) -> None:
        await self.ledger.event_quietly(
            self.work, kind="migration", subject=m.name, version=m.version, outcome="failed",
            sqlstate=exc.sqlstate, message=exc.message,
            detail={"path": m.path, "line": st.line, "col": st.col, "statement": st.index + 1},
        )
        raise errors.MigrationFailed(
            f"migration {m.name} failed at {m.path}:{st.line}:{st.col} (statement {st.index + 1}): "
            f"SQLSTATE {exc.sqlstate}: {exc.message}; {_nothing_recorded(m)}",
            version=m.version, name=m.name, path=m.path, line=st.line, col=st.col,
            sqlstate=exc.sqlstate, reason="sql_error",
        ) from exc

    async def _rollback(self) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.work.execute("ROLLBACK")
        except errors.SchemadError:
            pass

    async def _record_applied(
        self, m: Migration, duration_s: float, attempt: int, tolerated: list[Tolerated], *, fast_path: bool
    ) -> None:
        """The `applied` event, inside the migration's transaction (before its COMMIT)."""
        await self.ledger.event(
            self.work, kind="migration", subject=m.name, version=m.version, outcome="applied",
            duration_s=duration_s, attempt=attempt,
            detail={"tolerated": [t.sqlstate for t in tolerated], "fast_path": fast_path},
        )

    def _applied_event_sql(self, m: Migration) -> str:
        """`_record_applied` for the one-round-trip send: first attempt, nothing tolerated."""
        return self.ledger.sql(
            "INSERT INTO {schema}.events (kind, subject, version, outcome, duration_s, attempt, host, pid, detail) "
            f"VALUES ('migration', {db.quote_literal(m.name)}, {int(m.version)}, 'applied', {_ELAPSED_S}, 1, "
            f"{db.quote_literal(db.HOSTNAME)}, {os.getpid()}, "
            """'{"tolerated": [], "fast_path": true}')"""
        )

    def _ledger_insert_sql(self, m: Migration, *, tolerated: int) -> str:
        # Every value is ours: an int, a [a-z0-9_] name, a hex checksum, the host name quoted.
        return self.ledger.sql(
            "INSERT INTO {schema}.migrations (version, name, checksum, applied_at, duration_s, applied_by_host, "
            "applied_by_pid, statements_run, statements_tolerated, transactional) VALUES ("
            f"{int(m.version)}, {db.quote_literal(m.name)}, {db.quote_literal(m.checksum)}, "
            f"pg_catalog.current_setting('{_STARTED}')::pg_catalog.timestamptz, {_ELAPSED_S}, "
            f"{db.quote_literal(db.HOSTNAME)}, {os.getpid()}, {len(m.statements)}, {tolerated}, true)"
        )

    async def _blockers(self, st: MigrationStatement | None, lock_timeout_s: float) -> list[dict[str, Any]]:
        """Who held the lock we waited for: sessions holding locks on the statement's table,
        or else transactions open longer than the lock timeout."""
        try:
            rows: list[dict[str, Any]] = []
            if st is not None and st.stmt.relation:
                rows = await self.work.fetch(queries.BLOCKERS_OF_RELATION, st.stmt.relation)
            if not rows:
                rows = await self.work.fetch(queries.LONG_TRANSACTIONS, lock_timeout_s)
        except errors.SchemadError:
            return []
        return [
            {"pid": r["pid"], "state": r["state"], "application_name": r["application_name"],
             "age_s": round(float(r["age_s"] or 0), 1), "query": r["query"]}
            for r in rows
        ]


def _describe_blockers(blockers: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"pid {b['pid']} ({b['application_name'] or '?'}, {b['state']}, {b['age_s']}s)" for b in blockers
    ) or "none found"


def _nothing_recorded(m: Migration) -> str:
    if m.transactional:
        return f"nothing of {m.name} was applied or recorded"
    return (
        f"{m.name} is a no-transaction migration: it was not recorded, and the whole file runs again next time"
    )
