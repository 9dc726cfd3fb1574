"""The database commands behind the CLI: `migrate` and `status`. Thin: they run the engine
and print; the daemon reuses `gather_status` for `/status`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import TYPE_CHECKING, Any

import anyio

from schemad import __version__, db, engine, errors, lock, queries, redact, validation
from schemad.ledger import Ledger

if TYPE_CHECKING:
    from schemad.config import Settings

STATUS_SCHEMA_VERSION = 1


def _out(text: str = "") -> None:
    sys.stdout.write(redact.scrub(text) + "\n")


def _validate(settings: Settings) -> validation.Validation:
    result = validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    if not result.ok:
        raise errors.ValidationFailed(result.findings)
    return result


def migrate(settings: Settings, *, dry_run: bool) -> int:
    val = _validate(settings)
    report = anyio.run(lambda: engine.migrate(settings, val, dry_run=dry_run), backend="asyncio")
    p = report.plan
    for u in p.unknown:
        _out(f"note: version {u.version} ({u.name}) is applied but unknown to these files (a newer release?)")
    if dry_run:
        if not p.pending:
            _out(f"nothing to do: schema at version {p.schema_version}")
        for m in p.pending:
            mode = "transaction" if m.transactional else "no-transaction"
            _out(f"would apply {m.name} ({len(m.statements)} statement(s), {mode}) from {m.path}")
        return 0
    if not report.applied:
        _out(f"nothing to do: schema at version {p.schema_version}")
        return 0
    for r in report.applied:
        extra = f", {len(r.tolerated)} tolerated" if r.tolerated else ""
        extra += f", {r.attempts} attempts" if r.attempts > 1 else ""
        _out(f"applied {r.name} in {r.duration_s * 1000:.1f} ms ({r.statements_run} statement(s){extra})")
    _out(f"schema at version {report.applied[-1].version}")
    return 0


def status(settings: Settings, *, as_json: bool) -> int:
    data = anyio.run(lambda: gather_status(settings), backend="asyncio")
    if as_json:
        _out(json.dumps(data, indent=2, default=_json_default))
    else:
        _out(render_status(data))
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


async def gather_status(
    settings: Settings, *, session: db.Session | None = None, checked: validation.Validation | None = None
) -> dict[str, Any]:
    """The `schemad status --json` document (shape documented in docs/status.md).

    ``checked``: the folders as just validated by the caller (the daemon's cycle), not read again.
    """
    val = checked or validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    own = session is None
    s = session or await db.connect(settings, "status")
    try:
        ledger = Ledger(settings.ledger_schema)
        rows = await ledger.applied_full(s)
        applied = [
            {
                "version": int(r["version"]), "name": r["name"], "applied_at": _iso(r["applied_at"]),
                "duration_s": float(r["duration_s"]), "checksum": r["checksum"],
                "applied_by": f"{r['applied_by_host']}:{r['applied_by_pid']}",
                "statements_run": int(r["statements_run"]), "statements_tolerated": int(r["statements_tolerated"]),
                "transactional": bool(r["transactional"]), "baselined": bool(r["baselined"]),
            }
            for r in rows
        ]
        recorded = {a["version"]: a for a in applied}
        files = {m.version: m for m in val.migrations}
        pending = [
            {"version": m.version, "name": m.name, "path": m.path, "transactional": m.transactional}
            for m in val.migrations
            if m.version not in recorded
        ]
        mismatches = [
            {"version": v, "name": files[v].name, "path": files[v].path,
             "recorded": recorded[v]["checksum"], "current": files[v].checksum}
            for v in sorted(set(files) & set(recorded))
            if files[v].checksum != recorded[v]["checksum"]
        ]
        unknown = [{"version": v, "name": recorded[v]["name"]} for v in sorted(set(recorded) - set(files))]
        ns = await engine.namespace(settings, s)
        holder = await _lock_holder(s, lock.lock_key(ns, "migrations"))
        index_holder = await _lock_holder(s, lock.lock_key(ns, "indexes"))
        failure = await ledger.last_failure(s)
        from schemad import index_cli  # the reconciler's modules: not on `migrate`'s path

        index_rows = await index_cli.index_status(settings, s, val.indexes)
    finally:
        if own:
            await s.close()
    return {
        "status_version": STATUS_SCHEMA_VERSION,
        "schemad_version": __version__,
        "database": redact.display_dsn(settings.dsn.get_secret_value() if settings.dsn else None),
        "ledger_schema": settings.ledger_schema,
        "schema_version": max(recorded, default=0),
        "head_version": max(files, default=0),
        "up_to_date": not pending and not mismatches,
        "applied": applied,
        "pending": pending,
        "checksum_mismatches": mismatches,
        "unknown_applied": unknown,
        "validation": {
            "ok": val.ok,
            "errors": [f.as_dict() for f in val.errors],
            "warnings": len(val.findings) - len(val.errors),
        },
        "lock": {"migrations": holder, "indexes": index_holder},
        "indexes": index_rows,
        "last_failure": (
            {k: _iso(v) if k != "detail" else (json.loads(v) if isinstance(v, str) else v) for k, v in failure.items()}
            if failure
            else None
        ),
    }


async def _lock_holder(s: db.Session, key: int) -> dict[str, Any] | None:
    classid, objid = lock.key_halves(key)
    row = await s.fetchrow(queries.LOCK_HOLDER, classid, objid)
    if row is None:
        return None
    return {
        "pid": row["pid"], "application_name": row["application_name"], "client_addr": row["client_addr"],
        "since": _iso(row["since"]), "renewed_at": _iso(row["renewed_at"]), "state": row["state"],
    }


def render_status(data: dict[str, Any]) -> str:
    lines = [
        f"database       {data['database']}",
        f"schema version {data['schema_version']} (files head {data['head_version']})"
        + ("  up to date" if data["up_to_date"] else ""),
    ]
    if data["applied"]:
        lines.append("")
        lines.append(f"{'version':>7}  {'name':<40} {'applied at':<26} {'duration':>10}")
        lines.extend(
            f"{a['version']:>7}  {a['name']:<40} {str(a['applied_at'])[:26]:<26} {a['duration_s'] * 1000:>8.1f}ms"
            for a in data["applied"]
        )
    if data["pending"]:
        lines.append("")
        lines.append("pending:")
        lines.extend(f"  {p['version']:>5}  {p['name']}" for p in data["pending"])
    lines.extend(
        f"CHANGED after apply: {mm['path']} (recorded {mm['recorded'][:12]}, now {mm['current'][:12]})"
        for mm in data["checksum_mismatches"]
    )
    lines.extend(f"applied but unknown to these files: {u['version']} {u['name']}" for u in data["unknown_applied"])
    for name, holder in data["lock"].items():
        if holder:
            lines.append(f"{name} lock held by pid {holder['pid']} ({holder['application_name']}) since {holder['since']}")
    from schemad import index_cli

    lines.extend(index_cli.render_status_lines(data.get("indexes") or []))
    if data["last_failure"]:
        f = data["last_failure"]
        lines.append(f"last failure: {f['subject']} at {f['at']}: SQLSTATE {f['sqlstate']}: {f['message']}")
    if not data["validation"]["ok"]:
        lines.append(f"validation: {len(data['validation']['errors'])} error(s) (run `schemad check`)")
    return "\n".join(lines)
