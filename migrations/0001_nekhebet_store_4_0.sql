-- The schema of the Python package nekhebet-store 4.0 (schema.sql), unchanged, so that its
-- repositories keep reading and writing the same tables.

CREATE TABLE IF NOT EXISTS events (
    id              UUID PRIMARY KEY,
    event_type      TEXT NOT NULL,
    issued_at       TIMESTAMPTZ NOT NULL,
    source          TEXT NOT NULL,
    content_hash    TEXT NOT NULL,
    envelope        BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_events_content_hash ON events (content_hash);
CREATE INDEX IF NOT EXISTS idx_events_type_issued ON events (event_type, issued_at);
CREATE INDEX IF NOT EXISTS idx_events_source_issued ON events (source, issued_at);

CREATE TABLE IF NOT EXISTS replay_guard (
    key_id    TEXT        NOT NULL,
    nonce     TEXT        NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key_id, nonce)
);

CREATE INDEX IF NOT EXISTS idx_replay_guard_issued_at ON replay_guard (issued_at);

COMMENT ON TABLE replay_guard IS
'Stateful replay protection table.
Insert conflict = replay or duplicate.
Cleanup is time-based and external.';

CREATE TABLE IF NOT EXISTS event_links (
    parent_id   UUID NOT NULL,
    child_id    UUID NOT NULL,
    relation    TEXT NOT NULL,
    PRIMARY KEY (parent_id, child_id),
    CONSTRAINT fk_event_links_parent FOREIGN KEY (parent_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT fk_event_links_child FOREIGN KEY (child_id) REFERENCES events (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS delivery_state (
    event_id        UUID PRIMARY KEY,
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TIMESTAMPTZ,
    CONSTRAINT fk_delivery_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE
);

COMMENT ON TABLE delivery_state IS
'Transport-layer delivery tracking.
Owned by Charon Vessel.
Not part of cryptographic trust boundary.';
