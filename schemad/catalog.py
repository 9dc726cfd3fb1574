"""Reading the catalog for the index reconciler: observations, progress, load signals.

The shell half of `index_plan` and `throttle`: every query is a named constant below,
identifiers are quoted by `quote_ident`, and nothing here decides anything. The one
write-like step, `wanted_definition`, creates the registry index on an empty scratch
copy of the table inside a transaction it always rolls back, so that the server spells
the definition the way `pg_get_indexdef` spells the real one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemad import errors, index_plan, queries, throttle
from schemad.index_plan import Builder, IndexFacts, Observation, PartitionFacts, TableFacts
from schemad.sqlparser import quote_ident, render_index

if TYPE_CHECKING:
    from schemad.db import Session
    from schemad.indexes import IndexSpec

log = logging.getLogger("schemad.indexes")

SERVER_VERSION_NUM = queries.SERVER_VERSION_NUM
PROGRESS_VISIBLE = """
SELECT r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
FROM pg_roles r WHERE r.rolname = current_user
"""
TABLE = """
SELECT c.oid, c.relnamespace AS ns, n.nspname AS schema, c.relname AS name, c.relkind = 'p' AS partitioned
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""
PARTITIONS = """
SELECT c.oid, c.relnamespace AS ns, n.nspname AS schema, c.relname AS name, c.relkind = 'p' AS partitioned
FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE h.inhparent = $1
ORDER BY n.nspname, c.relname
"""
_INDEX_FACTS = """
SELECT c.oid, c.relname AS name, n.nspname AS schema, i.indrelid AS table_oid, i.indisvalid AS valid,
       i.indisready AS ready, c.relkind = 'I' AS partitioned, pg_get_indexdef(c.oid) AS definition,
       (SELECT con.conname FROM pg_constraint con WHERE con.conindid = c.oid
        ORDER BY con.contype <> 'p', con.contype <> 'u' LIMIT 1) AS constraint_name
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
INDEXES_BY_NAME = _INDEX_FACTS + "WHERE c.relnamespace = $1 AND c.relname = ANY($2::text[])"
INDEXES_ATTACHED_TO = (
    _INDEX_FACTS + "JOIN pg_inherits h ON h.inhrelid = c.oid WHERE h.inhparent = $1"
)
PROGRESS_ROWS = """
SELECT p.pid, p.relid, p.index_relid, p.phase, a.application_name
FROM pg_stat_progress_create_index p LEFT JOIN pg_stat_activity a ON a.pid = p.pid
WHERE p.datname = current_database() AND p.pid <> pg_backend_pid()
"""
# Fallback when the progress view hides other roles' rows (no pg_read_all_stats): a
# CREATE INDEX CONCURRENTLY holds a session-level SHARE UPDATE EXCLUSIVE lock on its table.
SUE_HOLDERS = """
SELECT l.pid, l.relation AS relid, a.application_name
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'ShareUpdateExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
"""
BUILD_PROGRESS = """
SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total, lockers_done, lockers_total,
       current_locker_pid, partitions_done, partitions_total
FROM pg_stat_progress_create_index WHERE pid = $1
"""
LOCKER = """
SELECT pid, state, application_name,
       extract(epoch FROM now() - coalesce(xact_start, query_start, backend_start))::float8 AS age_s,
       left(query, 200) AS query
FROM pg_stat_activity WHERE pid = $1
"""
BUILDER_OF_INDEX = "SELECT pid FROM pg_stat_progress_create_index WHERE index_relid = $1 LIMIT 1"
CANCEL_BACKEND = "SELECT pg_cancel_backend($1)"
INVALID_INDEXES = r"""
SELECT count(*)::int
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
"""
THROTTLE_SNAPSHOT = """
WITH others AS (
    SELECT * FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> ALL($1::int[])
)
SELECT
  (SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication) AS replication_lag_s,
  (SELECT max(extract(epoch FROM now() - xact_start))::float8 FROM others
    WHERE backend_type = 'client backend' AND xact_start IS NOT NULL) AS transaction_age_s,
  (SELECT max(extract(epoch FROM now() - state_change))::float8 FROM others
    WHERE state LIKE 'idle in transaction%') AS idle_in_transaction_s,
  (SELECT count(*) FROM others WHERE wait_event_type = 'Lock')::int AS lock_waiters,
  (SELECT count(*) FROM others WHERE state = 'active' AND backend_type = 'client backend')::int
    AS active_backends,
  ARRAY(
    SELECT v.relid FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a ON a.pid = v.pid
    WHERE a.backend_type = 'autovacuum worker' AND v.datname = current_database()
    UNION
    SELECT z.relid FROM pg_stat_progress_analyze z JOIN pg_stat_activity a ON a.pid = z.pid
    WHERE a.backend_type = 'autovacuum worker' AND z.datname = current_database()
  )::int8[] AS autovacuum_relids
