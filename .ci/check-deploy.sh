#!/usr/bin/env bash
# Check the deploy artifacts with their real tools; any problem fails the script.
#
#   bash .ci/check-deploy.sh            (from anywhere; PYTHON=... to pick the interpreter)
#
# Tools are assumed installed (.ci/run installs them): promtool (apt prometheus),
# systemd-analyze (systemd), kubernetes-validate (pip), and a Python that can import
# schemad and PyYAML (PyYAML comes with kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
ALERTS=deploy/prometheus/alerts.yml
ALERT_TESTS=deploy/prometheus/alerts_test.yml
DASHBOARD=deploy/grafana/schemad.json
UNIT=deploy/systemd/schemad.service
EXAMPLE_CONFIG=deploy/systemd/schemad.toml
MAX_EXPOSURE_TENTHS=20 # systemd-analyze security: fail above 2.0

fail() {
  echo "check-deploy: FAILED: $*" >&2
  exit 1
}
need() {
  command -v "$1" >/dev/null 2>&1 || fail "'$1' not found on PATH (install: $2)"
}
step() { echo "check-deploy: $*"; }

need promtool "apt-get install prometheus"
need systemd-analyze "apt-get install systemd"
need kubernetes-validate "pip install kubernetes-validate"
need "$PYTHON" "a Python with schemad installed, or set PYTHON="
"$PYTHON" -c "import schemad, prometheus_client, yaml" 2>/dev/null \
  || fail "$PYTHON cannot import schemad, prometheus_client and yaml (pip install -e . kubernetes-validate)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "promtool check rules $ALERTS"
promtool check rules "$ALERTS"
step "promtool test rules $ALERT_TESTS"
promtool test rules "$ALERT_TESTS"

step "dashboard structure, and every expr into a rule file for promtool"
"$PYTHON" - "$DASHBOARD" "$tmp/grafana-rules.yml" <<'PY'
"""Check the dashboard's shape and write each PromQL expr as a recording rule."""
import json
import re
import sys

dashboard_path, rules_path = sys.argv[1:]
with open(dashboard_path, encoding="utf-8") as fh:
    dash = json.load(fh)
problems = []
for key in ("uid", "title", "panels"):
    if not dash.get(key):
        problems.append(f"dashboard has no {key!r}")


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


ids = [p.get("id") for p in panels(dash.get("panels", []))]
if None in ids or len(ids) != len(set(ids)):
    problems.append(f"panel ids must be present and unique: {ids}")
# Grafana macros and this dashboard's variables, replaced by something PromQL parses.
macros = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${job}": ".*",
    "$job": ".*",
}
rules = []
for p in panels(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"panel {p.get('id')} {p.get('title')!r} has no targets")
    for t in targets:
        expr = t.get("expr", "")
        if not expr.strip():
            problems.append(f"panel {p.get('id')} target {t.get('refId')} has no expr")
            continue
        for macro, value in macros.items():
            expr = expr.replace(macro, value)
        if "$" in expr:
            problems.append(f"panel {p.get('id')}: unknown Grafana variable in {t['expr']!r}")
            continue
        rules.append({"record": f"grafana:panel_{p['id']}_{t.get('refId', 'A')}", "expr": expr})
if problems:
    sys.exit("\n".join(problems))
with open(rules_path, "w", encoding="utf-8") as fh:
    # JSON is YAML: no quoting rules to get wrong.
    json.dump({"groups": [{"name": "grafana-dashboard-exprs", "rules": rules}]}, fh, indent=1)
print(f"{len(rules)} exprs from {len(ids)} panels")
PY
promtool check rules "$tmp/grafana-rules.yml"

step "python -m schemad._dump_metrics | promtool check metrics"
"$PYTHON" -m schemad._dump_metrics >"$tmp/scrape.txt"
[ -s "$tmp/scrape.txt" ] || fail "empty scrape from schemad._dump_metrics"
promtool check metrics <"$tmp/scrape.txt"

step "every metric in the dashboard and the alerts exists in the scrape"
"$PYTHON" - "$tmp/scrape.txt" "$DASHBOARD" "$ALERTS" <<'PY'
"""Find the metric names in every expr (a small PromQL tokenizer) and look them up."""
import json
import re
import sys

import yaml

scrape_path, dashboard_path, alerts_path = sys.argv[1:]
# Series Prometheus makes itself, not the target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
    # Aggregation operators: `sum by (x) (...)` has no "(" right after the name.
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip

exposed = set()
with open(scrape_path, encoding="utf-8") as fh:
    for line in fh:
        if line.startswith("# TYPE "):
            exposed.add(line.split()[2])
        elif line.strip() and not line.startswith("#"):
            exposed.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    # An identifier not preceded by a digit or dot (1h, 0.95) and not a function call.
    found = re.findall(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\b(?!\s*\()", e)
    return {n for n in found if n.lower() not in KEYWORDS}


uses = []  # (where, expr)
with open(dashboard_path, encoding="utf-8") as fh:
    dash = json.load(fh)


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


for p in panels(dash["panels"]):
    for t in p.get("targets", []):
        uses.append((f"dashboard panel {p['id']} ({p.get('title')})", t["expr"]))
for var in dash.get("templating", {}).get("list", []):
    if var.get("type") != "query":
        continue
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    if not m:
        sys.exit(f"dashboard variable {var['name']}: unsupported query {query!r}")
    uses.append((f"dashboard variable ${var['name']}", m.group(1)))
with open(alerts_path, encoding="utf-8") as fh:
    for group in yaml.safe_load(fh)["groups"]:
        for rule in group["rules"]:
            uses.append((f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]))

missing, seen = [], set()
for where, expr in uses:
    names = metric_names(expr)
    if not names:
        missing.append(f"{where}: no metric found in {expr!r}")
    for name in sorted(names):
        seen.add(name)
        if name not in exposed and name not in SYNTHETIC:
            missing.append(f"{where}: {name} is not in a real scrape")
if missing:
    sys.exit("\n".join(missing))
print(f"{len(uses)} exprs use {len(seen)} metrics, all exposed: {' '.join(sorted(seen))}")
PY

step "example config $EXAMPLE_CONFIG loads"
"$PYTHON" -c 'import sys; from pathlib import Path; from schemad import config; config.load(config_file=Path(sys.argv[1]))' \
  "$EXAMPLE_CONFIG"

step "systemd-analyze verify $UNIT (any output fails)"
# verify exits 0 on unknown keys and unparsable values, printing only a warning.
out=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed:"$'\n'"$out"

step "systemd-analyze security --offline=yes --threshold=$MAX_EXPOSURE_TENTHS $UNIT"
if ! out=$(systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE_TENTHS" --no-pager "$UNIT" 2>&1); then
  echo "$out" >&2
  fail "systemd exposure above $((MAX_EXPOSURE_TENTHS / 10)).$((MAX_EXPOSURE_TENTHS % 10))"
fi
echo "$out" | tail -n 1

step "kubernetes-validate -k 1.30.0 --strict deploy/kubernetes/*.yaml"
kubernetes-validate -k 1.30.0 --strict deploy/kubernetes/*.yaml

step "all deploy checks passed"
