-- Least privilege. Two group roles (NOLOGIN); grant them to login roles of your own, e.g.
--   CREATE ROLE ingest LOGIN PASSWORD '…' IN ROLE nekhebet_writer;
--   CREATE ROLE analyst LOGIN PASSWORD '…' IN ROLE nekhebet_reader;
-- nekhebet_writer: what the worker needs and nothing else — INSERT and SELECT on the ingest tables,
--   plus UPDATE on its own progress table (the offsets upsert). No UPDATE, DELETE or TRUNCATE on
--   events or replay_guard, even if the append-only triggers were dropped.
-- nekhebet_reader: SELECT only.
-- Roles are cluster-wide while migrations run per database: creation tolerates a concurrent twin.
DO $$
BEGIN
    CREATE ROLE nekhebet_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE nekhebet_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO nekhebet_writer, nekhebet_reader;
GRANT SELECT, INSERT ON events, replay_guard, event_links, delivery_state TO nekhebet_writer;
GRANT SELECT, INSERT, UPDATE ON nekhebet_consumer_offsets TO nekhebet_writer;
GRANT SELECT ON events, replay_guard, event_links, delivery_state, nekhebet_consumer_offsets,
    nekhebet_schema_migrations TO nekhebet_reader;
