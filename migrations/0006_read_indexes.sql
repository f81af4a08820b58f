-- Indexes of the read API's listings (`serve`: GET /v1/events), which page in (issued_at, id) order:
--   - no filter, or only issued_after/issued_before: (issued_at, id);
--   - key_id: (key_id, issued_at, id).
-- event_type and source use nekhebet-store 4.0's (event_type, issued_at) and (source, issued_at).
--
-- On a large store these are built while the migration holds a lock that blocks the worker's
-- inserts. To build them without blocking, create them first by hand with the same names:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_events_issued_id ON events (issued_at, id);
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_events_key_issued_id ON events (key_id, issued_at, id);
-- and this migration then finds them and does nothing.
CREATE INDEX IF NOT EXISTS idx_events_issued_id ON events (issued_at, id);
CREATE INDEX IF NOT EXISTS idx_events_key_issued_id ON events (key_id, issued_at, id);
