"""The transparency log's cost, driven by scripts/bench-tlog (run under the reference venv's python).

One run, the same data for both sides:
  1. `produce` N generated envelopes (~1.4 KB) to a fresh topic with P partitions;
  2. the worker (hybrid) ingests the backlog with `tlog.enabled = false`, then with the log on (a
     signing key from `tlog keygen`, checkpoints every `tlog.checkpoint_interval_ms`), each into a
     fresh database and LMDB: envelopes/s from the worker's own report, and the ratio on/off;
  3. the integration lag of the log-on run, for EVERY event, from the database: from the
     transaction that stored it (`events.created_at`) to the `published_at` of the first checkpoint
     whose size covers its leaf — p50, p99, max (the definition of the
     nekhebet_tlog_integration_lag_seconds histogram, without its buckets);
  4. `nekhebet-store audit` on that store: leaves/s (from its stderr) and its exit code.
Prints a table and writes target/bench/tlog.json. Removes its databases, LMDB directories and
topics, also on failure.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BIN, DEV_BIN, ROOT, PROFILE, die, last_json_line, log, main_guard, run  # noqa: E402
from ingest_bench import Resources, worker_env  # noqa: E402

ORIGIN = "bench.example/nekhebet"

LAG_SQL = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag), count(*)
FROM (
  SELECT EXTRACT(EPOCH FROM (
           SELECT c.published_at FROM nekhebet_tlog_checkpoints c
           WHERE c.size > l.leaf_index ORDER BY c.size LIMIT 1) - e.created_at) AS lag
  FROM nekhebet_tlog_leaves l JOIN events e ON e.seq = l.seq
) x
"""


def ingest(res, topic, tag, env_extra):
    name = f"bench_tlog_{tag}_{uuid.uuid4().hex[:8]}"
    url = res.db(name)
    lmdb = os.path.join(res.workdir, name)
    env = worker_env(name, url, lmdb, "compatible", topic, True, 0, env_extra)
    env["NEKHEBET_TELEMETRY__LISTEN"] = ""
    # The log-on run's integrator finishes what the worker stored before the process exits.
    env["NEKHEBET_SHUTDOWN__TIMEOUT_MS"] = str(30 * 60 * 1000)
    run([BIN, "migrate"], env, what="migrate")
    started = time.perf_counter()
    out = run([BIN, "ingest", "--until-caught-up", "--report-json"], env, what=f"worker ({tag})")
    seconds = time.perf_counter() - started
    report = last_json_line(out, f"worker ({tag})")
    return url, lmdb, env, {
        "envelopes_per_s": report["committed_per_s"],
        "stored": report["outcomes"].get("stored", 0),
        "process_seconds": seconds,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    ap.add_argument("--note", default="", help="a line recorded in tlog.json")
    a = ap.parse_args()
    res = Resources(tempfile.mkdtemp(prefix="nekhebet-bench-tlog-"))
    try:
        results = bench(a, res)
    finally:
        res.cleanup()
    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tlog.json"), "w") as f:
        json.dump(results, f, indent=2)
    off, on = results["runs"]["off"], results["runs"]["on"]
    lag, audit = results["lag_seconds"], results["audit"]
    log("")
    log(f"{'':<34}{'value':>14}")
    log(f"{'ingest, log off (envelopes/s)':<34}{off['envelopes_per_s']:>14,.0f}")
    log(f"{'ingest, log on (envelopes/s)':<34}{on['envelopes_per_s']:>14,.0f}")
    log(f"{'on / off':<34}{results['on_over_off']:>14.3f}")
    log(f"{'integration lag p50 (s)':<34}{lag['p50']:>14.3f}")
    log(f"{'integration lag p99 (s)':<34}{lag['p99']:>14.3f}")
    log(f"{'integration lag max (s)':<34}{lag['max']:>14.3f}")
    log(f"{'audit (leaves/s)':<34}{audit['leaves_per_s']:>14,.0f}")
    log(f"profile {PROFILE}; wrote target/bench/tlog.json")


def bench(a, res):
    topic = f"bench-tlog-{uuid.uuid4().hex[:8]}"
    res.topics.append(topic)
    log(f"producing {a.count} envelopes to {topic} ({a.partitions} partitions)…")
    run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions", str(a.partitions),
         "--seed", "7"], {"NEKHEBET_LOG__LEVEL": "warn"}, what="produce")
    key = os.path.join(res.workdir, "tlog.key")
    run([BIN, "tlog", "keygen", ORIGIN, "--out", key], what="tlog keygen")
    results = {"count": a.count, "partitions": a.partitions, "profile": PROFILE, "note": a.note,
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": "scripts/bench-tlog " + " ".join(sys.argv[1:]), "runs": {}}
    log("worker, log off…")
    _, _, _, off = ingest(res, topic, "off", {"NEKHEBET_TLOG__ENABLED": "false"})
    log("worker, log on…")
    url, lmdb, env, on = ingest(res, topic, "on", {
        "NEKHEBET_TLOG__SIGNING_KEY_FILE": key,
        "NEKHEBET_TLOG__CHECKPOINT_INTERVAL_MS": str(a.checkpoint_interval_ms),
    })
    results["runs"] = {"off": off, "on": on}
    for tag, r in results["runs"].items():
        if r["stored"] != a.count:
            die(f"worker (log {tag}) stored {r['stored']} of {a.count} envelopes")
    results["on_over_off"] = on["envelopes_per_s"] / off["envelopes_per_s"]

    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(LAG_SQL)
        (p50, p99), worst, n = cur.fetchone()
    conn.close()
    if n != a.count:
        die(f"the log holds {n} leaves, {a.count} envelopes were stored")
    results["lag_seconds"] = {"p50": float(p50), "p99": float(p99), "max": float(worst), "leaves": n}

    log("audit…")
    p = subprocess.run([BIN, "audit"], env={**os.environ, **env}, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"audit exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    m = re.search(r"audited (\d+) leaves.* in ([0-9.]+) s \((\d+) leaves/s\)", p.stderr)
    if not m:
        die(f"audit printed no rate:\n{p.stderr[-2000:]}")
    results["audit"] = {"leaves": int(m.group(1)), "seconds": float(m.group(2)), "leaves_per_s": int(m.group(3))}
    return results


if __name__ == "__main__":
    main_guard(main)
