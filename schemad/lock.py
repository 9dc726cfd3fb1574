"""The advisory lock: a dedicated, idle connection; `pg_try_advisory_lock` polled with
jitter (never the blocking form); fencing through a per-acquisition token; pooler detection.

Fencing: with the lock, the lock connection also takes a second advisory lock on a random
64-bit *token* that no other session knows. Session locks go only with an explicit unlock
or with the backend, so "someone holds the token" means "our lock backend is alive and
still holds the lock". Any other session checks that with a failing
`pg_try_advisory_xact_lock_shared(token)`: one lock-table probe of a few microseconds
(reading `pg_locks` copies the whole lock table: ~0.3 ms, twice per migration). A pid
reused by another backend cannot pass it either.

Lease: a holder that is frozen (SIGSTOP, a paused VM) keeps its connection open, and its
kernel still answers TCP keepalives, so nothing on the network ever frees its lock. While
it holds the lock, schemad renews a lease instead (`renewing`): the lock session gets
`idle_session_timeout = lease`, and a live holder runs a no-op on it every lease/3. A holder
that stops renewing is disconnected by the server itself, which frees the lock (PostgreSQL 14+).
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from typing import TYPE_CHECKING, TypeVar

import anyio

from schemad import errors, queries

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from schemad.db import Session

T = TypeVar("T")

log = logging.getLogger("schemad.lock")

PROXY_FIX = (
    "schemad is connected through a connection pooler or proxy (e.g. PgBouncer in transaction mode), "
    "where session advisory locks are shared by every client: two replicas could migrate at once. "
    "Give schemad a direct connection to PostgreSQL (SCHEMAD_DSN pointing at the server, not the pooler), "
    "or a session-mode pool; --allow-proxy overrides this check at your own risk"
)


def lock_key(namespace: str, purpose: str) -> int:
    """A signed 64-bit key for ``purpose`` ("migrations" or "indexes") within ``namespace``."""
    digest = hashlib.sha256(f"schemad:{purpose}:{namespace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def key_halves(key: int) -> tuple[int, int]:
    """The (classid, objid) pair pg_locks shows for a bigint advisory key."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


async def detect_proxy(s: Session) -> str | None:
    """Why this session looks pooled or proxied, or None for a direct connection."""
    pid = int(await s.fetchval(queries.BACKEND_PID))
    if pid != s.server_pid:
        return f"the server's backend pid {pid} differs from the pid announced at connect ({s.server_pid})"
    for _ in range(2):
        again = int(await s.fetchval(queries.BACKEND_PID))
        if again != pid:
            return f"the backend pid changed between transactions ({pid} then {again})"
    client_port = await s.fetchval(queries.CLIENT_PORT)
    local = s.local_port
    if client_port is not None and local is not None and int(client_port) != local:
        return f"the server sees client port {client_port}, but our socket's local port is {local}"
    return None


async def refuse_proxy(s: Session, *, allow: bool) -> None:
    reason = await detect_proxy(s)
    if reason is None:
        return
    if allow:
        log.warning("proxy detected, continuing", extra={"event": "proxy_allowed", "reason": reason})
        return
    raise errors.ProxyDetected(f"{PROXY_FIX} ({reason})")


