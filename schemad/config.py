"""One frozen settings object: defaults < TOML file (`--config`) < `SCHEMAD_*` env < flags.

Unknown keys and bad values raise `errors.ConfigError` naming the key and its source
(the CLI exits 78 on it, so systemd does not restart-loop). Units are in the names.

Each field's type (from its annotation) picks a converter in `_CONVERTERS`, its metadata
holds bounds and a check; every value, whatever its source, goes through them in
`__post_init__`. Hand-written rather than a pydantic-settings model: importing pydantic
costs ~75 ms, most of the 100 ms budget of a `schemad migrate` with nothing to do
(bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from schemad import errors

if TYPE_CHECKING:
    from collections.abc import Callable

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

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class SecretStr:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, status)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class InvalidValue(ValueError):
    """A setting's value was rejected; ``load`` adds where it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"invalid {key}: {message}")
        self.key = key
        self.message = message


# --------------------------------------------------------------------------- converters
# Each takes a value from any source (a string from the environment, a TOML value, a
# flag's parsed value, a keyword argument) and returns the typed value, or raises
# ValueError/TypeError with a message that completes "invalid <key> (from <source>): ".


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError("must be a number")
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"must be a number, not {v!r}") from None


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError(f"must be an integer, not {v!r}")


_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "f", "n"})


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError(f"must be a boolean (true/false), not {v!r}")


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"must be a string, not {v!r}")
    return v


def _to_path(v: Any) -> Path:
    if isinstance(v, Path):
        return v
    if isinstance(v, str):
        return Path(v)
    raise ValueError(f"must be a path, not {v!r}")


def _to_secret(v: Any) -> SecretStr:
    if isinstance(v, SecretStr):
        return v
    if isinstance(v, str):
        return SecretStr(v)
    raise ValueError("must be a string")  # never echo what might be a secret


def _to_str_list(v: Any) -> list[str]:
    if isinstance(v, str):  # from the environment: a JSON array
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError('must be a JSON array of strings, e.g. ["01:00-05:00"]') from None
    if not isinstance(v, list | tuple) or not all(isinstance(item, str) for item in v):
        raise ValueError("must be a list of strings")
    return list(v)


def _literal(kind: Any) -> Callable[[Any], str]:
    choices: tuple[str, ...] = get_args(kind)

    def convert(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, not {v!r}")
        return str(v)

    return convert


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "float": _to_float,
    "int": _to_int,
    "bool": _to_bool,
    "str": _to_str,
    "Path": _to_path,
    "SecretStr": _to_secret,
    "list[str]": _to_str_list,
    "LogFormat": _literal(LogFormat),
    "LogLevel": _literal(LogLevel),
}


# --------------------------------------------------------------------------- checks


def _identifier(value: str) -> None:
    if not _IDENT.match(value):
        raise ValueError("must be a lowercase SQL identifier ([a-z_][a-z0-9_]*)")


