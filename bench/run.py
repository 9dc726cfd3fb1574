"""schemad against the physical floor: one command, a throwaway cluster, every scenario.

    python -m bench.run                      # everything, 5 rounds, N = 200 and 1000
    python -m bench.run --quick              # 3 rounds, small index table, short load
    python -m bench.run --only apply,noop    # a subset (apply noop ready lockq index failover memory)

Results are printed as tables and written to bench/out/results.json and
bench/out/results.md (README.md explains each scenario; RESULTS.md holds a run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import apply, common, failover, index_load, lockqueue, memory
from bench.common import Series, bench_cluster, busy_others, byte_compile, loadavg, machine

SCENARIOS = ("apply", "noop", "ready", "lockq", "index", "failover", "memory")
OUT = Path(__file__).resolve().parent / "out"


def _table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([f"\n### {title}\n", line, sep, *body])


def _ratio_rows(series: dict[str, Series], base: str, scale: float, unit: str, digits: int) -> list[tuple[str, ...]]:
    """Per tool: wall time, the ratio of medians, and the ratios within each round (the tool
    and the baseline measured back to back: steadier when the machine's speed drifts)."""
    b = series[base]
    rows: list[tuple[str, ...]] = []
    for name, s in series.items():
        rounds = Series(name, [v / f for v, f in zip(s.values, b.values, strict=False)])
        rows.append((name, f"{s.summary(scale, digits)} {unit}", f"{s.median / b.median:.2f}x",
                     f"{rounds.summary(1, 2)}", f"{min(s.values) / min(b.values):.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pgdata", choices=("memory", "disk"), default="memory",
                        help="the cluster's data directory on a tmpfs (default; stable figures) or on disk")
    parser.add_argument("--runs", type=int, help="rounds per measurement (default 5, --quick 3)")
    parser.add_argument("--sizes", default="200,1000", help="corpus sizes N (default 200,1000)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a smaller index table, shorter loads")
    parser.add_argument("--index-rows", type=int, help="rows of the index scenario's table (default 5M, --quick 500k)")
    parser.add_argument("--lock-hold-s", type=float, default=20.0, help="how long the lock-queue blocker holds its lock")
    parser.add_argument("--load-tps", type=int, default=400, help="the index scenario's pgbench rate (default 400)")
    parser.add_argument("--schemad-root", type=Path, metavar="DIR",
                        help="measure the schemad of another checkout (e.g. a git worktree of an older commit)")
    args = parser.parse_args()
    common.PGDATA = args.pgdata
    if args.schemad_root:
        common.SCHEMAD_ROOT = args.schemad_root.resolve()
    runs = args.runs or (3 if args.quick else 5)
    sizes = [int(n) for n in args.sizes.split(",")]
    chosen = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = chosen - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    byte_compile()
    results: dict[str, Any] = {"machine": machine(), "runs": runs, "sizes": sizes, "load_before": loadavg(),
                               "schemad_root": str(common.SCHEMAD_ROOT or common.REPO),
                               "busy_before": busy_others(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    md: list[str] = [f"Machine: {results['machine']}", f"Load average before: {results['load_before']}",
                     f"Other busy processes before: {results['busy_before'] or 'none'}"]
    started = time.monotonic()
    load_samples: list[float] = []
    sampling = threading.Event()

    def sample_load() -> None:  # how busy the machine was while we measured
        while not sampling.wait(5.0):
            load_samples.append(loadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    with bench_cluster() as b:
        results["postgres"] = b.sql("SHOW server_version")
        corpora: dict[int, apply.Corpus] = {}
        for n in sizes:
            print(f"corpus N={n}", flush=True)
            c = corpora[n] = apply.make_corpus(b, n)
            if not chosen & {"apply", "noop", "ready"}:
                continue
            series, db = apply.run_apply(b, c, runs, per_file=n <= 200 and not args.quick)
            if "apply" in chosen:
                results[f"apply_{n}"] = apply.report(series, apply.FLOOR)
                md.append(_table(f"apply, N = {n} (seconds, median (min–max) of {runs})",
                                 _ratio_rows(series, apply.FLOOR, 1, "s", 3),
                                 ("tool", "wall", "x floor (medians)", "x floor per round", "x floor (minimums)")))
            if "noop" in chosen:
                noop = apply.run_noop(b, c, db, runs * 2)
                results[f"noop_{n}"] = [s.as_dict() for s in noop.values()]
                md.append(_table(f"no-op, {n} applied (ms, median (min–max) of {runs * 2})",
                                 [(k, f"{s.summary(1000, 1)} ms") for k, s in noop.items()], ("command", "wall")))
            if "ready" in chosen:
                ready = apply.start_to_ready(b, c, db, runs)
                results[f"ready_{n}"] = [s.as_dict() for s in ready.values()]
                md.append(_table(f"start to ready, {n} applied (ms, median (min–max) of {runs})",
                                 [(k, f"{s.summary(1000, 1)} ms") for k, s in ready.items()], ("command", "wall")))
            b.drop_db(db)
            b.drop_pending()
        big = corpora[max(sizes)]
        if "lockq" in chosen:
            hold = args.lock_hold_s if not args.quick else min(args.lock_hold_s, 8.0)
            b.drop_pending()
            lq = lockqueue.run(b, min(runs, 3), hold)
            results["lockq"] = {k: ([s.as_dict() for s in v.values()] if isinstance(v, dict)
                                    else v.as_dict() if isinstance(v, Series) else v) for k, v in lq.items()}
            md.append(_table(
                f"lock-queue safety: a transaction holds ACCESS SHARE on `hot` for {hold:g} s; "
                f"worst client latency (s, median (min–max) of {min(runs, 3)})",
                [(k, f"{lq['worst'][k].summary(1, 2)} s", f"{lq['done'][k].summary(1, 2)} s")
                 for k in lq["worst"]] + [("schemad lock_timeout retries", lq["retries"].summary(1, 0), "")],
                ("migration", "worst client latency", "migration done after")))
        if "index" in chosen:
            rows = args.index_rows or (500_000 if args.quick else 5_000_000)
            b.drop_pending()
            ix = index_load.run(b, rows=rows, rate=args.load_tps, before_s=8 if args.quick else 20)
            results["index"] = ix
            md.append(_table(
                f"index build under load: {ix['rows']:,} rows ({ix['table_size']}), pgbench {ix['clients']} clients "
                f"at {ix['rate_tps']} tps (read + update)",
                [("before the build", f"{ix['before']['tps']:.0f}", f"{ix['before']['p50_ms']:.1f}",
                  f"{ix['before']['p99_ms']:.1f}", f"{ix['before']['max_ms']:.0f}"),
                 ("during schemad build-indexes", f"{ix['during']['tps']:.0f}", f"{ix['during']['p50_ms']:.1f}",
                  f"{ix['during']['p99_ms']:.1f}", f"{ix['during']['max_ms']:.0f}")],
                ("foreground", "tps", "p50 ms", "p99 ms", "max ms")))
            md.append(_table(
                "index build time", [
                    ("plain CREATE INDEX, idle copy", f"{ix['plain_create_index_idle_s']:.2f} s", "1.00x"),
                    ("CREATE INDEX CONCURRENTLY, idle copy", f"{ix['cic_idle_s']:.2f} s",
                     f"{ix['cic_idle_s'] / ix['plain_create_index_idle_s']:.2f}x"),
                    ("schemad build-indexes under load (whole process)", f"{ix['schemad_build_indexes_s']:.2f} s",
                     f"{ix['schemad_build_indexes_s'] / ix['plain_create_index_idle_s']:.2f}x"),
                    ("  of which the CIC statement", f"{ix['schemad_cic_statement_s']:.2f} s",
                     f"{ix['schemad_cic_statement_s'] / ix['plain_create_index_idle_s']:.2f}x"),
                ], ("build", "time", "x plain")))
        if "failover" in chosen:
            b.drop_pending()
            fo = failover.run(b, big, runs)
            results["failover"] = {"failover": fo["failover"].as_dict(), "lock_taken": fo["lock_taken"].as_dict(),
                                   "details": fo["details"]}
            md.append(_table(f"failover, N = {big.n} (s, median (min–max) of {runs})",
                             [(fo["failover"].name, f"{fo['failover'].summary(1, 3)} s"),
                              (fo["lock_taken"].name, f"{fo['lock_taken'].summary(1, 3)} s"),
                              ("migrations applied twice", str(sum(d["applied_twice"] for d in fo["details"])))],
                             ("measure", "value")))
        if "memory" in chosen:
            b.drop_pending()
            mem = memory.run(b, big, cycles=10 if args.quick else 40)
            results["memory"] = mem
            md.append(_table(
                f"memory: one daemon applies N = {mem['n']} (cold parse cache), builds an index, then "
                f"{mem['cycles']} SIGHUP cycles",
                [("peak RSS (VmHWM)", f"{mem['peak_rss_mb']:.1f} MiB"), ("RSS at the end", f"{mem['final_rss_mb']:.1f} MiB"),
                 ("ready after", f"{mem['ready_after_s']:.2f} s")], ("measure", "value")))
    sampling.set()
    results["load_during"] = load_samples
    if load_samples:
        md.append(f"\nLoad average (1 min) during the run, sampled every 5 s: min {min(load_samples):.2f}, "
                  f"median {statistics.median(load_samples):.2f}, max {max(load_samples):.2f} "
                  f"(2 CPUs: above ~1 means other work competed with the measurements)")
    results["load_after"] = loadavg()
    results["busy_after"] = busy_others()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    md.append(f"\nLoad average after: {results['load_after']}; other busy processes after: "
              f"{results['busy_after'] or 'none'}; elapsed {results['elapsed_s']} s")
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (OUT / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
