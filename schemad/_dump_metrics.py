"""Print the exposition of a freshly initialised `Metrics` (for `promtool check metrics` in CI).

Run as ``python -m schemad._dump_metrics``; no database, no network.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from schemad import metrics


def main() -> None:
    registry = CollectorRegistry()
    metrics.Metrics(registry)
    sys.stdout.buffer.write(metrics.render(registry))


if __name__ == "__main__":
    main()
