"""The parse cache: a hit is exactly the parse it replaces, and any doubt about the cache
means parsing again (corrupt, truncated, other version, foreign-owned, unwritable)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from schemad import parsecache, sqlparser, validation

REPO = Path(__file__).resolve().parent.parent.parent

TEXTS = [
    "-- a table\nCREATE TABLE Users (Id bigint PRIMARY KEY, \"Name\" text);\nCOMMENT ON TABLE users IS 'x';\n",
    "CREATE TABLE Äpfel (Größe int);\nALTER TABLE Äpfel ADD COLUMN n int DEFAULT random();\n",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_v ON s.big USING gin (lower(v)) INCLUDE (w) WHERE v IS NOT NULL;",
    (
        "ALTER TABLE t ADD CONSTRAINT c FOREIGN KEY (a) REFERENCES u (id) NOT VALID, DROP COLUMN old;\n"
        "DROP TABLE a, s.b;\nALTER TABLE t RENAME TO t2;\nBEGIN;"
    ),
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$",
]
BROKEN = "CREATE TABLE (;\n"


def _fill(folder: Path, cache_root: Path) -> parsecache.ParseCache:
    cache = parsecache.ParseCache.for_folder(folder, directory=cache_root)
    for text in TEXTS:
        cache.parse(text)
    with pytest.raises(sqlparser.SqlSyntaxError):
        cache.parse(BROKEN)
    cache.save()
    return cache


def test_a_hit_is_the_parse_it_replaces(tmp_path: Path) -> None:
    first = _fill(tmp_path / "m", tmp_path / "cache")
    assert (first.hits, first.misses) == (0, len(TEXTS) + 1)
    again = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    for text in TEXTS:
        assert again.parse(text) == sqlparser.parse(text)
    with pytest.raises(sqlparser.SqlSyntaxError) as cached:
        again.parse(BROKEN)
    with pytest.raises(sqlparser.SqlSyntaxError) as fresh:
        sqlparser.parse(BROKEN)
    assert (cached.value.message, cached.value.offset) == (fresh.value.message, fresh.value.offset)
    assert (again.hits, again.misses) == (len(TEXTS) + 1, 0)


def _cache_file(root: Path) -> Path:
    [path] = root.glob("*.parse")
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty"])
def test_a_damaged_cache_is_ignored(tmp_path: Path, damage: str) -> None:
    _fill(tmp_path / "m", tmp_path / "cache")
    path = _cache_file(tmp_path / "cache")
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        del raw[len(raw) // 2 :]
    elif damage == "magic":
        raw[0] ^= 0xFF
    else:
        raw.clear()
    path.write_bytes(bytes(raw))
    cache = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    assert cache.parse(TEXTS[0]) == sqlparser.parse(TEXTS[0])
    assert (cache.hits, cache.misses) == (0, 1)


def test_another_fingerprint_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(tmp_path / "m", tmp_path / "cache")
    monkeypatch.setattr(parsecache, "__version__", "99.0")
    cache = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    cache.parse(TEXTS[0])
    assert cache.misses == 1


def test_an_entry_that_does_not_fit_its_text_is_parsed_again(tmp_path: Path) -> None:
    _fill(tmp_path / "m", tmp_path / "cache")
    cache = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    key = hashlib.sha256(TEXTS[0].encode()).digest()
    assert key in cache._stored
    cache._stored[key] = (0, ((0, 10_000, *([None] * (len(parsecache._STMT_FIELDS) - 2))),))
    assert cache.parse(TEXTS[0]) == sqlparser.parse(TEXTS[0])
    assert (cache.hits, cache.misses) == (0, 1)


def test_a_read_only_cache_location_just_means_no_cache(tmp_path: Path) -> None:
    # /proc refuses new entries even to root (CI runs as root), like a read-only HOME would.
    root = Path("/proc/self/schemad-cache")
    cache = _fill(tmp_path / "m", root)
    assert not root.exists()
    assert cache.misses == len(TEXTS) + 1


def test_an_unwritable_location_never_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cache = _fill(tmp_path / "m", tmp_path / "file" / "cache")  # mkdir fails: ENOTDIR
    assert cache.misses == len(TEXTS) + 1


def test_a_cache_others_can_write_is_not_read(tmp_path: Path) -> None:
    _fill(tmp_path / "m", tmp_path / "cache")
    (tmp_path / "cache").chmod(0o777)
    cache = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    cache.parse(TEXTS[0])
    assert cache.misses == 1


def test_the_cache_keeps_only_the_folders_current_files(tmp_path: Path) -> None:
    _fill(tmp_path / "m", tmp_path / "cache")
    cache = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    cache.parse(TEXTS[1])
    cache.save()
    again = parsecache.ParseCache.for_folder(tmp_path / "m", directory=tmp_path / "cache")
    assert len(again._stored) == 1


def test_cache_location(tmp_path: Path) -> None:
    assert parsecache.cache_dir({"CACHE_DIRECTORY": "/var/cache/schemad", "XDG_CACHE_HOME": "/x"}) == Path(
        "/var/cache/schemad"
    )
    assert parsecache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "schemad"
    home = os.path.expanduser("~")
    assert parsecache.cache_dir({"XDG_CACHE_HOME": "relative"}) == Path(home) / ".cache" / "schemad"


def test_validation_with_and_without_the_cache_agree(tmp_path: Path) -> None:
    mdir = tmp_path / "migrations"
    mdir.mkdir()
    idir = tmp_path / "indexes"
    shutil.copytree(REPO / "migrations", mdir, dirs_exist_ok=True)
    (mdir / "0900_bad.sql").write_text("CREATE INDEX i ON t (a);\nUPDATE t SET a = 1;\n", encoding="utf-8")
    (mdir / "0901_syntax.sql").write_text(BROKEN, encoding="utf-8")
    idir.mkdir()
    (idir / "a.sql").write_text("-- x\nCREATE INDEX a_idx ON t (a);\n", encoding="utf-8")
    plain = validation.validate(mdir, idir, cache=False)
    cold = validation.validate(mdir, idir)
    warm = validation.validate(mdir, idir)
    assert plain == cold == warm
    assert any(f.code == "E104" for f in warm.findings) and any(f.code == "E105" for f in warm.findings)
