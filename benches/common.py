"""Helpers shared by the benchmark runners (ingest_bench.py, growth_bench.py, peer.py, limit.py):
PostgreSQL databases, subprocesses, CPU accounting from /proc, the worker's /metrics, and a
sampler thread that records committed counts and CPU every ~250 ms.

Standard library + psycopg2 only (the reference venv's python runs them)."""
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binaries measured: the release build, unless NEKHEBET_BENCH_PROFILE names another profile's
# directory (`debug`: smoke runs of the tooling only, its figures mean nothing).
PROFILE = os.environ.get("NEKHEBET_BENCH_PROFILE", "release")
BIN = os.path.join(ROOT, "target", PROFILE, "nekhebet-store")
# Development tooling (produce, bench-ceiling, bench-limit, delete-topics): built with `--features dev`.
DEV_BIN = os.path.join(ROOT, "target", PROFILE, "nekhebet-dev")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failure the runner reports in one clear sentence (then cleans up and exits 1)."""


def die(message):
    raise BenchError(message)


def log(message):
    print(message, flush=True)


# ------------------------------------------------------------------------------------ postgres

def admin_url():
    return os.environ["NEKHEBET_POSTGRES__URL"]


def db_url(name):
    base, _, _ = admin_url().rpartition("/")
    return f"{base}/{name}"


def sql(statement, url=None):
    conn = psycopg2.connect(url or admin_url())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def create_db(name):
    sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    sql(f"CREATE DATABASE {name}")
    return db_url(name)


def drop_db(name):
    sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------------------------- processes

def run(args, env=None, capture=True, what=None):
    """Runs a command to completion; a failure raises BenchError with its output."""
    full = dict(os.environ)
    full.update(env or {})
    p = subprocess.run(args, env=full, capture_output=capture, text=True)
    if p.returncode != 0:
        out = (p.stdout or "")[-3000:] + (p.stderr or "")[-3000:] if capture else ""
        die(f"{what or 'command'} failed (exit {p.returncode}): {' '.join(args)}\n{out}")
    return p.stdout


def last_json_line(text, what):
    for line in reversed((text or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    die(f"{what}: no JSON line in its output:\n{text[-2000:]}")


def children_cpu_s():
    """CPU seconds (user + system) of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(p, timeout=30):
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
    if p is None or p.poll() is not None:
        return None if p is None else p.returncode
    p.terminate()
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


# ------------------------------------------------------------------------------- /proc CPU time

def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def proc_ticks(pid):
    """utime + stime of a live process (all its threads), in clock ticks; None once it is gone."""
    f = _stat_fields(pid)
    return None if f is None else int(f[11]) + int(f[12])


def tree_ticks(root):
    """CPU ticks of a process tree: every live process under `root` (utime + stime) plus the
    children `root` has reaped (cutime + cstime): PostgreSQL's backends that ended during a window
    are counted through the postmaster. None when `root` is gone."""
    root_fields = _stat_fields(root)
    if root_fields is None:
        return None
    parent = {}
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(entry)
        if f is None:
            continue
        pid = int(entry)
        parent[pid] = int(f[1])
        ticks[pid] = int(f[11]) + int(f[12])
    total = int(root_fields[13]) + int(root_fields[14])
    for pid, t in ticks.items():
        p = pid
        while p > 1:
            if p == root:
                total += t
                break
            p = parent.get(p, 0)
    return total


def machine_busy_ticks():
    """Busy CPU ticks of the whole machine (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def cores():
    return len(os.sched_getaffinity(0))


def memory_peaks(pid, peaks):
    """Updates peaks {"rss": VmHWM, "anon": max RssAnon, "file": max RssFile} from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                for key, field in (("rss", "VmHWM:"), ("anon", "RssAnon:"), ("file", "RssFile:")):
                    if line.startswith(field):
                        peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
    except OSError:
        pass


def listening_pid(port):
    """The pid of the process listening on TCP `port` on this machine (via /proc/net/tcp* socket
    inodes and /proc/*/fd), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    return int(entry)
        except OSError:
            continue
    return None


def postgres_pid():
    """The postmaster's pid: the parent of a backend of ours, read while that backend lives (the
    server must run on this machine for the CPU accounting)."""
    conn = psycopg2.connect(admin_url())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        with open(f"/proc/{backend}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    finally:
        conn.close()
    die("PostgreSQL does not run on this machine (its backend's /proc entry is missing): the bench "
        "measures its CPU from /proc, run it against scripts/services' local PostgreSQL")


def broker_pid():
    """The pid of the (first) Kafka broker, found by its listening port."""
    brokers = os.environ["NEKHEBET_KAFKA__BROKERS"]
    host, _, port = brokers.split(",")[0].rpartition(":")
    pid = listening_pid(int(port))
    if pid is None:
        die(f"no process on this machine listens on {brokers}: the bench measures the broker's CPU "
            "from /proc, run it against scripts/services' local Kafka")
    return pid


# ----------------------------------------------------------------------------------- /metrics

ENVELOPES = re.compile(r'^nekhebet_envelopes_total(?:\{[^}]*\})? (\S+)$', re.M)
E2E_BUCKET = re.compile(r'^nekhebet_end_to_end_latency_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.M)


def scrape(port, timeout=2):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return None


def ready(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def envelopes_decided(text):
    """Messages the worker has decided (all outcomes of nekhebet_envelopes_total), or None."""
    if text is None:
        return None
    found = ENVELOPES.findall(text)
    return sum(float(v) for v in found) if found else 0.0


def e2e_buckets(text):
    """[(upper bound, cumulative count)] of nekhebet_end_to_end_latency_seconds, sorted."""
    out = []
    for le, v in E2E_BUCKET.findall(text or ""):
        out.append((float("inf") if le == "+Inf" else float(le), float(v)))
    return sorted(out)


def bucket_diff(later, earlier):
    before = dict(earlier)
    return [(le, n - before.get(le, 0.0)) for le, n in later]


def quantile(buckets, q):
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q·N.
    Returns (estimate, (bucket lower bound, bucket upper bound)) or (None, None) when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None, None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le, (prev_le, le)
            inside = n - prev_n
            frac = (rank - prev_n) / inside if inside > 0 else 1.0
            return prev_le + (le - prev_le) * frac, (prev_le, le)
        prev_le, prev_n = le, n
    return prev_le, (prev_le, float("inf"))


def share_at_most(buckets, bound):
    """Share of observations <= bound (bound must be a bucket boundary)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    for le, n in buckets:
        if abs(le - bound) < 1e-12:
            return n / buckets[-1][1]
    return None


