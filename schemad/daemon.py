"""`schemad run`: one anyio task-group tree; signals handled here and nowhere else.

Triggers (start, SIGHUP, file changes, LISTEN/NOTIFY from the applying replica, the
periodic interval) all set one wake-up event. Each cycle validates the files, takes the
migration lock only if something is pending, applies, releases, notifies; index
reconciliation runs in the background under its own lock. A failed cycle is reported
(metrics, /readyz, STATUS=) and retried on the next trigger: the daemon never crash-loops
on a bad migration. SIGTERM/SIGINT cancel everything (cleanup shielded and time-limited)
and exit 0; a second SIGINT exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry

from schemad import commands, db, engine, errors, http, metrics, redact, sdnotify, validation

if TYPE_CHECKING:
    from collections.abc import Callable

    from schemad.config import Settings

log = logging.getLogger("schemad.daemon")

FAILURE_BACKOFF_MAX_S = 30.0
LISTEN_RETRY_S = 2.0
_REASONS: dict[type[errors.SchemadError], metrics.FailureReason] = {
    errors.ValidationFailed: "validation",
    errors.LockLost: "lock_lost",
    errors.ProxyDetected: "proxy_detected",
    errors.ConnectionLost: "connection",
    errors.DatabaseError: "connection",
}


class Wake:
    """A re-armable wake-up: any trigger sets it, the main loop clears it."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.reasons: list[str] = []

    def set(self, reason: str) -> None:
        self.reasons.append(reason)
        self._event.set()

    async def wait(self, timeout_s: float) -> list[str]:
        with anyio.move_on_after(timeout_s):
            await self._event.wait()
        reasons, self.reasons = self.reasons or ["interval"], []
        self._event = anyio.Event()
        return reasons


@dataclass(slots=True)
class State:
    """What the HTTP handlers read: kept in memory, never fetched per request."""

    ready: bool = False
    status: dict[str, Any] = field(default_factory=lambda: {"state": "starting"})
    last_error: str | None = None
    sent_ready: bool = False
    failures_in_row: int = 0


class MetricsHooks:
    """Executor hooks → Prometheus."""

    def __init__(self, m: metrics.Metrics) -> None:
        self.m = m

    def tolerated(self, sqlstate: str) -> None:
        self.m.statement_tolerated(sqlstate)

    def lock_timeout_retry(self) -> None:
        self.m.lock_timeout_retry()


def _reason(exc: errors.SchemadError) -> metrics.FailureReason:
    if isinstance(exc, errors.MigrationFailed):
        return "timeout" if exc.sqlstate == "57014" else ("lock_timeout" if exc.reason == "lock_timeout" else (
            "connection" if exc.reason == "connection" else "sql_error"))
    if isinstance(exc, errors.ValidationFailed) and all(f.code == "E130" for f in exc.findings if f.is_error):
        return "checksum_mismatch"
    for cls, reason in _REASONS.items():
        if isinstance(exc, cls):
            return reason
    return "sql_error"


