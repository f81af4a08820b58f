-- Commit order: which transaction inserted each event, so that readers following the store (the
-- LMDB mirror, the transparency log's integrator, the read API's stream) never miss a row.
--
-- `events.seq` values are taken before commit: with concurrent transactions a lower seq can become
-- visible after a higher one (and rolled-back transactions leave gaps), so "every row past the
-- highest seq seen" misses late commits. `txid` is the inserting transaction's 64-bit id
-- (pg_current_xact_id(), which never wraps). A reader asks for the horizon
-- pg_snapshot_xmin(pg_current_snapshot()): every transaction with an id below it has finished, so
-- no row with `txid` below the horizon can appear any more. Reading the rows with
-- horizon_before <= txid < horizon, in (txid, seq) order, sees each row exactly once and in an order
-- that never changes (src/store/postgres/follow.rs).
--
-- Rows stored before this migration read as txid 0: below every real id, they come first.
-- Adding the column with a constant default rewrites nothing; the default then switches to the
-- inserting transaction's id for every later row (nekhebet-store 4.0's Python writer included: it
-- names its columns and gets the default).
ALTER TABLE events ADD COLUMN IF NOT EXISTS txid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
-- On a large store this index is built while the migration holds a lock that blocks inserts. To
-- build it without blocking, create it first by hand with the same name (after the ALTERs above):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_events_txid_seq ON events (txid, seq);
CREATE INDEX IF NOT EXISTS idx_events_txid_seq ON events (txid, seq);
