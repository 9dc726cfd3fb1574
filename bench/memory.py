"""Memory: the peak resident set (VmHWM) of one `schemad run` through a soak-like life.

On an empty database with the N-migration corpus and one registry index, with a cold parse
cache (the daemon parses every file itself, the most memory it ever needs): it applies all
N, builds the index, then is woken ``cycles`` times (SIGHUP: re-read the configuration,
re-validate every file, re-check the ledger and the index). VmRSS is sampled every 50 ms;
VmHWM is the kernel's own peak.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from bench.common import Bench, NotifySocket, peak_rss_mb, schemad_argv, schemad_env, stop

if TYPE_CHECKING:
    from bench.apply import Corpus


def run(b: Bench, c: Corpus, *, cycles: int) -> dict[str, Any]:
    logs = b.dir("logs")
    idx = b.dir(f"memory-{c.n}/indexes")
    (idx / "t00006_name_idx.sql").write_text("CREATE INDEX t00006_name_idx ON t00006 (name);\n", encoding="utf-8")
    cache = b.dir(f"memory-{c.n}/cache")
    db = b.fresh_db("memory")
    notify = NotifySocket(b.scratch)
    env = schemad_env(b.cluster.dsn(db), c.migrations, idx, cache, NOTIFY_SOCKET=str(notify.path))
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    with (logs / "memory.log").open("ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([*schemad_argv(), "run", "--metrics-addr", "127.0.0.1:0"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)

        def sample() -> None:
            while not done.is_set() and proc.poll() is None:
                try:
                    samples.append((time.perf_counter() - started, peak_rss_mb(proc.pid)[1]))
                except OSError:
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            ready_s = notify.wait_for("READY=1", timeout_s=300) - started
            deadline = time.monotonic() + 120
            while b.sql("SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid = "
                        "to_regclass('t00006_name_idx')", db) != "1":
                if time.monotonic() > deadline:
                    raise TimeoutError("the index was not built")
                time.sleep(0.1)
            built_s = time.perf_counter() - started
            for _ in range(cycles):
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.5)
            hwm, rss = peak_rss_mb(proc.pid)
        finally:
            done.set()
            code = stop(proc)
            notify.close()
            sampler.join(timeout=2)
    applied = b.sql("SELECT count(*) FROM schemad.migrations", db)
    b.drop_db(db)
    if code != 0:
        raise RuntimeError(f"schemad run exited {code}; see {logs / 'memory.log'}")
    return {
        "peak_rss_mb": hwm, "final_rss_mb": rss, "max_sampled_rss_mb": max((r for _, r in samples), default=0.0),
        "ready_after_s": ready_s, "index_built_after_s": built_s, "cycles": cycles, "applied": int(applied),
        "n": c.n, "samples": samples[:: max(1, len(samples) // 200)],
    }
