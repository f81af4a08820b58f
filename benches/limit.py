"""The limit, measured (issue 17 §2): the CPU cost per envelope of each piece of work no
implementation of the worker can skip, each measured alone on the bench's own data, and the
machine's limit = cores ÷ their sum (envelopes per second if every core did nothing else).

| component | how | in the limit |
|---|---|---|
| decode + structural validation | `nekhebet-dev bench-limit cpu`: one thread, its CPU clock | always |
| canonical header + canonical payload + SHA-256 | same | verification on |
| exact Ed25519 check (cofactorless, keys cached) | same | verification on |
| PostgreSQL binary COPY into replay_guard + events, batches of 4,000, one transaction each | `bench-limit copy` into a fresh database: the backend's CPU (/proc/<pid>/schedstat) | always |
| consume-only pass over the topic | `bench-limit consume`: the client's CPU (all its threads) + the broker's (/proc of its JVM) | always |
| LMDB puts, batches of 4,000, one synced transaction each | `bench-limit lmdb`, per layout | per layout |

Also recorded, outside the limit: the COPY client's encoding CPU and the rest of PostgreSQL's
process tree during the COPY (WAL writer, checkpointer…), and the worker's `Verifier::verify` per
envelope (all its checks, one by one) for comparison with decode + canonical + Ed25519.
"""
import os
import shutil
import uuid

from common import (CLK_TCK, DEV_BIN, children_cpu_s, cores, create_db, drop_db, last_json_line, log, run,
                    tree_ticks, proc_ticks)

US = 1e6


def measure(rows_jsonl, topic, count, layouts, workdir, pg_pid, kafka_pid, sample_limit, batch, partitions):
    env = {"NEKHEBET_LOG__LEVEL": "warn"}
    out = {"cores": cores(), "batch": batch}

    log(f"limit: decode, canonicalize + hash, Ed25519 (one thread, {sample_limit or 'all'} envelopes)…")
    cpu = last_json_line(run([DEV_BIN, "bench-limit", "cpu", rows_jsonl, "--limit", str(sample_limit)], env,
                             what="bench-limit cpu"), "bench-limit cpu")
    out["cpu"] = cpu

    out["lmdb"] = {}
    for layout in layouts:
        log(f"limit: LMDB puts ({layout})…")
        d = os.path.join(workdir, f"limit-lmdb-{layout}-{uuid.uuid4().hex[:6]}")
        try:
            out["lmdb"][layout] = last_json_line(
                run([DEV_BIN, "bench-limit", "lmdb", rows_jsonl, "--layout", layout, "--dir", d,
                     "--batch", str(batch)], env, what="bench-limit lmdb"), "bench-limit lmdb")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    log("limit: PostgreSQL binary COPY (backend CPU)…")
    name = f"bench_limit_{uuid.uuid4().hex[:8]}"
    url = create_db(name)
    try:
        before = tree_ticks(pg_pid)
        copy = last_json_line(run([DEV_BIN, "bench-limit", "copy", rows_jsonl, "--batch", str(batch),
                                   "--topic", topic, "--partitions", str(partitions)],
                                  {**env, "NEKHEBET_POSTGRES__URL": url}, what="bench-limit copy"),
                              "bench-limit copy")
        after = tree_ticks(pg_pid)
    finally:
        drop_db(name)
    copy["postgres_tree_cpu_s"] = (after - before) / CLK_TCK
    copy["postgres_tree_cpu_s_per_row"] = copy["postgres_tree_cpu_s"] / copy["rows"]
    out["copy"] = copy

    log("limit: consume-only pass over the topic (client + broker CPU)…")
    b0, c0 = proc_ticks(kafka_pid), children_cpu_s()
    consume = last_json_line(run([DEV_BIN, "bench-limit", "consume", "--topic", topic, "--count", str(count)],
                                 env, what="bench-limit consume"), "bench-limit consume")
    b1, c1 = proc_ticks(kafka_pid), children_cpu_s()
    consume["broker_cpu_s"] = (b1 - b0) / CLK_TCK
    consume["broker_cpu_s_per_message"] = consume["broker_cpu_s"] / consume["messages"]
    consume["client_process_cpu_s"] = c1 - c0  # the whole process, start-up included
    out["consume"] = consume

    common = {
        "decode_validate": cpu["decode_validate_s_per_envelope"],
        "postgres_copy_backend": copy["backend_cpu_s_per_row"],
        "kafka_consume_client": consume["client_cpu_s_per_message"],
        "kafka_broker": consume["broker_cpu_s_per_message"],
    }
    verification = {
        "canonical_hash": cpu["canonical_hash_s_per_envelope"],
        "ed25519_verify": cpu["ed25519_verify_s_per_envelope"],
    }
    out["components_s_per_envelope"] = {**common, **verification,
                                        **{f"lmdb_put_{k}": v["cpu_s_per_envelope"] for k, v in out["lmdb"].items()}}
    out["not_in_limit_s_per_envelope"] = {
        "postgres_copy_client_encoding": copy["client_cpu_s_per_row"],
        "postgres_background_during_copy": max(copy["postgres_tree_cpu_s_per_row"] - copy["backend_cpu_s_per_row"], 0.0),
        "verifier_verify_whole": cpu["verifier_verify_s_per_envelope"],
    }
    out["limits"] = {}
    for layout in layouts:
        for verify in (False, True):
            parts = dict(common)
            if verify:
                parts.update(verification)
            parts[f"lmdb_put_{layout}"] = out["lmdb"][layout]["cpu_s_per_envelope"]
            total = sum(parts.values())
            out["limits"][f"{layout}_{'verify' if verify else 'noverify'}"] = {
                "s_per_envelope": total,
                "envelopes_per_s": out["cores"] / total,
                "components": sorted(parts),
            }
    return out


def table(limit, runs):
    """Lines of a table: µs per envelope of each component of the limit, and what the worker's
    processes actually spent in each run."""
    comp = limit["components_s_per_envelope"]
    tags = list(limit["limits"])
    lines = []
    head = f"{'µs per envelope':<44}" + "".join(f"{t:>22}" for t in tags)
    lines.append(head)
    for name, v in comp.items():
        cells = []
        for t in tags:
            cells.append(f"{v * US:>22.1f}" if name in limit["limits"][t]["components"] else f"{'-':>22}")
        lines.append(f"{'  ' + name:<44}" + "".join(cells))
    lines.append(f"{'= limit: CPU-s per envelope (µs)':<44}" +
                 "".join(f"{limit['limits'][t]['s_per_envelope'] * US:>22.1f}" for t in tags))
    lines.append(f"{'= limit: cores ÷ that (envelopes/s)':<44}" +
                 "".join(f"{limit['limits'][t]['envelopes_per_s']:>22.0f}" for t in tags))
    lines.append(f"{'worker spent (µs per envelope):':<44}")
    for src in ("worker", "postgres", "kafka", "other", "machine"):
        cells = []
        for t in tags:
            cpu = (runs.get(t) or {}).get("cpu")
            cells.append(f"{cpu['s_per_envelope'][src] * US:>22.1f}" if cpu else f"{'?':>22}")
        lines.append(f"{'  ' + src:<44}" + "".join(cells))
    lines.append(f"{'worker envelopes/s':<44}" +
                 "".join(f"{(runs.get(t) or {}).get('envelopes_per_s') or 0:>22.0f}" for t in tags))
    lines.append(f"{'worker / limit':<44}" +
                 "".join(f"{(runs.get(t) or {}).get('envelopes_per_s', 0) / limit['limits'][t]['envelopes_per_s']:>22.2f}"
                         for t in tags))
    return lines
