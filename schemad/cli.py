"""The command line: argparse subcommands → Settings → one function per command; exit codes.

Heavy modules (asyncpg, anyio, the daemon) are imported inside the commands that need
them, so `schemad check` stays fast and works with no database.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemad import __version__, config, entry, errors, logs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VALIDATION = 3
EXIT_LOCK = 4
EXIT_DIFFERENCES = 5  # `schemad verify`: the database and its history disagree
EXIT_CONFIG = 78

log = logging.getLogger("schemad.cli")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# --------------------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import validation

    result = validation.validate(settings.migrations_dir, settings.indexes_dir, strict=settings.strict)
    if args.format == "json":
        _out(json.dumps([f.as_dict() for f in result.findings], indent=2))
    else:
        for f in result.findings:
            _out(f.format())
        n_err = len(result.errors)
        n_warn = len(result.findings) - n_err
        _err(
            f"{len(result.migrations)} migration(s), {len(result.indexes)} index(es): "
            f"{n_err} error(s), {n_warn} warning(s)"
        )
    return EXIT_OK if result.ok else EXIT_VALIDATION


def cmd_new(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import migrations

    folder = settings.migrations_dir
    folder.mkdir(parents=True, exist_ok=True)
    versions = [
        int(m.group("version"))
        for p in folder.iterdir()
        if (m := migrations.FILE_NAME.match(p.name)) is not None
    ]
    try:
        name = migrations.next_file_name(versions, args.slug)
    except ValueError as exc:
        _err(f"schemad new: {exc}")
        return EXIT_USAGE
    path = folder / name
    path.write_text(f"-- {args.slug.replace('_', ' ')}\n\n", encoding="utf-8")
    _out(str(path))
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import commands

    return commands.migrate(settings, dry_run=args.dry_run)


def cmd_status(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import commands

    return commands.status(settings, as_json=args.json)


def cmd_run(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import daemon

    def reload() -> config.Settings:
        return config.load(config_file=args.config, flags=_flags(args))

    return daemon.main(settings, load_settings=reload, on_ready=entry.settle)


def cmd_build_indexes(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import index_cli

    return index_cli.build_indexes(settings, dry_run=args.dry_run, wait=args.wait)


def cmd_demo(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import demo

    return demo.main(settings, keep_running=not args.once)


def cmd_baseline(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import baseline

    try:
        lines = baseline.run(settings, version=args.baseline_version, dry_run=args.dry_run, allow_gaps=args.allow_gaps)
    except baseline.Refused as exc:
        _err(f"schemad: {exc.message}")
        return EXIT_VALIDATION
    for line in lines:
        _out(line)
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import adopt

    for line in adopt.run(settings, dry_run=args.dry_run, out=args.out):
        _out(line)
    return EXIT_OK


def cmd_import(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import importer, legacy

    try:
        lines, clean = importer.run(
            args.folder, migrations_dir=args.out or settings.migrations_dir,
            indexes_dir=args.indexes_out or settings.indexes_dir, layout=args.layout, dry_run=args.dry_run,
            waive_warnings=args.waive_warnings,
        )
    except legacy.LegacyFolderError as exc:
        _err(f"schemad import: {exc.message}")
        return EXIT_VALIDATION
    for line in lines:
        _out(line)
    return EXIT_OK if clean else EXIT_VALIDATION


def cmd_verify(args: argparse.Namespace, settings: config.Settings) -> int:
    from schemad import verify

    lines, same = verify.run(settings, ignore=args.ignore)
    for line in lines:
        _out(line)
    return EXIT_OK if same else EXIT_DIFFERENCES


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (env SCHEMAD_CONFIG)")
    p.add_argument("--dsn", help="PostgreSQL DSN (env SCHEMAD_DSN, or the PG* variables)")
    p.add_argument("--migrations-dir", type=Path, help="default ./migrations (env SCHEMAD_MIGRATIONS_DIR)")
    p.add_argument("--indexes-dir", type=Path, help="default ./indexes (env SCHEMAD_INDEXES_DIR)")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")


def _db_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-wait", dest="lock_wait_s", type=float, metavar="SECONDS",
                   help="give up (exit 4) if the lock is not free within this time")
    p.add_argument("--strict", action="store_true", default=None, help="warnings are errors; no tolerated errors")
    p.add_argument("--allow-proxy", action="store_true", default=None,
                   help="run even through a connection pooler (unsafe: session locks are shared)")


COMMANDS: dict[str, Callable[[argparse.Namespace, config.Settings], int]] = {
    "check": cmd_check,
    "new": cmd_new,
    "migrate": cmd_migrate,
    "status": cmd_status,
    "build-indexes": cmd_build_indexes,
    "run": cmd_run,
    "demo": cmd_demo,
    "baseline": cmd_baseline,
    "adopt": cmd_adopt,
    "import": cmd_import,
    "verify": cmd_verify,
}


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", default=None, help="warnings are errors")
    p.add_argument("--format", choices=["text", "json"], default="text")


def _new_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("slug", help="[a-z0-9_]+")


def _migrate_args(p: argparse.ArgumentParser) -> None:
    _db_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, execute nothing")


def _build_indexes_args(p: argparse.ArgumentParser) -> None:
    _db_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="--wait (default): until every index is ready or failed, waiting out throttling and "
                   "other backends' builds; --no-wait: one pass, skipping what would have to wait")


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _run_args(p: argparse.ArgumentParser) -> None:
    _db_flags(p)
    p.add_argument("--metrics-addr", help=f"HOST:PORT for /metrics /livez /readyz /status "
                   f"(default {config.DEFAULT_METRICS_ADDR})")
    p.add_argument("--watch", action="store_true", default=None, help="re-scan when files change")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="apply, print the status and exit")
    p.add_argument("--metrics-addr", help="HOST:PORT for the demo daemon's endpoints")


# Adoption (docs/adopting.md): import a legacy folder, baseline, adopt indexes, verify.
def _baseline_args(p: argparse.ArgumentParser) -> None:
    _db_flags(p)
    p.add_argument("--version", dest="baseline_version", type=int, required=True, metavar="N",
                   help="the last migration the database already has")
    p.add_argument("--dry-run", action="store_true", help="print what would be recorded, change nothing")
    p.add_argument("--allow-gaps", action="store_true", help="accept versions below N that no file has")


def _adopt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["indexes"])
    p.add_argument("--dry-run", action="store_true", help="print what would be adopted, write nothing")
    p.add_argument("--out", type=Path, metavar="DIR", help="registry folder to write (default: --indexes-dir)")


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="the legacy migrations folder")
    p.add_argument("--out", type=Path, metavar="DIR", help="migrations folder to write (default: --migrations-dir)")
    p.add_argument("--indexes-out", type=Path, metavar="DIR", help="registry folder to write (default: --indexes-dir)")
    p.add_argument("--layout", choices=["flyway", "golang-migrate", "dbmate", "diesel", "plain"],
                   help="the legacy layout (default: recognised from the file names)")
    p.add_argument("--dry-run", action="store_true", help="print the report, write nothing")
    p.add_argument("--waive-warnings", action="store_true",
                   help="add -- schemad:allow lines for lock-safety warnings (history that already ran)")


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="leave out objects matching this shell pattern (e.g. public.flyway_schema_history)")


# name → (help, its own arguments); every subcommand also takes the `_common` ones.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "check": ("validate migrations/ and indexes/ (no database needed)", _check_args),
    "new": ("write the next-numbered migration file", _new_args),
    "migrate": ("apply pending migrations under the advisory lock", _migrate_args),
    "build-indexes": ("build, repair and check the registry's indexes concurrently", _build_indexes_args),
    "status": ("applied, pending, problems, lock holder, last failure", _status_args),
    "run": ("the daemon: migrate on every trigger, build indexes, serve metrics", _run_args),
    "demo": ("throwaway local PostgreSQL + the example schema", _demo_args),
    "baseline": ("record migrations up to N as applied without running them", _baseline_args),
    "adopt": ("write the live database's indexes into the registry", _adopt_args),
    "import": ("convert a Flyway/golang-migrate/dbmate/diesel folder to migrations/+indexes/", _import_args),
    "verify": ("compare the live catalog with the applied history (read-only)", _verify_args),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` one subcommand's: building all eleven with their
    help texts is a few ms of a command that has ~100 ms in all."""
    parser = argparse.ArgumentParser(prog="schemad", description="PostgreSQL schema daemon")
    parser.add_argument("--version", action="version", version=f"schemad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args) in SUBCOMMANDS.items():
        if only is None or name == only:
            p = sub.add_parser(name, help=help_text)
            _common(p)
            add_args(p)
    return parser


_FLAG_KEYS = (
    "dsn", "migrations_dir", "indexes_dir", "log_format", "log_level", "lock_wait_s", "strict", "allow_proxy",
    "metrics_addr", "watch",
)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}