"""
SCRATCH_TABLE = "schemad_scratch"
SCRATCH_INDEXDEF = (
    "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'pg_temp." + SCRATCH_TABLE + "'::regclass"
)
SET_LOCAL_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"

# {schema}.index_builds: attempts and the last error per registry index (reporting only).
RECORD_ATTEMPT = """
INSERT INTO {schema}.index_builds AS b
    (name, table_name, attempts, last_outcome, last_sqlstate, last_error, last_attempt_at, built_at)
VALUES ($1, $2, 1, $3, $4, $5, now(), CASE WHEN $3::text = 'built' THEN now() END)
ON CONFLICT (name) DO UPDATE SET
    table_name = EXCLUDED.table_name, attempts = b.attempts + 1, last_outcome = EXCLUDED.last_outcome,
    last_sqlstate = EXCLUDED.last_sqlstate, last_error = EXCLUDED.last_error, last_attempt_at = now(),
    built_at = coalesce(EXCLUDED.built_at, b.built_at)
"""
INDEX_BUILDS = """
SELECT name, table_name, attempts, last_outcome, last_sqlstate, last_error, last_attempt_at, built_at
FROM {schema}.index_builds
"""

# SQLSTATE classes meaning "the registry definition cannot be created on this table".
_DEFINITION_CLASSES = ("42", "0A", "22")


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """One row of pg_stat_progress_create_index."""

    phase: str | None
    blocks_done: int | None = None
    blocks_total: int | None = None
    tuples_done: int | None = None
    tuples_total: int | None = None
    lockers_done: int | None = None
    lockers_total: int | None = None
    current_locker_pid: int | None = None
    partitions_done: int | None = None
    partitions_total: int | None = None

    @property
    def ratio(self) -> float:
        return index_plan.progress_ratio(
            self.phase, blocks_done=self.blocks_done, blocks_total=self.blocks_total,
            tuples_done=self.tuples_done, tuples_total=self.tuples_total,
        )

    @property
    def waiting(self) -> bool:
        return index_plan.is_waiting_phase(self.phase)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "ratio": round(self.ratio, 4),
            "blocks_done": self.blocks_done, "blocks_total": self.blocks_total,
            "tuples_done": self.tuples_done, "tuples_total": self.tuples_total,
            "lockers_done": self.lockers_done, "lockers_total": self.lockers_total,
            "current_locker_pid": self.current_locker_pid,
        }


def qualified(schema: str | None, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


async def server_version(s: Session) -> int:
    return int(await s.fetchval(SERVER_VERSION_NUM))


async def progress_visible(s: Session) -> bool:
    """Whether this role sees other roles' rows in the progress views (pg_read_all_stats)."""
    return bool(await s.fetchval(PROGRESS_VISIBLE))


async def invalid_indexes(s: Session) -> int:
    return int(await s.fetchval(INVALID_INDEXES))


