"""`schemad check` over the corpus in tests/data: exact stdout lines and exit codes.

Each folder under ``bad/`` is one case, run with the case folder as the working directory
and the default ``./migrations`` and ``./indexes``; ``expect.txt`` holds the exact stdout.
Folders under ``good/`` are files that a naive splitter gets wrong but PostgreSQL accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schemad import cli, validation

DATA = Path(__file__).resolve().parent.parent / "data"
REPO = Path(__file__).resolve().parents[2]
BAD_CASES = sorted(p for p in (DATA / "bad").iterdir() if p.is_dir())
GOOD_CASES = sorted(p for p in (DATA / "good").iterdir() if p.is_dir())

# Good case → (statements per migration file, index names): the splitter must not cut
# inside dollar quotes, escape strings or nested comments.
GOOD_EXPECTED: dict[str, tuple[dict[str, int], list[str]]] = {
    "dollar_quoted": ({"0001_functions": 3}, []),
    "escape_strings": ({"0001_comments": 3}, []),
    "nested_comments": ({"0001_nested": 3}, []),
    "unicode_text": ({"0001_unicode": 1}, ["idx_café"]),
}


def _check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], folder: Path, *args: str
) -> tuple[int, list[str], str]:
    monkeypatch.chdir(folder)
    code = cli.run(["check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def _expected(case: Path) -> list[str]:
    return (case / "expect.txt").read_text(encoding="utf-8").splitlines()


def test_corpus_is_large_enough() -> None:
    assert len(BAD_CASES) >= 30
    assert set(GOOD_EXPECTED) == {p.name for p in GOOD_CASES}


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda p: p.name)
def test_bad_case(case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _expected(case)
    assert expected, f"{case.name}/expect.txt is empty"
    code, lines, err = _check(monkeypatch, capsys, case)
    assert lines == expected
    assert code == cli.EXIT_VALIDATION
    n_errors = sum(1 for line in expected if not line.endswith("(warning)"))
    assert n_errors >= 1
    assert f": {n_errors} error(s)" in err


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda p: p.name)
def test_bad_case_as_json(
    case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON form carries the same findings as the text form, field by field."""
    code, lines, _err = _check(monkeypatch, capsys, case, "--format", "json")
    assert code == cli.EXIT_VALIDATION
    found = json.loads("\n".join(lines))
    rendered = [
        f"{f['path']}:{f['line']}:{f['col']}: {f['code']} {f['message']}"
        + ("" if f["severity"] == "error" else " (warning)")
        for f in found
    ]
    assert rendered == _expected(case)


@pytest.mark.parametrize("case", GOOD_CASES, ids=lambda p: p.name)
def test_good_case(case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = _check(monkeypatch, capsys, case, "--strict")
    assert (code, lines) == (cli.EXIT_OK, [])
    assert "0 error(s), 0 warning(s)" in err
    result = validation.validate(Path("migrations"), Path("indexes"))
    statements, index_names = GOOD_EXPECTED[case.name]
    assert {m.name: len(m.statements) for m in result.migrations} == statements
    assert [i.name for i in result.indexes] == index_names


def test_example_schema_passes_strict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped example migrations and indexes are clean even under --strict."""
    code, lines, _err = _check(monkeypatch, capsys, REPO, "--strict")
    assert (code, lines) == (cli.EXIT_OK, [])


def test_symlink_to_an_absolute_path_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "elsewhere").mkdir()
    secret = tmp_path / "elsewhere" / "secret.sql"
    secret.write_text("CREATE TABLE secrets (id int);\n", encoding="utf-8")
    case = tmp_path / "case"
    (case / "migrations").mkdir(parents=True)
    (case / "indexes").mkdir()
    (case / "migrations" / "0001_secret.sql").symlink_to(secret)
    (case / "indexes" / "stolen.sql").symlink_to(secret)
    code, lines, _err = _check(monkeypatch, capsys, case)
    assert lines == [
        "indexes/stolen.sql:1:1: E109 symlink points outside indexes: refusing to read it",
        "migrations/0001_secret.sql:1:1: E109 symlink points outside migrations: refusing to read it",
    ]
    assert code == cli.EXIT_VALIDATION


def test_symlink_inside_the_folder_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "migrations" / "shared").mkdir(parents=True)
    (tmp_path / "indexes").mkdir()
    (tmp_path / "migrations" / "shared" / "t.sql").write_text("CREATE TABLE t (id int);\n", encoding="utf-8")
    (tmp_path / "migrations" / "0001_t.sql").symlink_to(Path("shared") / "t.sql")
    code, lines, err = _check(monkeypatch, capsys, tmp_path)
    # The subfolder itself is not a migration file; the link into it is fine.
    assert lines == ["migrations/shared:1:1: E100 not a migration file name NNNN_slug.sql"]
    assert code == cli.EXIT_VALIDATION
    assert err.startswith("1 migration(s)")


def test_display_paths_follow_the_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = DATA / "bad" / "seed_fragment"
    code, lines, _err = _check(
        monkeypatch,
        capsys,
        DATA / "bad",
        "--migrations-dir",
        "seed_fragment/migrations",
        "--indexes-dir",
        "seed_fragment/indexes",
    )
    assert code == cli.EXIT_VALIDATION
    assert lines == ["seed_fragment/" + line for line in _expected(case)]


def test_console_entry_in_a_subprocess() -> None:
    """`python -m schemad check` behaves like the in-process run: same stdout, exit 3."""
    case = DATA / "bad" / "seed_fragment"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCHEMAD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "schemad", "check"],
        cwd=case,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == _expected(case)
    assert proc.stderr.strip() == "0 migration(s), 0 index(es): 1 error(s), 0 warning(s)"