class AdvisoryLock:
    """A session-level advisory lock held on one dedicated connection."""

    def __init__(self, s: Session, key: int, *, name: str) -> None:
        self.session = s
        self.key = key
        self.name = name
        self.holder_pid: int | None = None
        self.token: int | None = None
        self._lost = False
        # Called once, the moment a held lock is known to be lost (its connection ended, a
        # renewal failed): the engine cancels the statement in flight with it.
        self.on_lost: Callable[[], None] | None = None
        self._io = anyio.Lock()  # the session serves one statement at a time: renewals vs. lock/unlock
        s.on_termination(self._on_terminated)

    def _on_terminated(self) -> None:
        if self.holder_pid is not None:
            self._lose()

    def _lose(self) -> None:
        first = not self._lost
        self._lost = True
        if first and self.on_lost is not None:
            self.on_lost()

    @property
    def held(self) -> bool:
        return self.holder_pid is not None and not self._lost and not self.session.is_closed()

    async def try_acquire(self) -> bool:
        token = secrets.randbits(63)
        async with self._io:
            got = await self.session.fetchval(queries.TRY_LOCK_FENCED, self.key, token)
            if got is None:
                return False
            if not got:  # the lock is ours but another session holds this token: draw again
                await self.session.fetchval(queries.UNLOCK, self.key)
                return False
        self.holder_pid = self.session.server_pid
        self.token = token
        self._lost = False
        return True

    async def acquire(self, *, wait_s: float, poll_s: float) -> float:
        """Poll until the lock is ours; returns the seconds waited. Raises `errors.LockBusy`."""
        start = time.monotonic()
        deadline = start + wait_s
        while True:
            if await self.try_acquire():
                waited = time.monotonic() - start
                log.info("lock acquired", extra={"event": "lock_acquired", "lock": self.name, "waited_s": round(waited, 3)})
                return waited
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.LockBusy(f"could not take the {self.name} lock within {wait_s:g}s (another replica holds it)")
            # Jitter spreads replicas that started together.
            await anyio.sleep(min(remaining, poll_s * (0.5 + random.random())))

    async def renew(self, lease_s: float) -> None:
        """Keep the lock session's lease for as long as it is open (run beside the work, see
        `renewing`; never raises). A renewal that fails means the session is gone, and the lock
        with it."""
        if lease_s <= 0:
            return
        try:
            async with self._io:
                await self.session.execute(queries.SET_LEASE.format(ms=max(1, int(lease_s * 1000))))
        except errors.DatabaseError as exc:  # PostgreSQL 13 and older: no idle_session_timeout
            log.warning("no lock lease on this server: a frozen holder keeps the lock until it dies",
                        extra={"event": "lock_lease_unsupported", "lock": self.name, "sqlstate": exc.sqlstate})
            return
        while not self.session.is_closed():
            await anyio.sleep(lease_s / 3)
            # Shielded: a renewal cancelled half-way would leave the session busy for the release.
            with anyio.move_on_after(lease_s, shield=True):
                try:
                    async with self._io:
                        await self.session.execute(queries.RENEW_LEASE)
                except errors.SchemadError:
                    if self.holder_pid is not None:
                        self._lose()
                    return

    async def fence(self, via: Session) -> None:
        """Confirm, from another session, that our backend still holds the lock."""
        if not self.held or self.token is None:
            raise errors.LockLost(f"the {self.name} lock connection is gone; stopping all work")
        # A free token is taken here (shared, until the end of the caller's transaction): harmless,
        # the caller stops and rolls back.
        if await via.fetchval(queries.TOKEN_FREE, self.token):
            self._lose()
            raise errors.LockLost(f"backend {self.holder_pid} no longer holds the {self.name} lock; stopping all work")

    def fence_sql(self) -> str:
        """A statement that aborts the current transaction unless the lock is still ours (for batched sends)."""
        return (
            f"DO $schemad_fence$ BEGIN IF pg_catalog.pg_try_advisory_xact_lock_shared({int(self.token or 0)}) THEN "
            "RAISE EXCEPTION 'schemad: advisory lock lost' USING ERRCODE = 'SD001'; END IF; END $schemad_fence$"
        )

    async def release(self) -> None:
        """Unlock if the connection is alive; a dead connection has released it already."""
        if self.holder_pid is None:
            return
        try:
            if not self.session.is_closed():
                with anyio.CancelScope(shield=True):
                    async with self._io:
                        # The token first: from here on no fence passes.
                        await self.session.fetchval(queries.UNLOCK_FENCED, self.token or 0, self.key)
        except errors.SchemadError:
            pass
        finally:
            self.holder_pid = None
            self.token = None
            log.info("lock released", extra={"event": "lock_released", "lock": self.name})


async def renewing(lk: AdvisoryLock, lease_s: float, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` while a sibling task renews ``lk``'s lease (`AdvisoryLock.renew`)."""
    done: list[T] = []
    failed: list[errors.SchemadError] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lk.renew, lease_s)
        try:
            done.append(await work())
        except errors.SchemadError as exc:  # re-raised below as itself, not inside an ExceptionGroup
            failed.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return done[0]
