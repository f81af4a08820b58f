"""End-to-end ingest benchmark, driven by scripts/bench (run under the reference venv's python).

One run, the same data for every contender:
  1. `produce` N generated envelopes (~1.4 KB) to a fresh topic with P partitions;
  2. the worker (hybrid) ingests them in each LMDB layout, verification off then on, each into a
     fresh database and LMDB with its own consumer group: envelopes/s from the first commit until
     every offset is committed (from the worker's own report), its peak RSS, its committed count
     over time (/metrics every ~250 ms) and the CPU the worker, PostgreSQL (all its processes) and
     the broker spent per envelope meanwhile (/proc);
  3. the sequential ceiling (binary COPY + one LMDB transaction, `bench-ceiling`);
  4. the Python package nekhebet-store 4.0.0: HybridEventRepository.save over a subset;
  5. the limit (limit.py): the CPU per envelope of each piece of unavoidable work, measured alone;
     limit = cores ÷ their sum;
  6. the peer (peer.py): Kafka Connect + Debezium's JDBC sink, the same envelopes in Connect's
     JsonConverter form on a fresh topic, upserted into one table keyed by content hash;
  7. end-to-end latency (Kafka timestamp → commit, the worker's histogram) at 25/50/75 % of the
     worker's rate measured in 2., verification on, with a steady `produce --file ROWS --rate R`.
Prints tables and writes target/bench/ingest.json and target/bench/ingest.svg. Removes its
databases, LMDB directories and topics, also on failure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import chart  # noqa: E402
import limit as limit_mod  # noqa: E402
import peer as peer_mod  # noqa: E402
from common import (BIN, DEV_BIN, ROOT, Sampler, bucket_diff, broker_pid, check_prerequisites,  # noqa: E402
                    children_cpu_s, cores,
                    create_db, die, drop_db, e2e_buckets, envelopes_decided, free_port, last_json_line, log,
                    main_guard, postgres_pid, proc_ticks, quantile, ready, run, scrape, share_at_most,
                    stop_process, tree_ticks)


class Resources:
    """What the run created, removed at the end whatever happens."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.dbs = []
        self.topics = []

    def db(self, name):
        self.dbs.append(name)
        return create_db(name)

    def cleanup(self):
        for name in self.dbs:
            try:
                drop_db(name)
            except psycopg2.Error as e:
                sys.stderr.write(f"bench: could not drop database {name}: {e}\n")
        if self.topics:
            # The worker creates each source topic's dead-letter topic (`<topic>.dlq`) too.
            names = [n for t in self.topics for n in (t, f"{t}.dlq")]
            p = subprocess.run([DEV_BIN, "delete-topics", *names], capture_output=True, text=True,
                               env={**os.environ, "NEKHEBET_LOG__LEVEL": "warn"})
            if p.returncode != 0:
                sys.stderr.write(f"bench: could not delete topics {' '.join(names)}: {p.stderr[-500:]}\n")
        shutil.rmtree(self.workdir, ignore_errors=True)


def worker_env(name, url, lmdb, layout, topic, verify, port, extra):
    return {
        "NEKHEBET_POSTGRES__URL": url,
        "NEKHEBET_LMDB__PATH": lmdb,
        "NEKHEBET_LMDB__LAYOUT": layout,
        "NEKHEBET_LMDB__MAP_SIZE": str(8 << 30),
        "NEKHEBET_KAFKA__TOPICS": f"[{topic}]",
        "NEKHEBET_KAFKA__GROUP_ID": name,
        "NEKHEBET_VERIFY__ENABLED": "true" if verify else "false",
        "NEKHEBET_TELEMETRY__LISTEN": f"127.0.0.1:{port}",
        "NEKHEBET_LOG__LEVEL": "warn",
        **extra,
    }


