"""`schemad verify`'s comparison as a pure function over two catalogs (no database)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemad import migrations, plan, sourcefiles, verify

if TYPE_CHECKING:
    from schemad.verify import Catalog


def catalog(**types: dict[tuple[str, ...], str]) -> Catalog:
    base: Catalog = {
        "schema": {("public",): ""},
        "relation": {("public", "orders"): "table"},
        "column": {
            ("public", "orders", "id"): "bigint NOT NULL",
            ("public", "orders", "note"): "text",
        },
        "constraint": {("public", "orders", "orders_pkey"): "PRIMARY KEY (id)"},
        "index": {
            ("public", "orders", "orders_pkey"): "CREATE UNIQUE INDEX orders_pkey ON public.orders USING btree (id)",
            ("public", "orders", "orders_note_idx"): "CREATE INDEX orders_note_idx ON public.orders USING btree (note)",
        },
    }
    for object_type, objects in types.items():
        base[object_type] = {**base.get(object_type, {}), **objects}
    return base


def test_identical_catalogs_have_no_difference() -> None:
    assert verify.diff(catalog(), catalog()) == []


def test_a_column_dropped_by_hand_is_named() -> None:
    live = catalog()
    del live["column"][("public", "orders", "note")]
    [d] = verify.diff(catalog(), live)
    assert (d.kind, d.object_type, d.name) == ("missing", "column", "public.orders.note")
    assert d.format() == (
        "missing column public.orders.note (text): the applied history creates it, the database does not have it"
    )


def test_an_index_created_by_hand_is_named_with_the_way_out() -> None:
    live = catalog(index={("public", "orders", "by_hand"): "CREATE INDEX by_hand ON public.orders USING btree (id)"})
    [d] = verify.diff(catalog(), live)
    assert (d.kind, d.name) == ("unexpected", "by_hand on public.orders")
    assert "no applied migration or registry entry explains it" in d.format()
    assert "schemad adopt indexes" in d.format()


def test_a_missing_registry_index_says_where_it_is_declared() -> None:
    live = catalog()
    del live["index"][("public", "orders", "orders_note_idx")]
    [d] = verify.diff(catalog(), live, {"orders_note_idx": "indexes/orders.sql:3"})
    assert d.format() == (
        "missing index orders_note_idx on public.orders: declared in the registry at indexes/orders.sql:3, the "
        "database does not have it (schemad build-indexes builds it)"
    )


def test_an_invalid_index_is_its_own_kind() -> None:
    live = catalog()
    key = ("public", "orders", "orders_note_idx")
    live["index"][key] += verify.INVALID
    [d] = verify.diff(catalog(), live, {"orders_note_idx": "indexes/orders.sql:3"})
    assert d.kind == "invalid"
    assert "INVALID" in d.format() and "build-indexes rebuilds it" in d.format()


def test_a_changed_column_shows_both_sides() -> None:
    live = catalog(column={("public", "orders", "note"): "character varying(20)"})
    [d] = verify.diff(catalog(), live)
    assert d.format() == "different column public.orders.note: expected text, the database has character varying(20)"


def test_long_definitions_are_not_dumped() -> None:
    body = "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$" + " " * 200
    expected = catalog(function={("public", "f()"): body})
    live = catalog(function={("public", "f()"): body.replace("1", "2")})
    [d] = verify.diff(expected, live)
    assert d.format() == "different function public.f(): its definition differs from what the history creates"


def test_a_missing_or_unexpected_table_is_one_difference_not_one_per_column() -> None:
    live = catalog(
        relation={("public", "extra"): "table"},
        column={("public", "extra", "a"): "integer"},
        index={("public", "extra", "extra_a"): "CREATE INDEX extra_a ON public.extra USING btree (a)"},
    )
    diffs = verify.diff(catalog(), live)
    assert [d.format() for d in diffs] == [
        "unexpected table public.extra: the database has it, but no applied migration or registry entry explains it"
    ]
    assert [d.name for d in verify.diff(live, catalog())] == ["public.extra"]


def test_ignore_patterns_leave_out_an_object_and_its_parts() -> None:
    live = catalog(
        relation={("public", "flyway_schema_history"): "table"},
        column={("public", "flyway_schema_history", "version"): "text"},
    )
    live["column"][("public", "orders", "extra")] = "integer"
    diffs = verify.diff(catalog(), live, ignore=["public.flyway_*"])
    assert [d.name for d in diffs] == ["public.orders.extra"]
    assert verify.diff(catalog(), live, ignore=["public.flyway_*", "public.orders.extra"]) == []


def test_differences_come_in_a_stable_order_by_object_type() -> None:
    live = catalog(
        schema={("app",): ""},
        constraint={("public", "orders", "c"): "CHECK ((id > 0))"},
        column={("public", "orders", "z"): "integer"},
    )
    assert [d.object_type for d in verify.diff(catalog(), live)] == ["schema", "column", "constraint"]


def test_history_the_files_cannot_reproduce_is_reported() -> None:
    src = sourcefiles.SourceFile("migrations/0001_a.sql", "CREATE TABLE a (id int);")
    mig, _ = migrations.parse_migration(src, 1, "a")
    assert mig is not None
    p = plan.make(
        [mig],
        [plan.Applied(version=1, name="0001_a", checksum="0" * 64), plan.Applied(version=7, name="0007_gone", checksum="x")],
    )
    notes = [d.format() for d in verify.history_differences(p)]
    assert notes[0].startswith("history: migrations/0001_a.sql changed after it was applied")
    assert notes[1] == "history: version 7 (0007_gone) is applied but no file has it: its effects cannot be replayed"
