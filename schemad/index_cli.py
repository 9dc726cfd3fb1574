"""`schemad build-indexes` and the index section of `schemad status`.

On a terminal each index gets a live progress bar (rich); otherwise plain log lines.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import anyio

from schemad import catalog, errors, index_builder, index_plan, indexes, queries, redact, throttle, validation
from schemad.ledger import Ledger
from schemad.sqlparser import quote_ident

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from schemad.config import Settings
    from schemad.db import Session

log = logging.getLogger("schemad.indexes")

EXIT_OK = 0
EXIT_FAILED = 1


def _out(text: str = "") -> None:
    sys.stdout.write(redact.scrub(text) + "\n")


# --------------------------------------------------------------------------- progress display


class LogHooks(index_builder.NoHooks):
    """Plain log lines: state changes, and progress at each phase change."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._phases: dict[str, str | None] = {}

    def set_index_state(self, index: str, state: index_plan.State) -> None:
        if self._states.get(index) != state:
            self._states[index] = state
            log.info("%s: %s", index, state, extra={"event": "index_state", "index": index, "state": state})

    def build_progress(self, index: str, progress: catalog.Progress) -> None:
        if self._phases.get(index) == progress.phase:
            return
        self._phases[index] = progress.phase
        log.info(
            "%s: %s (%.0f%%)", index, progress.phase, progress.ratio * 100,
            extra={"event": "index_progress", "index": index, "phase": progress.phase,
                   "blocks_done": progress.blocks_done, "blocks_total": progress.blocks_total,
                   "tuples_done": progress.tuples_done, "tuples_total": progress.tuples_total,
                   "lockers_done": progress.lockers_done, "lockers_total": progress.lockers_total,
                   "current_locker_pid": progress.current_locker_pid},
        )

    def set_throttle_paused(self, signal: throttle.Signal, paused: bool) -> None:
        log.info("admission %s (%s)", "paused" if paused else "resumed", signal,
                 extra={"event": "index_throttle", "signal": signal, "paused": paused})


