"""The parser seam: splitting, character positions, checksums, and index rendering."""

from __future__ import annotations

import pytest

from schemad import migrations, sqlparser


def _texts(sql: str) -> list[str]:
    return [s.text for s in sqlparser.parse(sql)]


def _checksum(sql: str) -> str:
    return migrations.checksum(sqlparser.parse(sql))


# --------------------------------------------------------------------------- splitting


def test_split_plain_statements() -> None:
    sql = "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);  DROP TABLE a\n"
    assert _texts(sql) == ["CREATE TABLE a (id int)", "INSERT INTO a VALUES (1)", "DROP TABLE a"]


def test_split_keeps_dollar_quoted_bodies_whole() -> None:
    body = "BEGIN\n  PERFORM 1; PERFORM 2;\n  RETURN NEW;\nEND;"
    sql = (
        f"CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\n{body}\n$$;\n"
        "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $t$ SELECT $$a;b$$ $t$;\n"
        "SELECT 1;\n"
    )
    texts = _texts(sql)
    assert len(texts) == 3
    assert body in texts[0]
    assert texts[1].endswith("$t$ SELECT $$a;b$$ $t$")


def test_split_escape_strings_and_doubled_quotes() -> None:
    sql = "SELECT E'it\\'s; here';\nSELECT 'a''b; c';\nSELECT E'back\\\\';SELECT 2;"
    assert _texts(sql) == ["SELECT E'it\\'s; here'", "SELECT 'a''b; c'", "SELECT E'back\\\\'", "SELECT 2"]


def test_split_nested_block_comments() -> None:
    sql = "/* a /* b ; */ c ; */ SELECT 1;\n/* x; */ SELECT /* ; /* ; */ ; */ 2;\n-- ; SELECT 3;\n"
    assert _texts(sql) == ["SELECT 1", "SELECT /* ; /* ; */ ; */ 2"]


def test_split_nothing() -> None:
    assert sqlparser.parse("") == []
    assert sqlparser.parse("-- only a comment\n/* and /* nested */ */\n\n") == []


def test_statement_positions_skip_leading_comments() -> None:
    sql = "-- heading\nSELECT 1;  /* note */ SELECT 2;"
    first, second = sqlparser.parse(sql)
    assert sql[first.start :].startswith("SELECT 1")
    assert sql[second.start :].startswith("SELECT 2")


# --------------------------------------------------------------------------- offsets


def test_statement_offsets_are_characters_after_non_ascii() -> None:
    sql = "-- 日本語 🎉 é\nSELECT 'ü';\nSELECT 'done';"
    first, second = sqlparser.parse(sql)
    assert first.start == sql.index("SELECT 'ü'")
    assert second.start == sql.index("SELECT 'done'")
    assert sql[first.start : first.end] == first.text == "SELECT 'ü'"
    assert sql[second.start : second.end] == second.text == "SELECT 'done'"


@pytest.mark.parametrize(
    ("sql", "token"),
    [
        ("SELECT 1 FRM x;", "x"),
        ("SELECT 'ü' FRM café;", "café"),
        ("-- 日本語\nSELECT '🎉🎉' FRM tbl;", "tbl"),
        ("CREATE TABLE été (ö int, ü text DEFAULT '日本' CHECK x);", "x"),
    ],
)
def test_syntax_error_offset_is_in_characters(sql: str, token: str) -> None:
    with pytest.raises(sqlparser.SqlSyntaxError) as info:
        sqlparser.parse(sql)
    assert info.value.offset == sql.rindex(token)
    assert info.value.message == f'syntax error at or near "{token}"'


@pytest.mark.parametrize(
    "sql", ["CREATE TABLE t (id int", "CREATE TABLE été (ö int, ü text DEFAULT '日本'\n"]
)
def test_syntax_error_at_end_of_input_points_past_the_text(sql: str) -> None:
    with pytest.raises(sqlparser.SqlSyntaxError) as info:
        sqlparser.parse(sql)
    assert info.value.offset == len(sql)
    assert info.value.message == "syntax error at end of input"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 'open;\nSELECT 2;\n", 'unterminated quoted string at or near "\'open;..."'),
        ("SELECT 1; /* open\n comment", 'unterminated /* comment at or near "/* open..."'),
        ("SELECT $$ body;\nmore", 'unterminated dollar-quoted string at or near "$$ body;..."'),
    ],
)
def test_unterminated_literal_message_is_one_line(sql: str, message: str) -> None:
    with pytest.raises(sqlparser.SqlSyntaxError) as info:
        sqlparser.parse(sql)
    assert info.value.message == message
    assert "\n" not in info.value.message


# --------------------------------------------------------------------------- checksums

