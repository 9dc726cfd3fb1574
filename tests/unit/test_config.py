"""Settings: precedence (flags > env > file > defaults) and errors that name key and source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemad import cli, config, errors


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schemad.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = config.load()
    assert s.migrations_dir == Path("migrations")
    assert s.indexes_dir == Path("indexes")
    assert s.lock_timeout_s == config.DEFAULT_LOCK_TIMEOUT_S
    assert s.metrics_addr == config.DEFAULT_METRICS_ADDR
    assert s.dsn is None
    assert not s.strict


def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(
        tmp_path,
        'lock_timeout_s = 3.0\nstatement_timeout_s = 30.0\nretry_max_attempts = 4\nmigrations_dir = "from_file"\n',
    )
    monkeypatch.setenv("SCHEMAD_STATEMENT_TIMEOUT_S", "40")
    monkeypatch.setenv("SCHEMAD_RETRY_MAX_ATTEMPTS", "5")
    s = config.load(config_file=path, flags={"retry_max_attempts": 6, "indexes_dir": None})
    assert s.lock_timeout_s == 3.0  # file over default
    assert s.statement_timeout_s == 40.0  # env over file
    assert s.retry_max_attempts == 6  # flag over env and file
    assert s.migrations_dir == Path("from_file")
    assert s.indexes_dir == Path("indexes")  # a None flag is "not given", not a value
    assert s.retry_budget_s == config.DEFAULT_RETRY_BUDGET_S  # untouched default


def test_env_names_are_case_insensitive_and_config_file_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, "strict = true\n")
    monkeypatch.setenv("SCHEMAD_CONFIG", str(path))
    monkeypatch.setenv("schemad_lock_wait_s", "7")
    s = config.load()
    assert s.strict
    assert s.lock_wait_s == 7.0


def test_settings_are_frozen() -> None:
    s = config.load()
    with pytest.raises(ValueError, match="frozen"):
        s.strict = True


def test_unknown_key_in_toml_names_key_and_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "lock_timeout_s = 1\nlock_timeuot_s = 2\n")
    with pytest.raises(errors.ConfigError) as info:
        config.load(config_file=path)
    assert info.value.key == "lock_timeuot_s"
    assert info.value.source == str(path)
    assert info.value.message == f"unknown key 'lock_timeuot_s' in {path}"


def test_unknown_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMAD_FOO", "1")
    with pytest.raises(errors.ConfigError) as info:
        config.load()
    assert (info.value.key, info.value.source) == ("SCHEMAD_FOO", "environment")
    assert info.value.message == "unknown environment variable SCHEMAD_FOO"


@pytest.mark.parametrize(
    ("toml", "env", "flags", "source"),
    [
        ("lock_timeout_s = -1\n", {}, {}, "FILE"),
        ("", {"SCHEMAD_LOCK_TIMEOUT_S": "soon"}, {}, "environment SCHEMAD_LOCK_TIMEOUT_S"),
        ("lock_timeout_s = 1\n", {"SCHEMAD_LOCK_TIMEOUT_S": "0"}, {}, "environment SCHEMAD_LOCK_TIMEOUT_S"),
        ("lock_timeout_s = 1\n", {}, {"lock_timeout_s": 0}, "--lock-timeout-s"),
    ],
)
def test_bad_value_names_its_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    env: dict[str, str],
    flags: dict[str, object],
    source: str,
) -> None:
    path = _toml(tmp_path, toml)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(errors.ConfigError) as info:
        config.load(config_file=path, flags=flags)
    expected = str(path) if source == "FILE" else source
    assert info.value.key == "lock_timeout_s"
    assert info.value.source == expected
    assert info.value.message.startswith(f"invalid lock_timeout_s (from {expected}): ")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ledger_schema", '"Bad-Schema"'),
        ("metrics_addr", '"localhost"'),
        ("throttle_windows", '["25:00-03:00"]'),
        ("log_level", '"loud"'),
        ("index_concurrency", "17"),
    ],
)
def test_validated_fields(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        config.load(config_file=_toml(tmp_path, f"{key} = {value}\n"))
    assert info.value.key == key


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="not found"):
        config.load(config_file=tmp_path / "absent.toml")
    with pytest.raises(errors.ConfigError) as info:
        config.load(config_file=_toml(tmp_path, "strict = \n"))
    assert info.value.source == str(tmp_path / "schemad.toml")


def test_dsn_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMAD_DSN", "postgresql://app:hunter2@db/app")
    s = config.load()
    assert s.dsn is not None
    assert s.dsn.get_secret_value() == "postgresql://app:hunter2@db/app"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)


def test_read_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "db-password").write_text("from-systemd", encoding="utf-8")
    from_file = config.load(flags={"password_file": tmp_path / "pw"})
    assert (
        config.read_password(from_file, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
        == "s3cret"
    )
    plain = config.load()
    assert (
        config.read_password(plain, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
        == "from-systemd"
    )
    assert config.read_password(plain, environ={}) is None
    missing = config.load(flags={"password_file": tmp_path / "nope"})
    with pytest.raises(errors.ConfigError) as info:
        config.read_password(missing, environ={})
    assert info.value.key == "password_file"


# --------------------------------------------------------------------------- through the CLI


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_unknown_toml_key_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _toml(tmp_path, "migrations_dirr = 'x'\n")
    code, out, err = _run(capsys, "check", "--config", str(path))
    assert code == cli.EXIT_CONFIG == 78
    assert out == ""
    assert err == f"schemad: configuration error: unknown key 'migrations_dirr' in {path}\n"


def test_cli_unknown_env_var_exits_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCHEMAD_MIGRATION_DIR", "x")
    code, _out, err = _run(capsys, "check")
    assert code == 78
    assert "unknown environment variable SCHEMAD_MIGRATION_DIR" in err


def test_cli_bad_env_value_exits_78(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCHEMAD_LOG_FORMAT", "xml")
    code, _out, err = _run(capsys, "check")
    assert code == 78
    assert "invalid log_format (from environment SCHEMAD_LOG_FORMAT)" in err


def test_cli_env_folders_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mig").mkdir()
    (tmp_path / "idx").mkdir()
    (tmp_path / "mig" / "0001_x.sql").write_text("BEGIN;\n", encoding="utf-8")
    monkeypatch.setenv("SCHEMAD_MIGRATIONS_DIR", str(tmp_path / "mig"))
    monkeypatch.setenv("SCHEMAD_INDEXES_DIR", str(tmp_path / "idx"))
    code, out, _err = _run(capsys, "check")
    assert code == cli.EXIT_VALIDATION
    assert out.startswith(f"{tmp_path / 'mig'}/0001_x.sql:1:1: E107 BEGIN")
    # a flag beats the environment
    (tmp_path / "other").mkdir()
    code, out, _err = _run(capsys, "check", "--migrations-dir", str(tmp_path / "other"))
    assert (code, out) == (cli.EXIT_OK, "")


def test_bad_flag_value_names_the_real_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["migrate", "--lock-wait", "-1"]) == cli.EXIT_CONFIG
    assert "(from --lock-wait)" in capsys.readouterr().err


def test_environment_strings_are_converted_by_field_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMAD_STRICT", "Yes")
    monkeypatch.setenv("SCHEMAD_WATCH", "0")
    monkeypatch.setenv("SCHEMAD_INDEX_CONCURRENCY", " 4 ")
    monkeypatch.setenv("SCHEMAD_INDEX_MAX_PARALLEL_WORKERS", "2")
    monkeypatch.setenv("SCHEMAD_THROTTLE_WINDOWS", '["01:00-05:00", "22:00-23:30"]')
    monkeypatch.setenv("SCHEMAD_PASSWORD_FILE", "/run/pw")
    s = config.load()
    assert (s.strict, s.watch, s.index_concurrency, s.index_max_parallel_workers) == (True, False, 4, 2)
    assert s.throttle_windows == ["01:00-05:00", "22:00-23:30"]
    assert s.password_file == Path("/run/pw")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("strict = 1.5\n", "strict"),
        ("retry_max_attempts = 2.5\n", "retry_max_attempts"),
        ("lock_timeout_s = 'soon'\n", "lock_timeout_s"),
        ("ledger_schema = 3\n", "ledger_schema"),
        ("throttle_windows = '01:00-05:00'\n", "throttle_windows"),
        ("dsn = 5\n", "dsn"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        config.load(config_file=_toml(tmp_path, toml))
    assert info.value.key == key and f"invalid {key}" in info.value.message


def test_keyword_values_are_converted_and_the_dsn_is_secret() -> None:
    values: dict[str, Any] = {"dsn": "postgresql://app:hunter2@db/app", "migrations_dir": "m"}
    s = config.Settings(**values)
    assert s.migrations_dir == Path("m")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.dsn)
    assert s.model_copy(update={"strict": True}).strict
