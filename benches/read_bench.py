"""Read benchmark, driven by scripts/bench-read: single-event reads of the same stored envelopes,
side by side in one run.

  1. `produce` N generated envelopes (~1.4 KB, default 1,000,000) to a fresh topic;
  2. `ingest --until-caught-up` them into a fresh database and LMDB (hybrid, the default layout
     for a new environment); and, for the Python package, into a second database with the
     `compatible` LMDB layout (the one nekhebet-store 4.0 reads);
  3. the same random sample of ids (default 100,000) for every contender:
     (a) `serve` (hybrid: PostgreSQL locates, LMDB's checked blob is served),
     (b) `serve` with `store.mode = "postgres"` (PostgreSQL locates and serves),
     each loaded with `oha` (crates.io) — GET /v1/events/{id} at C concurrent connections
     (default 64) for S seconds (default 20) after a warm-up pass;
     (c) nekhebet-store 4.0.0's `HybridEventRepository.get` in Python, one process, one thread
     (its API is synchronous), over the same ids for S seconds;
  4. the stream: `GET /v1/stream` from the start against PostgreSQL's
     `COPY (SELECT envelope FROM events ORDER BY seq) TO STDOUT`, when `serve` has the route.

Reports requests/s, p50/p99 latency and MB/s; writes target/bench/read.json. The load generator
runs on the same cores as the server, PostgreSQL and Kafka (as the figures in README say).
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (BIN, DEV_BIN, ROOT, cores, die, free_port, last_json_line, log, main_guard,  # noqa: E402
                    run, stop_process)
from ingest_bench import Resources  # noqa: E402

PYTHON_GET = os.path.join(ROOT, "benches", "python", "get_bench.py")


def ingest(res, topic, name, layout):
    """Ingests the whole topic into a new database and LMDB; returns (url, lmdb path, seconds)."""
    url = res.db(name)
    lmdb = os.path.join(res.workdir, name)
    env = {
        "NEKHEBET_POSTGRES__URL": url,
        "NEKHEBET_LMDB__PATH": lmdb,
        "NEKHEBET_LMDB__MAP_SIZE": str(16 << 30),
        "NEKHEBET_KAFKA__TOPICS": f"[{topic}]",
        "NEKHEBET_KAFKA__GROUP_ID": name,
        "NEKHEBET_TELEMETRY__LISTEN": "",
        "NEKHEBET_LOG__LEVEL": "warn",
    }
    if layout is not None:
        env["NEKHEBET_LMDB__LAYOUT"] = layout
    run([BIN, "migrate"], env, what="migrate")
    t0 = time.perf_counter()
    out = run([BIN, "ingest", "--until-caught-up", "--report-json"], env, what=f"ingest ({name})")
    seconds = time.perf_counter() - t0
    report = last_json_line(out, f"ingest ({name})")
    return url, lmdb, seconds, report


def serve(url, lmdb, mode, port, workdir):
    """Starts `serve` (anonymous on loopback) and waits until /readyz answers 200."""
    env = {
        **os.environ,
        "NEKHEBET_POSTGRES__URL": url,
        "NEKHEBET_LMDB__PATH": lmdb,
        "NEKHEBET_STORE__MODE": mode,
        "NEKHEBET_SERVE__LISTEN": f"127.0.0.1:{port}",
        "NEKHEBET_LOG__LEVEL": "warn",
    }
    log_path = os.path.join(workdir, f"serve-{mode}-{port}.log")
    p = subprocess.Popen([BIN, "serve"], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            die(f"serve ({mode}) exited with {p.returncode}: {open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return p
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_process(p)
    die(f"serve ({mode}) not ready within 60 s: {open(log_path).read()[-3000:]}")


def oha(urls_file, seconds, connections):
    """One oha run; returns its JSON summary."""
    out = subprocess.run(
        ["oha", "-z", f"{seconds}s", "-c", str(connections), "--no-tui", "--output-format", "json",
         "--urls-from-file", urls_file],
        capture_output=True, text=True)
    if out.returncode != 0:
        die(f"oha failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def http_run(name, port, ids, workdir, seconds, connections, metrics_of):
    urls = os.path.join(workdir, f"urls-{port}.txt")
    with open(urls, "w") as f:
        for i in ids:
            f.write(f"http://127.0.0.1:{port}/v1/events/{i}\n")
    log(f"{name}: warm-up {max(3, seconds // 4)} s, then {seconds} s at {connections} connections…")
    oha(urls, max(3, seconds // 4), connections)
    before = metrics_of()
    r = oha(urls, seconds, connections)
    after = metrics_of()
    summary = r["summary"]
    statuses = r.get("statusCodeDistribution", {})
    bad = {k: v for k, v in statuses.items() if k != "200"}
    if bad:
        die(f"{name}: answers other than 200: {bad}")
    pct = r.get("latencyPercentiles", {})
    return {
        "requests_per_s": summary["requestsPerSec"],
        "p50_ms": pct.get("p50", 0) * 1000,
        "p99_ms": pct.get("p99", 0) * 1000,
        "mb_per_s": summary.get("sizePerSec", 0) / 1e6,
        "successful": statuses.get("200", 0),
        "served_from": {k: after.get(k, 0) - before.get(k, 0) for k in after},
    }


def served_from(port):
    """LMDB hits and PostgreSQL fallbacks counted by a running serve."""
    def read():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        out = {}
        for line in text.splitlines():
            for name in ("nekhebet_lmdb_read_hits_total", "nekhebet_hybrid_lmdb_fallbacks_total"):
                if line.startswith(name):
                    out[name] = out.get(name, 0) + float(line.rsplit(" ", 1)[1])
        return out
    return read


def wait_for_sweep(port):
    """Waits until the LMDB mirror of a hybrid `serve` finished the sweep it starts with (a paced
    re-read of every row, then one an hour): measured during it, the gets would share the machine
    with it."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1800:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        if any(line.startswith("nekhebet_lmdb_mirror_sweeps_total") and float(line.rsplit(" ", 1)[1]) >= 1
               for line in text.splitlines()):
            log(f"serve (hybrid): the mirror's first sweep took {time.monotonic() - t0:.0f} s")
            return
        time.sleep(1)
    die("serve (hybrid): the mirror's first sweep did not finish within 30 min")


