"""`schemad check` and `schemad new` through `cli.run`: output formats and exit codes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from schemad import cli

if TYPE_CHECKING:
    from pathlib import Path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "indexes").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_clean_project(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(project / "migrations" / "0001_a.sql", "CREATE TABLE a (id int);\n")
    _write(project / "indexes" / "a.sql", "CREATE INDEX idx_a ON a (id);\n")
    assert _run(capsys, "check") == (0, "", "1 migration(s), 1 index(es): 0 error(s), 0 warning(s)\n")
    assert _run(capsys, "check", "--format", "json") == (0, "[]\n", "")


def test_warnings_pass_unless_strict(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(project / "migrations" / "0001_a.sql", "ALTER TABLE a RENAME TO b;\n")
    line = "migrations/0001_a.sql:1:1: W205 ALTER TABLE RENAME: running code still uses the old name"
    assert _run(capsys, "check") == (
        0,
        line + " (warning)\n",
        "1 migration(s), 0 index(es): 0 error(s), 1 warning(s)\n",
    )
    assert _run(capsys, "check", "--strict") == (
        3,
        line + "\n",
        "1 migration(s), 0 index(es): 1 error(s), 0 warning(s)\n",
    )


def test_strict_from_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(project / "migrations" / "0001_a.sql", "DELETE FROM a;\n")
    monkeypatch.setenv("SCHEMAD_STRICT", "true")
    code, _out, _err = _run(capsys, "check")
    assert code == 3


def test_waived_warning_is_silent_even_under_strict(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(
        project / "migrations" / "0001_a.sql",
        "-- schemad:allow=set-not-null accounts has 3 rows\nALTER TABLE accounts ALTER COLUMN email SET NOT NULL;\n",
    )
    assert _run(capsys, "check", "--strict")[:2] == (0, "")


def test_json_shape(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(project / "migrations" / "0001_a.sql", "UPDATE a SET x = 1;\nCREATE INDEX i ON a (x);\n")
    code, out, err = _run(capsys, "check", "--format", "json")
    assert code == 3
    assert err == ""
    assert json.loads(out) == [
        {
            "path": "migrations/0001_a.sql",
            "line": 1,
            "col": 1,
            "code": "W207",
            "rule": "data-change",
            "severity": "warning",
            "message": "UPDATE in a migration: data changes hold locks and are hard to re-run",
        },
        {
            "path": "migrations/0001_a.sql",
            "line": 2,
            "col": 1,
            "code": "E105",
            "rule": "index-in-migration",
            "severity": "error",
            "message": "CREATE INDEX in a migration: indexes belong in indexes/ "
            "(declare it there and schemad builds it concurrently)",
        },
    ]
    code, out, _err = _run(capsys, "check", "--format", "json", "--strict")
    assert [f["severity"] for f in json.loads(out)] == ["error", "error"]


def test_findings_sorted_by_path_then_position(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(project / "migrations" / "0002_b.sql", "COMMIT;\nBEGIN;\n")
    _write(project / "migrations" / "0001_a.sql", "SELECT 1;\n\nVACUUM;\n")
    _write(project / "indexes" / "x.sql", "CREATE INDEX ON t (a);\n")
    code, out, _err = _run(capsys, "check")
    assert code == 3
    assert [line.split(": ")[0] for line in out.splitlines()] == [
        "indexes/x.sql:1:1",
        "migrations/0001_a.sql:3:1",
        "migrations/0002_b.sql:1:1",
        "migrations/0002_b.sql:2:1",
    ]


def test_missing_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _err = _run(capsys, "check")
    assert code == 3
    assert out.splitlines() == [
        "indexes:1:1: E111 folder indexes does not exist",
        "migrations:1:1: E111 folder migrations does not exist",
    ]


@pytest.mark.parametrize(
    "argv",
    [[], ["check", "--format", "xml"], ["frobnicate"], ["new"], ["check", "--no-such-flag"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert "usage: schemad" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _run(capsys, "check", "--help")
    assert code == 0
    assert "--strict" in out


# --------------------------------------------------------------------------- schemad new


def test_new_numbers_one_past_the_highest(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("0001_a.sql", "0002_b.sql", "7_c.sql", "README.md", "0099_x.sql.bak"):
        _write(project / "migrations" / name, "SELECT 1;\n")
    code, out, _err = _run(capsys, "new", "add_notes")
    assert code == 0
    assert out == "migrations/0008_add_notes.sql\n"
    created = project / "migrations" / "0008_add_notes.sql"
    assert created.read_text(encoding="utf-8") == "-- add notes\n\n"
    code, out, _err = _run(capsys, "new", "second")
    assert out == "migrations/0009_second.sql\n"


def test_new_in_a_fresh_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _err = _run(capsys, "new", "init", "--migrations-dir", "db/migrations")
    assert (code, out) == (0, "db/migrations/0001_init.sql\n")
    assert (tmp_path / "db" / "migrations" / "0001_init.sql").is_file()


@pytest.mark.parametrize("slug", ["AddNotes", "add-notes", "add notes"])
def test_new_rejects_bad_slugs(project: Path, capsys: pytest.CaptureFixture[str], slug: str) -> None:
    code, out, err = _run(capsys, "new", slug)
    assert code == 2
    assert out == ""
    assert "must match [a-z0-9_]+" in err
    assert list((project / "migrations").iterdir()) == []


def test_new_file_is_flagged_until_written(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The template holds only a comment: `check` refuses it until a statement is added."""
    _run(capsys, "new", "todo")
    code, out, _err = _run(capsys, "check")
    assert (code, out) == (3, "migrations/0001_todo.sql:1:1: E103 no statements in migration file\n")
