"""Growth benchmark, driven by scripts/bench-growth (run as root, under the reference venv's python).

Does the ingest rate hold while the data outgrows memory? The worker runs inside a cgroup-v1
memory cgroup (default 1 GiB: its heap, librdkafka's queue AND the page cache of the LMDB file it
maps and writes are charged there; PostgreSQL and Kafka run outside it) and ingests a backlog of N
envelopes (default 5,000,000) produced beforehand, once per LMDB layout, each into a fresh database
and LMDB, with the default configuration (verification on; the LMDB mirror on; the append layout,
a new environment's default, unless "compatible" is the layout measured). Every second it samples the stored count (the worker's /metrics), the cgroup's memory and
the LMDB file size; it reports the rate over each tenth of the backlog and `last_vs_first` = rate
over the last 10 % / rate over the first 10 % (issue 6's target: >= 0.5). A layout still running
after --max-seconds is stopped (SIGTERM) and reported with the tenths it reached.

Writes target/bench/growth.json.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BIN, DEV_BIN, ROOT, admin_url, main_guard, run, sql  # noqa: E402

CGROUP_ROOT = "/sys/fs/cgroup/memory"
STORED = re.compile(r'^nekhebet_envelopes_total\{[^}]*outcome="stored"[^}]*\} (\S+)$', re.M)
LAST_COMMIT = re.compile(r'^nekhebet_last_commit_timestamp_seconds(?:\{[^}]*\})? (\S+)$', re.M)


def make_cgroup(name, limit):
    path = os.path.join(CGROUP_ROOT, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
        f.write(str(limit))
    return path


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def scrape(port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    stored, last = STORED.search(text), LAST_COMMIT.search(text)
    if not stored or not last:
        return None
    # The counter moves when a batch commits: time the sample by that commit, not by the scrape.
    return float(last.group(1)), float(stored.group(1))


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def tenths(samples, count):
    """Rate (envelopes/s) over each tenth of the backlog, interpolating crossing times."""
    def time_at(n):
        for (t0, s0), (t1, s1) in zip(samples, samples[1:]):
            if s0 <= n <= s1 and s1 > s0:
                return t0 + (t1 - t0) * (n - s0) / (s1 - s0)
        return None

    out = []
    for k in range(10):
        lo, hi = count * k / 10, count * (k + 1) / 10
        a, b = time_at(lo), time_at(hi)
        out.append(None if a is None or b is None or b <= a else (hi - lo) / (b - a))
    return out


def one_layout(layout, topic, count, limit, max_seconds, port, workdir):
    name = f"growth_{layout}_{uuid.uuid4().hex[:8]}"
    sql(f"CREATE DATABASE {name}")
    base = admin_url().rpartition("/")[0]
    lmdb = os.path.join(workdir, name)
    env = {
        "NEKHEBET_POSTGRES__URL": f"{base}/{name}",
        "NEKHEBET_LMDB__PATH": lmdb,
        "NEKHEBET_LMDB__MAP_SIZE": str(1 << 30),
        "NEKHEBET_LMDB__MAX_MAP_SIZE": str(64 << 30),
        "NEKHEBET_KAFKA__TOPICS": f"[{topic}]",
        "NEKHEBET_KAFKA__GROUP_ID": name,
        "NEKHEBET_TELEMETRY__LISTEN": f"127.0.0.1:{port}",
        "NEKHEBET_LOG__LEVEL": "warn",
    }
    run([BIN, "migrate"], env)
    # Otherwise the default configuration: verification on, the LMDB mirror on, and the layout a
    # new environment gets (append) unless another one is asked for.
    if layout != "append":
        env["NEKHEBET_LMDB__LAYOUT"] = layout
    cg = make_cgroup(f"nekhebet-growth-{layout}", limit)
    procs = os.path.join(cg, "cgroup.procs")
    with open(os.path.join(cg, "memory.max_usage_in_bytes"), "w") as f:
        f.write("0")

    def join_cgroup():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    print(f"[{layout}] ingesting {count} envelopes in a {limit >> 20} MiB memory cgroup…", flush=True)
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    p = subprocess.Popen([BIN, "ingest", "--until-caught-up", "--report-json"],
                         env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=log, text=True,
                         preexec_fn=join_cgroup)
    started = time.monotonic()
    started_wall = time.time()
    samples, memory, stopped = [(0.0, 0.0)], [], False
    last_print = started
    while p.poll() is None:
        time.sleep(1)
        now = time.monotonic() - started
        scraped = scrape(port)
        if scraped is not None and scraped[1] > samples[-1][1]:
            samples.append((scraped[0] - started_wall, scraped[1]))
        memory.append({
            "t": round(now, 1),
            "cgroup_bytes": read_int(os.path.join(cg, "memory.usage_in_bytes")),
            "lmdb_file_bytes": dir_size(lmdb),
        })
        if time.monotonic() - last_print >= 30:
            last_print = time.monotonic()
            done = samples[-1][1]
            print(f"[{layout}] {now:6.0f} s  stored {done:>10.0f}  cgroup {memory[-1]['cgroup_bytes'] >> 20} MiB  "
                  f"LMDB file {memory[-1]['lmdb_file_bytes'] >> 20} MiB", flush=True)
        if now > max_seconds and not stopped:
            print(f"[{layout}] still running after {max_seconds} s: stopping it (SIGTERM)", flush=True)
            p.send_signal(signal.SIGTERM)
            stopped = True
    out, _ = p.communicate()
    elapsed = time.monotonic() - started
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    stored = report.get("outcomes", {}).get("stored", samples[-1][1])
    if stored > samples[-1][1]:
        # Batches committed after the last scrape (at most a second's worth).
        samples.append((elapsed, float(stored)))
    rates = tenths(samples, count)
    first, last = rates[0], rates[-1]
    result = {
        "layout": layout,
        "count": count,
        "stored": stored,
        "stopped_after_max_seconds": stopped,
        "seconds": elapsed,
        "rate_per_tenth": rates,
        "last_vs_first": (last / first) if first and last else None,
        "cgroup_limit_bytes": limit,
        "cgroup_max_usage_bytes": read_int(os.path.join(cg, "memory.max_usage_in_bytes")),
        "lmdb_file_bytes": dir_size(lmdb),
        "postgres_database_bytes": sql(f"SELECT pg_database_size('{name}')")[0][0],
        "stored_samples": [(round(t, 1), n) for t, n in samples[::5]],
        "memory_samples": memory[::5],
        "exit_code": p.returncode,
    }
    sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    shutil.rmtree(lmdb, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=5_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--layouts", default="append,compatible")
    ap.add_argument("--max-seconds", type=int, default=1800,
                    help="stop a layout's run after this long and report the tenths it reached")
    ap.add_argument("--topic", help="reuse a topic already holding --count envelopes")
    a = ap.parse_args()
    if os.geteuid() != 0 or not os.path.isdir(CGROUP_ROOT):
        sys.exit(f"needs root and the cgroup-v1 memory controller at {CGROUP_ROOT}")

    workdir = os.path.join(ROOT, ".local", "growth")
    os.makedirs(workdir, exist_ok=True)
    topic = a.topic or f"growth-{uuid.uuid4().hex[:8]}"
    if not a.topic:
        print(f"producing {a.count} envelopes to {topic} ({a.partitions} partitions)…", flush=True)
        run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions",
             str(a.partitions), "--seed", "11"], {})

    results = {"topic": topic, "count": a.count, "memory_limit_mib": a.memory_mib, "layouts": {}}
    for i, layout in enumerate(a.layouts.split(",")):
        results["layouts"][layout] = one_layout(layout, topic, a.count, a.memory_mib << 20,
                                                a.max_seconds, 9290 + i, workdir)
        os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
        with open(os.path.join(ROOT, "target", "bench", "growth.json"), "w") as f:
            json.dump(results, f, indent=2)

    print()
    print(f"{'layout':<12} {'stored':>10} {'seconds':>8}  envelopes/s per tenth of the backlog"
          f"{'':>22} last/first  cgroup peak")
    for layout, r in results["layouts"].items():
        tenth = " ".join(f"{x:>6.0f}" if x else "     -" for x in r["rate_per_tenth"])
        ratio = f"{r['last_vs_first']:.2f}" if r["last_vs_first"] else "-"
        print(f"{layout:<12} {r['stored']:>10.0f} {r['seconds']:>8.0f}  {tenth}  {ratio:>6}  "
              f"{r['cgroup_max_usage_bytes'] >> 20} MiB")
    print("wrote target/bench/growth.json")


if __name__ == "__main__":
    main_guard(main)