def stream_run(port, expected):
    """GET /v1/stream from the start until `expected` events arrived; None when serve has no such
    route."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/stream?from=0")
    t0 = time.perf_counter()
    try:
        resp = urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        die(f"/v1/stream: HTTP {e.code}: {e.read()[:500]}")
    # Counted in 1 MiB reads (an event ends with an empty line: "\n\n"), not line by line: a Python
    # loop over lines would be the bottleneck, not the server.
    events = 0
    body_bytes = 0
    last = b""
    with resp:
        while events < expected:
            chunk = resp.read1(1 << 20) if hasattr(resp, "read1") else resp.read(1 << 20)
            if not chunk:
                break
            body_bytes += len(chunk)
            events += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
            last = chunk[-1:]
    seconds = time.perf_counter() - t0
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds,
            "mb_per_s": body_bytes / seconds / 1e6}


def copy_run(url):
    """PostgreSQL's COPY of every envelope in seq order, to nowhere."""
    conn = psycopg2.connect(url)
    sink = _Counter()
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        cur.copy_expert("COPY (SELECT envelope FROM events ORDER BY seq) TO STDOUT", sink)
    seconds = time.perf_counter() - t0
    conn.close()
    return {"rows": sink.lines, "seconds": seconds, "events_per_s": sink.lines / seconds,
            "mb_per_s": sink.bytes / seconds / 1e6}