BASE = "CREATE TABLE accounts (\n    id bigint PRIMARY KEY,\n    name text NOT NULL DEFAULT 'x'\n);\n"


@pytest.mark.parametrize(
    "edited",
    [
        "-- a new comment\n" + BASE,
        BASE + "/* trailing /* nested */ note */\n",
        "CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'x');",
        "create table accounts (\n\tid BIGINT primary key,  -- the key\n\tname TEXT not null default 'x'\n)\n;",
        "CREATE TABLE ACCOUNTS (ID bigint PRIMARY KEY, Name text NOT NULL DEFAULT 'x');",
    ],
)
def test_checksum_ignores_comments_whitespace_and_case(edited: str) -> None:
    assert _checksum(edited) == _checksum(BASE)


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace("DEFAULT 'x'", "DEFAULT 'X'"),  # string contents are data
        BASE.replace("accounts", '"Accounts"'),  # a quoted identifier keeps its case
        BASE.replace("bigint", "int"),
        BASE.replace("NOT NULL ", ""),
        BASE + "CREATE TABLE other (id int);\n",
    ],
)
def test_checksum_changes_on_a_real_edit(edited: str) -> None:
    assert _checksum(edited) != _checksum(BASE)


def test_checksum_depends_on_statement_boundaries() -> None:
    assert _checksum("SELECT 1; SELECT 2;") != _checksum("SELECT 2; SELECT 1;")
    assert _checksum("SELECT 1;") != _checksum("SELECT 1; SELECT 1;")


# --------------------------------------------------------------------------- statements


@pytest.mark.parametrize(
    ("sql", "node", "command"),
    [
        ("CREATE TABLE t (id int)", "create_stmt", "CREATE TABLE"),
        ("DROP TABLE t", "drop_stmt", "DROP TABLE"),
        ("DROP INDEX CONCURRENTLY i", "drop_stmt", "DROP INDEX"),
        ("ALTER TABLE t RENAME COLUMN a TO b", "rename_stmt", "ALTER COLUMN RENAME"),
        ("START TRANSACTION", "transaction_stmt", "START"),
        ("ROLLBACK TO SAVEPOINT s", "transaction_stmt", "ROLLBACK TO"),
        ("VACUUM", "vacuum_stmt", "VACUUM"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "alter_system_stmt", "ALTER SYSTEM"),
        ("DO $$ BEGIN END $$", "do_stmt", "DO"),
    ],
)
def test_statement_command(sql: str, node: str, command: str) -> None:
    [stmt] = sqlparser.parse(sql)
    assert (stmt.node, stmt.command) == (node, command)


def test_statement_flags() -> None:
    drop_idx, detach, cluster_all, cluster_one, reindex = sqlparser.parse(
        "DROP INDEX CONCURRENTLY i; ALTER TABLE p DETACH PARTITION c CONCURRENTLY;"
        "CLUSTER; CLUSTER t USING i; REINDEX TABLE CONCURRENTLY t;"
    )
    assert (drop_idx.drop_type, drop_idx.concurrent) == ("INDEX", True)
    assert detach.concurrent
    assert not cluster_all.has_relation
    assert cluster_one.has_relation
    assert reindex.concurrent


def test_alter_table_commands() -> None:
    [stmt] = sqlparser.parse(
        "ALTER TABLE s.t ADD COLUMN a bigserial, ALTER COLUMN b TYPE text, ALTER COLUMN c SET NOT NULL,"
        " ADD CONSTRAINT k CHECK (a > 0) NOT VALID, ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES o (id),"
        " DROP COLUMN d, ADD COLUMN e uuid DEFAULT gen_random_uuid(), ADD COLUMN g timestamptz DEFAULT now()"
    )
    assert stmt.relation == "s.t"
    got = [(c.subtype, c.column, c.constraint_type, c.not_valid, c.volatile_default) for c in stmt.alter_cmds]
    assert got == [
        ("AddColumn", "a", None, False, True),  # serial: nextval per row
        ("AlterColumnType", "b", None, False, False),
        ("SetNotNull", "c", None, False, False),
        ("AddConstraint", None, "CHECK", True, False),
        ("AddConstraint", None, "FOREIGN", False, False),
        ("DropColumn", "d", None, False, False),
        ("AddColumn", "e", None, False, True),
        ("AddColumn", "g", None, False, False),  # now() is stable: a fast default
    ]


# --------------------------------------------------------------------------- indexes


def _index(sql: str) -> sqlparser.IndexDef:
    [stmt] = sqlparser.parse(sql)
    assert stmt.index is not None
    return stmt.index


