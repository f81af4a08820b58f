"""A/B ingest: several workers — builds of different commits, or one build under different
settings — ingest the SAME topic, each into a fresh database, LMDB and consumer group, in
alternating rounds (A, B, C, A, B, C, …) so that drift of the machine hits every contender alike.
Reports each contender's envelopes/s (the worker's own report: first to last commit) per round and
the median, and writes target/bench/ab.json.

A contender is `LABEL=BINARY` with optional settings after it, `LABEL=BINARY,ENV=VALUE,…`; BINARY
runs from the root of the checkout it was built in (…/target/release/nekhebet-store → …), so it
reads that checkout's config/default.toml (a binary elsewhere runs from this checkout). Build an older commit in a worktree:

    git worktree add ../before <commit> && (cd ../before && cargo build --release --locked)
    scripts/bench-ab --contender before=../before/target/release/nekhebet-store \\
                     --contender after=target/release/nekhebet-store \\
                     --contender after-no-log=target/release/nekhebet-store,NEKHEBET_TLOG__ENABLED=false

Settings every contender gets: NEKHEBET_LMDB__LAYOUT (--layout), NEKHEBET_VERIFY__ENABLED
(--verify), an 8 GiB map, no telemetry listener, log level warn; a contender's own settings win.
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid

from common import DEV_BIN, ROOT, die, drop_db, last_json_line, log, main_guard, run
from ingest_bench import Resources, worker_env


def contender(spec):
    label, _, rest = spec.partition("=")
    parts = rest.split(",")
    binary = os.path.abspath(parts[0])
    env = dict(p.split("=", 1) for p in parts[1:])
    if not label or not os.path.isfile(binary):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected LABEL=BINARY[,ENV=VALUE…] naming a built binary")
    sep = f"{os.sep}target{os.sep}"
    checkout = binary.split(sep)[0] if sep in binary else ROOT
    return {"label": label, "binary": binary, "cwd": checkout, "env": env}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contender", type=contender, action="append", required=True)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layout", default="append", choices=["append", "compatible"])
    ap.add_argument("--verify", default="true", choices=["true", "false"])
    a = ap.parse_args()

    res = Resources(tempfile.mkdtemp(prefix="nekhebet-ab-", dir=os.path.join(ROOT, ".local")))
    rates = {c["label"]: [] for c in a.contender}
    try:
        topic = f"bench-ab-{uuid.uuid4().hex[:8]}"
        res.topics.append(topic)
        log(f"producing {a.count} envelopes to {topic} ({a.partitions} partitions)…")
        run([DEV_BIN, "produce", "--topic", topic, "--count", str(a.count), "--partitions",
             str(a.partitions), "--seed", "7"], what="produce")
        for r in range(a.rounds):
            for c in a.contender:
                name = f"bench_ab_{uuid.uuid4().hex[:8]}"
                url = res.db(name)
                lmdb = os.path.join(res.workdir, name)
                # The contender's own settings win; no telemetry listener unless it asks for one.
                env = worker_env(name, url, lmdb, a.layout, topic, a.verify == "true", 0, c["env"])
                if "NEKHEBET_TELEMETRY__LISTEN" not in c["env"]:
                    env["NEKHEBET_TELEMETRY__LISTEN"] = ""
                try:
                    os.chdir(c["cwd"])
                    run([c["binary"], "migrate"], env, what=f"{c['label']}: migrate")
                    out = run([c["binary"], "ingest", "--until-caught-up", "--report-json"], env,
                              what=f"{c['label']}: ingest")
                finally:
                    os.chdir(ROOT)
                    # Each run's store goes at once: a dozen 200,000-envelope stores would fill the disk.
                    drop_db(name)
                    shutil.rmtree(lmdb, ignore_errors=True)
                report = last_json_line(out, c["label"])
                stored = report["outcomes"].get("stored", 0)
                if stored != a.count:
                    die(f"{c['label']}: stored {stored} of {a.count}")
                rates[c["label"]].append(report["committed_per_s"])
                log(f"round {r + 1}/{a.rounds}  {c['label']:<36} {report['committed_per_s']:>9.0f} envelopes/s")
    finally:
        res.cleanup()
    log(f"\nmedians ({a.count} envelopes, layout {a.layout}, verification {a.verify}, {a.rounds} rounds):")
    first = statistics.median(rates[a.contender[0]["label"]])
    for c in a.contender:
        m = statistics.median(rates[c["label"]])
        log(f"  {c['label']:<36} {m:>9.0f} envelopes/s  {m / first:5.2f}×  runs {[round(x) for x in rates[c['label']]]}")
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "ab.json"), "w") as f:
        json.dump({"count": a.count, "partitions": a.partitions, "layout": a.layout, "verify": a.verify,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "contenders": [{**c, "envelopes_per_s": rates[c["label"]],
                                   "median": statistics.median(rates[c["label"]])} for c in a.contender]},
                  f, indent=1)


if __name__ == "__main__":
    main_guard(main)
