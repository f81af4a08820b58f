-- Exactly-once audit (issue 12). Every addition is nullable or defaulted, so nekhebet-store 4.0
-- keeps writing and reading these tables as before.

-- The envelope that claimed each (key_id, nonce): the SHA-256 of its bytes. An exact repeat (a
-- producer's retry, a batch retried after a lost COMMIT acknowledgement) is told from a replay by
-- it. NULL on rows written by nekhebet-store 4.0 or before this migration: then the stored envelope
-- of the same event id stands in for it.
ALTER TABLE replay_guard ADD COLUMN IF NOT EXISTS envelope_sha256 BYTEA;
-- When the row was stored. Retention selects rows by it (and by issued_at), never by issued_at
-- alone, which a key holder can backdate. Existing rows get the migration's time: kept longest.
ALTER TABLE replay_guard ADD COLUMN IF NOT EXISTS stored_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- Key pinning: the public keys each key_id may sign with. Without a key registry the first key seen
-- for a key_id is pinned (`first-seen`), so nobody can sign with their own key under another
-- producer's key_id and burn its nonces; `nekhebet-store keys pin/unpin` manages them (`operator`).
CREATE TABLE IF NOT EXISTS nekhebet_key_pins (
    key_id     TEXT        NOT NULL,
    public_key BYTEA       NOT NULL CHECK (length(public_key) = 32),
    pinned_by  TEXT        NOT NULL CHECK (pinned_by IN ('first-seen', 'operator')),
    pinned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, public_key)
);

-- The worker pins (INSERT) and reads pins; only the owner (the keys command) removes one.
GRANT SELECT, INSERT ON nekhebet_key_pins TO nekhebet_writer;
GRANT SELECT ON nekhebet_key_pins TO nekhebet_reader;
