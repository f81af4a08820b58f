-- The worker takes the `events.seq` values of a batch from the identity's sequence itself (so it
-- can COPY rows with their seq and key LMDB's append layout by it): nextval() needs USAGE on it.
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO nekhebet_writer',
                   pg_get_serial_sequence('events', 'seq'));
END
$$;
