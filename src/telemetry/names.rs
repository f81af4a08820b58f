//! Every metric name in one place (Prometheus conventions: `nekhebet_` prefix, `_total` counters,
//! base units in the name). The README's "Metrics" table documents each with its labels.

/// Counter, labels `topic`: messages taken from Kafka.
pub const MESSAGES_CONSUMED: &str = "nekhebet_messages_consumed_total";
/// Counter, label `outcome` = stored|duplicate|redelivered|replay|rejected: one per consumed message.
pub const ENVELOPES: &str = "nekhebet_envelopes_total";
/// Counter, label `reason`: rejected messages by stable reason code.
pub const REJECTED: &str = "nekhebet_rejected_total";
/// Counter, label `topic` (the DLQ topic): dead-letter publishes acknowledged by the broker.
pub const DLQ_PUBLISHED: &str = "nekhebet_dlq_published_total";
/// Counter: dead-letter publishes that failed (retried; the offset does not move meanwhile).
pub const DLQ_FAILURES: &str = "nekhebet_dlq_failures_total";
/// Counter: messages consumed but left uncommitted without an outcome (their partition was revoked
/// or the shutdown deadline passed first); the partition's next owner reads them again.
pub const ABANDONED: &str = "nekhebet_messages_abandoned_total";
/// Counter: batches whose offsets were committed.
pub const BATCHES_COMMITTED: &str = "nekhebet_batches_committed_total";
/// Histogram: records per batch.
pub const BATCH_RECORDS: &str = "nekhebet_batch_records";
/// Histogram: bytes per batch.
pub const BATCH_BYTES: &str = "nekhebet_batch_bytes";
/// Histogram, label `stage` = decode|verify|postgres|lmdb|commit: seconds spent per batch.
pub const STAGE_SECONDS: &str = "nekhebet_stage_duration_seconds";
/// Histogram: seconds from the Kafka message timestamp to the commit of its offset.
pub const END_TO_END_SECONDS: &str = "nekhebet_end_to_end_latency_seconds";
/// Gauge, labels `topic`, `partition`: high watermark − committed position.
pub const CONSUMER_LAG: &str = "nekhebet_consumer_lag_messages";
/// Gauge: partitions currently assigned to this worker.
pub const ASSIGNED_PARTITIONS: &str = "nekhebet_assigned_partitions";
/// Gauge: batches being written (between hand-off and offset commit).
pub const IN_FLIGHT_BATCHES: &str = "nekhebet_in_flight_batches";
/// Gauge: batches in their PostgreSQL transaction right now (≤ `postgres.concurrent_batches`).
pub const POSTGRES_BATCHES: &str = "nekhebet_postgres_batches_in_flight";
/// Gauge: 1 while consumption is paused (backing off after a transient failure).
pub const PAUSED: &str = "nekhebet_consumer_paused";
/// Counter, label `cause`: retried attempts after a transient failure.
pub const RETRIES: &str = "nekhebet_retries_total";
/// Gauges: PostgreSQL connection pool.
pub const PG_POOL_SIZE: &str = "nekhebet_postgres_pool_connections";
pub const PG_POOL_AVAILABLE: &str = "nekhebet_postgres_pool_available_connections";
pub const PG_POOL_WAITING: &str = "nekhebet_postgres_pool_waiting_requests";
/// Gauges: LMDB map size and bytes used.
pub const LMDB_MAP_SIZE: &str = "nekhebet_lmdb_map_size_bytes";
pub const LMDB_USED: &str = "nekhebet_lmdb_used_bytes";
/// Gauge: PostgreSQL rows this LMDB does not hold yet (after the LMDB mirror's cursor, counted up to
/// 10,000,000); exported while the mirror runs (hybrid mode, `lmdb.mirror_rate` > 0).
pub const LMDB_MIRROR_LAG: &str = "nekhebet_lmdb_mirror_lag_events";
/// Counter: passes of the LMDB mirror's sweep (every row behind its cursor re-checked) finished.
pub const LMDB_MIRROR_SWEEPS: &str = "nekhebet_lmdb_mirror_sweeps_total";
/// Counter: hybrid reads served from PostgreSQL because LMDB lacked the blob or its blob failed the
/// check against the content hash.
pub const LMDB_FALLBACKS: &str = "nekhebet_hybrid_lmdb_fallbacks_total";
/// Counter: hybrid reads served from LMDB's blob (after the check against the content hash).
pub const LMDB_READ_HITS: &str = "nekhebet_lmdb_read_hits_total";
/// Histogram: keys in each page of single-event reads `serve` answers at once (its count is the
/// pages, its sum the reads).
pub const READ_PAGE_KEYS: &str = "nekhebet_serve_read_page_keys";
/// Counter, label `store` = lmdb|postgres: stored bytes that failed the check against their
/// content hash when read (never served).
pub const READ_CHECK_FAILURES: &str = "nekhebet_read_check_failures_total";
/// Counter, labels `route` (the route's path template, `unmatched` for none), `status`: HTTP
/// requests answered by `serve`.
pub const HTTP_REQUESTS: &str = "nekhebet_http_requests_total";
/// Histogram, labels `route`, `status`: seconds from a request's head to its response's head.
pub const HTTP_REQUEST_SECONDS: &str = "nekhebet_http_request_duration_seconds";
/// Gauge: HTTP connections open on `serve`.
pub const HTTP_CONNECTIONS: &str = "nekhebet_http_connections";
/// Counter, label `reason` = header_timeout|write_timeout|tls_handshake|io: connections `serve`
/// closed on a client that was too slow or broke the protocol.
pub const HTTP_CONNECTIONS_CUT: &str = "nekhebet_http_connections_cut_total";
/// Counter: blobs written to LMDB to heal a crash between the PostgreSQL and LMDB commits.
pub const LMDB_HEALED: &str = "nekhebet_lmdb_healed_total";
/// Gauge: the size (leaves) of the latest checkpoint of the transparency log that this process
/// published (it holds the integrator lock) or found published when it took the lock.
pub const TLOG_SIZE: &str = "nekhebet_tlog_size";
/// Histogram: seconds from the transaction that stored an event (`events.created_at`) to the
/// publication of the first checkpoint that includes it.
pub const TLOG_LAG_SECONDS: &str = "nekhebet_tlog_integration_lag_seconds";
/// Counter, label `signed` = true|false: checkpoints published.
pub const TLOG_CHECKPOINTS: &str = "nekhebet_tlog_checkpoints_total";
/// Gauge: 1 while the integrator refuses to sign because the database's tree does not extend the
/// last checkpoint it signed (a rolled-back or foreign database; see `/readyz`).
pub const TLOG_SIGNING_REFUSED: &str = "nekhebet_tlog_signing_refused";
/// Gauge: 1 in the process that holds the integrator lock and appends to the log.
pub const TLOG_INTEGRATING: &str = "nekhebet_tlog_integrating";
/// Gauge: Unix time of the last successful offset commit.
pub const LAST_COMMIT: &str = "nekhebet_last_commit_timestamp_seconds";
/// Gauge (always 1), labels `version`, `git`: build information.
pub const BUILD_INFO: &str = "nekhebet_build_info";