class Observer:
    """Observes registry indexes on one session; caches the server-rendered definitions."""

    def __init__(self, s: Session, *, our_pids: set[int], visible: bool, lock_timeout_s: float) -> None:
        self.session = s
        self.our_pids = our_pids  # shared with the builder: pids of every session of this process
        self.visible = visible
        self.lock_timeout_s = lock_timeout_s
        self._wanted: dict[tuple[str, int], tuple[str | None, str | None]] = {}

    async def observe_all(self, specs: list[IndexSpec]) -> list[Observation]:
        builders = await self._builders()
        return [await self.observe(spec, builders=builders) for spec in specs]

    async def prime(self, specs: list[IndexSpec]) -> None:
        """Render every registry definition now, before any build starts, so that no
        transaction (not even the scratch one) opens while builds run."""
        for spec in specs:
            row = await self.session.fetchrow(TABLE, qualified(spec.schema, spec.table))
            if row is not None:
                table = TableFacts(
                    oid=int(row["oid"]), schema=row["schema"], name=row["name"], partitioned=row["partitioned"]
                )
                await self.wanted_definition(spec, table)

    async def observe(
        self, spec: IndexSpec, *, builders: _Builders | None = None, canonical: bool = True
    ) -> Observation:
        s = self.session
        builders = builders or await self._builders()
        row = await s.fetchrow(TABLE, qualified(spec.schema, spec.table))
        if row is None:
            return Observation(spec=spec, table=None, index=None)
        table = TableFacts(oid=int(row["oid"]), schema=row["schema"], name=row["name"], partitioned=row["partitioned"])
        ns_oid = int(row["ns"])
        rep_name = index_plan.replacement_name(spec)
        found = {
            r["name"]: _facts(r, builders, table.oid)
            for r in await s.fetch(INDEXES_BY_NAME, ns_oid, [spec.name, rep_name])
        }
        index, replacement = found.get(spec.name), found.get(rep_name)
        if table.partitioned:
            table = await self._with_partitions(spec, table, index, builders)
        wanted: str | None = None
        wanted_error: str | None = None
        if canonical and any(i is not None and i.valid for i in (index, replacement)):
            wanted, wanted_error = await self.wanted_definition(spec, table)
        return Observation(
            spec=spec, table=table, index=index, replacement=replacement, wanted=wanted, wanted_error=wanted_error
        )

    async def _with_partitions(
        self, spec: IndexSpec, table: TableFacts, parent: IndexFacts | None, builders: _Builders
    ) -> TableFacts:
        s = self.session
        attached: dict[int, IndexFacts] = {}
        if parent is not None:
            for r in await s.fetch(INDEXES_ATTACHED_TO, parent.oid):
                facts = _facts(r, builders, int(r["table_oid"]))
                attached[facts.table_oid] = facts
        parts: list[PartitionFacts] = []
        for r in await s.fetch(PARTITIONS, table.oid):
            oid = int(r["oid"])
            name = index_plan.child_name(spec, r["name"])
            rows = await s.fetch(INDEXES_BY_NAME, int(r["ns"]), [name])
            child = _facts(rows[0], builders, oid) if rows else None
            parts.append(
                PartitionFacts(
                    oid=oid, schema=r["schema"], name=r["name"], partitioned=r["partitioned"],
                    attached=attached.get(oid), child=child,
                )
            )
        return TableFacts(oid=table.oid, schema=table.schema, name=table.name, partitioned=True, partitions=tuple(parts))

    async def wanted_definition(self, spec: IndexSpec, table: TableFacts) -> tuple[str | None, str | None]:
        """``pg_get_indexdef`` of the registry index created on an empty scratch copy of the
        table, in a transaction that is always rolled back: (definition, None) or (None, why).

        Cached per run; definition errors are data; a transient failure gives (None, None).
        """
        key = (spec.name, table.oid)
        if key in self._wanted:
            return self._wanted[key]
        s = self.session
        create = render_index(
            spec.definition, name=spec.name, concurrently=False, schema="pg_temp", table=SCRATCH_TABLE
        )
        result: tuple[str | None, str | None]
        # One short transaction; it never waits on a build of ours (it only reads the
        # table's shape under ACCESS SHARE) and is bounded by lock_timeout.
        await s.execute("BEGIN")
        try:
            await s.fetchval(SET_LOCAL_LOCK_TIMEOUT, f"{max(1, int(self.lock_timeout_s * 1000))}ms")
            await s.execute(
                f"CREATE TEMP TABLE {SCRATCH_TABLE} (LIKE {qualified(table.schema, table.name)}) ON COMMIT DROP"
            )
            await s.execute(create)
            result = (str(await s.fetchval(SCRATCH_INDEXDEF)), None)
        except errors.ConnectionLost:
            raise
        except errors.DatabaseError as exc:
            if exc.sqlstate is None or not exc.sqlstate.startswith(_DEFINITION_CLASSES):
                # A lock wait or similar: unknown this time (drift then goes unverified, and
                # an unverified drift is reported, never acted on). Not cached.
                log.info("cannot render %s on a scratch copy now: %s", spec.name, exc.message,
                         extra={"event": "index_definition_unknown", "index": spec.name, "sqlstate": exc.sqlstate})
                return None, None  # (rolled back below)
            result = (None, f"{exc.message} (SQLSTATE {exc.sqlstate})")
        finally:
            await _rollback(s)
        self._wanted[key] = result
        return result

    async def _builders(self) -> _Builders:
        s = self.session
        by_index: dict[int, Builder] = {}
        hidden: set[int] = set()  # pids with a progress row we may not read (no pg_read_all_stats)
        for r in await s.fetch(PROGRESS_ROWS):
            pid = int(r["pid"])
            if pid in self.our_pids:
                continue
            if r["index_relid"]:
                by_index[int(r["index_relid"])] = Builder(
                    pid=pid, phase=r["phase"], application_name=r["application_name"], source="progress"
                )
            elif r["relid"] is None:
                hidden.add(pid)
        by_table: dict[int, Builder] = {}
        if hidden:
            for r in await s.fetch(SUE_HOLDERS):
                pid = int(r["pid"])
                if pid not in hidden:
                    continue
                by_table.setdefault(
                    int(r["relid"]), Builder(pid=pid, application_name=r["application_name"], source="locks")
                )
        return _Builders(by_index=by_index, by_table=by_table)


