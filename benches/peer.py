"""The peer in the ingest bench (issue 17 §1): what a user would otherwise deploy to move these
messages from Kafka into PostgreSQL — Apache Kafka Connect in standalone mode with Debezium's JDBC
sink connector, upserting into one table keyed by the content hash.

- `ensure_jars()`: Kafka Connect (connect-runtime, connect-json, connect-api, connect-transforms,
  kafka-clients, the log4j2 binding) and the Debezium JDBC sink's plugin archive (the connector with
  Hibernate, c3p0 and pgjdbc) from Maven Central through `mvn` (its own local repository under
  .local/cache/peer/m2), like scripts/services fetches the broker. Cached; a second run is offline.
- `publish(rows_jsonl, topic)`: the same envelopes, each in Kafka Connect's JsonConverter form
  {"schema": {struct}, "payload": {id, event_type, issued_at, source, content_hash, envelope}}, on a
  fresh topic (published with `nekhebet-dev produce --file`, not timed).
- `run(tasks)`: a fresh database with table peer_events (PRIMARY KEY content_hash), Connect with
  the sink (insert.mode=upsert, batch.size 4000, consumer.max.poll.records 4000, pgjdbc
  reWriteBatchedInserts), a fresh consumer group; timed like the worker: rows committed after the
  first commit ÷ (last commit − first commit), polled every 50 ms; then every row is checked
  against its envelope and the database dropped.
"""
import json
import os
import shutil
import subprocess
import time
import uuid

import psycopg2

from common import (DEV_BIN, ROOT, Sampler, create_db, die, drop_db, free_port, log, memory_peaks,
                    proc_ticks, run, stop_process)

CONNECT_VERSION = "4.1.1"      # = the broker scripts/services runs; the Kafka API Debezium 3.5 builds on
DEBEZIUM_VERSION = "3.5.0.Final"
LOG4J_VERSION = "2.24.3"       # what Kafka 4.1 depends on (it logs through slf4j 1.7)
MVN_DEP_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE = os.path.join(ROOT, ".local", "cache", "peer")
HEAP = "-Xms256M -Xmx2G"        # connect-standalone.sh's default heap

DOES_NOT = [
    "no envelope decoding or validation (the envelope is an opaque text column)",
    "no Ed25519 signature verification, no payload hash check",
    "no replay guard (replay_guard rows, key_id/nonce uniqueness), no duplicate/replay classification",
    "no LMDB copy",
    "no dead-letter topic (a bad record stops the task: errors.tolerance=none)",
    "no offsets in the same PostgreSQL transaction (Connect commits consumer offsets every 10 s; "
    "a crash replays records and the upsert absorbs them)",
    "one table with one index (the primary key) against the worker's events (five indexes), "
    "replay_guard and its offsets table, plus LMDB",
]