def worker(res, topic, extra, verify, layout, tag, sources, sample_s):
    """One backlog run (`ingest --until-caught-up`), sampled."""
    name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    url = res.db(name)
    lmdb = os.path.join(res.workdir, name)
    port = free_port()
    env = worker_env(name, url, lmdb, layout, topic, verify, port, extra)
    run([BIN, "migrate"], env, what="migrate")
    started = time.perf_counter()
    p = subprocess.Popen([BIN, "ingest", "--until-caught-up", "--report-json"], env={**os.environ, **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = p.pid
    sampler = Sampler(sample_s, lambda: envelopes_decided(scrape(port, timeout=1)),
                      {"worker": lambda: proc_ticks(pid), **sources}, mem_pid=pid).start()
    out, err = p.communicate()
    sampler.stop()
    seconds = time.perf_counter() - started
    if p.returncode != 0:
        die(f"worker ({tag}) failed with exit {p.returncode}:\n{out[-2000:]}\n{err[-4000:]}")
    report = last_json_line(out, f"worker ({tag})")
    shutil.rmtree(lmdb, ignore_errors=True)
    return url, {
        "envelopes_per_s": report["committed_per_s"],
        "stored": report["outcomes"].get("stored", 0),
        "peak_rss_bytes": sampler.peaks["rss"],
        "peak_anon_bytes": sampler.peaks["anon"],
        "peak_file_mapped_bytes": sampler.peaks["file"],
        "process_seconds": seconds,
        "cpu": sampler.cpu_per_envelope(),
        "series": sampler.series(),
        "report": report,
    }


def latency(res, layout, rate, seconds, warmup, partitions, extra, rows, lines):
    """The worker (verification on) following a steady producer at `rate` envelopes/s; returns the
    end-to-end latency (Kafka timestamp → commit) quantiles over everything after `warmup`.

    The producer publishes the run's own envelopes (`rows`, already signed: `produce --file`)
    rather than signing new ones, which would take CPU the worker needs on the same cores; each
    point uses a fresh database, so none is a replay. The run is shortened when `rows` holds fewer
    than rate × (warmup + seconds) envelopes."""
    topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
    res.topics.append(topic)
    # Creates the topic (one envelope, before the measured window).
    run([DEV_BIN, "produce", "--topic", topic, "--count", "1", "--partitions", str(partitions)],
        {"NEKHEBET_LOG__LEVEL": "warn"}, what="produce")
    name = f"bench_lat_{layout}_{uuid.uuid4().hex[:8]}"
    url = res.db(name)
    lmdb = os.path.join(res.workdir, name)
    port = free_port()
    env = worker_env(name, url, lmdb, layout, topic, True, port, extra)
    run([BIN, "migrate"], env, what="migrate")
    logf = open(os.path.join(res.workdir, f"{name}.log"), "w")
    p = subprocess.Popen([BIN, "ingest", "--report-json"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=logf, text=True)
    producer = None
    try:
        deadline = time.monotonic() + 120
        while not (ready(port) and (envelopes_decided(scrape(port)) or 0) >= 1):
            if p.poll() is not None or time.monotonic() > deadline:
                die(f"latency run: the worker did not start (log {logf.name})")
            time.sleep(0.1)
        total = min(int(rate * (warmup + seconds)), lines)
        cpu0 = children_cpu_s()  # the worker is still running: only the producer is waited for below
        t0 = time.monotonic()
        producer = subprocess.Popen([DEV_BIN, "produce", "--topic", topic, "--file", rows, "--count", str(total),
                                     "--rate", f"{rate:.1f}"],
                                    env={**os.environ, "NEKHEBET_LOG__LEVEL": "warn"},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(warmup)
        before = e2e_buckets(scrape(port))
        _, perr = producer.communicate()
        produce_s = time.monotonic() - t0
        producer_cpu = children_cpu_s() - cpu0
        if producer.returncode != 0:
            die(f"latency run: produce failed: {perr[-2000:]}")
        producer = None
        deadline = time.monotonic() + 120
        while (envelopes_decided(scrape(port)) or 0) < total + 1:
            if p.poll() is not None or time.monotonic() > deadline:
                die(f"latency run: the worker did not commit the {total} envelopes (log {logf.name})")
            time.sleep(0.1)
        after = e2e_buckets(scrape(port))
    finally:
        stop_process(producer, 5)
        code = stop_process(p, 60)
        logf.close()
        shutil.rmtree(lmdb, ignore_errors=True)
    out = p.stdout.read() if p.stdout else ""
    if code != 0:
        die(f"latency run: the worker exited {code} (log {logf.name})")
    buckets = bucket_diff(after, before)
    p50, p50b = quantile(buckets, 0.5)
    p99, p99b = quantile(buckets, 0.99)
    report = last_json_line(out, "latency run")
    return {
        "layout": layout,
        "target_rate": rate,
        "produced": total,
        "measured_seconds": total / rate - warmup,
        "produced_per_s": total / produce_s,
        # The producer runs on the same cores: CPU the worker did not have.
        "producer_cpu_s_per_envelope": producer_cpu / total,
        "measured_envelopes": buckets[-1][1] if buckets else 0,
        "p50_s": p50,
        "p50_bucket_s": p50b,
        "p99_s": p99,
        "p99_bucket_s": p99b,
        "share_at_most_250ms": share_at_most(buckets, 0.25),
        "buckets": [(le if le != float("inf") else "+Inf", n) for le, n in buckets],
        "report": report,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--python-count", type=int, default=2_000)
    ap.add_argument("--layouts", default="compatible,append")
    ap.add_argument("--batch-records", type=int, default=None)
    ap.add_argument("--sample-ms", type=int, default=250, help="sampling period of the committed counts and CPU")
    ap.add_argument("--note", default="", help="a line recorded in ingest.json and shown on the picture "
                                               "(e.g. the machine's state)")
    ap.add_argument("--no-peer", action="store_true", help="skip Kafka Connect + JDBC sink (no Java/Maven needed)")
    ap.add_argument("--peer-tasks", default="1,2", help="tasks.max values the peer runs with (the best one counts)")
    ap.add_argument("--no-limit", action="store_true", help="skip the limit measurement")
    ap.add_argument("--limit-sample", type=int, default=50_000,
                    help="envelopes for the one-thread decode/canonical/Ed25519 costs (0: all)")
    ap.add_argument("--no-latency", action="store_true", help="skip the end-to-end latency runs")
    ap.add_argument("--latency-layouts", default=None, help="layouts of the latency runs (default: --layouts)")
    ap.add_argument("--latency-loads", default="0.25,0.5,0.75", help="shares of the worker's measured rate")
    ap.add_argument("--latency-seconds", type=float, default=20.0,
                    help="measured seconds per latency point (fewer when --count envelopes run out sooner)")
    ap.add_argument("--latency-warmup", type=float, default=3.0, help="seconds of each latency point left out")
    a = ap.parse_args()
    layouts = a.layouts.split(",")
    lat_layouts = (a.latency_layouts or a.layouts).split(",")
    for layout in lat_layouts:
        if layout not in layouts:
            die(f"--latency-layouts {layout}: not among --layouts (its maximum rate is measured there)")
    sample_s = a.sample_ms / 1000

    check_prerequisites(need_java=not a.no_peer)
    pg_pid, kafka_pid = postgres_pid(), broker_pid()
    sources = {"postgres": lambda: tree_ticks(pg_pid), "kafka": lambda: proc_ticks(kafka_pid)}
    peer_libs = peer_plugins = peer_versions = None
    if not a.no_peer:
        peer_libs, peer_plugins, peer_versions = peer_mod.ensure_jars()

    os.makedirs(os.path.join(ROOT, ".local"), exist_ok=True)
    res = Resources(tempfile.mkdtemp(prefix="nekhebet-bench-", dir=os.path.join(ROOT, ".local")))
    try:
        results = bench(a, res, layouts, lat_layouts, sample_s, sources, pg_pid, kafka_pid,
                        peer_libs, peer_plugins, peer_versions)
    finally:
        res.cleanup()
    report(results)


def bench(a, res, layouts, lat_layouts, sample_s, sources, pg_pid, kafka_pid, peer_libs, peer_plugins, peer_versions):
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    res.topics.append(topic)
    extra = {}
    if a.batch_records:
        extra["NEKHEBET_BATCH__MAX_RECORDS"] = str(a.batch_records)
    log(f"producing {a.count} envelopes to {topic} ({a.partitions} partitions)…")
    t0 = time.perf_counter()
    run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions", str(a.partitions),
         "--seed", "7"], {"NEKHEBET_LOG__LEVEL": "warn"}, what="produce")
    produce_s = time.perf_counter() - t0

    results = {"count": a.count, "partitions": a.partitions, "cores": cores(), "produce_seconds": produce_s,
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": "scripts/bench " + " ".join(sys.argv[1:]), "sample_ms": a.sample_ms, "note": a.note, "runs": {}}
    export_from = None
    for layout in layouts:
        for verify in (False, True):
            tag = f"{layout}_{'verify' if verify else 'noverify'}"
            log(f"worker: layout={layout} verify={'on' if verify else 'off'}…")
            url, r = worker(res, topic, extra, verify, layout, tag, sources, sample_s)
            results["runs"][tag] = r
            if export_from is None:
                export_from = url
            if r["stored"] != a.count:
                die(f"worker ({tag}) stored {r['stored']} of {a.count} envelopes: {r['report']}")

    # The same rows for the ceiling, the limit, the Python package and the peer.
    rows = os.path.join(res.workdir, "rows.jsonl")
    conn = psycopg2.connect(export_from)
    with conn.cursor() as cur, open(rows, "wb") as f:
        cur.execute("SELECT envelope FROM events ORDER BY seq")
        for (blob,) in cur:
            f.write(bytes(blob) + b"\n")
    conn.close()

    results["ceiling"] = {}
    for layout in layouts:
        log(f"ceiling: binary COPY + one LMDB transaction ({layout})…")
        name = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
        url = res.db(name)
        out = run([DEV_BIN, "bench-ceiling", rows], {
            "NEKHEBET_POSTGRES__URL": url,
            "NEKHEBET_LMDB__PATH": os.path.join(res.workdir, name),
            "NEKHEBET_LMDB__LAYOUT": layout,
            "NEKHEBET_LOG__LEVEL": "warn",
        }, what="bench-ceiling")
        results["ceiling"][layout] = last_json_line(out, "bench-ceiling")
        shutil.rmtree(os.path.join(res.workdir, name), ignore_errors=True)

    log(f"python nekhebet-store 4.0.0: {a.python_count} envelopes…")
    name = f"bench_python_{uuid.uuid4().hex[:8]}"
    url = res.db(name)
    run([BIN, "migrate"], {"NEKHEBET_POSTGRES__URL": url, "NEKHEBET_LOG__LEVEL": "warn"}, what="migrate")
    out = run([sys.executable, os.path.join(ROOT, "benches", "python", "baseline.py"), url,
               os.path.join(res.workdir, name), rows, str(a.python_count)], what="the Python baseline")
    results["python"] = last_json_line(out, "the Python baseline")
    shutil.rmtree(os.path.join(res.workdir, name), ignore_errors=True)

    if not a.no_limit:
        results["limit"] = limit_mod.measure(rows, topic, a.count, layouts, res.workdir, pg_pid, kafka_pid,
                                             a.limit_sample, a.batch_records or 4000, a.partitions)
        results["worker_vs_limit"] = {
            tag: results["runs"][tag]["envelopes_per_s"] / lim["envelopes_per_s"]
            for tag, lim in results["limit"]["limits"].items()}

    if peer_libs:
        ptopic = f"bench-peer-{uuid.uuid4().hex[:8]}"
        res.topics.append(ptopic)
        log(f"peer: publishing the envelopes in JsonConverter form to {ptopic}…")
        published = peer_mod.publish(rows, ptopic, a.partitions, res.workdir)
        peer_runs = []
        for tasks in [int(t) for t in a.peer_tasks.split(",")]:
            log(f"peer: Kafka Connect {peer_versions['kafka_connect']} + Debezium JDBC sink "
                f"{peer_versions['debezium_connector_jdbc']}, tasks.max={tasks}…")
            peer_runs.append(peer_mod.run_peer(peer_libs, peer_plugins, ptopic, a.count, tasks, res.workdir,
                                               sources, sample_s))
        best = max(peer_runs, key=lambda r: r["rows_per_s"] or 0)
        results["peer"] = {
            "what": "Apache Kafka Connect (standalone) + Debezium JDBC sink connector, upsert into one "
                    "PostgreSQL table keyed by content hash",
            "versions": peer_versions,
            "settings": best["settings"],
            "table": "peer_events (content_hash TEXT PRIMARY KEY, id UUID, event_type, issued_at TIMESTAMPTZ, "
                     "source, envelope TEXT, n BIGINT from a sequence)",
            "does_not": peer_mod.DOES_NOT,
            "published": published,
            "runs": peer_runs,
            "best": best,
        }
        results["worker_vs_peer"] = {tag: r["envelopes_per_s"] / best["rows_per_s"]
                                     for tag, r in results["runs"].items()}

    if not a.no_latency:
        results["latency"] = {}
        for layout in lat_layouts:
            top = results["runs"][f"{layout}_verify"]["envelopes_per_s"]
            points = []
            for load in [float(x) for x in a.latency_loads.split(",")]:
                # --count envelopes last count/rate seconds: a short supply shortens the point (and
                # its warm-up, to at most a quarter of it).
                available = a.count / (load * top)
                warmup = min(a.latency_warmup, available / 4)
                measured = min(a.latency_seconds, available - warmup)
                log(f"latency: {layout}, verification on, {load:.0%} of {top:,.0f}/s for {measured:.1f} s "
                    f"after {warmup:.1f} s…")
                pt = latency(res, layout, load * top, measured, warmup, a.partitions, extra, rows, a.count)
                pt["warmup_s"] = warmup
                pt["load"] = load
                points.append(pt)
            results["latency"][layout] = {"max_rate": top, "points": points}

    first = layouts[0]
    off = results["runs"][f"{first}_noverify"]["envelopes_per_s"]
    on = results["runs"][f"{first}_verify"]["envelopes_per_s"]
    results["worker_vs_ceiling"] = off / results["ceiling"][first]["ceiling_per_s"]
    results["worker_vs_python"] = off / results["python"]["per_s"]
    results["verify_on_vs_off"] = on / off
    results["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in results["runs"].values())
    results["peak_anon_bytes"] = max(r["peak_anon_bytes"] for r in results["runs"].values())
    head = []
    if "worker_vs_peer" in results:
        head.append("worker/peer " + ", ".join(f"{t} {v:.2f}" for t, v in results["worker_vs_peer"].items()))
    if "worker_vs_limit" in results:
        head.append("worker/limit " + ", ".join(f"{t} {v:.2f}" for t, v in results["worker_vs_limit"].items()))
    results["headline"] = " · ".join(head).replace("_noverify", " off").replace("_verify", " on")
    return results


def report(results):
    print()
    print(f"{'contender':<48} {'envelopes/s':>12} {'peak RSS MiB':>13} {'of it anon':>11} {'vs peer':>8} {'vs limit':>9}")
    for tag, r in results["runs"].items():
        vp = results.get("worker_vs_peer", {}).get(tag)
        vl = results.get("worker_vs_limit", {}).get(tag)
        print(f"{'worker ' + tag:<48} {r['envelopes_per_s']:>12.0f} {r['peak_rss_bytes'] / 2**20:>13.1f} "
              f"{r['peak_anon_bytes'] / 2**20:>11.1f} {'-' if vp is None else f'{vp:.2f}':>8} "
              f"{'-' if vl is None else f'{vl:.2f}':>9}")
    peer = results.get("peer")
    if peer:
        for pr in peer["runs"]:
            print(f"{'peer Kafka Connect + JDBC sink, tasks.max=' + str(pr['tasks']):<48} {pr['rows_per_s']:>12.0f} "
                  f"{pr['peak_rss_bytes'] / 2**20:>13.1f}")
    for layout, c in results["ceiling"].items():
        print(f"{'ceiling COPY + 1 LMDB txn (' + layout + ')':<48} {c['ceiling_per_s']:>12.0f}")
    py = results["python"]
    print(f"{'python nekhebet-store 4.0.0 (' + str(py.get('saved', '?')) + ')':<48} {py['per_s']:>12.0f}")
    if "limit" in results:
        print()
        for line in limit_mod.table(results["limit"], results["runs"]):
            print(line)
    if peer and peer["best"].get("cpu"):
        cpu = peer["best"]["cpu"]["s_per_envelope"]
        print(f"peer (tasks.max={peer['best']['tasks']}) spent µs per envelope: " +
              ", ".join(f"{k} {v * 1e6:.1f}" for k, v in cpu.items()))
    if "latency" in results:
        print()
        print(f"{'end-to-end latency (verification on)':<40} {'rate/s':>9} {'produced/s':>11} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'≤250 ms':>8} {'producer µs/env':>16}")
        for layout, lat in results["latency"].items():
            for pt in lat["points"]:
                share = pt["share_at_most_250ms"]
                label = f"{layout} at {pt['load']:.0%}"
                print(f"{label:<40} "
                      f"{pt['target_rate']:>9.0f} {pt['produced_per_s']:>11.0f} "
                      f"{(pt['p50_s'] or 0) * 1e3:>8.1f} {(pt['p99_s'] or 0) * 1e3:>8.1f} "
                      f"{'-' if share is None else f'{share:.1%}':>8} "
                      f"{pt['producer_cpu_s_per_envelope'] * 1e6:>16.1f}")
    print()
    print(f"worker_vs_ceiling {results['worker_vs_ceiling']:.2f}   worker_vs_python {results['worker_vs_python']:.1f}   "
          f"verify_on_vs_off {results['verify_on_vs_off']:.2f}   peak_rss {results['peak_rss_bytes'] / 2**20:.0f} MiB "
          f"(anon {results['peak_anon_bytes'] / 2**20:.0f} MiB)")
    if results.get("headline"):
        print(results["headline"])
    busy = []
    for tag, r in list(results["runs"].items()) + [(f"peer tasks.max={p['tasks']}", p) for p in (peer or {}).get("runs", [])]:
        cpu = (r.get("cpu") or {}).get("s_per_envelope")
        if cpu and cpu["machine"] > 0 and cpu["other"] / cpu["machine"] > 0.15:
            busy.append(f"{tag} ({cpu['other'] / cpu['machine']:.0%})")
    if busy:
        print(f"WARNING: other work took a large share of the machine's CPU during: {', '.join(busy)} — "
              "these figures do not measure the contenders alone; run on a quiet machine")

    out = os.path.join(ROOT, "target", "bench")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ingest.json"), "w") as f:
        json.dump(results, f, indent=2)
    chart.write_svg(results, os.path.join(out, "ingest.svg"))
    print("wrote target/bench/ingest.json and target/bench/ingest.svg")


if __name__ == "__main__":
    main_guard(main)
