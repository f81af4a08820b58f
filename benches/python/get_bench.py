"""nekhebet-store 4.0.0's single-event read: HybridEventRepository.get(id) (PostgreSQL locates the
event, LMDB returns the envelope by content hash), one process, one thread, for S seconds over
the ids of a file, cycling.

  get_bench.py PG_URL LMDB_PATH IDS_FILE SECONDS
      -> prints {"requests_per_s": r, "p50_ms": a, "p99_ms": b, "successful": n}

The timing covers get() only: it returns a parsed SignedEnvelope (its API), not bytes.
"""
import json
import sys
import time

import psycopg2
from nekhebet_store import HybridEventRepository


def main() -> int:
    url, lmdb_path, ids_file, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with open(ids_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    repo = HybridEventRepository(psycopg2.connect(url), lmdb_path, map_size=1 << 35)
    latencies = []
    missing = 0
    started = time.perf_counter()
    deadline = started + seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        env = repo.get(ids[i % len(ids)])
        t1 = time.perf_counter()
        if env is None:
            missing += 1
        latencies.append(t1 - t0)
        i += 1
    elapsed = time.perf_counter() - started
    if missing:
        print(f"{missing} ids not found", file=sys.stderr)
        return 1
    latencies.sort()
    print(json.dumps({
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "successful": len(latencies),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