def _mvn(args, logfile, what):
    with open(logfile, "w") as out:
        p = subprocess.run(["mvn", "-B", "-q", f"-Dmaven.repo.local={os.path.join(CACHE, 'm2')}", *args],
                           stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(logfile, errors="replace") as f:
            tail = "".join(f.readlines()[-25:])
        die(f"mvn could not fetch {what} from Maven Central (log {logfile}):\n{tail}")


def ensure_jars():
    """Fetches the jars once; returns (connect libs dir, plugin path, versions)."""
    os.makedirs(CACHE, exist_ok=True)
    libs = os.path.join(CACHE, f"connect-libs-{CONNECT_VERSION}")
    if not os.path.isfile(os.path.join(libs, ".complete")):
        log(f"peer: fetching Kafka Connect {CONNECT_VERSION} from Maven Central (once; cache {CACHE})…")
        pom = os.path.join(CACHE, "connect-pom.xml")
        deps = "".join(
            f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>\n"
            for g, a, v in [
                ("org.apache.kafka", "connect-runtime", CONNECT_VERSION),
                ("org.apache.kafka", "connect-json", CONNECT_VERSION),
                ("org.apache.kafka", "connect-api", CONNECT_VERSION),
                ("org.apache.kafka", "connect-transforms", CONNECT_VERSION),
                ("org.apache.kafka", "kafka-clients", CONNECT_VERSION),
                ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
                ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            ])
        with open(pom, "w") as f:
            f.write('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
                    '<groupId>local.nekhebet</groupId><artifactId>peer-connect</artifactId><version>1</version>'
                    f'<packaging>pom</packaging><dependencies>\n{deps}</dependencies></project>\n')
        tmp = libs + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _mvn(["-f", pom, f"{MVN_DEP_PLUGIN}:copy-dependencies", "-DincludeScope=runtime",
              f"-DoutputDirectory={tmp}"], os.path.join(CACHE, "mvn-connect.log"), f"Kafka Connect {CONNECT_VERSION}")
        shutil.rmtree(libs, ignore_errors=True)
        os.rename(tmp, libs)
        open(os.path.join(libs, ".complete"), "w").close()
    plugins = os.path.join(CACHE, f"plugins-{DEBEZIUM_VERSION}")
    plugin = os.path.join(plugins, "debezium-connector-jdbc")
    if not os.path.isfile(os.path.join(plugin, ".complete")):
        log(f"peer: fetching io.debezium:debezium-connector-jdbc:{DEBEZIUM_VERSION} (plugin archive)…")
        _mvn([f"{MVN_DEP_PLUGIN}:get", "-Dtransitive=false",
              f"-Dartifact=io.debezium:debezium-connector-jdbc:{DEBEZIUM_VERSION}:tar.gz:plugin"],
             os.path.join(CACHE, "mvn-debezium.log"), f"debezium-connector-jdbc {DEBEZIUM_VERSION}")
        tgz = os.path.join(CACHE, "m2", "io", "debezium", "debezium-connector-jdbc", DEBEZIUM_VERSION,
                           f"debezium-connector-jdbc-{DEBEZIUM_VERSION}-plugin.tar.gz")
        shutil.rmtree(plugins, ignore_errors=True)
        os.makedirs(plugins)
        run(["tar", "xzf", tgz, "-C", plugins], what="unpacking the Debezium plugin")
        if not os.path.isdir(plugin):
            die(f"{tgz} did not unpack into {plugin}")
        open(os.path.join(plugin, ".complete"), "w").close()

    def jar_version(d, prefix):
        for name in sorted(os.listdir(d)):
            if name.startswith(prefix + "-") and name.endswith(".jar") and name[len(prefix) + 1].isdigit():
                return name[len(prefix) + 1:-4]
        return None

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.strip().splitlines()
    versions = {
        "kafka_connect": jar_version(libs, "connect-runtime"),
        "kafka_clients": jar_version(libs, "kafka-clients"),
        "debezium_connector_jdbc": jar_version(plugin, "debezium-connector-jdbc"),
        "hibernate_core": jar_version(plugin, "hibernate-core"),
        "pgjdbc": jar_version(plugin, "postgresql"),
        "c3p0": jar_version(plugin, "c3p0"),
        "java": java[0] if java else None,
    }
    return libs, plugins, versions


# The struct's name must not contain "Envelope": the Debezium sink would take the record for one of
# its own change-event envelopes (before/after/op) instead of a flat row.
SCHEMA = {
    "type": "struct", "optional": False, "name": "nekhebet.EventRow",
    "fields": [
        {"field": "id", "type": "string", "optional": False, "name": "io.debezium.data.Uuid", "version": 1},
        {"field": "event_type", "type": "string", "optional": False},
        {"field": "issued_at", "type": "string", "optional": False,
         "name": "io.debezium.time.ZonedTimestamp", "version": 1},
        {"field": "source", "type": "string", "optional": False},
        {"field": "content_hash", "type": "string", "optional": False},
        {"field": "envelope", "type": "string", "optional": False},
    ],
}


def wrap_file(rows_jsonl, out_path):
    """Writes each envelope of rows_jsonl as a JsonConverter record; returns (count, avg bytes)."""
    n = total = 0
    with open(rows_jsonl, "rb") as src, open(out_path, "w") as dst:
        for raw in src:
            raw = raw.rstrip(b"\n")
            if not raw:
                continue
            text = raw.decode("utf-8")
            h = json.loads(text)["header"]
            record = json.dumps({"schema": SCHEMA, "payload": {
                "id": h["id"], "event_type": h["type"], "issued_at": h["issued_at"], "source": h["source"],
                "content_hash": h["payload_hash"], "envelope": text}}, separators=(",", ":"))
            dst.write(record + "\n")
            n += 1
            total += len(record)
    return n, (total // n if n else 0)


def publish(rows_jsonl, topic, partitions, workdir):
    path = os.path.join(workdir, "peer-records.jsonl")
    t0 = time.perf_counter()
    n, avg = wrap_file(rows_jsonl, path)
    run([DEV_BIN, "produce", "--topic", topic, "--file", path, "--count", "0", "--partitions", str(partitions)],
        {"NEKHEBET_LOG__LEVEL": "warn"}, what="publishing the peer's records")
    os.remove(path)
    return {"records": n, "avg_record_bytes": avg, "seconds": time.perf_counter() - t0}


TABLE_SQL = """
CREATE SEQUENCE peer_events_n;
CREATE TABLE peer_events (
    content_hash TEXT PRIMARY KEY,
    id           UUID NOT NULL,
    event_type   TEXT NOT NULL,
    issued_at    TIMESTAMPTZ NOT NULL,
    source       TEXT NOT NULL,
    envelope     TEXT NOT NULL,
    n            BIGINT NOT NULL DEFAULT nextval('peer_events_n')  -- numbers the rows; polled by the bench
);
"""


def _pg_parts(url):
    rest = url.split("://", 1)[1]
    creds, _, hostpart = rest.rpartition("@")
    user, _, password = creds.partition(":")
    return user, password, hostpart.split("/", 1)[0]


class Watch:
    """Polls the peer's table: count(*) until the first rows appear, then the row sequence (O(1);
    values are taken as rows are inserted, at most one open batch ahead of the commits), then
    count(*) again until every row is committed."""

    def __init__(self, url, count):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SET max_parallel_workers_per_gather = 0")
        self.count = count
        self.first = None   # (monotonic, rows)
        self.last = None
        self.seq_done = False
        self.latest = 0

    def _one(self, q):
        with self.conn.cursor() as cur:
            cur.execute(q)
            return cur.fetchone()[0]

    def poll(self):
        self.latest = self._poll()

    def _poll(self):
        """Rows committed (or about to be) now; records the first and the last commit."""
        t = time.monotonic()
        if self.first is None:
            n = self._one("SELECT count(*) FROM peer_events")
            if n > 0:
                self.first = (t, n)
            return n
        if not self.seq_done:
            n = self._one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM peer_events_n")
            if n < self.count:
                return n
            self.seq_done = True
        n = self._one("SELECT count(*) FROM peer_events")
        if n >= self.count and self.last is None:
            self.last = (t, n)
        return n

    def close(self):
        self.conn.close()


def run_peer(libs, plugins, topic, count, tasks, workdir, sources, sample_s, timeout_s=1200):
    """One measured run of the peer with tasks.max = tasks. `sources`: CPU sources (name -> fn) to
    sample besides Connect's JVM (PostgreSQL's tree, the broker)."""
    tag = uuid.uuid4().hex[:8]
    db = f"bench_peer_{tag}"
    url = create_db(db)
    rundir = os.path.join(workdir, f"peer-{tag}")
    os.makedirs(rundir)
    connect = None
    watch = None
    try:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute(TABLE_SQL)
        conn.close()
        user, password, hostport = _pg_parts(url)
        jdbc = f"jdbc:postgresql://{hostport}/{db}"
        rest_port = free_port()
        settings = {
            "tasks.max": tasks,
            "insert.mode": "upsert",
            "primary.key.mode": "record_value",
            "primary.key.fields": "content_hash",
            "batch.size": 4000,
            "consumer.max.poll.records": 4000,
            "consumer.max.partition.fetch.bytes": 8 << 20,
            "consumer.fetch.max.bytes": 64 << 20,
            "connection.url": f"{jdbc}?reWriteBatchedInserts=true",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter (schemas.enable=true)",
            "offset.flush.interval.ms": 10000,
            "heap": HEAP,
        }
        with open(os.path.join(rundir, "worker.properties"), "w") as f:
            f.write(f"""bootstrap.servers={os.environ['NEKHEBET_KAFKA__BROKERS']}
key.converter=org.apache.kafka.connect.converters.ByteArrayConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
offset.storage.file.filename={rundir}/connect.offsets
offset.flush.interval.ms=10000
plugin.path={plugins}
listeners=http://127.0.0.1:{rest_port}
consumer.max.poll.records=4000
consumer.max.partition.fetch.bytes={8 << 20}
consumer.fetch.max.bytes={64 << 20}
""")
        with open(os.path.join(rundir, "connector.properties"), "w") as f:
            f.write(f"""name=bench-peer-{tag}
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max={tasks}
topics={topic}
connection.url={jdbc}?reWriteBatchedInserts=true
connection.username={user}
connection.password={password}
insert.mode=upsert
primary.key.mode=record_value
primary.key.fields=content_hash
delete.enabled=false
schema.evolution=none
collection.name.format=peer_events
quote.identifiers=false
batch.size=4000
""")
        connect_log = os.path.join(rundir, "connect.log")
        with open(os.path.join(rundir, "log4j2.properties"), "w") as f:
            f.write(f"""status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {connect_log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
""")
        watch = Watch(url, count)
        stdout = open(os.path.join(rundir, "connect.stdout"), "w")
        # connect-standalone.sh's and kafka-run-class.sh's JVM options
        connect = subprocess.Popen(
            ["java", *HEAP.split(), "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
             "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={rundir}/log4j2.properties",
             "-cp", os.path.join(libs, "*"), "org.apache.kafka.connect.cli.ConnectStandalone",
             os.path.join(rundir, "worker.properties"), os.path.join(rundir, "connector.properties")],
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = time.monotonic()
        pid = connect.pid
        # The table is polled here every 50 ms (the first and last commits timed to 50 ms); the
        # sampler records its latest figure and the CPU counters at the chart's pace.
        sampler = Sampler(sample_s, lambda: watch.latest, {"connect": lambda: proc_ticks(pid), **sources},
                          mem_pid=pid)
        sampler.start()
        failure = None
        next_log_check = 0.0
        while watch.last is None:
            now = time.monotonic()
            if connect.poll() is not None:
                failure = f"Kafka Connect exited ({connect.returncode})"
                break
            if now - started > timeout_s:
                failure = f"the peer did not commit {count} rows within {timeout_s} s"
                break
            if now >= next_log_check:
                next_log_check = now + 1.0
                if _task_failed(connect_log):
                    failure = "the connector or its task failed"
                    break
            watch.poll()
            if watch.last is None:
                time.sleep(0.05)
        sampler.stop()
        if failure:
            errors = ""
            try:
                with open(connect_log, errors="replace") as f:
                    errors = "".join(line for line in f if "ERROR" in line or "Exception" in line)[-3000:]
            except OSError:
                pass
            die(f"peer (tasks.max={tasks}): {failure}; log {connect_log}\n{errors}")
        peaks = {"rss": 0, "anon": 0, "file": 0}
        memory_peaks(pid, peaks)
        peaks = {k: max(v, sampler.peaks[k]) for k, v in peaks.items()}
        stop_process(connect, 30)
        connect = None
        stdout.close()

        (t_first, n_first), (t_last, n_last) = watch.first, watch.last
        watch.close()
        watch = None
        seconds = t_last - t_first
        rows, distinct_ids, matching = psycopg2_check(url)
        if not (rows == distinct_ids == matching == count):
            die(f"peer table check failed: rows={rows} distinct ids={distinct_ids} matching envelopes={matching} "
                f"(expected {count})")
        return {
            "tasks": tasks,
            "rows": n_last,
            "first_commit_rows": n_first,
            "seconds": seconds,
            "rows_per_s": (n_last - n_first) / seconds if seconds > 0 else None,
            "startup_to_first_commit_s": t_first - started,
            "peak_rss_bytes": peaks["rss"],
            "peak_anon_bytes": peaks["anon"],
            "cpu": sampler.cpu_per_envelope(),
            "series": sampler.series(),
            "settings": settings,
        }
    finally:
        if watch is not None:
            watch.close()
        stop_process(connect, 30)
        drop_db(db)
        shutil.rmtree(rundir, ignore_errors=True)


def _task_failed(connect_log):
    try:
        with open(connect_log, errors="replace") as f:
            text = f.read()
    except OSError:
        return False
    return any(s in text for s in ("unrecoverable exception", "will not recover until manually restarted",
                                   "Failed to start connector"))


def psycopg2_check(url):
    """The rows must be the envelopes: one per envelope, content_hash = header.payload_hash, id = header.id."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT count(*), count(DISTINCT id),
                count(*) FILTER (WHERE (envelope::jsonb)->'header'->>'payload_hash' = content_hash
                                   AND (envelope::jsonb)->'header'->>'id' = id::text) FROM peer_events""")
            return cur.fetchone()
    finally:
        conn.close()