# ------------------------------------------------------------------------------------ sampler

class Sampler:
    """Samples, every `interval` seconds until stopped: the committed count (`count_fn()`), the CPU
    ticks of each source (`sources`: name -> fn returning ticks or None) and the machine's busy
    ticks; and the memory peaks of `mem_pid`. Samples: dicts {t, n, cpu: {name: ticks}, busy}."""

    def __init__(self, interval, count_fn, sources, mem_pid=None):
        self.interval = interval
        self.count_fn = count_fn
        self.sources = sources
        self.mem_pid = mem_pid
        self.samples = []
        self.peaks = {"rss": 0, "anon": 0, "file": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _one(self):
        t = time.monotonic() - self.t0
        try:
            n = self.count_fn()
        except Exception:  # a scrape or a query that failed: no sample this time
            n = None
        cpu = {name: fn() for name, fn in self.sources.items()}
        if self.mem_pid is not None:
            memory_peaks(self.mem_pid, self.peaks)
        if n is not None:
            self.samples.append({"t": t, "n": n, "cpu": cpu, "busy": machine_busy_ticks()})

    def _loop(self):
        while not self._stop.is_set():
            self._one()
            self._stop.wait(self.interval)

    def stop(self):
        """Stops sampling after one last sample (now)."""
        self._stop.set()
        self._thread.join()
        self._one()
        return self

    def series(self):
        """[(seconds since the first commit, committed)] from the first sample holding a commit
        (the sample before it included, at 0 committed), for the chart."""
        s = self.samples
        first = next((i for i, x in enumerate(s) if x["n"] > 0), None)
        if first is None:
            return []
        start = max(first - 1, 0)
        t0 = s[first]["t"]
        return [(round(max(x["t"] - t0, 0.0), 3), x["n"]) for x in s[start:]]

    def cpu_per_envelope(self):
        """CPU seconds per envelope of each source, and of the whole machine, from the first sample
        that holds a commit to the first sample that holds the final count (or the last one taken
        while every source was alive): the window of the throughput figure, at the sampler's
        resolution, leaving out start-up and shutdown."""
        s = self.samples
        first = next((i for i, x in enumerate(s) if x["n"] > 0), None)
        if first is None or any(v is None for v in s[first]["cpu"].values()):
            return None
        alive = [i for i in range(first + 1, len(s)) if all(v is not None for v in s[i]["cpu"].values())]
        if not alive:
            return None
        top = max(s[i]["n"] for i in alive)
        if top <= s[first]["n"]:
            return None
        last = next(i for i in alive if s[i]["n"] == top)
        a, b = s[first], s[last]
        n = b["n"] - a["n"]
        out = {name: (b["cpu"][name] - a["cpu"][name]) / CLK_TCK / n for name in self.sources}
        out["machine"] = (b["busy"] - a["busy"]) / CLK_TCK / n
        out["other"] = out["machine"] - sum(out[name] for name in self.sources)
        return {"window_s": b["t"] - a["t"], "envelopes": n, "envelopes_per_s": n / (b["t"] - a["t"]),
                "s_per_envelope": out}


def check_prerequisites(need_java=True):
    """Fails loudly, naming what is missing, before anything is started."""
    missing = []
    for path, what in ((BIN, "the worker (cargo build --release --features dev)"),
                       (DEV_BIN, "nekhebet-dev (cargo build --release --features dev)")):
        if not os.access(path, os.X_OK):
            missing.append(f"{path}: {what}")
    for var in ("NEKHEBET_POSTGRES__URL", "NEKHEBET_KAFKA__BROKERS"):
        if not os.environ.get(var):
            missing.append(f"${var} (source .local/services.env after scripts/services up)")
    if need_java:
        import shutil
        for tool, why in (("java", "Java 17+ runs Kafka Connect, the peer"),
                          ("mvn", "Maven fetches Kafka Connect and the Debezium JDBC sink from Maven Central")):
            if shutil.which(tool) is None:
                missing.append(f"`{tool}` not on PATH: {why} (or pass --no-peer)")
        if shutil.which("java"):
            out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
            m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
            major = int(m.group(1)) if m else 0
            if major == 1 and m.group(2):
                major = int(m.group(2))
            if major < 17:
                missing.append(f"Java 17 or newer is needed for Kafka Connect 4.1, `java -version` says: "
                               f"{out.strip().splitlines()[0] if out.strip() else 'nothing'}")
    if missing:
        die("missing prerequisites:\n  " + "\n  ".join(missing))


def main_guard(main):
    """Runs main(); a BenchError is printed as one clear message and exits 1."""
    try:
        main()
    except BenchError as e:
        sys.stderr.write(f"\nbench: ERROR: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("\nbench: interrupted\n")
        sys.exit(130)
