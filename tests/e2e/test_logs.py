"""`--log-format json`: one JSON object per line, each with a stable event name and fields."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.conftest import REPO, Database, run_schemad

if TYPE_CHECKING:
    from pathlib import Path


def test_json_logs_have_event_names_and_fields(database: Database, tmp_path: Path) -> None:
    res = run_schemad(
        "migrate", "--log-format", "json", "--migrations-dir", str(REPO / "migrations"),
        "--indexes-dir", str(REPO / "indexes"), env={"SCHEMAD_DSN": database.dsn}, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]
    events = [r["event"] for r in records]
    assert events[0] == "lock_acquired" and events[-1] == "lock_released"
    applied = [r for r in records if r["event"] == "migration_applied"]
    assert [r["version"] for r in applied] == list(range(1, 10))
    assert all({"ts", "level", "logger", "msg", "duration_s", "statements"} <= r.keys() for r in applied)


def test_text_logs_name_the_event(database: Database, tmp_path: Path) -> None:
    res = run_schemad(
        "migrate", "--migrations-dir", str(REPO / "migrations"), "--indexes-dir", str(REPO / "indexes"),
        env={"SCHEMAD_DSN": database.dsn}, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "[migration_applied]" in res.stderr and "version=9" in res.stderr
