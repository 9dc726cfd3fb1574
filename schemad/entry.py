"""The `schemad` command (console script and ``python -m schemad``).

The cyclic collector is paced for start-up before anything heavy is imported: a command
builds tens of thousands of long-lived objects in its first fraction of a second (imported
modules, the parse cache, the validated files), and at the default threshold (700
allocations) the collector rescans them dozens of times: ~35 ms of a no-op `migrate` while
running, ~8 ms more while importing. A daemon goes back to the usual pace once it is ready
(`settle`).
"""

from __future__ import annotations

import gc

STARTUP_THRESHOLD = 100_000
DEFAULT_THRESHOLD = gc.get_threshold()


def pace_for_startup() -> None:
    gc.set_threshold(STARTUP_THRESHOLD, *DEFAULT_THRESHOLD[1:])


def settle() -> None:
    """The daemon is up: what start-up built lives as long as it does (frozen, never scanned
    again), and from here the collector keeps its usual pace."""
    gc.freeze()
    gc.set_threshold(*DEFAULT_THRESHOLD)


def main() -> None:
    pace_for_startup()
    from schemad import cli  # after pacing: importing is most of a command's start-up

    cli.main()
