"""A 60-migration corpus for the reliability proofs, with a probe for every object it makes.

Mixed DDL (tables, constraints, ALTERs of earlier tables, enums, domains, views, sequences,
triggers), dollar-quoted functions holding `;` and quotes, data, short sleeps that widen
the apply window, and two `-- schemad:no-transaction` migrations whose statements are all
re-runnable (`IF NOT EXISTS`, `OR REPLACE`, `ADD VALUE IF NOT EXISTS`, `VACUUM`).

Every transactional migration appends one row to `corpus.apply_log`; its probe requires
exactly one row, so a migration applied twice fails its probe. Probes only ever assert
that something exists, so a migration that never ran has 0 probes true, a complete one
has all of them true, and anything in between is a partially applied migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SIZE = 60
NO_TRANSACTION = frozenset({23, 47})
LOG = "corpus.apply_log"


@dataclass(frozen=True, slots=True)
class CorpusMigration:
    version: int
    slug: str
    sql: str
    transactional: bool
    probes: tuple[str, ...]  # SQL boolean expressions: each is true once the migration's work exists

    @property
    def name(self) -> str:
        return f"{self.version:04d}_{self.slug}"

    @property
    def file_name(self) -> str:
        return f"{self.name}.sql"


# --------------------------------------------------------------------------- probes


def _table(name: str) -> str:
    return f"to_regclass('{name}') IS NOT NULL"


def _column(table: str, column: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{table}') "
        f"AND attname = '{column}' AND NOT attisdropped)"
    )


def _constraint(table: str, name: str, *, validated: bool = True) -> str:
    extra = " AND convalidated" if validated else ""
    return f"EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('{table}') AND conname = '{name}'{extra})"


def _function(signature: str) -> str:
    return f"to_regprocedure('{signature}') IS NOT NULL"


def _type(name: str) -> str:
    return f"to_regtype('{name}') IS NOT NULL"


def _enum_value(type_name: str, label: str) -> str:
    return f"EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype('{type_name}') AND enumlabel = '{label}')"


def _trigger(table: str, name: str) -> str:
    return f"EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass('{table}') AND tgname = '{name}')"


def _comment(table: str, text: str) -> str:
    return f"obj_description(to_regclass('{table}'), 'pg_class') = '{text}'"


def _exactly_one_row(table: str, where: str) -> str:
    """Exactly one matching row; false (not an error) while the table does not exist."""
    query = f"SELECT count(*) AS n FROM {table} WHERE {where}".replace("'", "''")
    return (
        f"CASE WHEN to_regclass('{table}') IS NULL THEN false ELSE "
        f"(xpath('/row/n/text()', query_to_xml('{query}', false, true, '')))[1]::text = '1' END"
    )


def _logged(version: int) -> str:
    return _exactly_one_row(LOG, f"version = {version}")


# --------------------------------------------------------------------------- templates


def _first() -> tuple[str, str, list[str]]:
    sql = (
        "CREATE SCHEMA corpus;\n"
        "CREATE TYPE corpus.state AS ENUM ('new', 'active');\n"
        "CREATE TABLE corpus.apply_log (\n"
        "    version integer NOT NULL,\n"
        "    backend integer NOT NULL DEFAULT pg_backend_pid(),\n"
        "    at timestamptz NOT NULL DEFAULT clock_timestamp()\n"
        ");\n"
        "CREATE TABLE corpus.base (\n"
        "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
        "    state corpus.state NOT NULL DEFAULT 'new',\n"
        "    note text\n"
        ");\n"
    )
    probes = [
        "to_regnamespace('corpus') IS NOT NULL", _type("corpus.state"), _table(LOG), _table("corpus.base"),
    ]
    return "base", sql, probes


def _table_migration(i: int) -> tuple[str, str, list[str]]:
    t = f"corpus.t{i}"
    comment = f"table {i}; it''s got a semicolon"
    sql = (
        f"CREATE TABLE {t} (\n"
        "    id bigint PRIMARY KEY,\n"
        "    base_id bigint REFERENCES corpus.base (id),\n"
        "    label text NOT NULL DEFAULT 'x;y',\n"
        "    created_at timestamptz NOT NULL DEFAULT now(),\n"
        f"    CONSTRAINT t{i}_label_len CHECK (length(label) < 200)\n"
        ");\n"
        f"COMMENT ON TABLE {t} IS '{comment}';\n"
    )
    return f"table_{i}", sql, [_table(t), _constraint(t, f"t{i}_label_len"), _comment(t, comment)]


def _function_migration(i: int) -> tuple[str, str, list[str]]:
    sql = (
        f"CREATE FUNCTION corpus.f{i}(n integer) RETURNS text\n"
        "LANGUAGE plpgsql AS $fn$\n"
        "DECLARE\n"
        "    s text := $q$it's; a \"string\" with $ signs$q$;\n"
        "BEGIN\n"
        "    IF n < 0 THEN\n"
        "        RAISE EXCEPTION 'negative: %', n;\n"
        "    END IF;\n"
        "    RETURN s || n::text;  -- a comment; with a semicolon\n"
        "END;\n"
        "$fn$;\n"
        f"CREATE FUNCTION corpus.g{i}(a integer, b integer) RETURNS integer\n"
        "LANGUAGE sql IMMUTABLE AS $$ SELECT a + b; $$;\n"
        "/* a block comment; /* nested */ still a comment */\n"
        "SELECT pg_sleep(0.02);\n"
    )
    return f"functions_{i}", sql, [_function(f"corpus.f{i}(integer)"), _function(f"corpus.g{i}(integer,integer)")]


def _alter_migration(i: int, table: int) -> tuple[str, str, list[str]]:
    t = f"corpus.t{table}"
    sql = (
        f"ALTER TABLE {t} ADD COLUMN c{i} integer;\n"
        f"ALTER TABLE {t} ADD CONSTRAINT t{table}_c{i}_pos CHECK (c{i} >= 0) NOT VALID;\n"
        f"ALTER TABLE {t} VALIDATE CONSTRAINT t{table}_c{i}_pos;\n"
        f"ALTER TABLE {t} ALTER COLUMN label SET DEFAULT 'altered by {i}';\n"
    )
    default = (
        f"pg_get_expr((SELECT adbin FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid "
        f"AND a.attnum = d.adnum WHERE d.adrelid = to_regclass('{t}') AND a.attname = 'label'), "
        f"to_regclass('{t}')) LIKE '%altered by {i}%'"
    )
    probes = [_column(t, f"c{i}"), _constraint(t, f"t{table}_c{i}_pos"), default]
    return f"alter_t{table}_{i}", sql, probes


def _enum_migration(i: int) -> tuple[str, str, list[str]]:
    sql = (
        f"CREATE TYPE corpus.e{i} AS ENUM ('a', 'b', 'c;d');\n"
        f"CREATE DOMAIN corpus.d{i} AS text CHECK (VALUE <> '');\n"
        f"CREATE TABLE corpus.uses_e{i} (v corpus.e{i} NOT NULL DEFAULT 'c;d', w corpus.d{i});\n"
    )
    return f"enum_{i}", sql, [_type(f"corpus.e{i}"), _type(f"corpus.d{i}"), _table(f"corpus.uses_e{i}")]


def _view_migration(i: int, function: int, archived: bool) -> tuple[str, str, list[str]]:
    where = "b.state <> 'archived'" if archived else "b.note IS DISTINCT FROM 'x;--'"
    sql = (
        f"CREATE VIEW corpus.v{i} AS\n"
        f"SELECT b.id, b.state, corpus.f{function}(b.id::integer) AS label\n"
        f"FROM corpus.base b WHERE {where};\n"
    )
    return f"view_{i}", sql, [_table(f"corpus.v{i}")]


def _trigger_migration(i: int, table: int) -> tuple[str, str, list[str]]:
    t = f"corpus.t{table}"
    sql = (
        f"CREATE FUNCTION corpus.touch_{i}() RETURNS trigger\n"
        "LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n"
        "    NEW.created_at := now();  -- ; inside a dollar quote\n"
        "    RETURN NEW;\n"
        "END\n"
        "$body$;\n"
        f"CREATE TRIGGER touch_{i} BEFORE INSERT OR UPDATE ON {t}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION corpus.touch_{i}();\n"
    )
    return f"trigger_{i}", sql, [_function(f"corpus.touch_{i}()"), _trigger(t, f"touch_{i}")]


def _data_migration(i: int) -> tuple[str, str, list[str]]:
    sql = (
        f"-- schemad:allow=data-change seed rows belong to the corpus\n"
        f"CREATE TABLE corpus.bulk{i} AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 20000) g;\n"
        f"INSERT INTO corpus.base (state, note) VALUES ('active', 'seed {i}');\n"
        "SELECT pg_sleep(0.02);\n"
    )
    probes = [_table(f"corpus.bulk{i}"), _exactly_one_row("corpus.base", f"note = 'seed {i}'")]
    return f"data_{i}", sql, probes


def _sequence_migration(i: int, table: int) -> tuple[str, str, list[str]]:
    t = f"corpus.t{table}"
    sql = (
        "-- schemad:allow=rename renamed in the migration that creates it\n"
        f"CREATE SEQUENCE corpus.s{i} START 100;\n"
        f"ALTER TABLE {t} ADD COLUMN ref{i} bigint;\n"
        f"ALTER TABLE {t} ADD CONSTRAINT t{table}_ref{i}_fk FOREIGN KEY (ref{i}) REFERENCES corpus.base (id) NOT VALID;\n"
        f"CREATE TABLE corpus.tmp{i} (id integer);\n"
        f"ALTER TABLE corpus.tmp{i} RENAME TO renamed{i};\n"
    )
    probes = [
        _table(f"corpus.s{i}"), _column(t, f"ref{i}"), _constraint(t, f"t{table}_ref{i}_fk", validated=False),
        _table(f"corpus.renamed{i}"),
    ]
    return f"sequence_{i}", sql, probes


def _no_transaction_migration(i: int) -> tuple[str, str, list[str]]:
    t = f"corpus.notx{i}"
    label = "archived" if i == min(NO_TRANSACTION) else f"retired{i}"
    sql = (
        "-- schemad:no-transaction\n"
        "-- every statement is safe to re-run: the whole file runs again after a failure\n"
        f"ALTER TYPE corpus.state ADD VALUE IF NOT EXISTS '{label}';\n"
        f"CREATE TABLE IF NOT EXISTS {t} (id integer);\n"
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS note text;\n"
        f"CREATE OR REPLACE FUNCTION corpus.notx_f{i}() RETURNS integer LANGUAGE sql AS $$ SELECT {i} $$;\n"
        "VACUUM (ANALYZE) corpus.base;\n"
        "SELECT pg_sleep(0.05);\n"
        f"COMMENT ON TABLE {t} IS 'no transaction {i}';\n"
    )
    probes = [
        _enum_value("corpus.state", label), _table(t), _column(t, "note"), _function(f"corpus.notx_f{i}()"),
        _comment(t, f"no transaction {i}"),
    ]
    return f"no_transaction_{i}", sql, probes


def build() -> list[CorpusMigration]:
    """The corpus, deterministic: the same 60 files on every call."""
    out: list[CorpusMigration] = []
    last_table = 0
    last_function = 0
    for i in range(1, SIZE + 1):
        transactional = i not in NO_TRANSACTION
        if i == 1:
            slug, sql, probes = _first()
        elif not transactional:
            slug, sql, probes = _no_transaction_migration(i)
        else:
            kind = i % 8
            if last_table == 0 or kind == 2:
                slug, sql, probes = _table_migration(i)
                last_table = i
            elif last_function == 0 or kind == 3:
                slug, sql, probes = _function_migration(i)
                last_function = i
            elif kind == 4:
                slug, sql, probes = _alter_migration(i, last_table)
            elif kind == 5:
                slug, sql, probes = _enum_migration(i)
            elif kind == 6:
                slug, sql, probes = _view_migration(i, last_function, archived=i > min(NO_TRANSACTION))
            elif kind == 7:
                slug, sql, probes = _trigger_migration(i, last_table)
            elif kind == 0:
                slug, sql, probes = _data_migration(i)
            else:
                slug, sql, probes = _sequence_migration(i, last_table)
        if transactional:
            sql = (
                ("-- schemad:allow=data-change the apply log proves exactly-once application\n"
                 if "allow=data-change" not in sql else "")
                + sql + f"INSERT INTO {LOG} (version) VALUES ({i});\n"
            )
            probes = [*probes, _logged(i)]
        out.append(CorpusMigration(i, slug, _directives_first(sql), transactional, tuple(probes)))
    return out


def _directives_first(sql: str) -> str:
    """Directive comment lines must come before the first statement."""
    lines = sql.splitlines(keepends=True)
    head = [ln for ln in lines if ln.startswith("-- schemad:")]
    return "".join(head + [ln for ln in lines if not ln.startswith("-- schemad:")])


def write(folder: Path, corpus: list[CorpusMigration], *, upto: int | None = None) -> None:
    """Write the corpus (or its first ``upto`` migrations) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in corpus[:upto]:
        (folder / m.file_name).write_text(m.sql, encoding="utf-8")