def _address(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")


def _windows(value: list[str]) -> None:
    for w in value:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", w):
            raise ValueError(f"window {w!r} must be HH:MM-HH:MM (UTC)")


def _rules(
    *, gt: float | None = None, ge: float | None = None, le: float | None = None,
    check: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    return {"gt": gt, "ge": ge, "le": le, "check": check}


def _f(default: Any, **rules: Any) -> Any:
    """A field with bounds and an extra check, applied to every value (defaults included)."""
    return field(default=default, metadata=_rules(**rules))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything schemad can be told; components receive plain values from it."""

    # Connection
    dsn: SecretStr | None = None
    password_file: Path | None = None
    connect_timeout_s: float = _f(10.0, gt=0)
    keepalives_idle_s: int = _f(10, ge=1)
    keepalives_interval_s: int = _f(5, ge=1)
    keepalives_count: int = _f(3, ge=1)
    connection_check_interval_s: float = _f(5.0, ge=0)
    allow_proxy: bool = False

    # Files
    migrations_dir: Path = Path("migrations")
    indexes_dir: Path = Path("indexes")
    strict: bool = False

    # Ledger and lock
    ledger_schema: str = _f("schemad", check=_identifier)
    lock_namespace: str | None = None
    lock_wait_s: float = _f(DEFAULT_LOCK_WAIT_S, ge=0)
    lock_poll_s: float = _f(DEFAULT_LOCK_POLL_S, gt=0)
    lock_lease_s: float = _f(DEFAULT_LOCK_LEASE_S, ge=0)  # 0: no lease (see lock.py)

    # Executor
    lock_timeout_s: float = _f(DEFAULT_LOCK_TIMEOUT_S, gt=0)
    statement_timeout_s: float = _f(DEFAULT_STATEMENT_TIMEOUT_S, gt=0)
    retry_max_attempts: int = _f(DEFAULT_RETRY_ATTEMPTS, ge=1)
    retry_budget_s: float = _f(DEFAULT_RETRY_BUDGET_S, gt=0)
    retry_backoff_s: float = _f(0.5, ge=0)

    # Index builds
    index_concurrency: int = _f(1, ge=1, le=16)
    index_maintenance_work_mem: str | None = None
    index_max_parallel_workers: int | None = _f(None, ge=0)
    index_statement_timeout_s: float = _f(DEFAULT_INDEX_STATEMENT_TIMEOUT_S, gt=0)
    index_max_lock_wait_s: float = _f(600.0, gt=0)
    index_retry_attempts: int = _f(3, ge=1)
    index_replace_drifted: bool = False
    # The daemon retries a failed build (e.g. a unique index over duplicate data) only after
    # this long, or at once after SIGHUP / a file change.
    index_failed_retry_s: float = _f(3600.0, ge=0)
    allow_unsafe_pg14: bool = False
    index_retry_backoff_s: float = _f(DEFAULT_INDEX_RETRY_BACKOFF_S, ge=0)
    index_progress_poll_s: float = _f(2.0, gt=0)

    # Throttling (admission of index builds)
    throttle_max_replication_lag_s: float = _f(30.0, ge=0)
    throttle_max_transaction_age_s: float = _f(600.0, ge=0)
    throttle_max_idle_in_transaction_s: float = _f(60.0, ge=0)
    throttle_max_lock_waiters: int = _f(5, ge=0)
    throttle_max_active_backends: int = _f(50, ge=0)
    throttle_defer_on_autovacuum: bool = True
    throttle_windows: list[str] = field(default_factory=list, metadata=_rules(check=_windows))
    throttle_resume_after_s: float = _f(10.0, ge=0)
    throttle_poll_s: float = _f(DEFAULT_THROTTLE_POLL_S, gt=0)

    # Daemon
    metrics_addr: str = _f(DEFAULT_METRICS_ADDR, check=_address)
    reconcile_interval_s: float = _f(60.0, gt=0)
    watch: bool = False
    notify_channel: str = _f("schemad", check=_identifier)
    shutdown_grace_s: float = _f(20.0, gt=0)
    require_critical_indexes: bool = False
    log_format: LogFormat = "text"
    log_level: LogLevel = "info"

    def __post_init__(self) -> None:
        for f in _FIELDS:
            value = getattr(self, f.name)
            converted = _convert(f, value)
            if converted is not value:
                object.__setattr__(self, f.name, converted)

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Settings:
        """A copy with some values replaced (validated like any other)."""
        return dataclasses.replace(self, **(update or {}))


_FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)
FIELD_NAMES = frozenset(f.name for f in _FIELDS)


def _convert(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = str(f.type)
    optional = kind.endswith(" | None")
    if value is None:
        if optional:
            return None
        raise InvalidValue(f.name, "must be given")
    try:
        out = _CONVERTERS[kind.removesuffix(" | None")](value)
        meta = f.metadata
        if meta.get("gt") is not None and not out > meta["gt"]:
            raise ValueError(f"must be greater than {meta['gt']}")
        if meta.get("ge") is not None and not out >= meta["ge"]:
            raise ValueError(f"must be greater than or equal to {meta['ge']}")
        if meta.get("le") is not None and not out <= meta["le"]:
            raise ValueError(f"must be less than or equal to {meta['le']}")
        if meta.get("check") is not None:
            meta["check"](out)
    except (ValueError, TypeError) as exc:
        raise InvalidValue(f.name, str(exc)) from None
    # Keep the caller's object when it already had the right type (no copy).
    return value if type(out) is type(value) and out == value else out


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise errors.ConfigError(f"config file {path} not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # TOML is UTF-8 only
        raise errors.ConfigError(f"{path}: {exc}", source=str(path)) from None


# Settings whose command-line flag is not simply the key with dashes.
_FLAG_NAMES = {"lock_wait_s": "--lock-wait"}


def load(*, config_file: Path | None = None, flags: dict[str, Any] | None = None) -> Settings:
    """Build the frozen settings from every source, or raise `errors.ConfigError`."""
    environ = os.environ
    if config_file is None and environ.get("SCHEMAD_CONFIG"):
        config_file = Path(environ["SCHEMAD_CONFIG"])
    # key → (value, where it came from); later sources win.
    given: dict[str, tuple[Any, str]] = {}
    if config_file is not None:
        for key, value in _read_toml(config_file).items():
            if key not in FIELD_NAMES:
                raise errors.ConfigError(f"unknown key {key!r} in {config_file}", key=key, source=str(config_file))
            given[key] = (value, str(config_file))
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NON_SETTING_ENV:
            continue
        key = upper[len(ENV_PREFIX) :].lower()
        if key not in FIELD_NAMES:
            raise errors.ConfigError(f"unknown environment variable {upper}", key=upper, source="environment")
        given[key] = (environ[name], f"environment {upper}")
    for key, value in (flags or {}).items():
        if value is not None:  # a None flag is "not given"
            given[key] = (value, _FLAG_NAMES.get(key, f"--{key.replace('_', '-')}"))
    try:
        return Settings(**{key: value for key, (value, _source) in given.items()})
    except InvalidValue as exc:
        source = given[exc.key][1] if exc.key in given else "defaults"
        raise errors.ConfigError(
            f"invalid {exc.key} (from {source}): {exc.message}", key=exc.key, source=source
        ) from None


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