class Daemon:
    def __init__(self, load_settings: Callable[[], Settings], *, registry: CollectorRegistry | None = None) -> None:
        self._load = load_settings
        self.settings = load_settings()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = metrics.Metrics(self.registry)
        self.state = State()
        self.wake = Wake()
        self.index_wake = Wake()
        self.index_retry_after: dict[str, float] = {}  # failed index → monotonic time to retry
        self.on_ready: Callable[[], None] | None = None
        # Run before a forced exit (second SIGINT): only quick, synchronous cleanup.
        self.on_force_exit: Callable[[], None] | None = None
        self.bound: tuple[str, int] | None = None

    # ------------------------------------------------------------------ tree

    async def run(self) -> None:
        async with anyio.create_task_group() as root:
            work = anyio.CancelScope()
            root.start_soon(self._signals, work)
            with work:
                async with anyio.create_task_group() as tg:
                    app = http.App(self.registry, ready=lambda: self.state.ready, status=lambda: self.state.status)
                    self.bound = await tg.start(http.serve, app, self.settings.metrics_addr)
                    tg.start_soon(self._watchdog)
                    tg.start_soon(self._listen)
                    if self.settings.watch:
                        tg.start_soon(self._watch_files)
                    tg.start_soon(self._index_loop)
                    await self._main_loop()
            sdnotify.stopping("schemad stopping")
            root.cancel_scope.cancel()
        log.info("stopped", extra={"event": "daemon_stopped"})

    async def _signals(self, work: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            stopping = False
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                    self.index_retry_after.clear()
                    self.wake.set("sighup")
                    continue
                if stopping and signum == signal.SIGINT:
                    log.warning("second SIGINT: exiting at once", extra={"event": "daemon_forced_exit"})
                    if self.on_force_exit is not None:
                        self.on_force_exit()
                    os._exit(130)
                stopping = True
                log.info("%s: shutting down", signal.Signals(signum).name, extra={"event": "daemon_stopping"})
                sdnotify.stopping("schemad stopping")
                work.cancel()

    def _reload(self) -> None:
        try:
            new = self._load()
        except errors.ConfigError as exc:
            log.error("reload failed, keeping the old configuration: %s", exc.message,
                      extra={"event": "reload_failed"})
            return
        if new.metrics_addr != self.settings.metrics_addr:
            log.warning("metrics_addr changes need a restart", extra={"event": "reload_partial"})
            new = new.model_copy(update={"metrics_addr": self.settings.metrics_addr})
        self.settings = new
        log.info("configuration reloaded", extra={"event": "reloaded"})

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            sdnotify.watchdog()
            await anyio.sleep(interval)

    # ------------------------------------------------------------------ triggers

    async def _listen(self) -> None:
        """LISTEN on the notify channel so waiting replicas wake the moment one applies."""
        while True:
            try:
                session = await db.connect(self.settings, "listen")
            except errors.SchemadError:
                await anyio.sleep(LISTEN_RETRY_S)
                continue
            lost = anyio.Event()
            session.on_termination(lost.set)
            try:
                await session.add_listener(self.settings.notify_channel, self._on_notify)
                await lost.wait()
            except errors.SchemadError:
                pass
            finally:
                with anyio.CancelScope(shield=True):
                    await session.close(timeout_s=2.0)
            await anyio.sleep(LISTEN_RETRY_S)

    def _on_notify(self, payload: str) -> None:
        if not payload.endswith(engine.NOTIFY_SENDER):  # our own apply needs no second look
            self.wake.set(f"notify:{payload.split(':')[1] if ':' in payload else payload}")

    async def _watch_files(self) -> None:
        import watchfiles

        paths = [p for p in (self.settings.migrations_dir, self.settings.indexes_dir) if p.exists()]
        async for _changes in watchfiles.awatch(*paths, debounce=200, recursive=False):
            self.index_retry_after.clear()
            self.wake.set("files")

    # ------------------------------------------------------------------ cycles

    async def _main_loop(self) -> None:
        reasons = ["start"]
        while True:
            log.info("cycle", extra={"event": "cycle_start", "triggers": ",".join(sorted(set(reasons)))})
            retry_soon = await self.cycle()
            delay = self.settings.reconcile_interval_s
            if retry_soon:
                delay = min(delay, min(FAILURE_BACKOFF_MAX_S, 2.0 ** self.state.failures_in_row) / 2)
            reasons = await self.wake.wait(delay)

    async def cycle(self) -> bool:
        """One validate → migrate → refresh; returns True when it should be retried soon."""
        s = self.settings
        val = validation.validate(s.migrations_dir, s.indexes_dir, strict=s.strict)
        retry_soon = False
        try:
            report = await engine.migrate(
                s, val, hooks=MetricsHooks(self.metrics), on_lock=self.metrics.set_lock_held, lock_wait_s=0.0
            )
            for r in report.applied:
                self.metrics.migration_applied(r.duration_s)
            self.metrics.run_finished(True)
            self.state.last_error = None
            self.state.failures_in_row = 0
        except errors.LockBusy:
            # Another replica is applying: its NOTIFY (or the short re-poll) wakes us.
            retry_soon = True
        except errors.SchemadError as exc:
            self.state.failures_in_row += 1
            self.metrics.migration_failed(_reason(exc))
            self.metrics.run_finished(False)
            self.state.last_error = redact.scrub(exc.message)
            retry_soon = not isinstance(exc, errors.ValidationFailed | errors.MigrationFailed)
            log.error(
                "cycle failed: %s", self.state.last_error,
                extra={"event": "cycle_failed", "reason": _reason(exc),
                       "sqlstate": getattr(exc, "sqlstate", None), "version": getattr(exc, "version", None)},
            )
        finally:
            self.metrics.set_lock_held(False)
        await self._refresh(val)
        if self.state.ready:
            self.index_wake.set("migrated")
        return retry_soon or (not self.state.ready and self.state.last_error is None)

    async def _refresh(self, val: validation.Validation) -> None:
        try:
            doc = await commands.gather_status(self.settings, checked=val)
        except errors.SchemadError as exc:
            self.state.ready = False
            self.state.status = {"state": "database unavailable", "error": redact.scrub(exc.message)}
            self.metrics.set_ready(False)
            sdnotify.status(f"database unavailable: {redact.scrub(exc.message)}"[:200])
            return
        if self.state.last_error:
            doc["daemon_error"] = self.state.last_error
        critical_ok = True
        if self.settings.require_critical_indexes:
            critical = {i.name for i in val.indexes if i.critical}
            critical_ok = all(
                ix.get("state") == "valid" for ix in doc.get("indexes", []) if ix.get("name") in critical
            )
        ready = bool(doc["up_to_date"]) and val.ok and critical_ok
        self.state.status = doc
        self.state.ready = ready
        self.metrics.set_ready(ready)
        self.metrics.set_pending(len(doc["pending"]))
        self.metrics.set_schema_version(int(doc["schema_version"]))
        summary = _summary(doc, self.state.last_error)
        sdnotify.status(summary)
        if ready and not self.state.sent_ready:
            self.state.sent_ready = True
            sdnotify.ready(summary)
            log.info("ready", extra={"event": "ready", "schema_version": doc["schema_version"]})
            if self.on_ready is not None:
                self.on_ready()

    async def _index_loop(self) -> None:
        failures_in_row = 0
        while True:
            delay = self.settings.reconcile_interval_s
            if failures_in_row:
                # A lost connection (a database restart) must not leave an interrupted build's
                # invalid index waiting a whole interval for its repair: retry with backoff.
                delay = min(delay, min(FAILURE_BACKOFF_MAX_S, 2.0**failures_in_row) / 2)
            await self.index_wake.wait(delay)
            if not self.state.ready and not self.settings.require_critical_indexes:
                continue
            # Imported here, not at the loop's start: on the way to READY=1 it is not needed.
            from schemad import index_builder

            s = self.settings
            val = validation.validate(s.migrations_dir, s.indexes_dir, strict=s.strict)
            if not val.ok:
                continue
            now = time.monotonic()
            # A failed build (duplicates in the data, a bad definition) is not retried every
            # cycle: it waits index_failed_retry_s, or for SIGHUP / a file change.
            specs = [i for i in val.indexes if self.index_retry_after.get(i.name, 0.0) <= now]
            try:
                report = await index_builder.reconcile(s, specs, hooks=index_builder.MetricsHooks(self.metrics))
            except errors.LockBusy:
                log.info("another replica is building indexes", extra={"event": "index_lock_busy"})
            except errors.SchemadError as exc:
                failures_in_row += 1
                log.error("index reconcile failed: %s", redact.scrub(exc.message), extra={"event": "index_cycle_failed"})
            else:
                failures_in_row = 0
                for r in report.failed:
                    self.index_retry_after[r.name] = time.monotonic() + s.index_failed_retry_s
                log.info(
                    "index pass", extra={"event": "index_pass", "indexes": len(specs),
                                         "cooling_down": len(val.indexes) - len(specs), "failed": len(report.failed)},
                )
            await self._refresh(val)


def _summary(doc: dict[str, Any], error: str | None) -> str:
    head = f"schema v{doc['schema_version']}/{doc['head_version']}"
    if error:
        return f"{head}; FAILED: {error}"[:200]
    if doc["pending"]:
        return f"{head}; {len(doc['pending'])} pending"
    idx = doc.get("indexes") or []
    valid = sum(1 for i in idx if i.get("state") == "valid")
    return f"{head}, up to date; indexes {valid}/{len(idx)} valid"


def main(
    settings: Settings,
    *,
    load_settings: Callable[[], Settings] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_force_exit: Callable[[], None] | None = None,
) -> int:
    daemon = Daemon(load_settings or (lambda: settings))
    daemon.on_ready = on_ready
    daemon.on_force_exit = on_force_exit
    started = time.monotonic()
    anyio.run(daemon.run, backend="asyncio")
    log.info("exiting", extra={"event": "daemon_exit", "uptime_s": round(time.monotonic() - started, 1)})
    return 0
