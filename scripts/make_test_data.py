"""Generate the repository's test data with nekhebet-core 4.0.0 itself (run by scripts/make-test-data).

  make_test_data.py [--out DIR]          write DIR/nekhebet-core-4.0.0.jsonl (482 reference vectors)
                                         and DIR/envelopes-2000.jsonl (2,000 signed envelopes);
                                         DIR defaults to <repo>/tests/data
  make_test_data.py --check-vectors FILE re-derive every line's verdict, category, meta and canonical
                                         texts from its wire bytes with nekhebet-core and report any
                                         difference (exit 1 if there is one)

Everything is deterministic: one fixed seed drives the signing keys, envelope ids, nonces, payloads
and timestamps, so a re-run reproduces both files byte for byte (given the same nekhebet-core,
msgspec and cryptography; Ed25519 signatures are deterministic). nekhebet-core's own randomness
(uuid.uuid4 for ids, secrets.token_hex for nonces, datetime.now for issued_at) is replaced by
seeded ids, explicit nonces and explicit issue times. Envelopes are made with create_envelope +
sign_envelope and serialized with to_json_bytes; verdicts, categories and canonical texts are
what from_json_bytes, verify_envelope, canonicalize and canonicalize_header return. Nothing of
nekhebet-core is re-implemented here.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import re
import struct
import sys
import uuid
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path

# nekhebet-core reads these once; the data must not depend on the caller's environment.
for _var in ("NEKHEBET_MAX_PAYLOAD_SIZE", "NEKHEBET_REQUIRE_SECURE_NONCE", "NEKHEBET_CONFIG_TTL"):
    os.environ.pop(_var, None)

import nekhebet_core  # noqa: E402
import nekhebet_core.envelope  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from nekhebet_core import (  # noqa: E402
    DefaultSigningContext,
    canonicalize,
    canonicalize_header,
    create_envelope,
    from_json_bytes,
    sign_envelope,
    to_json_bytes,
    verify_envelope,
)

SEED = "nekhebet-store tests/data v1"
VECTORS_FILE = "nekhebet-core-4.0.0.jsonl"
SAMPLES_FILE = "envelopes-2000.jsonl"

# Vectors: 240 valid envelopes, each followed (every 8th of a family) by one mutant of it.
N_VALID = 240
FAMILIES = [
    # (name, expected verdict, expected category) -- asserted, the recorded values are nekhebet-core's
    ("payload-tampered", "invalid", "hash_mismatch"),
    ("header-tampered", "invalid", "signature_invalid"),
    ("sig-flipped", "invalid", "signature_invalid"),
    ("bad-nonce", "invalid", "structure_invalid"),
    ("bad-b64", "undecodable", None),
    ("missing-field", "undecodable", None),
    ("truncated", "undecodable", None),
    ("hash-upper", "invalid", "structure_invalid"),
]
VECTOR_KEY_ID = "key-1"
VERIFIED_AT = "2026-11-25T16:24:49.442Z"
VECTOR_TYPES = [
    "omen.observed",
    "observation.recorded",
    "anubis.weighed",
    "charon.transported",
    "osiris.remembered",
    "seth.caught",
]

# Samples.
N_SAMPLES = 2000
SAMPLE_TYPES = [
    "omen.observed",
    "observation.recorded",
    "anubis.weighed",
    "charon.transported",
    "osiris.remembered",
]
SAMPLE_KEYS = 4  # collector-0 .. collector-3
SAMPLE_SOURCES = 13  # node-0 .. node-12
SAMPLES_START = "2026-11-25T16:25:58.961Z"

# Hard cases for the vectors' payloads, context and extensions.
KEY_STEMS = ["a", "z", "_x", "aa", "B", "", "10", "é", "｡", "😀", "a\x00", "ключ", "tab\t"]
STRING_STEMS = [
    "plain",
    "",
    " ",
    'quote" back\\ slash/',
    "tab\tnl\ncr\r",
    "bs\x08 ff\x0c",
    "ctl \x00\x01\x1f\x7f",
    "line\u2028sep\u2029",
    "é à ü",
    "日本語テキスト",
    "emoji 😀🎉",
    "😀\uffff\ue000",
    "\ud7ff",
    "\U0010ffff max",
]
FLOATS = [
    0.0,
    -0.0,
    0.1,
    -1.5,
    100.0,
    3.141592653589793,
    123456789012.345,
    1e15,  # Python 1000000000000000.0, msgspec the same
    1e16,  # Python 1e+16, msgspec 1e16
    1e21,
    1e22,
    1.2345678901234568e17,
    9007199254740992.0,
    1267860061485775.2,  # a decimal tie at full precision
    1.5e300,
    1.7976931348623157e308,
    0.0001,
    2.5e-05,
    1e-05,
    1e-07,  # Python 1e-07, msgspec 1e-7
    5.960464477539063e-08,
    -2.5e-300,
    2.2250738585072014e-308,
    5e-324,
]
INTS = [
    0,
    1,
    -1,
    123456789,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    -(2**63),
    2**63,
    2**64 - 1,
    2**64,
]


def iso_ms(dt: datetime) -> str:
    """The form nekhebet-core writes itself (create_envelope with issued_at=None)."""
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class SeededIds:
    """Stands in for the uuid module in nekhebet_core.envelope: uuid4() from a seeded stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.rng.randbytes(16), version=4)


