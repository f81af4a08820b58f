"""End-to-end ingest benchmark, driven by scripts/bench (run under the reference venv's python).

One run, the same data for every contender:
  1. `produce` N generated envelopes (~1.4 KB) to a fresh topic with P partitions;
  2. the worker (hybrid) ingests them — verification off, then on, each into a fresh database and
     LMDB with its own consumer group: envelopes/s from the first commit until every offset is
     committed (from the worker's own report), and its peak RSS (VmHWM);
  3. the ceiling: binary COPY of the same rows (exported from the worker's database) into a fresh
     copy of the schema + one LMDB write transaction of the same blobs (`bench-ceiling`);
  4. the Python package nekhebet-store 4.0.0: HybridEventRepository.save over a subset.
Prints a table and writes target/bench/ingest.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "nekhebet-store")
# Development tooling (produce, bench-ceiling): built with `--features dev`.
DEV_BIN = os.path.join(ROOT, "target", "release", "nekhebet-dev")


def admin_url():
    return os.environ["NEKHEBET_POSTGRES__URL"]


def db_url(name):
    base, _, _ = admin_url().rpartition("/")
    return f"{base}/{name}"


def create_db(name):
    conn = psycopg2.connect(admin_url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return db_url(name)


def drop_db(name):
    conn = psycopg2.connect(admin_url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


def run(args, env=None, capture=True):
    full = dict(os.environ)
    full.update(env or {})
    p = subprocess.run(args, env=full, capture_output=capture, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"command failed: {' '.join(args)}\n{p.stdout}\n{p.stderr}\n")
        raise SystemExit(1)
    return p.stdout


def peak_rss_run(args, env):
    """Runs a command, sampling /proc/PID/status; returns (stdout, stderr, peaks, seconds) where
    peaks = {"rss": VmHWM, "anon": max RssAnon, "file": max RssFile}. LMDB is memory-mapped: pages
    of its file that the process touched count in RSS as RssFile, page cache the kernel reclaims
    at will; RssAnon is the process's own memory (heap, buffers, queues)."""
    full = dict(os.environ)
    full.update(env)
    started = time.perf_counter()
    p = subprocess.Popen(args, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "anon": 0, "file": 0}
    out = {}

    def sample():
        path = f"/proc/{p.pid}/status"
        while p.poll() is None:
            try:
                with open(path) as f:
                    for line in f:
                        for key, field in (("rss", "VmHWM:"), ("anon", "RssAnon:"), ("file", "RssFile:")):
                            if line.startswith(field):
                                peak[key] = max(peak[key], int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out["stdout"], out["stderr"] = p.communicate()
    t.join()
    seconds = time.perf_counter() - started
    if p.returncode != 0:
        sys.stderr.write(f"worker failed ({p.returncode}):\n{out['stdout']}\n{out['stderr'][-4000:]}\n")
        raise SystemExit(1)
    return out["stdout"], out["stderr"], peak, seconds


def worker(topic, partitions_env, verify, layout, tag, workdir):
    name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    url = create_db(name)
    lmdb = os.path.join(workdir, name)
    env = {
        "NEKHEBET_POSTGRES__URL": url,
        "NEKHEBET_LMDB__PATH": lmdb,
        "NEKHEBET_LMDB__LAYOUT": layout,
        "NEKHEBET_LMDB__MAP_SIZE": str(8 << 30),
        "NEKHEBET_KAFKA__TOPICS": f"[{topic}]",
        "NEKHEBET_KAFKA__GROUP_ID": name,
        "NEKHEBET_VERIFY__ENABLED": "true" if verify else "false",
        "NEKHEBET_TELEMETRY__LISTEN": "",
        "NEKHEBET_LOG__LEVEL": "warn",
        **partitions_env,
    }
    run([BIN, "migrate"], env)
    stdout, stderr, peak, seconds = peak_rss_run([BIN, "ingest", "--until-caught-up", "--report-json"], env)
    report = json.loads(stdout.strip().splitlines()[-1])
    return name, url, lmdb, report, peak, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--python-count", type=int, default=2_000)
    ap.add_argument("--layouts", default="compatible,append")
    ap.add_argument("--batch-records", type=int, default=None)
    a = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="nekhebet-bench-", dir=os.path.join(ROOT, ".local"))
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    extra = {}
    if a.batch_records:
        extra["NEKHEBET_BATCH__MAX_RECORDS"] = str(a.batch_records)
    print(f"producing {a.count} envelopes to {topic} ({a.partitions} partitions)…", flush=True)
    t0 = time.perf_counter()
    run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions", str(a.partitions), "--seed", "7"])
    produce_s = time.perf_counter() - t0

    results = {"count": a.count, "partitions": a.partitions, "produce_seconds": produce_s, "runs": {}}
    dbs = []
    for layout in a.layouts.split(","):
        for verify in (False, True):
            tag = f"{layout}_{'verify' if verify else 'noverify'}"
            print(f"worker: layout={layout} verify={'on' if verify else 'off'}…", flush=True)
            name, url, lmdb, report, peak, seconds = worker(topic, extra, verify, layout, tag, workdir)
            dbs.append(name)
            stored = report["outcomes"].get("stored", 0)
            rate = report["committed_per_s"]
            results["runs"][tag] = {
                "envelopes_per_s": rate,
                "stored": stored,
                "peak_rss_bytes": peak["rss"],
                "peak_anon_bytes": peak["anon"],
                "peak_file_mapped_bytes": peak["file"],
                "process_seconds": seconds,
                "report": report,
            }
            if layout == a.layouts.split(",")[0] and not verify:
                export_from = url
            shutil.rmtree(lmdb, ignore_errors=True)

    # The same rows for the ceiling and the baseline.
    jsonl = os.path.join(workdir, "rows.jsonl")
    conn = psycopg2.connect(export_from)
    with conn.cursor() as cur, open(jsonl, "wb") as f:
        cur.execute("SELECT envelope FROM events ORDER BY seq")
        for (blob,) in cur:
            f.write(bytes(blob) + b"\n")
    conn.close()

    results["ceiling"] = {}
    for layout in a.layouts.split(","):
        name = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
        url = create_db(name)
        dbs.append(name)
        out = run([DEV_BIN, "bench-ceiling", jsonl], {
            "NEKHEBET_POSTGRES__URL": url,
            "NEKHEBET_LMDB__PATH": os.path.join(workdir, name),
            "NEKHEBET_LMDB__LAYOUT": layout,
            "NEKHEBET_LOG__LEVEL": "warn",
        })
        results["ceiling"][layout] = json.loads(out.strip().splitlines()[-1])

    name = f"bench_python_{uuid.uuid4().hex[:8]}"
    url = create_db(name)
    dbs.append(name)
    run([BIN, "migrate"], {"NEKHEBET_POSTGRES__URL": url, "NEKHEBET_LOG__LEVEL": "warn"})
    out = run([sys.executable, os.path.join(ROOT, "benches", "python", "baseline.py"), url,
               os.path.join(workdir, name), jsonl, str(a.python_count)])
    results["python"] = json.loads(out.strip().splitlines()[-1])

    first = a.layouts.split(",")[0]
    off = results["runs"][f"{first}_noverify"]["envelopes_per_s"]
    on = results["runs"][f"{first}_verify"]["envelopes_per_s"]
    ceiling = results["ceiling"][first]["ceiling_per_s"]
    py = results["python"]["per_s"]
    results["worker_vs_ceiling"] = off / ceiling
    results["worker_vs_python"] = off / py
    results["verify_on_vs_off"] = on / off
    results["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in results["runs"].values())
    results["peak_anon_bytes"] = max(r["peak_anon_bytes"] for r in results["runs"].values())

    print()
    print(f"{'contender':<42} {'envelopes/s':>12} {'peak RSS MiB':>13} {'of it anon':>11}")
    for tag, r in results["runs"].items():
        print(f"{'worker ' + tag:<42} {r['envelopes_per_s']:>12.0f} {r['peak_rss_bytes'] / 2**20:>13.1f} "
              f"{r['peak_anon_bytes'] / 2**20:>11.1f}")
    for layout, c in results["ceiling"].items():
        print(f"{'ceiling COPY + 1 LMDB txn (' + layout + ')':<42} {c['ceiling_per_s']:>12.0f}")
        print(f"{'  of which PostgreSQL binary COPY':<42} {c['postgres_rows_per_s']:>12.0f}")
        print(f"{'  of which LMDB puts':<42} {c['lmdb_puts_per_s']:>12.0f}")
    print(f"{'python nekhebet-store 4.0.0 (' + str(a.python_count) + ')':<42} {py:>12.0f}")
    print()
    print(f"worker_vs_ceiling {results['worker_vs_ceiling']:.2f}   worker_vs_python {results['worker_vs_python']:.1f}   "
          f"verify_on_vs_off {results['verify_on_vs_off']:.2f}   peak_rss {results['peak_rss_bytes'] / 2**20:.0f} MiB "
          f"(anon {results['peak_anon_bytes'] / 2**20:.0f} MiB)")

    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "ingest.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("wrote target/bench/ingest.json")
    for name in dbs:
        drop_db(name)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
