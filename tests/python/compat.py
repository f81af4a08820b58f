"""Cross-implementation check driven by tests/python_compat.rs.

  compat.py read  PG_URL LMDB_PATH JSONL   -- every envelope of JSONL, written by the Rust store, is
                                              read back by nekhebet-store 4.0's HybridEventRepository
                                              and equals the original
  compat.py write PG_URL LMDB_PATH JSONL   -- nekhebet-store 4.0 saves every envelope of JSONL
Prints one summary line; exits non-zero on the first mismatch.
"""
import sys

import psycopg2
from nekhebet_core.serialization import from_json_bytes, to_json_bytes
from nekhebet_store import HybridEventRepository


def main() -> int:
    mode, url, lmdb_path, jsonl = sys.argv[1:5]
    conn = psycopg2.connect(url)
    repo = HybridEventRepository(conn, lmdb_path, map_size=1 << 32)
    lines = [l for l in open(jsonl, "rb").read().split(b"\n") if l.strip()]
    if mode == "read":
        for n, line in enumerate(lines, 1):
            original = from_json_bytes(line)
            got = repo.get(str(original.header.id))
            if got is None:
                print(f"line {n}: id {original.header.id} not found by HybridEventRepository.get")
                return 1
            if to_json_bytes(got) != to_json_bytes(original) or got != original:
                print(f"line {n}: id {original.header.id} differs")
                return 1
            by_hash = repo.lmdb.get_by_hash(original.header.payload_hash)
            if by_hash is None or to_json_bytes(by_hash) != to_json_bytes(original):
                print(f"line {n}: LMDBEventRepository.get_by_hash differs")
                return 1
        print(f"read {len(lines)} envelopes back, all equal")
    elif mode == "write":
        for line in lines:
            repo.save(from_json_bytes(line))
        print(f"saved {len(lines)} envelopes")
    else:
        print(f"unknown mode {mode}")
        return 2
    repo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
