"""`schemad demo --once`: a throwaway PostgreSQL, the repository's example schema applied,
the status printed, and everything removed again."""

from __future__ import annotations

import re
from pathlib import Path

from schemad import validation
from tests.conftest import REPO, run_schemad


def test_demo_once_applies_the_examples_and_cleans_up() -> None:
    head = max(m.version for m in validation.validate(REPO / "migrations", REPO / "indexes").migrations)

    res = run_schemad("demo", "--once", cwd=REPO, timeout=90)

    assert res.returncode == 0, res.stderr
    assert f"schema version {head} (files head {head})  up to date" in res.stdout
    assert "0001_businesses" in res.stdout
    data = re.search(r"\(data in (\S+)\)", res.stdout)
    assert data is not None, res.stdout
    assert res.stdout.rstrip().endswith("removing the throwaway PostgreSQL ...")
    assert not Path(data.group(1)).exists(), "the throwaway cluster is removed on exit"
