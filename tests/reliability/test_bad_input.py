"""Promise 5 — bad input changes nothing: malformed migration, index and config files each get
a clear error and their documented exit code (3 for files, 78 for configuration), and the
database — schema (`pg_dump --schema-only`), ledger rows, event history, index history — is
exactly as before. Identifiers that come from files are always quoted: hostile but valid
index and table names build exactly what they say and nothing else.

The database starts with the example schema applied and its indexes built; every case runs
the real CLI against it from a working directory holding that schema's files plus the case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REPO, Database, run_schemad
from tests.reliability.support import record

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DATA_BAD = REPO / "tests" / "data" / "bad"
FILES, CONFIG = 3, 78


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], dict[str, str]]  # builds the case in a work dir; returns extra environment
    exit: int
    says: tuple[str, ...]  # what the output must contain: the rule code, the file, the reason
    commands: tuple[tuple[str, ...], ...] = (("migrate",),)
    expect_stdout: list[str] | None = field(default=None)


def snapshot(db: Database) -> str:
    """Everything the proofs compare: the schema and schemad's own rows, every column."""
    rows = db.sql(
        "SELECT (SELECT coalesce(string_agg(row_to_json(m)::text, E'\\n' ORDER BY version), '') "
        "FROM schemad.migrations m) || E'\\n' || "
        "(SELECT coalesce(string_agg(row_to_json(e)::text, E'\\n' ORDER BY id), '') FROM schemad.events e) "
        "|| E'\\n' || (SELECT coalesce(string_agg(row_to_json(b)::text, E'\\n' ORDER BY name), '') "
        "FROM schemad.index_builds b)"
    )
    return db.schema_dump() + "\n-- rows --\n" + rows


# --------------------------------------------------------------------------- case builders


def _add(name: str, data: bytes | str, *, folder: str = "migrations") -> Callable[[Path], dict[str, str]]:
    def make(work: Path) -> dict[str, str]:
        path = work / folder / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return {}
    return make


def _config(text: str | bytes) -> Callable[[Path], dict[str, str]]:
    def make(work: Path) -> dict[str, str]:
        path = work / "schemad.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return {"SCHEMAD_CONFIG": str(path)}
    return make


def _env(**values: str) -> Callable[[Path], dict[str, str]]:
    return lambda _work: dict(values)


def _symlink(name: str, target: str) -> Callable[[Path], dict[str, str]]:
    def make(work: Path) -> dict[str, str]:
        (work / "migrations" / name).symlink_to(target)
        return {}
    return make


def _fifo(work: Path) -> dict[str, str]:
    os.mkfifo(work / "migrations" / "0010_fifo.sql")
    return {}


def _directory(work: Path) -> dict[str, str]:
    (work / "migrations" / "0010_dir.sql").mkdir()
    return {}


def _edit_applied(work: Path) -> dict[str, str]:
    path = work / "migrations" / "0003_calendar_routing_rules.sql"
    path.write_text(path.read_text() + "\nCREATE TABLE sneaked_in (id int);\n")
    return {}


def _migrations_is_a_file(work: Path) -> dict[str, str]:
    shutil.rmtree(work / "migrations")
    (work / "migrations").write_text("not a folder")
    return {}


def _config_is_a_directory(work: Path) -> dict[str, str]:
    (work / "conf.d").mkdir()
    return {"SCHEMAD_CONFIG": str(work / "conf.d")}


def _bad_case(case: Path) -> Callable[[Path], dict[str, str]]:
    def make(work: Path) -> dict[str, str]:
        for sub in ("migrations", "indexes"):
            shutil.rmtree(work / sub, ignore_errors=True)
        for entry in case.iterdir():
            target = work / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, target, symlinks=True)
            else:
                shutil.copy(entry, target, follow_symlinks=False)
        return {}
    return make


HUGE = 9 * 1024 * 1024  # over sourcefiles.MAX_FILE_BYTES (8 MiB)
PASSWORD_FILE_MISSING = "/nonexistent/schemad-password"