def probe_sql(corpus: list[CorpusMigration]) -> str:
    """One query: ``version|present|total`` per migration (present = probes that hold)."""
    rows = [
        f"SELECT {m.version} AS version, "
        + " + ".join(f"(coalesce({p}, false))::int" for p in m.probes)
        + f" AS present, {len(m.probes)} AS total"
        for m in corpus
    ]
    return "\nUNION ALL\n".join(rows) + "\nORDER BY 1"


def partial_problems(
    corpus: list[CorpusMigration], probe_rows: dict[int, tuple[int, int]], recorded: set[int]
) -> list[str]:
    """Every way the catalog and the ledger disagree (empty when they agree).

    A recorded migration must have all its objects; a transactional migration not recorded
    must have none. A no-transaction migration not recorded may be half done (it is re-run
    whole), but only if it is the first unrecorded migration: nothing after it ran.
    """
    problems: list[str] = []
    first_unrecorded = min((m.version for m in corpus if m.version not in recorded), default=None)
    for m in corpus:
        present, total = probe_rows[m.version]
        may_be_half_done = not m.transactional and m.version == first_unrecorded
        if m.version in recorded and present != total:
            problems.append(f"{m.name} is recorded but only {present}/{total} of its probes hold")
        elif m.version not in recorded and not may_be_half_done and present != 0:
            problems.append(f"{m.name} is not recorded but {present}/{total} of its probes hold")
    gaps = sorted(v for v in recorded if first_unrecorded is not None and v > first_unrecorded)
    if gaps:
        problems.append(f"versions {gaps} are recorded after the unrecorded {first_unrecorded}")
    return problems
