"""schemad's own SQL, as named constants (SQL is data).

Templates with ``{schema}`` take the ledger schema through `ledger_sql()`, which quotes it;
nothing else is interpolated.
"""

from __future__ import annotations

from schemad.sqlparser import quote_ident

# --- ledger DDL, versioned; each step is idempotent and runs under the migration lock ---
LEDGER_STEPS: tuple[str, ...] = (
    """
    CREATE SCHEMA IF NOT EXISTS {schema};
    CREATE TABLE IF NOT EXISTS {schema}.ledger_version (
        version    integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    """
    CREATE TABLE IF NOT EXISTS {schema}.migrations (
        version              bigint PRIMARY KEY,
        name                 text NOT NULL,
        checksum             text NOT NULL,
        applied_at           timestamptz NOT NULL DEFAULT now(),
        duration_s           double precision NOT NULL,
        applied_by_host      text NOT NULL,
        applied_by_pid       integer NOT NULL,
        statements_run       integer NOT NULL,
        statements_tolerated integer NOT NULL DEFAULT 0,
        transactional        boolean NOT NULL DEFAULT true,
        baselined            boolean NOT NULL DEFAULT false
    );
    CREATE TABLE IF NOT EXISTS {schema}.events (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at         timestamptz NOT NULL DEFAULT clock_timestamp(),
        kind       text NOT NULL,
        subject    text NOT NULL,
        version    bigint,
        outcome    text NOT NULL,
        sqlstate   text,
        message    text,
        duration_s double precision,
        attempt    integer,
        host       text NOT NULL,
        pid        integer NOT NULL,
        detail     jsonb
    );
    CREATE INDEX IF NOT EXISTS events_at_idx ON {schema}.events (at);
    CREATE TABLE IF NOT EXISTS {schema}.index_builds (
        name          text PRIMARY KEY,
        table_name    text NOT NULL,
        attempts      integer NOT NULL DEFAULT 0,
        last_outcome  text,
        last_sqlstate text,
        last_error    text,
        last_attempt_at timestamptz,
        built_at      timestamptz
    );
    """,
)

LEDGER_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
LEDGER_VERSION = "SELECT coalesce(max(version), 0) FROM {schema}.ledger_version"
LEDGER_SET_VERSION = "INSERT INTO {schema}.ledger_version (version) VALUES ($1) ON CONFLICT DO NOTHING"

APPLIED = "SELECT version, name, checksum FROM {schema}.migrations ORDER BY version"
APPLIED_FULL = """
SELECT version, name, checksum, applied_at, duration_s, applied_by_host, applied_by_pid,
       statements_run, statements_tolerated, transactional, baselined
FROM {schema}.migrations ORDER BY version
"""
# A batch's rows, by its first and last version (the caller keeps the batch's own: an array
# parameter would cost asyncpg a type introspection, ~7 ms, on every process's first batch).
RECORDED_DURATIONS = "SELECT version, duration_s FROM {schema}.migrations WHERE version BETWEEN $1 AND $2"
INSERT_MIGRATION = """
INSERT INTO {schema}.migrations
    (version, name, checksum, duration_s, applied_by_host, applied_by_pid,
     statements_run, statements_tolerated, transactional)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
INSERT_EVENT = """
INSERT INTO {schema}.events
    (kind, subject, version, outcome, sqlstate, message, duration_s, attempt, host, pid, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
"""
LAST_FAILURE = """
SELECT at, kind, subject, version, outcome, sqlstate, message, attempt, host, pid, detail
FROM {schema}.events
WHERE outcome = 'failed' AND kind = 'migration'
  AND at > coalesce((SELECT max(at) FROM {schema}.events WHERE kind = 'migration' AND outcome = 'applied'),
                    '-infinity')
ORDER BY id DESC LIMIT 1
"""

# --- advisory lock (keys split into the two 32-bit halves pg_locks shows) ---
UNLOCK = "SELECT pg_advisory_unlock($1)"
# NULL: busy; true: the lock and the fencing token ($2) are ours; false: the token is taken.
TRY_LOCK_FENCED = "SELECT CASE WHEN pg_try_advisory_lock($1) THEN pg_try_advisory_lock($2) END"
UNLOCK_FENCED = "SELECT pg_advisory_unlock($1), pg_advisory_unlock($2)"
TOKEN_FREE = "SELECT pg_catalog.pg_try_advisory_xact_lock_shared($1)"  # qualified: see BATCH_FUNCTIONS
# The lock lease: the server ends a lock session idle longer than this (see lock.py).
SET_LEASE = "SET idle_session_timeout = {ms}"
RENEW_LEASE = "SELECT 1"
# On taking the migration lock: end other processes' migration transactions, left by a holder
# that lost the lock (frozen, cut off) and still running. They can never commit (their fence
# fails), but they hold locks the new holder needs. $1: our own application_name.
END_STALE_MIGRATIONS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND application_name LIKE 'schemad:migrate:%' AND application_name <> $1
  AND xact_start < clock_timestamp() - interval '1 second'
"""
TERMINATE_BACKEND = "SELECT pg_terminate_backend($1)"
BACKEND_PID = "SELECT pg_backend_pid()"
CLIENT_PORT = "SELECT inet_client_port()"
LOCK_HOLDER = """
SELECT l.pid, a.application_name, a.client_addr::text AS client_addr,
       a.backend_start AS since, a.state_change AS renewed_at, a.state
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.objsubid = 1 AND l.granted
"""

# --- blockers of a lock wait ---
BLOCKERS_OF_RELATION = """
SELECT DISTINCT a.pid, a.state, a.application_name,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS age_s,
       left(a.query, 200) AS query
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass($1)
  AND l.pid <> pg_backend_pid()
ORDER BY age_s DESC NULLS LAST
LIMIT 10
"""
LONG_TRANSACTIONS = """
SELECT a.pid, a.state, a.application_name,
       extract(epoch FROM now() - a.xact_start)::float8 AS age_s, left(a.query, 200) AS query
FROM pg_stat_activity a
WHERE a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid() AND a.datname = current_database()
  AND now() - a.xact_start > make_interval(secs => $1)
ORDER BY a.xact_start
LIMIT 10
"""

# --- the one-round-trip path's session-local functions (executor) ---
# Created on the work session (pg_temp: invisible to others, no trace in the schema, gone with
# the session), with the ledger schema filled in. plpgsql compiles a function and plans its
# statements once per session; sent as SQL, the same fences (DO blocks), settings and two
# INSERTs were parsed and planned for every migration: ~0.11 s per 1000 migrations, as much
# as a fifth of the server's work for a corpus of small migrations. Both functions abort the
# transaction (SQLSTATE SD001) unless the fencing token is still held, i.e. the lock is ours.
# Calls are qualified: a migration's `SET search_path` must not redirect them.
BATCH_FUNCTIONS = """
CREATE OR REPLACE FUNCTION pg_temp.schemad_begin(token bigint, lock_timeout text, statement_timeout text)
RETURNS void LANGUAGE plpgsql AS $schemad$
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', lock_timeout, true),
            pg_catalog.set_config('statement_timeout', statement_timeout, true),
            pg_catalog.set_config('schemad.migration_started', pg_catalog.clock_timestamp()::text, true);
    IF pg_catalog.pg_try_advisory_xact_lock_shared(token) THEN
        RAISE EXCEPTION 'schemad: advisory lock lost' USING ERRCODE = 'SD001';
    END IF;
END $schemad$;
CREATE OR REPLACE FUNCTION pg_temp.schemad_record(
    token bigint, v bigint, n text, digest text, host text, pid integer, statements integer
) RETURNS void LANGUAGE plpgsql AS $schemad$
DECLARE
    started timestamptz;
    took float8;
BEGIN
    IF pg_catalog.pg_try_advisory_xact_lock_shared(token) THEN
        RAISE EXCEPTION 'schemad: advisory lock lost' USING ERRCODE = 'SD001';
    END IF;
    started := pg_catalog.current_setting('schemad.migration_started')::pg_catalog.timestamptz;  -- set by schemad_begin
    took := extract(epoch FROM pg_catalog.clock_timestamp() - started);
    INSERT INTO {schema}.migrations (version, name, checksum, applied_at, duration_s, applied_by_host,
                                     applied_by_pid, statements_run, statements_tolerated, transactional)
    VALUES (v, n, digest, started, took, host, pid, statements, 0, true);
    INSERT INTO {schema}.events (kind, subject, version, outcome, duration_s, attempt, host, pid, detail)
    VALUES ('migration', n, v, 'applied', took, 1, host, pid, '{"tolerated": [], "fast_path": true}');
END $schemad$
"""

SERVER_VERSION_NUM = "SELECT current_setting('server_version_num')::int"
CURRENT_DATABASE = "SELECT current_database()"


def ledger_sql(template: str, schema: str) -> str:
    """Fill ``{schema}`` with the quoted ledger schema name."""
    return template.replace("{schema}", quote_ident(schema))