class Maker:
    """Seeded streams for keys, ids, nonces and values; envelopes made and signed by nekhebet-core."""

    def __init__(self, seed: str) -> None:
        self.keys = random.Random(f"{seed}/keys")
        self.nonces = random.Random(f"{seed}/nonces")
        self.values = random.Random(f"{seed}/values")
        nekhebet_core.envelope.uuid = SeededIds(random.Random(f"{seed}/ids"))
        # create_envelope's secrets.token_hex must never be reached: every nonce is given.
        nekhebet_core.envelope.secrets = None

    def signer(self, key_id: str) -> DefaultSigningContext:
        private = Ed25519PrivateKey.from_private_bytes(self.keys.randbytes(32))
        return DefaultSigningContext(private, private.public_key(), key_id)

    def nonce(self) -> str:
        return self.nonces.randbytes(32).hex()

    def signed(
        self, signer, *, event_type, payload, source, issued_at,
        expires_in=None, context=None, extensions=None,
    ):
        unsigned = create_envelope(
            event_type=event_type,
            payload=payload,
            source=source,
            key_id=signer.key_id,
            nonce=self.nonce(),
            expires_in=expires_in,
            context=context,
            extensions=extensions,
            issued_at=issued_at,
        )
        return sign_envelope(unsigned, signer)

    # -- values ---------------------------------------------------------------------------------

    def random_double(self) -> float:
        while True:
            (x,) = struct.unpack("<d", self.values.randbytes(8))
            if x == x and abs(x) != float("inf"):
                return x

    def leaf(self):
        r = self.values
        kind = r.random()
        if kind < 0.30:
            return r.choice(FLOATS) if r.random() < 0.8 else self.random_double()
        if kind < 0.50:
            return r.choice(INTS)
        if kind < 0.85:
            return r.choice(STRING_STEMS) + str(r.randrange(100))
        return r.choice([True, False, None])

    def value(self, depth: int):
        r = self.values
        if depth >= 4 or r.random() < 0.6:
            return self.leaf()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(STRING_STEMS) + "abc"[i]: self.value(depth + 1) for i in range(r.randrange(4))}

    def payload(self) -> dict:
        r = self.values
        # Index suffixes keep top-level keys distinct and clear of nekhebet's reserved field names.
        return {r.choice(KEY_STEMS) + str(i): self.value(1) for i in range(r.randint(1, 5))}

    def header_extras(self, i: int):
        r = self.values
        context = {"trace": f"t{i}", "w": self.leaf()} if r.random() < 0.35 else None
        extensions = {"x": self.value(1)} if r.random() < 0.2 else None
        return context, extensions


# -- judging with nekhebet-core ---------------------------------------------------------------------


def judge(wire: bytes, verified_at: str) -> dict:
    """What nekhebet-core says about wire bytes at an instant, in the vectors' fields."""
    try:
        env = from_json_bytes(wire)
    except ValueError:
        return {
            "verdict": "undecodable",
            "category": None,
            "meta": None,
            "canonical_payload": None,
            "canonical_header": None,
        }
    result = verify_envelope(env, current_time=parse_iso(verified_at))
    h = env.header
    return {
        "verdict": "valid" if result.valid else "invalid",
        "category": None if result.valid else result.category,
        "meta": {
            "id": h.id,
            "type": h.type,
            "key_id": h.key_id,
            "nonce": h.nonce,
            "payload_hash": h.payload_hash,
            "issued_at": h.issued_at,
        },
        "canonical_payload": canonicalize(env.payload).decode("utf-8"),
        "canonical_header": canonicalize_header(env.header).decode("utf-8"),
    }