@dataclass(frozen=True, slots=True)
class _Builders:
    by_index: dict[int, Builder]
    by_table: dict[int, Builder]  # only from the lock fallback

    def of(self, index_oid: int, table_oid: int, valid: bool) -> Builder | None:
        found = self.by_index.get(index_oid)
        if found is None and not valid:
            # Cannot see the progress row: a backend holding SUE on the table may be building
            # this invalid index; never drop what may still be being built (F7/F8).
            found = self.by_table.get(table_oid)
        return found


def _facts(r: dict[str, Any], builders: _Builders, table_oid: int) -> IndexFacts:
    oid = int(r["oid"])
    return IndexFacts(
        oid=oid, name=r["name"], schema=r["schema"], table_oid=int(r["table_oid"]), valid=bool(r["valid"]),
        ready=bool(r["ready"]), partitioned=bool(r["partitioned"]), definition=r["definition"],
        constraint=r["constraint_name"], builder=builders.of(oid, table_oid, bool(r["valid"])),
    )


async def _rollback(s: Session) -> None:
    try:
        await s.execute("ROLLBACK")
    except errors.SchemadError:
        pass


async def build_progress(s: Session, pid: int) -> Progress | None:
    row = await s.fetchrow(BUILD_PROGRESS, pid)
    if row is None:
        return None
    return Progress(
        phase=row["phase"], blocks_done=row["blocks_done"], blocks_total=row["blocks_total"],
        tuples_done=row["tuples_done"], tuples_total=row["tuples_total"], lockers_done=row["lockers_done"],
        lockers_total=row["lockers_total"], current_locker_pid=row["current_locker_pid"] or None,
        partitions_done=row["partitions_done"], partitions_total=row["partitions_total"],
    )


async def progress_of_index(s: Session, index_oid: int) -> Progress | None:
    pid = await s.fetchval(BUILDER_OF_INDEX, index_oid)
    return await build_progress(s, int(pid)) if pid is not None else None


async def locker(s: Session, pid: int) -> dict[str, Any] | None:
    return await s.fetchrow(LOCKER, pid)


async def cancel_backend(s: Session, pid: int) -> bool:
    return bool(await s.fetchval(CANCEL_BACKEND, pid))


async def throttle_snapshot(s: Session, our_pids: set[int]) -> throttle.Snapshot:
    row = await s.fetchrow(THROTTLE_SNAPSHOT, sorted(our_pids))
    assert row is not None
    return throttle.Snapshot(
        replication_lag_s=row["replication_lag_s"],
        transaction_age_s=row["transaction_age_s"],
        idle_in_transaction_s=row["idle_in_transaction_s"],
        lock_waiters=int(row["lock_waiters"]),
        active_backends=int(row["active_backends"]),
        autovacuum_relids=frozenset(int(x) for x in row["autovacuum_relids"] or ()),
    )