class RichHooks(index_builder.NoHooks):
    """One live progress bar per index (on a terminal)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._tasks: dict[str, TaskID] = {}

    def _task(self, index: str) -> TaskID:
        if index not in self._tasks:
            # The clock starts when the build does, not when the index is first seen.
            self._tasks[index] = self.progress.add_task(index, total=100, status="", start=False)
        return self._tasks[index]

    def set_index_state(self, index: str, state: index_plan.State) -> None:
        task = self._task(index)
        if state == "building":
            self.progress.start_task(task)
        done = 100 if state in ("valid", "failed", "drift") else None
        self.progress.update(task, status=state, completed=done)

    def set_index_progress(self, index: str, ratio: float) -> None:
        self.progress.update(self._task(index), completed=ratio * 100)

    def build_progress(self, index: str, progress: catalog.Progress) -> None:
        lockers = f" lockers {progress.lockers_done}/{progress.lockers_total}" if progress.lockers_total else ""
        self.progress.update(self._task(index), completed=progress.ratio * 100, status=f"{progress.phase}{lockers}")


def build_indexes(settings: Settings, *, dry_run: bool, wait: bool) -> int:
    val = validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    if not val.ok:
        raise errors.ValidationFailed(val.findings)

    def go(hooks: index_builder.Hooks) -> index_builder.Report:
        return anyio.run(
            lambda: index_builder.reconcile(settings, val, hooks=hooks, wait=wait, dry_run=dry_run), backend="asyncio"
        )

    try:
        report = _with_bars(go) if sys.stderr.isatty() and not dry_run else go(LogHooks())
    except errors.ConnectionLost as exc:
        raise errors.ConnectionLost(
            f"lost the connection to PostgreSQL while reconciling indexes ({exc.message}); a concurrent build "
            "it interrupted leaves an invalid index, which the next run drops and builds again",
            sqlstate=exc.sqlstate,
        ) from None
    _print_report(report)
    return EXIT_FAILED if report.failed else EXIT_OK


def _with_bars(go: Any) -> index_builder.Report:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bars = Progress(
        TextColumn("{task.description:<40}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console,
    )
    handlers = logging.getLogger("schemad").handlers
    with bars:
        # Log lines go through rich's redirected stderr so they print above the bars.
        saved = [(h, h.setStream(sys.stderr)) for h in handlers if isinstance(h, logging.StreamHandler)]
        try:
            report: index_builder.Report = go(RichHooks(bars))
        finally:
            for h, stream in saved:
                if stream is not None:
                    h.setStream(stream)
    return report


def _print_report(report: index_builder.Report) -> None:
    if report.dry_run:
        for line in report.plan:
            _out(f"would: {line}")
        return
    for r in report.results:
        line = f"{r.name:<44} {r.state:<9}"
        if r.actions:
            line += " " + ", ".join(r.actions)
        if r.state == "failed" and r.error:
            line += f"  SQLSTATE {r.sqlstate}: {r.error}"
        if r.state == "drift" and r.drift:
            line += f"  {r.drift}"
        if r.detail and r.state not in ("valid", "failed"):
            line += f"  ({r.detail})"
        _out(line)
    if not report.progress_visible:
        _out("note: this role lacks pg_read_all_stats: other roles' builds are only seen through pg_locks")


# --------------------------------------------------------------------------- status


async def index_status(
    settings: Settings, session: Session, specs: list[indexes.IndexSpec] | None = None
) -> list[dict[str, Any]]:
    """The `indexes` section of `schemad status`: state, progress, attempts, last error, drift."""
    if specs is None:
        specs, _ = indexes.discover(settings.indexes_dir)
    visible = await catalog.progress_visible(session)
    observer = catalog.Observer(
        session, our_pids={session.server_pid}, visible=visible, lock_timeout_s=settings.lock_timeout_s
    )
    ledger = Ledger(settings.ledger_schema)
    builds: dict[str, dict[str, Any]] = {}
    if await session.fetchval(queries.LEDGER_EXISTS, f"{quote_ident(settings.ledger_schema)}.index_builds"):
        builds = {r["name"]: r for r in await session.fetch(ledger.sql(catalog.INDEX_BUILDS))}
    out: list[dict[str, Any]] = []
    for spec in specs:
        o = await observer.observe(spec)
        action = index_plan.next_step(o, replace_drifted=False)
        row = builds.get(o.spec.name, {})
        state = index_plan.state_of(action)
        if state == "absent" and row.get("last_outcome") == "failed":
            state = "failed"
        progress: dict[str, Any] | None = None
        if isinstance(action, index_plan.WaitForOtherBuilder):
            p = await catalog.progress_of_index(session, action.index.oid)
            progress = p.as_dict() if p is not None else {"phase": action.builder.phase}
            progress["pid"] = action.builder.pid
            progress["application_name"] = action.builder.application_name
        out.append({
            "name": o.spec.name,
            "table": o.spec.qualified_table,
            "critical": o.spec.critical,
            "state": state,
            "progress": progress,
            "attempts": int(row.get("attempts") or 0),
            "last_outcome": row.get("last_outcome"),
            "last_sqlstate": row.get("last_sqlstate"),
            "last_error": row.get("last_error"),
            "last_attempt_at": _iso(row.get("last_attempt_at")),
            "built_at": _iso(row.get("built_at")),
            "drift": action.reason if isinstance(action, index_plan.Drifted) else None,
        })
    return out


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def render_status_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"{'index':<44} {'state':<9} {'attempts':>8}  detail"]
    for r in rows:
        detail = ""
        if r["progress"]:
            p = r["progress"]
            detail = f"{p.get('phase')} {100 * float(p.get('ratio') or 0):.0f}% (pid {p.get('pid')})"
        elif r["drift"]:
            detail = f"drift: {r['drift']}"
        elif r["state"] != "valid" and r["last_error"]:
            detail = f"SQLSTATE {r['last_sqlstate']}: {r['last_error']}"
        crit = "*" if r["critical"] else " "
        lines.append(f"{crit}{r['name']:<43} {r['state']:<9} {r['attempts']:>8}  {detail}".rstrip())
    return lines
