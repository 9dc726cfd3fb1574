"""The ledger in the target database: applied migrations, the event history, index builds.

Its DDL is versioned and idempotent and only ever runs under the migration lock.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from schemad import errors, plan, queries, sqlparser
from schemad.db import HOSTNAME

if TYPE_CHECKING:
    from schemad.db import Session

LEDGER_VERSION = len(queries.LEDGER_STEPS)


class Ledger:
    def __init__(self, schema: str) -> None:
        self.schema = schema

    def sql(self, template: str) -> str:
        return queries.ledger_sql(template, self.schema)

    async def exists(self, s: Session) -> bool:
        return bool(await s.fetchval(queries.LEDGER_EXISTS, f"{sqlparser.quote_ident(self.schema)}.migrations"))

    async def ensure(self, s: Session) -> None:
        """Create or upgrade the ledger; call only while holding the migration lock."""
        if await self.exists(s):
            current = int(await s.fetchval(self.sql(queries.LEDGER_VERSION)))
            if current >= LEDGER_VERSION:
                return
        else:
            current = 0
        for version, step in enumerate(queries.LEDGER_STEPS, start=1):
            if version <= current:
                continue
            await s.execute("BEGIN")
            try:
                await s.execute(self.sql(step))
                await s.execute(self.sql(queries.LEDGER_SET_VERSION), version)
                await s.execute("COMMIT")
            except BaseException:
                await _rollback_quietly(s)
                raise

    async def applied(self, s: Session) -> list[plan.Applied]:
        if not await self.exists(s):
            return []
        rows = await s.fetch(self.sql(queries.APPLIED))
        return [plan.Applied(version=int(r["version"]), name=r["name"], checksum=r["checksum"]) for r in rows]

    async def applied_full(self, s: Session) -> list[dict[str, Any]]:
        if not await self.exists(s):
            return []
        return await s.fetch(self.sql(queries.APPLIED_FULL))

    async def last_failure(self, s: Session) -> dict[str, Any] | None:
        if not await self.exists(s):
            return None
        return await s.fetchrow(self.sql(queries.LAST_FAILURE))

    async def event(
        self,
        s: Session,
        *,
        kind: str,
        subject: str,
        outcome: str,
        version: int | None = None,
        sqlstate: str | None = None,
        message: str | None = None,
        duration_s: float | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append to the event history (autocommit, outside any migration transaction)."""
        await s.execute(
            self.sql(queries.INSERT_EVENT),
            kind, subject, version, outcome, sqlstate, message, duration_s, attempt, HOSTNAME, os.getpid(),
            json.dumps(detail, default=str) if detail is not None else None,
        )

    async def event_quietly(self, s: Session, **kwargs: Any) -> None:
        """Record an event, but never let a failure to record mask the original error."""
        try:
            await self.event(s, **kwargs)
        except errors.SchemadError:
            pass


async def _rollback_quietly(s: Session) -> None:
    try:
        await s.execute("ROLLBACK")
    except errors.SchemadError:
        pass
