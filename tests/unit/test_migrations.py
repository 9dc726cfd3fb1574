"""The migrations model: discovery, file names, directives, checksums, `schemad new` names."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from schemad import directives, migrations, rules, sourcefiles

if TYPE_CHECKING:
    from pathlib import Path


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- discovery


def test_discover_orders_by_numeric_version(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "0010_ten.sql": "CREATE TABLE ten (id int);\n",
            "0002_two.sql": "CREATE TABLE two (id int);\n",
            "9_nine.sql": "CREATE TABLE nine (id int);\n",
            "README.md": "not a migration\n",
            ".hidden.sql": "garbage",
        },
    )
    found, findings = migrations.discover(folder, "m")
    assert findings == []
    assert [(m.version, m.slug, m.name, m.path) for m in found] == [
        (2, "two", "0002_two", "m/0002_two.sql"),
        (9, "nine", "0009_nine", "m/9_nine.sql"),
        (10, "ten", "0010_ten", "m/0010_ten.sql"),
    ]


def test_discover_statement_positions(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "0001_x.sql": "-- heading\n\nCREATE TABLE a (id int);\n  CREATE TABLE b (id int); CREATE TABLE c (id int);\n"
        },
    )
    [m] = migrations.discover(folder, "m")[0]
    assert [(s.index, s.line, s.col, s.text) for s in m.statements] == [
        (0, 3, 1, "CREATE TABLE a (id int)"),
        (1, 4, 3, "CREATE TABLE b (id int)"),
        (2, 4, 28, "CREATE TABLE c (id int)"),
    ]


def test_discover_missing_folder(tmp_path: Path) -> None:
    found, findings = migrations.discover(tmp_path / "nope", "nope")
    assert found == []
    assert [(f.code, f.path, f.message) for f in findings] == [("E111", "nope", "folder nope does not exist")]


def test_discover_default_display_is_the_folder(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"0001_bad.sql": "SELEC 1;\n"})
    _found, findings = migrations.discover(folder)
    assert [f.path for f in findings] == [f"{folder}/0001_bad.sql"]


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("0001_Users.sql", True),
        ("0001-users.sql", True),
        ("0001_users.SQL", False),
        ("users.sql", False),
        ("0001.sql", False),
        ("0001_.sql", True),
        ("0001_users.sql.orig", False),
    ],
)
def test_bad_file_names(tmp_path: Path, name: str, hint: bool) -> None:
    folder = _write(tmp_path / "m", {name: "CREATE TABLE t (id int);\n"})
    found, findings = migrations.discover(folder, "m")
    assert found == []
    [f] = findings
    assert (f.code, f.path, f.line, f.col) == ("E100", f"m/{name}", 1, 1)
    assert ("lowercase letters" in f.message) is hint


def test_duplicate_versions_keep_the_first(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "m",
        {"0001_a.sql": "CREATE TABLE a (id int);\n", "01_b.sql": "CREATE TABLE b (id int);\n"},
    )
    found, findings = migrations.discover(folder, "m")
    assert [m.slug for m in found] == ["a"]
    assert [(f.code, f.path, f.message) for f in findings] == [
        ("E101", "m/01_b.sql", "version 1 is also used by m/0001_a.sql")
    ]


def test_a_directory_with_a_migration_name_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "m" / "0001_dir.sql").mkdir(parents=True)
    found, findings = migrations.discover(tmp_path / "m", "m")
    assert found == []
    assert [(f.code, f.message) for f in findings] == [("E109", "not a regular file")]


def test_special_files_and_broken_symlinks_are_refused_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "0001_fifo.sql")  # opening a FIFO to read would wait for a writer
    (folder / "0002_dangling.sql").symlink_to(folder / "absent.sql")
    (folder / "sub").mkdir()
    (folder / "0003_dir_link.sql").symlink_to(folder / "sub")
    found, findings = migrations.discover(folder, "m")
    assert found == []
    assert [(f.path, f.code, f.message) for f in findings if f.code == "E109"] == [
        ("m/0001_fifo.sql", "E109", "not a regular file"),
        ("m/0002_dangling.sql", "E109", "dangling or looping symlink"),
        ("m/0003_dir_link.sql", "E109", "not a regular file"),
    ]


def test_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sourcefiles, "MAX_FILE_BYTES", 16)
    folder = _write(tmp_path / "m", {"0001_big.sql": "CREATE TABLE big (id int);\n"})
    _found, findings = migrations.discover(folder, "m")
    assert [(f.code, f.message) for f in findings] == [("E110", "file is 27 bytes, over the 16-byte limit")]


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_bom.sql").write_bytes("\ufeffCREATE TABLE t (id int);\n".encode())
    [m], findings = migrations.discover(folder, "m")
    assert findings == []
    assert (m.statements[0].line, m.statements[0].col) == (1, 1)


def test_non_utf8_position_counts_characters(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    # "ü" and "é" are two bytes each: the column counts characters up to the bad byte.
    (folder / "0001_x.sql").write_bytes(b"-- \xc3\xbc\nSELECT '\xc3\xa9\xff';\n")
    _found, findings = migrations.discover(folder, "m")
    assert [(f.code, f.line, f.col, f.message) for f in findings] == [
        ("E102", 2, 10, "invalid UTF-8 byte 0xff")
    ]


def test_source_positions() -> None:
    src = sourcefiles.SourceFile("x.sql", "ab\nçdé\n\nz")
    assert [src.position(i) for i in (0, 1, 2, 3, 5, 6, 7, 8)] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 3),
        (2, 4),
        (3, 1),
        (4, 1),
    ]


@pytest.mark.parametrize("name", ["README", "README.md", "readme.txt", ".gitkeep", ".DS_Store"])
def test_ignored_names(name: str) -> None:
    assert sourcefiles.is_ignored(name)


@pytest.mark.parametrize("name", ["0001_readme.sql", "notes.md", "x.sql"])
def test_not_ignored_names(name: str) -> None:
    assert not sourcefiles.is_ignored(name)


# --------------------------------------------------------------------------- parse_migration


def _parse(text: str) -> tuple[migrations.Migration | None, list[str]]:
    source = sourcefiles.SourceFile("m/0007_x.sql", text)
    migration, findings = migrations.parse_migration(source, 7, "x")
    return migration, [f.format() for f in findings]


def test_parse_migration_directives() -> None:
    m, findings = _parse(
        "-- Add things.\n"
        "-- schemad:no-transaction\n"
        "-- schemad:lock-timeout=5s\n"
        "  -- schemad:statement-timeout=10min\n"
        "-- schemad:allow=set-not-null the table has 12 rows\n"
        "-- schemad:allow=W207 backfill of a tiny lookup table\n"
        "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
    )
    assert findings == []
    assert m is not None
    assert not m.transactional
    assert m.directives.lock_timeout_s == 5.0
    assert m.directives.statement_timeout_s == 600.0
    assert m.directives.allow == {
        "set-not-null": "the table has 12 rows",
        "W207": "backfill of a tiny lookup table",
    }


def test_parse_migration_defaults() -> None:
    m, findings = _parse("CREATE TABLE t (id int);\n")
    assert findings == []
    assert m is not None
    assert m.transactional
    assert m.directives == directives.Directives()


def test_parse_migration_empty_and_syntax_error() -> None:
    assert _parse("\n-- nothing\n") == (None, ["m/0007_x.sql:1:1: E103 no statements in migration file"])
    assert _parse("CREATE TABLE t (id int);\nCREATE TABEL u ();\n") == (
        None,
        ['m/0007_x.sql:2:8: E104 syntax error at or near "TABEL"'],
    )


def test_parse_migration_directive_errors() -> None:
    m, findings = _parse(
        "-- schemad:lock-timeout=5\n"
        "-- schemad:allow=W999 because\n"
        "-- schemad:frobnicate\n"
        "-- schemad:no-transaction=yes\n"
        "CREATE TABLE t (id int);\n"
        "-- schemad:no-transaction\n"
    )
    assert m is not None  # a directive error does not hide the statements
    assert findings == [
        "m/0007_x.sql:1:1: E108 bad duration '5' for lock-timeout (use e.g. 5s, 250ms, 10min)",
        "m/0007_x.sql:2:1: E108 allow names unknown or non-waivable rule 'W999'",
        "m/0007_x.sql:3:1: E108 unknown directive 'frobnicate'",
        "m/0007_x.sql:4:1: E108 unknown directive 'no-transaction=yes'",
        "m/0007_x.sql:6:1: E108 directives must come before the first statement",
    ]
    assert m.transactional


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("10min", 600.0), ("1h", 3600.0), ("1.5s", 1.5), (" 2s ", 2.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert directives.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "5 s", "5sec", "-1s", "1d", ""])
def test_parse_duration_rejects(text: str) -> None:
    assert directives.parse_duration(text) is None


def test_allow_accepts_codes_and_names_of_warnings_only() -> None:
    for rule in rules.RULES:
        text = f"-- schemad:allow={rule.code} reason\n-- schemad:allow={rule.name} reason\nSELECT 1;\n"
        found, errs = directives.parse_directives(text, first_statement_line=3, known_rules=rules.WAIVABLE)
        if rule.code.startswith("W"):
            assert errs == []
            assert found.allow == {rule.code: "reason", rule.name: "reason"}
        else:
            assert [e.line for e in errs] == [1, 2]
            assert found.allow == {}


# --------------------------------------------------------------------------- checksum


def test_checksum_survives_comment_and_layout_edits(tmp_path: Path) -> None:
    before = _write(
        tmp_path / "a", {"0001_x.sql": "CREATE TABLE t (id int);\nALTER TABLE t ADD COLUMN n text;\n"}
    )
    after = _write(
        tmp_path / "b",
        {
            "0001_x.sql": "-- why: tickets #12\ncreate table t (\n  id INT\n);\n\nalter table T add column n TEXT; -- ok\n"
        },
    )
    changed = _write(
        tmp_path / "c", {"0001_x.sql": "CREATE TABLE t (id bigint);\nALTER TABLE t ADD COLUMN n text;\n"}
    )
    [a], [b], [c] = (migrations.discover(f)[0] for f in (before, after, changed))
    assert a.checksum == b.checksum
    assert a.checksum != c.checksum
    assert len(a.checksum) == 64


def test_checksum_ignores_directive_comments() -> None:
    plain, _ = _parse("CREATE TABLE t (id int);\n")
    directed, _ = _parse("-- schemad:lock-timeout=1s\nCREATE TABLE t (id int);\n")
    assert plain is not None and directed is not None
    assert plain.checksum == directed.checksum


# --------------------------------------------------------------------------- next_file_name


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], "0001_add_users.sql"),
        ([1, 2, 3], "0004_add_users.sql"),
        ([7, 2], "0008_add_users.sql"),
        ([9999], "10000_add_users.sql"),
    ],
)
def test_next_file_name(existing: list[int], expected: str) -> None:
    assert migrations.next_file_name(existing, "add_users") == expected
    assert migrations.FILE_NAME.match(expected)


@pytest.mark.parametrize("slug", ["AddUsers", "add-users", "", "add users", "../x"])
def test_next_file_name_rejects_bad_slugs(slug: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        migrations.next_file_name([1], slug)
