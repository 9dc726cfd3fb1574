"""One frozen settings model: defaults < TOML file (`--config`) < `SCHEMAD_*` env < flags.

Unknown keys and bad values raise `errors.ConfigError` naming the key and its source
(the CLI exits 78 on it, so systemd does not restart-loop). Units are in the names.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemad import errors

ENV_PREFIX = "SCHEMAD_"
# Environment variables with the prefix that are not settings themselves.
_NON_SETTING_ENV = frozenset({"SCHEMAD_CONFIG"})
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

DEFAULT_METRICS_ADDR = "127.0.0.1:9646"
DEFAULT_LOCK_TIMEOUT_S = 2.0
DEFAULT_STATEMENT_TIMEOUT_S = 300.0
DEFAULT_LOCK_WAIT_S = 300.0
DEFAULT_LOCK_POLL_S = 2.0
# A frozen lock holder is disconnected by the server this long after its last renewal.
DEFAULT_LOCK_LEASE_S = 30.0
DEFAULT_RETRY_ATTEMPTS = 10
DEFAULT_RETRY_BUDGET_S = 300.0
DEFAULT_INDEX_STATEMENT_TIMEOUT_S = 6 * 3600.0
DEFAULT_INDEX_RETRY_BACKOFF_S = 10.0
DEFAULT_THROTTLE_POLL_S = 15.0

_config_file: ContextVar[Path | None] = ContextVar("schemad_config_file", default=None)


class Settings(BaseSettings):
    """Everything schemad can be told; components receive plain values from it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False, validate_default=True
    )

    # Connection
    dsn: SecretStr | None = None
    password_file: Path | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    keepalives_idle_s: int = Field(10, ge=1)
    keepalives_interval_s: int = Field(5, ge=1)
    keepalives_count: int = Field(3, ge=1)
    connection_check_interval_s: float = Field(5.0, ge=0)
    allow_proxy: bool = False

    # Files
    migrations_dir: Path = Path("migrations")
    indexes_dir: Path = Path("indexes")
    strict: bool = False

    # Ledger and lock
    ledger_schema: str = "schemad"
    lock_namespace: str | None = None
    lock_wait_s: float = Field(DEFAULT_LOCK_WAIT_S, ge=0)
    lock_poll_s: float = Field(DEFAULT_LOCK_POLL_S, gt=0)
    lock_lease_s: float = Field(DEFAULT_LOCK_LEASE_S, ge=0)  # 0: no lease (see lock.py)

    # Executor
    lock_timeout_s: float = Field(DEFAULT_LOCK_TIMEOUT_S, gt=0)
    statement_timeout_s: float = Field(DEFAULT_STATEMENT_TIMEOUT_S, gt=0)
    retry_max_attempts: int = Field(DEFAULT_RETRY_ATTEMPTS, ge=1)
    retry_budget_s: float = Field(DEFAULT_RETRY_BUDGET_S, gt=0)
    retry_backoff_s: float = Field(0.5, ge=0)

    # Index builds
    index_concurrency: int = Field(1, ge=1, le=16)
    index_maintenance_work_mem: str | None = None
    index_max_parallel_workers: int | None = Field(None, ge=0)
    index_statement_timeout_s: float = Field(DEFAULT_INDEX_STATEMENT_TIMEOUT_S, gt=0)
    index_max_lock_wait_s: float = Field(600.0, gt=0)
    index_retry_attempts: int = Field(3, ge=1)
    index_replace_drifted: bool = False
    # The daemon retries a failed build (e.g. a unique index over duplicate data) only after
    # this long, or at once after SIGHUP / a file change.
    index_failed_retry_s: float = Field(3600.0, ge=0)
    allow_unsafe_pg14: bool = False
    index_retry_backoff_s: float = Field(DEFAULT_INDEX_RETRY_BACKOFF_S, ge=0)
    index_progress_poll_s: float = Field(2.0, gt=0)

    # Throttling (admission of index builds)
    throttle_max_replication_lag_s: float = Field(30.0, ge=0)
    throttle_max_transaction_age_s: float = Field(600.0, ge=0)
    throttle_max_idle_in_transaction_s: float = Field(60.0, ge=0)
    throttle_max_lock_waiters: int = Field(5, ge=0)
    throttle_max_active_backends: int = Field(50, ge=0)
    throttle_defer_on_autovacuum: bool = True
    throttle_windows: list[str] = Field(default_factory=list)
    throttle_resume_after_s: float = Field(10.0, ge=0)
    throttle_poll_s: float = Field(DEFAULT_THROTTLE_POLL_S, gt=0)

    # Daemon
    metrics_addr: str = DEFAULT_METRICS_ADDR
    reconcile_interval_s: float = Field(60.0, gt=0)
    watch: bool = False
    notify_channel: str = "schemad"
    shutdown_grace_s: float = Field(20.0, gt=0)
    require_critical_indexes: bool = False
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("ledger_schema", "notify_channel")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError("must be a lowercase SQL identifier ([a-z_][a-z0-9_]*)")
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    @field_validator("throttle_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", w):
                raise ValueError(f"window {w!r} must be HH:MM-HH:MM (UTC)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only with a config file: -4 ms for every other command

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise errors.ConfigError(f"config file {path} not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # TOML is UTF-8 only
        raise errors.ConfigError(f"{path}: {exc}", source=str(path)) from None


def load(*, config_file: Path | None = None, flags: dict[str, Any] | None = None) -> Settings:
    """Build the frozen settings from every source, or raise `errors.ConfigError`."""
    environ = os.environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if config_file is None and environ.get("SCHEMAD_CONFIG"):
        config_file = Path(environ["SCHEMAD_CONFIG"])
    fields = set(Settings.model_fields)
    file_data = _read_toml(config_file) if config_file is not None else {}
    for key in file_data:
        if key not in fields:
            raise errors.ConfigError(f"unknown key {key!r} in {config_file}", key=key, source=str(config_file))
    env_keys = {k.upper() for k in environ if k.upper().startswith(ENV_PREFIX)} - _NON_SETTING_ENV
    for name in sorted(env_keys):
        if name[len(ENV_PREFIX) :].lower() not in fields:
            raise errors.ConfigError(f"unknown environment variable {name}", key=name, source="environment")
    token = _config_file.set(config_file)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        source = _source_of(key, flags, dict(environ), file_data, config_file)
        raise errors.ConfigError(f"invalid {key} (from {source}): {first['msg']}", key=key, source=source) from None
    finally:
        _config_file.reset(token)


# Settings whose command-line flag is not simply the key with dashes.
_FLAG_NAMES = {"lock_wait_s": "--lock-wait"}


def _source_of(
    key: str, flags: dict[str, Any], environ: dict[str, str], file_data: dict[str, Any], config_file: Path | None
) -> str:
    if key in flags:
        return _FLAG_NAMES.get(key, f"--{key.replace('_', '-')}")
    env_name = ENV_PREFIX + key.upper()
    if any(k.upper() == env_name for k in environ):
        return f"environment {env_name}"
    if key in file_data:
        return f"{config_file}"
    return "defaults"


def read_password(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The password from ``password_file`` or the systemd credential ``db-password``, if any."""
    environ = dict(os.environ if environ is None else environ)
    candidates: list[Path] = []
    if settings.password_file is not None:
        candidates.append(settings.password_file)
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(environ["CREDENTIALS_DIRECTORY"]) / "db-password")
    for path in candidates:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            if path == settings.password_file:
                raise errors.ConfigError(f"password file {path} not found", key="password_file") from None
        except OSError as exc:
            raise errors.ConfigError(f"cannot read password file {path}: {exc.strerror}") from None
    return None