def vector(name: str, wire: bytes, note: str = "") -> dict:
    j = judge(wire, VERIFIED_AT)
    return {
        "name": name,
        "wire": base64.b64encode(wire).decode("ascii"),
        "verdict": j["verdict"],
        "category": j["category"],
        "meta": j["meta"],
        "canonical_payload": j["canonical_payload"],
        "canonical_header": j["canonical_header"],
        "note": note,
        "verified_at": VERIFIED_AT,
    }


def mutate(family: str, wire: bytes) -> bytes:
    """One defect in an otherwise valid envelope; all but `truncated` are re-encoded by json.dumps."""
    if family == "truncated":
        return wire[: len(wire) // 2]
    d = json.loads(wire)
    h = d["header"]
    if family == "payload-tampered":
        first = next(iter(d["payload"]))
        d["payload"][first] = "tampered"
    elif family == "header-tampered":
        h["source"] += "x"
    elif family == "sig-flipped":
        sig = bytearray(base64.b64decode(d["signature"]["signature"]))
        sig[5] ^= 1
        d["signature"]["signature"] = base64.b64encode(bytes(sig)).decode("ascii")
    elif family == "bad-nonce":
        h["nonce"] = "XYZ"
    elif family == "bad-b64":
        d["signature"]["public_key"] = "!!notbase64"
    elif family == "missing-field":
        del h["key_id"]
    elif family == "hash-upper":
        assert h["payload_hash"] != h["payload_hash"].upper()
        h["payload_hash"] = h["payload_hash"].upper()
    else:
        raise ValueError(family)
    return json.dumps(d).encode("utf-8")


def make_vectors(m: Maker) -> list[dict]:
    signer = m.signer(VECTOR_KEY_ID)
    at = parse_iso(VERIFIED_AT)
    out = []
    for i in range(N_VALID):
        context, extensions = m.header_extras(i)
        env = m.signed(
            signer,
            event_type=m.values.choice(VECTOR_TYPES),
            payload=m.payload(),
            source=f"src-{i}",
            # Issued just after the verification instant, well within the 300 s clock skew.
            issued_at=iso_ms(at + timedelta(microseconds=860 * (i + 1))),
            expires_in=3600 if m.values.random() < 0.3 else None,
            context=context,
            extensions=extensions,
        )
        wire = to_json_bytes(env)
        v = vector(f"valid-{i}", wire)
        assert v["verdict"] == "valid", v
        out.append(v)
        family, verdict, category = FAMILIES[i % len(FAMILIES)]
        v = vector(f"{family}-{i}", mutate(family, wire))
        assert (v["verdict"], v["category"]) == (verdict, category), v
        out.append(v)

    context, extensions = m.header_extras(9001)
    env = m.signed(
        signer,
        event_type="charon.transported",
        payload=m.payload(),
        source="src-9001",
        issued_at=iso_ms(at - timedelta(hours=30)),
        expires_in=3600,
        context=context or {"trace": "t9001", "w": True},
        extensions=extensions,
    )
    v = vector("expired", to_json_bytes(env), "issued 30h ago, expires 1h after issue")
    assert (v["verdict"], v["category"]) == ("invalid", "expired"), v
    out.append(v)
    env = m.signed(
        signer,
        event_type="omen.observed",
        payload=m.payload(),
        source="src-9002",
        issued_at=iso_ms(at + timedelta(hours=2)),
    )
    v = vector("future", to_json_bytes(env), "issued 2h in the future")
    assert (v["verdict"], v["category"]) == ("invalid", "timestamp_future"), v
    out.append(v)
    return out


def make_samples(m: Maker) -> list[bytes]:
    signers = [m.signer(f"collector-{k}") for k in range(SAMPLE_KEYS)]
    start = parse_iso(SAMPLES_START)
    lines = []
    for i in range(N_SAMPLES):
        payload = {
            "seq": i,
            "sensor": f"s-{i % 60}",
            "reading": m.values.random() * 100,
            "tags": ["a", "b", str(i % 5)],
            "note": "x" * m.values.randint(200, 1200),
        }
        env = m.signed(
            signers[i % SAMPLE_KEYS],
            event_type=SAMPLE_TYPES[i % len(SAMPLE_TYPES)],
            payload=payload,
            source=f"node-{i % SAMPLE_SOURCES}",
            issued_at=iso_ms(start + timedelta(microseconds=192 * i)),
        )
        lines.append(to_json_bytes(env))
    return lines


# -- checks of what was made ------------------------------------------------------------------------


def check_vectors(vectors: list[dict]) -> None:
    assert len(vectors) == 2 * N_VALID + 2
    text = "".join((v["canonical_payload"] or "") + (v["canonical_header"] or "") for v in vectors)
    for number in ["1e+16", "1e-07", "5e-324", "-0.0", "1e+22", "1000000000000000.0",
                   str(2**53 + 1), str(-(2**53) - 1), str(2**63), str(2**64 - 1), str(2**64)]:
        assert re.search(rf"(?<![-+.\w]){re.escape(number)}(?![.\w])", text), f"no {number} in the vectors"
    for needle in ["😀", "｡", "\U0010ffff", "\u2028", "\\u0000", "\\b", "\\f", "\x7f", "日本語"]:
        assert needle in text, f"no {needle!r} in the vectors"
    wires = "".join(base64.b64decode(v["wire"]).decode("utf-8", "replace") for v in vectors)
    for needle in ["1e16", "1e-7", "1e+16", "\\ud83d\\ude00"]:
        assert needle in wires, f"no {needle!r} in the wire forms"
    headers = [json.loads(v["canonical_header"]) for v in vectors if v["name"].startswith("valid-")]
    assert sum(h["context"] is not None for h in headers) > 40
    assert sum(h["extensions"] is not None for h in headers) > 20
    assert sum(h["expires_at"] is not None for h in headers) > 40
    assert not any(b"\n" in base64.b64decode(v["wire"]) for v in vectors)


def check_samples(lines: list[bytes]) -> None:
    assert len(lines) == N_SAMPLES
    ids, nonces, hashes = set(), set(), set()
    for line in lines:
        env = from_json_bytes(line)
        assert to_json_bytes(env) == line
        h = env.header
        assert h.expires_at is None and h.context is None and h.extensions is None
        r = verify_envelope(env, current_time=parse_iso(h.issued_at))
        assert r.valid, r
        ids.add(h.id)
        nonces.add((h.key_id, h.nonce))
        hashes.add(h.payload_hash)
    assert len(ids) == len(nonces) == len(hashes) == N_SAMPLES
    sizes = [len(line) for line in lines]
    mean = sum(sizes) / len(sizes)
    assert 1300 < mean < 1500, mean


def check_vectors_file(path: Path) -> int:
    """Re-derive every vector from its wire bytes; returns the number of lines that differ."""
    bad = n = 0
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for n, line in enumerate(lines, 1):
        v = json.loads(line)
        got = judge(base64.b64decode(v["wire"]), v["verified_at"])
        diff = [k for k in got if got[k] != v[k]]
        if diff:
            bad += 1
            print(f"{path}:{n} {v['name']}: differs in {', '.join(diff)}", file=sys.stderr)
    print(f"{path}: {n} vectors, {n - bad} agree with nekhebet-core {version('nekhebet-core')}, {bad} differ")
    return bad


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=repo / "tests" / "data")
    ap.add_argument("--check-vectors", type=Path, metavar="FILE")
    args = ap.parse_args()
    # create_envelope warns about every caller-given nonce; these are deliberate.
    logging.getLogger("nekhebet_core").setLevel(logging.ERROR)
    assert nekhebet_core.__version__ == "4.0.0", nekhebet_core.__version__

    if args.check_vectors:
        return 1 if check_vectors_file(args.check_vectors) else 0

    m = Maker(SEED)
    vectors = make_vectors(m)
    check_vectors(vectors)
    samples = make_samples(m)
    check_samples(samples)

    args.out.mkdir(parents=True, exist_ok=True)
    # ASCII-only lines (\uXXXX escapes): no raw U+2028 or DEL for line splitters to trip over.
    (args.out / VECTORS_FILE).write_bytes(b"".join(json.dumps(v).encode("ascii") + b"\n" for v in vectors))
    (args.out / SAMPLES_FILE).write_bytes(b"".join(line + b"\n" for line in samples))

    print(
        f"wrote {args.out / VECTORS_FILE} ({len(vectors)} vectors) and {args.out / SAMPLES_FILE} "
        f"({len(samples)} envelopes) with nekhebet-core {version('nekhebet-core')}, "
        f"msgspec {version('msgspec')}, cryptography {version('cryptography')}, "
        f"Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
