"""`schemad demo`: a throwaway local PostgreSQL, the example schema applied by the daemon,
the endpoints printed; everything removed again on exit or Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
from pydantic import SecretStr

from schemad import commands, engine, pgcluster, validation

if TYPE_CHECKING:
    from schemad.config import Settings


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(settings: Settings, *, keep_running: bool) -> int:
    _say("starting a throwaway PostgreSQL ...")
    cluster = pgcluster.create()
    try:
        subprocess.run(
            ["psql", cluster.dsn(), "-X", "-q", "-c", "CREATE DATABASE schemad_demo"], check=True, capture_output=True
        )
        dsn = cluster.dsn("schemad_demo")
        _say(f"PostgreSQL {cluster.bindir.parent.name} running at {dsn} (data in {cluster.datadir})")
        demo_settings = settings.model_copy(update={"dsn": SecretStr(dsn)})
        if keep_running:
            return _run_daemon(demo_settings, cluster)
        return _once(demo_settings)
    except KeyboardInterrupt:
        return 0
    finally:
        _say("removing the throwaway PostgreSQL ...")
        cluster.destroy()


def _once(settings: Settings) -> int:
    val = validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    report = anyio.run(lambda: engine.migrate(settings, val), backend="asyncio")
    _say(f"applied {len(report.applied)} migration(s)")
    from schemad import index_builder

    anyio.run(lambda: index_builder.reconcile(settings, val), backend="asyncio")
    data = anyio.run(lambda: commands.gather_status(settings), backend="asyncio")
    _say(commands.render_status(data))
    return 0


def _run_daemon(settings: Settings, cluster: pgcluster.Cluster) -> int:
    from schemad import daemon

    addr = settings.metrics_addr

    def on_ready() -> None:
        _say("")
        _say(f"schemad is ready. Endpoints: http://{addr}/metrics  /livez  /readyz  /status")
        _say("Try: curl -s http://" + addr + "/status | python3 -m json.tool")
        _say("Press Ctrl-C to stop and clean up.")

    def on_force_exit() -> None:
        _say("forced exit: removing the throwaway PostgreSQL ...")
        cluster.destroy()

    return daemon.main(settings, on_ready=on_ready, on_force_exit=on_force_exit)
