"""A realistic generated migration corpus: tables with constraints, ALTER TABLEs,
dollar-quoted functions, enums, views, comments. Deterministic for a given N."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def _migration(i: int, rng: random.Random) -> str:
    kind = i % 6
    t = f"t{i:05d}"
    prev = f"t{i - 1:05d}" if i > 1 else None
    if kind == 0 or prev is None:
        return (
            f"-- Table {t}: created by migration {i}.\n"
            f"CREATE TABLE {t} (\n"
            "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            "    name text NOT NULL,\n"
            f"    amount numeric(12, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),\n"
            "    created_at timestamptz NOT NULL DEFAULT now()\n"
            ");\n"
            f"COMMENT ON TABLE {t} IS 'generated table {i}; holds test rows';\n"
        )
    if kind == 1:
        return (
            f"-- Child table of {prev}.\n"
            f"CREATE TABLE {t} (\n"
            "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
            f"    parent_id bigint NOT NULL REFERENCES {prev} (id) ON DELETE CASCADE,\n"
            "    note text,\n"
            f"    CONSTRAINT {t}_note_len CHECK (char_length(note) < {rng.randint(100, 1000)})\n"
            ");\n"
        )
    if kind == 2:
        return (
            f"/* Columns for {prev}; semicolons; in comments; are fine. */\n"
            f"ALTER TABLE {prev} ADD COLUMN extra_{i} text;\n"
            f"ALTER TABLE {prev} ADD COLUMN flag_{i} boolean NOT NULL DEFAULT false;\n"
            f"COMMENT ON COLUMN {prev}.extra_{i} IS 'added by {i}; see ticket #{rng.randint(1000, 9999)}';\n"
        )
    if kind == 3:
        return (
            f"CREATE TYPE status_{i} AS ENUM ('new', 'active', 'closed');\n"
            f"CREATE TABLE {t} (id bigint PRIMARY KEY, status status_{i} NOT NULL DEFAULT 'new');\n"
        )
    if kind == 4:
        return (
            f"CREATE FUNCTION f_{i}(a integer, b integer) RETURNS integer\n"
            "LANGUAGE plpgsql IMMUTABLE AS $fn$\n"
            "DECLARE r integer;\n"
            "BEGIN\n"
            "    r := a + b; -- a comment; with semicolons;\n"
            "    IF r > 100 THEN RETURN r - 1; END IF;\n"
            "    RETURN r;\n"
            "END;\n"
            "$fn$;\n"
        )
    return (
        f"CREATE VIEW v_{i} AS SELECT id, name FROM {prev if (i - 1) % 6 == 0 else f't{i - 5:05d}'}"
        " WHERE true;\n"
        if (i - 1) % 6 == 0
        else f"CREATE TABLE {t} (id int PRIMARY KEY, v text);\nALTER TABLE {t} ADD CONSTRAINT {t}_v CHECK (v <> '');\n"
    )


def write(folder: Path, n: int, *, seed: int = 42) -> list[Path]:
    """Write ``n`` migrations into ``folder`` as NNNN_slug.sql; returns the paths in order."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        p = folder / f"{i:04d}_step_{i}.sql"
        p.write_text(_migration(i, rng), encoding="utf-8")
        paths.append(p)
    return paths


def concatenate(paths: list[Path], out: Path) -> Path:
    """The floor's input: every file in order, one script."""
    out.write_text("".join(p.read_text(encoding="utf-8") + "\n" for p in paths), encoding="utf-8")
    return out