def main(argv: Sequence[str] | None = None) -> None:
    entry.pace_for_startup()  # already, when run as the command (entry.main)
    code = run(argv)
    # The process ends here: skip the interpreter's teardown of every module and object
    # (~15 ms with asyncpg loaded, a sixth of a no-op `migrate`). Everything that must
    # happen first happens explicitly: the commands have closed their connections and
    # clusters, and the output streams and log handlers are flushed now.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The common case, `schemad <command> ...`, needs only that command's parser; anything
    # else (--help, --version, a typo) gets the full one and its messages.
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        settings = config.load(config_file=args.config, flags=_flags(args))
    except errors.ConfigError as exc:
        _err(f"schemad: configuration error: {exc.message}")
        return EXIT_CONFIG
    logs.setup(fmt=settings.log_format, level=settings.log_level)
    if getattr(args, "dsn", None):
        _hide_dsn_password(args.dsn)
    try:
        return COMMANDS[args.command](args, settings)
    except errors.ConfigError as exc:
        _err(f"schemad: configuration error: {exc.message}")
        return EXIT_CONFIG
    except errors.ValidationFailed as exc:
        for f in exc.findings:
            _out(f.format())
        _err(f"schemad: {exc.message}; nothing was executed")
        return EXIT_VALIDATION
    except errors.LockBusy as exc:
        _err(f"schemad: {exc.message}")
        return EXIT_LOCK
    except errors.ProxyDetected as exc:
        # A pooled DSN is a configuration problem: systemd must not restart-loop on it.
        _err(f"schemad: {exc.message}")
        return EXIT_CONFIG
    except errors.SchemadError as exc:
        _err(f"schemad: {_chain(exc)}")
        if args.verbose:
            log.exception("failed", extra={"event": "command_failed"})
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err("schemad: interrupted")
        return 130


def _hide_dsn_password(dsn: str) -> None:
    """A password in --dsn sits in the process list (`ps`, /proc/<pid>/cmdline) for every local
    user to read: overwrite it there now, and say that it was exposed until now."""
    from schemad import cmdline, redact

    password = redact.dsn_password(dsn)
    if password is None:
        return
    redact.register(password)
    cmdline.hide([password])
    log.warning(
        "the password in --dsn was visible to local users (ps, /proc/<pid>/cmdline, shell history) until now: "
        "give it in SCHEMAD_PASSWORD_FILE or $CREDENTIALS_DIRECTORY/db-password instead",
        extra={"event": "password_on_command_line"},
    )


def _chain(exc: BaseException) -> str:
    """The error and its causes, skipping a cause whose text the error already quotes."""
    text = str(exc)
    cause = exc.__cause__
    while cause is not None:
        if str(cause) and str(cause) not in text:
            text += f": caused by {cause}"
        cause = cause.__cause__
    return text
