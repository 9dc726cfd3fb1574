"""The pure decisions of adoption: what `baseline` records or why it refuses, and which live
indexes `adopt indexes` writes into the registry (no database)."""

from __future__ import annotations

import pytest

from schemad import adopt, baseline, indexes, migrations, plan, sourcefiles
from schemad.adopt import LiveIndex


def mig(version: int, sql: str = "SELECT 1;") -> migrations.Migration:
    m, findings = migrations.parse_migration(
        sourcefiles.SourceFile(f"migrations/{version:04d}_m.sql", sql), version, "m"
    )
    assert m is not None and findings == []
    return m


def applied(m: migrations.Migration, checksum: str | None = None) -> plan.Applied:
    return plan.Applied(version=m.version, name=m.name, checksum=checksum or m.checksum)


FILES = [mig(1), mig(2, "CREATE TABLE b (id int);"), mig(3, "CREATE TABLE c (id int);")]


def test_baseline_records_every_file_up_to_n_with_its_checksum() -> None:
    p = baseline.decide(FILES, [], 2)
    assert [(m.version, m.checksum) for m in p.record] == [(1, FILES[0].checksum), (2, FILES[1].checksum)]
    assert baseline.render(p, dry_run=True)[-1] == (
        "would baseline at version 2: 2 migration(s) would be recorded without running them"
    )


def test_baseline_skips_what_the_ledger_already_has_and_may_have_nothing_to_do() -> None:
    p = baseline.decide(FILES, [applied(FILES[0])], 2)
    assert [m.version for m in p.record] == [2]
    assert [a.version for a in p.already] == [1]
    done = baseline.decide(FILES, [applied(FILES[0]), applied(FILES[1])], 2)
    assert done.record == ()
    assert baseline.render(done, dry_run=False) == ["nothing to do: versions up to 2 are already in the ledger"]


@pytest.mark.parametrize(
    ("files", "ledger", "version", "reason"),
    [
        (FILES, [applied(FILES[2])], 2, "the ledger already records version(s) 3 above 2"),
        (FILES, [], 5, "no migration file has version 5 (the files go up to 3)"),
        ([FILES[0], FILES[2]], [], 3, "no migration file for version(s) 2 at or below 3"),
        (FILES, [applied(FILES[1], "0" * 64)], 3, "version(s) 2 are already recorded with a different checksum"),
        ([], [], 1, "there are no migration files"),
        (FILES, [], 0, "the version must be 1 or more"),
    ],
)
def test_baseline_refuses_unsafe_cases_with_a_clear_reason(
    files: list[migrations.Migration], ledger: list[plan.Applied], version: int, reason: str
) -> None:
    with pytest.raises(baseline.Refused) as caught:
        baseline.decide(files, ledger, version)
    assert reason in caught.value.message
    assert caught.value.message.endswith("; nothing was changed")


def test_allow_gaps_accepts_deliberate_numbering() -> None:
    sparse = [mig(10), mig(20)]
    with pytest.raises(baseline.Refused):
        baseline.decide(sparse, [], 20)
    assert [m.version for m in baseline.decide(sparse, [], 20, allow_gaps=True).record] == [10, 20]


def spec(sql: str) -> indexes.IndexSpec:
    specs, findings = indexes.parse_index_file(sourcefiles.SourceFile("indexes/orders.sql", sql))
    assert findings == []
    return specs[0]


def live(
    name: str, definition: str, *, valid: bool = True, partitioned: bool = False, is_partition: bool = False,
    description: str | None = None,
) -> LiveIndex:
    return LiveIndex(
        schema="public", table="orders", name=name, definition=definition, valid=valid, partitioned=partitioned,
        is_partition=is_partition, description=description,
    )


def test_adopt_plans_each_index_and_says_why_one_is_left_out() -> None:
    registry = [
        spec("CREATE INDEX declared ON orders (a);"),
        spec("CREATE INDEX other_name ON orders (c);"),
    ]
    found = [
        live("declared", "CREATE INDEX declared ON public.orders USING btree (a)"),
        live("fresh", "CREATE INDEX fresh ON public.orders USING btree (b)", description="by b"),
        live("twin", "CREATE INDEX twin ON public.orders USING btree (c)"),
        live("broken", "CREATE INDEX broken ON public.orders USING btree (d)", valid=False),
        live("p_idx", "CREATE INDEX p_idx ON ONLY public.orders USING btree (e)", partitioned=True),
        live("orders_1_e_idx", "CREATE INDEX orders_1_e_idx ON public.orders_1 USING btree (e)", is_partition=True),
    ]
    p = adopt.plan(found, registry)
    assert [li.name for li in p.adopt] == ["fresh", "p_idx"]
    assert [li.name for li, _ in p.declared] == ["declared"]
    assert [(li.name, s.name) for li, s in p.same_as] == [("twin", "other_name")]
    assert [li.name for li in p.invalid] == ["broken"]
    assert [li.name for li in p.partitions] == ["orders_1_e_idx"]
    files = adopt.render(p, {}, source="app")
    assert list(files) == ["orders.sql"]
    text = files["orders.sql"]
    assert "-- by b\nCREATE INDEX fresh ON public.orders USING btree (b);" in text
    assert "CREATE INDEX p_idx ON public.orders USING btree (e);" in text  # no ONLY: schemad builds partitions
    specs, findings = indexes.parse_index_file(sourcefiles.SourceFile("indexes/orders.sql", text))
    assert findings == [] and [s.name for s in specs] == ["fresh", "p_idx"]
    assert next(s for s in specs if s.name == "fresh").description == "by b"
    lines = adopt.report(p, files, out_display="indexes", dry_run=False)
    assert lines[0] == "adopted fresh, p_idx → indexes/orders.sql"
    assert any("broken on public.orders is INVALID" in ln for ln in lines)


def test_adopt_appends_to_an_existing_registry_file_and_names_files_by_schema() -> None:
    p = adopt.plan([
        live("x", "CREATE INDEX x ON public.orders USING btree (x)"),
        LiveIndex(schema="app", table="Odd Table", name="y", definition='CREATE INDEX y ON app."Odd Table" (y)'),
    ], [])
    files = adopt.render(p, {"orders.sql": "CREATE INDEX mine ON orders (m);\n"}, source="app")
    assert sorted(files) == ["app.Odd_Table.sql", "orders.sql"]
    assert files["orders.sql"].startswith("CREATE INDEX mine ON orders (m);\n\n-- Adopted by")
