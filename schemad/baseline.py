"""`schemad baseline --version N`: record migrations 1..N as applied without running them.

For a database another tool already migrated. `decide` is the pure part: it refuses (and
nothing changes) when the ledger already holds versions above N, when a migration file at or
below N is missing, or when a recorded checksum disagrees with today's file. The shell takes
the migration lock, decides again under it, and writes the ledger rows (``baselined = true``,
checksums from the files) and one event row saying who baselined and when, in one transaction.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from schemad import db, engine, errors, lock, validation
from schemad.ledger import Ledger

if TYPE_CHECKING:
    from schemad.config import Settings
    from schemad.migrations import Migration
    from schemad.plan import Applied

INSERT_BASELINED = """
INSERT INTO {schema}.migrations
    (version, name, checksum, duration_s, applied_by_host, applied_by_pid,
     statements_run, statements_tolerated, transactional, baselined)
VALUES ($1, $2, $3, 0, $4, $5, 0, 0, $6, true)
"""
CURRENT_USER = "SELECT current_user::text"


class Refused(errors.SchemadError):
    """The baseline would not be safe; nothing was changed (exit 3)."""

    def __init__(self, version: int, reasons: list[str]) -> None:
        super().__init__(f"baseline at version {version} refused: " + "; ".join(reasons) + "; nothing was changed")
        self.version = version
        self.reasons = reasons


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselinePlan:
    version: int
    record: tuple[Migration, ...]  # to write as applied, in version order
    already: tuple[Applied, ...]  # at or below N and already in the ledger, checksums matching


def _versions(vs: list[int]) -> str:
    shown = ", ".join(str(v) for v in vs[:10])
    return shown + (f" and {len(vs) - 10} more" if len(vs) > 10 else "")


def decide(files: list[Migration], applied: list[Applied], version: int, *, allow_gaps: bool = False) -> BaselinePlan:
    """What a baseline at ``version`` records; raises `Refused` with every reason it is unsafe."""
    if version < 1:
        raise Refused(version, ["the version must be 1 or more"])
    by_file = {m.version: m for m in files}
    by_ledger = {a.version: a for a in applied}
    reasons: list[str] = []
    above = sorted(v for v in by_ledger if v > version)
    if above:
        reasons.append(
            f"the ledger already records version(s) {_versions(above)} above {version}: a baseline only marks "
            "history that schemad never ran (use `schemad status` to see what is applied)"
        )
    if version not in by_file:
        top = max(by_file, default=0)
        reasons.append(
            f"no migration file has version {version} (the files go up to {top})" if top else "there are no migration files"
        )
    missing = [] if allow_gaps else [v for v in range(1, version) if v not in by_file]
    if missing:
        reasons.append(
            f"no migration file for version(s) {_versions(missing)} at or below {version}: restore them, or pass "
            "--allow-gaps if the numbering skips them on purpose"
        )
    unknown = sorted(v for v in by_ledger if v <= version and v not in by_file)
    if unknown and allow_gaps:
        reasons.append(f"the ledger records version(s) {_versions(unknown)} that no file has")
    changed = sorted(
        v for v, a in by_ledger.items() if v <= version and v in by_file and by_file[v].checksum != a.checksum
    )
    if changed:
        reasons.append(
            f"version(s) {_versions(changed)} are already recorded with a different checksum than the file's "
            "(a changed migration: restore the file)"
        )
    if reasons:
        raise Refused(version, reasons)
    return BaselinePlan(
        version=version,
        record=tuple(m for m in sorted(files, key=lambda m: m.version) if m.version <= version and m.version not in by_ledger),
        already=tuple(sorted((a for a in applied if a.version <= version), key=lambda a: a.version)),
    )


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


async def baseline(
    settings: Settings, val: validation.Validation, *, version: int, dry_run: bool, allow_gaps: bool = False,
    lock_wait_s: float | None = None,
) -> BaselinePlan:
    """Decide, then (unless ``dry_run`` or nothing to record) write the rows under the migration lock."""
    if not val.ok:
        raise errors.ValidationFailed(val.findings)
    ledger = Ledger(settings.ledger_schema)
    work = await db.connect(settings, "baseline")
    try:
        await lock.refuse_proxy(work, allow=settings.allow_proxy)
        # Decide before anything is created: a refusal leaves even a missing ledger missing.
        p = decide(val.migrations, await ledger.applied(work), version, allow_gaps=allow_gaps)
        if dry_run or not p.record:
            return p
        ns = await engine.namespace(settings, work)
        lock_conn = await db.connect(settings, "lock")
        try:
            await lock.refuse_proxy(lock_conn, allow=settings.allow_proxy)
            lk = lock.AdvisoryLock(lock_conn, lock.lock_key(ns, "migrations"), name="migration")
            await lk.acquire(wait_s=settings.lock_wait_s if lock_wait_s is None else lock_wait_s,
                             poll_s=settings.lock_poll_s)
            try:
                # Again under the lock: another replica may have migrated while we waited.
                p = decide(val.migrations, await ledger.applied(work), version, allow_gaps=allow_gaps)
                if p.record:
                    await ledger.ensure(work)
                    await _record(work, ledger, lk, p)
            finally:
                await lk.release()
        finally:
            await lock_conn.close()
        return p
    finally:
        await work.close()


async def _record(work: db.Session, ledger: Ledger, lk: lock.AdvisoryLock, p: BaselinePlan) -> None:
    db_user = str(await work.fetchval(CURRENT_USER))
    await work.execute("BEGIN")
    try:
        await lk.fence(work)
        await work.executemany(
            ledger.sql(INSERT_BASELINED),
            [(m.version, m.name, m.checksum, db.HOSTNAME, os.getpid(), m.transactional) for m in p.record],
        )
        versions = [m.version for m in p.record]
        await ledger.event(
            work, kind="baseline", subject=f"baseline to {p.version}", version=p.version, outcome="baselined",
            message=(
                f"{len(versions)} migration(s) recorded as applied without running them, by {_who()} "
                f"(database user {db_user}) on {db.HOSTNAME}"
            ),
            detail={"versions": versions, "os_user": _who(), "db_user": db_user,
                    "already_recorded": [a.version for a in p.already]},
        )
        await work.execute("COMMIT")
    except BaseException:
        if not work.is_closed():
            try:
                await work.execute("ROLLBACK")
            except errors.SchemadError:
                pass
        raise


def render(p: BaselinePlan, *, dry_run: bool) -> list[str]:
    if not p.record:
        return [f"nothing to do: versions up to {p.version} are already in the ledger"]
    verb = "would record" if dry_run else "recorded"
    lines = [f"{verb} {m.name} as applied (checksum {m.checksum[:12]}, from {m.path})" for m in p.record]
    if p.already:
        lines.append(f"already in the ledger: {_versions([a.version for a in p.already])}")
    lines.append(
        f"{'would baseline' if dry_run else 'baselined'} at version {p.version}: {len(p.record)} migration(s) "
        f"{'would be' if dry_run else 'were'} recorded without running them"
    )
    return lines


def run(settings: Settings, *, version: int, dry_run: bool, allow_gaps: bool) -> list[str]:
    """The whole command; raises `Refused` (exit 3) when the baseline is unsafe."""
    val = validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    p = anyio.run(
        lambda: baseline(settings, val, version=version, dry_run=dry_run, allow_gaps=allow_gaps), backend="asyncio"
    )
    return render(p, dry_run=dry_run)