class _Counter:
    def __init__(self):
        self.bytes = 0
        self.lines = 0

    def write(self, data):
        self.bytes += len(data)
        self.lines += data.count(b"\n") if isinstance(data, bytes) else data.count("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000, help="envelopes stored")
    ap.add_argument("--ids", type=int, default=100_000, help="random sample of ids every contender reads")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=20, help="measured seconds per contender")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--no-python", action="store_true", help="skip nekhebet-store 4.0 (and its second ingest)")
    ap.add_argument("--note", default="", help="a line recorded in read.json")
    a = ap.parse_args()
    if shutil.which("oha") is None:
        die("oha is not on PATH (scripts/bench-read installs it with cargo install)")

    os.makedirs(os.path.join(ROOT, ".local"), exist_ok=True)
    res = Resources(tempfile.mkdtemp(prefix="nekhebet-bench-read-", dir=os.path.join(ROOT, ".local")))
    try:
        results = bench(a, res)
    finally:
        res.cleanup()
    out = os.path.join(ROOT, "target", "bench", "read.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    report(results)
    log(f"wrote {out}")


def bench(a, res):
    topic = f"bench-read-{uuid.uuid4().hex[:8]}"
    res.topics.append(topic)
    log(f"produce: {a.count} envelopes to {topic} ({a.partitions} partitions)…")
    run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions", str(a.partitions),
         "--seed", "11"], {"NEKHEBET_LOG__LEVEL": "warn"}, what="produce")
    results = {"count": a.count, "ids": a.ids, "connections": a.connections, "seconds": a.seconds,
               "cores": cores(), "note": a.note, "contenders": {}}

    log("ingest: hybrid, the default layout for a new environment…")
    url, lmdb, secs, report_ = ingest(res, topic, f"bench_read_{uuid.uuid4().hex[:8]}", None)
    results["ingest_seconds"] = secs
    stored = report_["outcomes"].get("stored", 0)
    if stored != a.count:
        die(f"ingest stored {stored} of {a.count}")
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT id::text FROM events")
        all_ids = [r[0] for r in cur]
    conn.close()
    ids = random.Random(11).sample(all_ids, min(a.ids, len(all_ids)))
    del all_ids

    for mode, tag in (("hybrid", "serve_hybrid"), ("postgres", "serve_postgres")):
        port = free_port()
        p = serve(url, lmdb, mode, port, res.workdir)
        try:
            if mode == "hybrid":
                wait_for_sweep(port)
            results["contenders"][tag] = http_run(f"serve ({mode})", port, ids, res.workdir, a.seconds,
                                                  a.connections, served_from(port))
            if mode == "hybrid":
                log("stream: GET /v1/stream from the start…")
                s = stream_run(port, a.count)
                if s is None:
                    log("stream: serve has no /v1/stream route: skipped")
                else:
                    results["stream"] = s
        finally:
            stop_process(p)
    log("COPY (SELECT envelope FROM events ORDER BY seq) TO STDOUT…")
    results["copy"] = copy_run(url)

    if not a.no_python:
        log("ingest: compatible layout, for nekhebet-store 4.0.0's reader…")
        purl, plmdb, _, _ = ingest(res, topic, f"bench_read_py_{uuid.uuid4().hex[:8]}", "compatible")
        idfile = os.path.join(res.workdir, "ids.txt")
        with open(idfile, "w") as f:
            f.write("\n".join(ids))
        log(f"python nekhebet-store 4.0.0: HybridEventRepository.get for {a.seconds} s…")
        out = run([sys.executable, PYTHON_GET, purl, plmdb, idfile, str(a.seconds)], what="python get")
        results["contenders"]["python_4_0"] = last_json_line(out, "python get")
    return results


def report(results):
    print()
    print(f"{results['count']:,} stored envelopes, {results['ids']:,} random ids, "
          f"{results['connections']} connections, {results['seconds']} s each, {results['cores']} cores")
    print(f"{'GET /v1/events/{id}':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'MB/s':>8}")
    for tag, r in results["contenders"].items():
        print(f"{tag:<34} {r['requests_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r.get('mb_per_s', 0):>8.1f}")
    c = results["contenders"]
    if "serve_hybrid" in c and "serve_postgres" in c:
        print(f"hybrid / postgres-only: {c['serve_hybrid']['requests_per_s'] / c['serve_postgres']['requests_per_s']:.2f}×")
    if "serve_hybrid" in c and "python_4_0" in c:
        print(f"hybrid / python 4.0: {c['serve_hybrid']['requests_per_s'] / c['python_4_0']['requests_per_s']:.1f}×")
    print(f"{'all envelopes in store order':<34} {'events/s':>9} {'MB/s':>8}")
    if "stream" in results:
        s = results["stream"]
        print(f"{'GET /v1/stream?from=0':<34} {s['events_per_s']:>9.0f} {s['mb_per_s']:>8.1f}")
    cp = results["copy"]
    print(f"{'COPY … ORDER BY seq TO STDOUT':<34} {cp['events_per_s']:>9.0f} {cp['mb_per_s']:>8.1f}")
    if "stream" in results:
        print(f"stream / COPY: {results['stream']['events_per_s'] / cp['events_per_s']:.2f}×")


if __name__ == "__main__":
    main_guard(main)
