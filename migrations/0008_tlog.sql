-- The transparency log (issue 15): an RFC 6962 Merkle tree over every stored envelope, in commit
-- order, with signed checkpoints (C2SP tlog-checkpoint), served as C2SP tlog-tiles by `serve`.
--
-- nekhebet_tlog_leaves: one row per leaf, written by the integrator (src/transparency), one
-- transaction per integration step.
--   leaf_index  0, 1, 2, … without gaps: leaf i is the i-th row of `events` in commit order
--               (txid, seq), which never changes (src/store/postgres/follow.rs).
--   seq, txid   the event's `events.seq` (unique: an event is logged once) and `events.txid`; the
--               last leaf's (txid, seq) is the integrator's cursor, so leaves and cursor move in
--               the same transaction and cannot disagree.
--   id          the event's id, so that an audit can name an event whose row was deleted.
--   entry       SHA-256 of the envelope bytes exactly as stored (`events.envelope`).
--   hashes      the stored hashes appending this leaf wrote, in Go sumdb/tlog's stored-hash
--               layout: the leaf hash SHA-256(0x00 || entry), then one hash per complete subtree
--               the leaf closes (1 + trailing ones of leaf_index hashes, 32 bytes each). Stored
--               hash index stored_hash_index(level, n) lives in leaf ((n + 1) << level) - 1 at
--               byte offset 32 * level.
-- nekhebet_tlog_checkpoints: every checkpoint published, as served at /log/checkpoint (the note
--   text; `signed` false when no signing key is configured).
--
-- Both tables are append-only (the triggers of migration 0002) and the writer role may only
-- INSERT and SELECT them (migration 0003's rule): a row, once written, never changes.
CREATE TABLE IF NOT EXISTS nekhebet_tlog_leaves (
    leaf_index BIGINT PRIMARY KEY CHECK (leaf_index >= 0),
    seq        BIGINT NOT NULL,
    txid       BIGINT NOT NULL,
    id         UUID   NOT NULL,
    entry      BYTEA  NOT NULL CHECK (octet_length(entry) = 32),
    hashes     BYTEA  NOT NULL CHECK (octet_length(hashes) >= 32 AND octet_length(hashes) % 32 = 0)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_tlog_leaves_seq ON nekhebet_tlog_leaves (seq);

CREATE TABLE IF NOT EXISTS nekhebet_tlog_checkpoints (
    size         BIGINT      PRIMARY KEY CHECK (size > 0),
    root         BYTEA       NOT NULL CHECK (octet_length(root) = 32),
    note         TEXT        NOT NULL,
    signed       BOOLEAN     NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE TRIGGER tlog_leaves_append_only BEFORE UPDATE OR DELETE ON nekhebet_tlog_leaves
    FOR EACH ROW EXECUTE FUNCTION nekhebet_reject_change();
CREATE OR REPLACE TRIGGER tlog_leaves_no_truncate BEFORE TRUNCATE ON nekhebet_tlog_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION nekhebet_reject_change();
CREATE OR REPLACE TRIGGER tlog_checkpoints_append_only BEFORE UPDATE OR DELETE ON nekhebet_tlog_checkpoints
    FOR EACH ROW EXECUTE FUNCTION nekhebet_reject_change();
CREATE OR REPLACE TRIGGER tlog_checkpoints_no_truncate BEFORE TRUNCATE ON nekhebet_tlog_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION nekhebet_reject_change();

-- The worker (and `serve` run as a writer) integrates; readers serve the log.
GRANT SELECT, INSERT ON nekhebet_tlog_leaves, nekhebet_tlog_checkpoints TO nekhebet_writer;
GRANT SELECT ON nekhebet_tlog_leaves, nekhebet_tlog_checkpoints TO nekhebet_reader;
