"""The baseline: nekhebet-store 4.0.0 itself (HybridEventRepository.save: one PostgreSQL transaction
and one synced LMDB transaction per envelope) over the first N envelopes of a JSONL file.

  baseline.py PG_URL LMDB_PATH JSONL N    -> prints {"saved": n, "seconds": s, "per_s": r}
"""
import json
import sys
import time

import psycopg2
from nekhebet_core.serialization import from_json_bytes
from nekhebet_store import HybridEventRepository


def main() -> int:
    url, lmdb_path, jsonl, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    envs = []
    with open(jsonl, "rb") as f:
        for line in f:
            if line.strip():
                envs.append(from_json_bytes(line.rstrip(b"\n")))
            if len(envs) >= n:
                break
    repo = HybridEventRepository(psycopg2.connect(url), lmdb_path, map_size=1 << 34)
    started = time.perf_counter()
    saved = 0
    for env in envs:
        try:
            repo.save(env)
            saved += 1
        except Exception as e:  # a replay in the data is counted, not fatal
            print(f"save failed: {e}", file=sys.stderr)
    seconds = time.perf_counter() - started
    print(json.dumps({"saved": saved, "seconds": seconds, "per_s": len(envs) / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