def test_index_definition_fields_come_from_the_parse_tree() -> None:
    idx = _index(
        'CREATE UNIQUE INDEX IF NOT EXISTS Idx_Name ON App.Accounts USING gin (lower(name) DESC NULLS LAST, "Mixed")'
        " INCLUDE (email) WHERE deleted_at IS NULL"
    )
    assert idx.name == "idx_name"
    assert (idx.schema, idx.table) == ("app", "accounts")
    assert idx.unique and idx.if_not_exists and not idx.concurrent and not idx.only
    assert idx.method == "gin"
    assert idx.columns == ("(lower(name)) DESC NULLS LAST", '"Mixed"')
    assert idx.include == ("email",)
    assert idx.predicate == "deleted_at IS NULL"


def test_index_definition_defaults() -> None:
    idx = _index("CREATE INDEX ON ONLY t (a)")
    assert idx.name is None
    assert idx.schema is None
    assert idx.method == "btree"
    assert idx.only
    assert idx.predicate is None


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX idx_a ON t (a)",
        "CREATE INDEX CONCURRENTLY idx_a ON t (a)",
        "CREATE INDEX IF NOT EXISTS idx_a ON t (a)",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON t (a)",
    ],
)
def test_render_index_is_always_concurrent_and_never_if_not_exists(sql: str) -> None:
    rendered = sqlparser.render_index(_index(sql))
    assert rendered == "CREATE INDEX CONCURRENTLY idx_a ON t USING btree (a)"
    assert "IF NOT EXISTS" not in sqlparser.render_index(_index(sql), concurrently=False)


def test_render_index_under_another_name() -> None:
    idx = _index("CREATE UNIQUE INDEX IF NOT EXISTS idx_a ON s.t (a, lower(b)) WHERE a > 0")
    rendered = sqlparser.render_index(idx, name="idx_a_ccnew")
    assert (
        rendered
        == "CREATE UNIQUE INDEX CONCURRENTLY idx_a_ccnew ON s.t USING btree (a, lower(b)) WHERE a > 0"
    )
    back = _index(rendered)  # what we send parses back to the same index under the new name
    assert (back.name, back.concurrent, back.if_not_exists) == ("idx_a_ccnew", True, False)
    assert (back.columns, back.predicate, back.unique) == (idx.columns, idx.predicate, idx.unique)


def test_canonical_index_ignores_name_and_build_options() -> None:
    forms = [
        "CREATE INDEX idx_a ON t (a, b) WHERE a > 0",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS other_name ON public.t USING btree (a, b) WHERE (a > 0)",
        "create index x on T (A, B) where a>0",
    ]
    canon = {sqlparser.canonical_index(f) for f in forms}
    assert canon == {"CREATE INDEX _ ON public.t USING btree (a, b) WHERE a > 0"}


@pytest.mark.parametrize(
    "other",
    [
        "CREATE INDEX idx_a ON t (b, a) WHERE a > 0",
        "CREATE INDEX idx_a ON t (a, b)",
        "CREATE UNIQUE INDEX idx_a ON t (a, b) WHERE a > 0",
        "CREATE INDEX idx_a ON t USING hash (a, b) WHERE a > 0",
        "CREATE INDEX idx_a ON app.t (a, b) WHERE a > 0",
    ],
)
def test_canonical_index_sees_real_differences(other: str) -> None:
    assert sqlparser.canonical_index(other) != sqlparser.canonical_index(
        "CREATE INDEX idx_a ON t (a, b) WHERE a > 0"
    )


def test_canonical_index_uses_the_default_schema() -> None:
    assert sqlparser.canonical_index(
        "CREATE INDEX i ON t (a)", default_schema="app"
    ) == sqlparser.canonical_index("CREATE INDEX i ON app.t (a)")


def test_quote_ident() -> None:
    assert sqlparser.quote_ident("plain") == '"plain"'
    assert sqlparser.quote_ident('we"ird') == '"we""ird"'


@pytest.mark.parametrize(
    ("sql", "recorded"),
    [
        (
            (
                "-- users\nCREATE TABLE Users (Id bigint PRIMARY KEY, \"Name\" text DEFAULT 'X');\n"
                "/* c */ COMMENT ON TABLE users IS 'Hi';\n"
            ),
            "7add90cb30565f78836cfee68a0a0a938bab6e3de0e8c1c3e81ab4664b783005",
        ),
        (
            "CREATE TABLE Äpfel (Größe int, \"Öl\" text DEFAULT 'Ü');\nSELECT 1",
            "d1dbaf98e1e5b500ea0899f34c3c2ad0df19a4fd374262cd3788065411421078",
        ),
    ],
)
def test_checksum_is_stable_across_releases(sql: str, recorded: str) -> None:
    """Ledgers hold checksums from earlier releases: the bytes hashed must never change."""
    assert _checksum(sql) == recorded