EXTRA_CASES: list[Case] = [
    # Migration files
    Case("huge_migration", _add("0010_huge.sql", "-- padding\n" * (HUGE // 11) + "CREATE TABLE huge (id int);\n"),
         FILES, ("migrations/0010_huge.sql:1:1: E110", "over the")),
    Case("huge_index_file", _add("huge.sql", "-- x\n" * (HUGE // 5), folder="indexes"),
         FILES, ("indexes/huge.sql:1:1: E110",), (("migrate",), ("build-indexes",))),
    Case("applied_then_edited", _edit_applied, FILES,
         ("migrations/0003_calendar_routing_rules.sql:1:1: E130", "changed after it was applied")),
    Case("duplicate_of_applied_version", _add("003_again.sql", "CREATE TABLE again (id int);\n"),
         FILES, ("E101",)),
    Case("name_with_sql", _add("0010_x;drop table businesses.sql", "CREATE TABLE x (id int);\n"),
         FILES, ("E100", "0010_x;drop table businesses.sql")),
    Case("name_with_quote_and_comment", _add("0010_a'--.sql", "CREATE TABLE a (id int);\n"), FILES, ("E100",)),
    Case("symlink_to_etc_passwd", _symlink("0010_passwd.sql", "/etc/passwd"), FILES, ("E109", "outside")),
    Case("fifo", _fifo, FILES, ("migrations/0010_fifo.sql:1:1: E109", "not a regular file")),
    Case("directory_named_like_a_migration", _directory, FILES, ("migrations/0010_dir.sql:1:1: E109",)),
    Case("utf16", _add("0010_utf16.sql", "CREATE TABLE u (id int);\n".encode("utf-16")), FILES, ("E102",)),
    Case("latin1", _add("0010_latin1.sql", "COMMENT ON TABLE businesses IS 'café';\n".encode("latin-1")),
         FILES, ("migrations/0010_latin1.sql:1:", "E102", "0xe9")),
    Case("binary_junk", _add("0010_junk.sql", bytes(range(256)) * 64), FILES, ("E102",)),
    Case("unterminated_dollar_quote",
         _add("0010_fn.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1;\n"), FILES, ("E104",)),
    Case("statement_fragment", _add("0010_frag.sql", "ADD COLUMN x int;\n"), FILES, ("E104",)),
    Case("migrations_folder_is_a_file", _migrations_is_a_file, FILES, ("E111",)),
    # Index files
    Case("index_file_smuggling_a_drop",
         _add("smuggle.sql", "CREATE INDEX ix_smuggle ON businesses (name); DROP TABLE businesses;\n",
              folder="indexes"),
         FILES, ("indexes/smuggle.sql:1:", "E120"), (("migrate",), ("build-indexes",))),
    Case("index_name_as_injection_unquoted",
         _add("inject.sql", "CREATE INDEX x; DROP TABLE businesses; -- ON businesses (name);\n", folder="indexes"),
         FILES, ("indexes/inject.sql:1:",), (("migrate",), ("build-indexes",))),
    Case("index_duplicate_of_registry_name",
         _add("dup.sql", "CREATE INDEX idx_appointments_calendar_id ON appointments (id);\n", folder="indexes"),
         FILES, ("E122",), (("build-indexes",),)),
    # Configuration
    Case("config_unknown_key", _config("lock_timeout = 5\n"), CONFIG, ("unknown key 'lock_timeout'",)),
    Case("config_wrong_type", _config('lock_timeout_s = "soon"\n'), CONFIG, ("lock_timeout_s", "schemad.toml")),
    Case("config_toml_syntax", _config("lock_timeout_s = \n"), CONFIG, ("schemad.toml",)),
    Case("config_not_utf8", _config(b"lock_timeout_s = 2\n# \xff\xfe\n"), CONFIG, ("schemad.toml",)),
    Case("config_missing_file", _env(SCHEMAD_CONFIG="/nonexistent/schemad.toml"), CONFIG, ("not found",)),
    Case("config_is_a_directory", _config_is_a_directory, CONFIG, ("conf.d",)),
    Case("config_negative_wait", _config("lock_wait_s = -1\n"), CONFIG, ("lock_wait_s",)),
    Case("config_ledger_schema_injection", _config('ledger_schema = "x; DROP TABLE businesses; --"\n'),
         CONFIG, ("ledger_schema",)),
    Case("config_notify_channel_injection", _config("notify_channel = \"schemad'; DROP TABLE businesses; --\"\n"),
         CONFIG, ("notify_channel",)),
    Case("config_bad_window", _config('throttle_windows = ["25:00-26:00"]\n'), CONFIG, ("throttle_windows",),
         (("build-indexes",),)),
    Case("config_bad_metrics_addr", _config('metrics_addr = "nowhere"\n'), CONFIG, ("metrics_addr",), (("run",),)),
    Case("config_huge", _config("# padding\n" * (HUGE // 10) + "no_such_setting = 1\n"), CONFIG,
         ("no_such_setting",)),
    Case("env_unknown_variable", _env(SCHEMAD_LOCK_TIMEOUT="5"), CONFIG, ("SCHEMAD_LOCK_TIMEOUT",)),
    Case("env_bad_value", _env(SCHEMAD_LOCK_WAIT_S="soon"), CONFIG, ("lock_wait_s",)),
    Case("password_file_missing", _env(SCHEMAD_PASSWORD_FILE=PASSWORD_FILE_MISSING), CONFIG,
         ("password file", "not found")),
]

DATA_CASES: list[Case] = []
for _case in sorted(p for p in DATA_BAD.iterdir() if p.is_dir()):
    _expected = (_case / "expect.txt").read_text(encoding="utf-8").splitlines()
    _commands: tuple[tuple[str, ...], ...] = (("migrate",),)
    if _case.name.startswith("index_"):
        _commands = (("migrate",), ("build-indexes",))
    DATA_CASES.append(Case(f"data_{_case.name}", _bad_case(_case), FILES, (), _commands, _expected))

ALL_CASES = DATA_CASES + EXTRA_CASES
FAST = {
    "data_seed_fragment", "data_symlink_outside", "data_non_utf8", "data_index_seed_fragment", "huge_migration",
    "applied_then_edited", "fifo", "index_name_as_injection_unquoted", "config_ledger_schema_injection",
    "env_unknown_variable",
}


@pytest.fixture
def applied(database: Database, tmp_path: Path) -> tuple[Database, Path]:
    """The example schema applied and its indexes built; returns the database and its files."""
    base = tmp_path / "base"
    shutil.copytree(REPO / "migrations", base / "migrations")
    shutil.copytree(REPO / "indexes", base / "indexes")
    folders = ("--migrations-dir", str(base / "migrations"), "--indexes-dir", str(base / "indexes"))
    for command in ("migrate", "build-indexes"):
        res = run_schemad(command, "--dsn", database.dsn, *folders)
        assert res.returncode == 0, res.stderr
    return database, base


def run_case(case: Case, db: Database, base: Path, tmp_path: Path) -> tuple[list[float], int]:
    """Run the case's commands; returns their durations and how many changed the database."""
    work = tmp_path / case.name
    shutil.copytree(base, work, symlinks=True)
    env = case.make(work)
    before = snapshot(db)
    took: list[float] = []
    changed = 0
    for command in case.commands:
        args = [*command, "--dsn", db.dsn]
        if command == ("run",):
            args = ["run", "--dsn", db.dsn]
        started = time.monotonic()
        res = run_schemad(*args, env=env, cwd=work, timeout=60)
        took.append(time.monotonic() - started)
        output = res.stdout + res.stderr
        assert res.returncode == case.exit, (case.name, command, res.returncode, output[-3000:])
        assert "Traceback" not in output, output[-3000:]
        for fragment in case.says:
            assert fragment in output, (case.name, command, fragment, output[-3000:])
        if case.exit == FILES:
            assert res.stderr.rstrip().endswith("nothing was executed"), (case.name, res.stderr[-2000:])
        if case.expect_stdout is not None:
            assert res.stdout.splitlines() == case.expect_stdout, (case.name, command, res.stdout)
        else:
            assert len(output) < 20_000, "a clear error, not a dump"
        changed += snapshot(db) != before
    return took, changed


def campaign(cases: list[Case], db: Database, base: Path, tmp_path: Path, name: str) -> None:
    took: list[float] = []
    changed: list[str] = []
    for case in cases:
        durations, n = run_case(case, db, base, tmp_path)
        took += durations
        changed += [case.name] * n
    record(name, {
        "cases": len(cases), "runs": len(took), "from_tests_data_bad": sum(1 for c in cases if c in DATA_CASES),
        "config_cases_exit_78": sum(1 for c in cases if c.exit == CONFIG),
        "file_cases_exit_3": sum(1 for c in cases if c.exit == FILES),
        "database_changed": len(changed), "slowest_run_s": round(max(took), 2),
    })
    assert changed == [], f"these cases changed the database: {changed}"


def test_bad_input_fast(applied: tuple[Database, Path], tmp_path: Path) -> None:
    db, base = applied
    cases = [c for c in ALL_CASES if c.name in FAST]
    assert len(cases) == len(FAST)
    campaign(cases, db, base, tmp_path, "bad_input_fast")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_input_all(applied: tuple[Database, Path], tmp_path: Path) -> None:
    db, base = applied
    assert len(ALL_CASES) >= 40
    campaign(ALL_CASES, db, base, tmp_path, "bad_input_all")


def test_case_names_are_unique() -> None:
    names = [c.name for c in ALL_CASES]
    assert len(names) == len(set(names)) and FAST <= set(names)


# --------------------------------------------------------------------------- hostile but valid names


HOSTILE_MIGRATION = (
    'CREATE TABLE "we""ird; table" (id int, k int, note text);\n'
    "CREATE TABLE y (id int);\n"
)
HOSTILE_INDEXES = (
    '-- a name that reads as SQL: it must reach the server as one quoted identifier\n'
    'CREATE INDEX "x; DROP TABLE y; --" ON "we""ird; table" (id);\n'
    'CREATE INDEX "Weird Name; --" ON "we""ird; table" (k) WHERE note <> \'x\'\'; DROP TABLE y; --\';\n'
)


def test_hostile_identifiers_are_quoted(database: Database, folders: tuple[Path, Path]) -> None:
    """Valid SQL names that look like SQL: built, repaired and replaced under their exact
    names, and nothing else happens (table y survives every statement schemad sends)."""
    mdir, idir = folders
    (mdir / "0001_hostile.sql").write_text(HOSTILE_MIGRATION)
    (idir / "hostile.sql").write_text(HOSTILE_INDEXES)
    folder_args = ("--dsn", database.dsn, "--migrations-dir", str(mdir), "--indexes-dir", str(idir))
    assert run_schemad("migrate", *folder_args).returncode == 0
    # An interrupted build of one of them left an invalid index: schemad must drop it (by its
    # quoted name) and build it again.
    database.sql(
        'INSERT INTO "we""ird; table" VALUES (1, 1, \'a\'), (2, 1, \'b\');'
    )
    subprocess.run(
        ["psql", database.dsn, "-X", "-q", "-c",
         'CREATE UNIQUE INDEX CONCURRENTLY "Weird Name; --" ON "we""ird; table" (k)'],
        capture_output=True, text=True, check=False,
    )
    assert database.sql(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = '\"Weird Name; --\"'::regclass"
    ) == "f", "the setup left an invalid index"
    res = run_schemad("build-indexes", *folder_args)
    assert res.returncode == 0, res.stdout + res.stderr
    names = database.sql(
        "SELECT string_agg(c.relname || ':' || i.indisvalid, ',' ORDER BY c.relname) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '\"we\"\"ird; table\"'::regclass"
    )
    assert names == "Weird Name; --:true,x; DROP TABLE y; --:true"
    assert database.sql("SELECT to_regclass('y') IS NOT NULL") == "t"
    definition = database.sql("SELECT pg_get_indexdef('\"Weird Name; --\"'::regclass)")
    assert definition == (
        'CREATE INDEX "Weird Name; --" ON public."we""ird; table" USING btree (k) '
        "WHERE (note <> 'x''; DROP TABLE y; --'::text)"
    )
    sent = database.sql(
        "SELECT string_agg(detail->>'sql', E'\\n' ORDER BY id) FROM schemad.events WHERE kind = 'index'"
    )
    # Every statement schemad sent, as recorded in its event history: one identifier each.
    assert sent.splitlines() == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."Weird Name; --"',
        ('CREATE INDEX CONCURRENTLY "Weird Name; --" ON "we""ird; table" USING btree (k) '
        "WHERE note <> 'x''; DROP TABLE y; --'"),
        'CREATE INDEX CONCURRENTLY "x; DROP TABLE y; --" ON "we""ird; table" USING btree (id)',
    ]

    # Drift, replaced: the replacement's temporary name and the rename are quoted too.
    (idir / "hostile.sql").write_text(HOSTILE_INDEXES.replace("(k) WHERE", "(k, id) WHERE"))
    res = run_schemad("build-indexes", *folder_args, env={"SCHEMAD_INDEX_REPLACE_DRIFTED": "true"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert database.sql("SELECT pg_get_indexdef('\"Weird Name; --\"'::regclass)").endswith(
        "USING btree (k, id) WHERE (note <> 'x''; DROP TABLE y; --'::text)"
    )
    assert database.sql("SELECT to_regclass('y') IS NOT NULL") == "t"
    assert database.sql(
        "SELECT count(*) FROM pg_class WHERE relkind = 'i' AND relname LIKE '%sdnew%'"
    ) == "0"
    replaced = database.sql(
        "SELECT string_agg(detail->>'sql', E'\\n' ORDER BY id) FROM schemad.events WHERE kind = 'index' AND id > "
        "(SELECT max(id) FROM schemad.events WHERE detail->>'sql' LIKE 'CREATE INDEX CONCURRENTLY \"x;%')"
    )
    assert replaced.splitlines() == [
        ('CREATE INDEX CONCURRENTLY "Weird Name; --_sdnew" ON "we""ird; table" USING btree (k, id) '
        "WHERE note <> 'x''; DROP TABLE y; --'"),
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."Weird Name; --"',
        'ALTER INDEX "public"."Weird Name; --_sdnew" RENAME TO "Weird Name; --"',
    ]
