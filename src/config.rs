//! Configuration: built-in defaults ← `config/default.toml` ← `--config FILE` ← `NEKHEBET_*`
//! environment variables (`__` separates nesting levels: `NEKHEBET_POSTGRES__URL` → `postgres.url`).
//!
//! Every value is checked at start-up; an error names the key, the value and the expected form, so an
//! operator never has to guess which line of which file is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// PostgreSQL's connection settings are resolved and redacted on the store side
/// ([`PostgresConfig::tls`] is implemented there); re-exported for the configuration's users.
pub use crate::store::postgres::{redact_url, PgConnection};

/// Where envelopes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// PostgreSQL (authoritative metadata, replay guard) then LMDB (blobs). The default.
    Hybrid,
    /// PostgreSQL only (the envelope column holds the blob).
    Postgres,
    /// LMDB only, with its own replay guard and indexes.
    Lmdb,
}

impl fmt::Display for StoreMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreMode::Hybrid => "hybrid",
            StoreMode::Postgres => "postgres",
            StoreMode::Lmdb => "lmdb",
        })
    }
}

/// How envelopes are laid out in LMDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LmdbLayout {
    /// nekhebet-store 4.0's layout: `events` keyed by content hash (Python readers work).
    Compatible,
    /// Envelopes appended under the increasing sequence PostgreSQL assigns (`events.seq`); lookups
    /// go through PostgreSQL's indexes. No random B-tree insert in LMDB on the hot path, so the
    /// write rate holds when the file outgrows memory. Hybrid mode only; Python cannot read it.
    Append,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub postgres: PostgresConfig,
    pub lmdb: LmdbConfig,
    pub limits: LimitsConfig,
    pub kafka: KafkaConfig,
    pub batch: BatchConfig,
    pub verify: VerifySettings,
    pub replay_guard: ReplayGuardConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub serve: ServeConfig,
    pub tlog: TlogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub mode: StoreMode,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string. May hold a password: never log it (see `Debug`).
    /// A `postgres://` URL may carry libpq's `sslmode` (all five modes) and `sslrootcert`
    /// parameters; they must then agree with `sslmode` / `ssl_root_cert` below when those are set.
    pub url: String,
    pub pool_size: usize,
    /// How many batches may be in their PostgreSQL transaction at once (on partition-disjoint
    /// batches, each on its own connection); 1 writes them one after the other.
    pub concurrent_batches: usize,
    /// How long a batch waits for a pooled connection before the attempt counts as a transient failure.
    pub pool_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// TLS to PostgreSQL, libpq's modes (implemented with rustls). Unset: the URL's `sslmode`,
    /// else `verify-full` when `ssl_root_cert` is set, else `prefer` (libpq's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to. Required by
    /// `verify-ca` and `verify-full`; with `require` it turns on chain verification (as libpq does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<PathBuf>,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("concurrent_batches", &self.concurrent_batches)
            .field("pool_timeout_ms", &self.pool_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// libpq's `sslmode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain TCP otherwise; the certificate is not checked (no
    /// protection against an active attacker, as with libpq).
    Prefer,
    /// TLS or fail; the certificate is checked only when `ssl_root_cert` is set (then as
    /// `verify-ca`).
    Require,
    /// TLS or fail; the server's certificate must chain to `ssl_root_cert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmdbConfig {
    pub path: PathBuf,
    /// Initial map size in bytes; grown (doubled) whenever a write finds the map full.
    pub map_size: u64,
    /// Upper bound for growth, in bytes: past it, "map full" is reported as a failure.
    pub max_map_size: u64,
    /// Unset: the layout the environment records (a new one: append in hybrid mode, compatible in
    /// LMDB-only mode; one written by nekhebet-store 4.0: compatible). Set: must be the recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LmdbLayout>,
    /// fsync on every commit (durable). Turning it off trades durability for speed.
    pub sync: bool,
    /// The LMDB mirror (hybrid mode, `ingest` and `serve`): envelopes copied from PostgreSQL per
    /// second at most (and 10× as many rows checked); 0 turns it off.
    pub mirror_rate: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Dead-letter topic; empty means "`<source topic>.dlq`".
    pub dlq_topic: String,
    pub session_timeout_ms: u64,
    /// How long a revoke may wait for the in-flight batches of the revoked partitions; must be shorter
    /// than the session timeout or the group would evict us while we drain.
    pub drain_timeout_ms: u64,
    /// Passed to librdkafka unchanged (security.protocol, sasl.*, ssl.*, fetch tuning…).
    pub properties: BTreeMap<String, String>,
}

/// Secrets in `properties` ([`is_secret_property`]) are masked.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("dlq_topic", &self.dlq_topic)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("properties", &mask_properties(&self.properties))
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger_ms: u64,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySettings {
    pub enabled: bool,
    /// Check the signatures of a batch with Ed25519 batch equations (about twice as fast) instead
    /// of one by one. Off by default: a key holder can craft a signature with a small-order
    /// component that a batch equation may accept while nekhebet-core (OpenSSL) refuses it.
    pub batch_equations: bool,
    pub clock_skew_s: i64,
    pub event_types: Vec<String>,
    /// key_id → base64 Ed25519 public keys. Empty (and no `keys_file`) means no key registry.
    pub keys: BTreeMap<String, Vec<String>>,
    /// A TOML file with a `[keys]` table of the same shape, merged into `keys`.
    pub keys_file: Option<PathBuf>,
}

/// Replay-guard retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayGuardConfig {
    /// The replay window: envelopes issued longer ago than this are rejected at ingest
    /// (`outside_replay_window`), and `replay-guard cleanup` may delete rows older than it, never
    /// younger (a cleaned-up nonce could otherwise be replayed). Unset: the window is unbounded,
    /// every `(key_id, nonce)` is kept forever and cleanup refuses to run without `--force`.
    /// A duration such as `30d`, `12h`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the /metrics, /healthz and /readyz endpoints; empty disables them.
    pub listen: String,
    pub log_interval_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    pub timeout_ms: u64,
}

const SECTIONS: &[&str] = &[
    "store",
    "postgres",
    "lmdb",
    "limits",
    "kafka",
    "batch",
    "verify",
    "replay_guard",
    "telemetry",
    "log",
    "shutdown",
    "serve",
    "tlog",
];

/// The nekhebet-core 4.0 registered event types (the verifier's list).
pub const CORE_EVENT_TYPES: &[&str] = &crate::verify::NEKHEBET_EVENT_TYPES;

impl Default for Config {
    fn default() -> Self {
        Config {
            store: StoreConfig {
                mode: StoreMode::Hybrid,
            },
            postgres: PostgresConfig {
                url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
                pool_size: 8,
                concurrent_batches: 2,
                pool_timeout_ms: 5_000,
                connect_timeout_ms: 5_000,
                sslmode: None,
                ssl_root_cert: None,
            },
            lmdb: LmdbConfig {
                path: PathBuf::from("./data/lmdb"),
                map_size: 1 << 30,
                max_map_size: 1 << 40,
                layout: None,
                sync: true,
                mirror_rate: 5_000,
            },
            limits: LimitsConfig {
                max_message_bytes: 2 * 1024 * 1024,
            },
            kafka: KafkaConfig {
                brokers: "127.0.0.1:9092".into(),
                group_id: "nekhebet-store".into(),
                topics: vec!["nekhebet.events".into()],
                dlq_topic: String::new(),
                session_timeout_ms: 45_000,
                drain_timeout_ms: 30_000,
                properties: BTreeMap::new(),
            },
            batch: BatchConfig {
                max_records: 4_000,
                max_bytes: 8 * 1024 * 1024,
                linger_ms: 50,
                max_in_flight: 4,
            },
            verify: VerifySettings {
                enabled: true,
                batch_equations: false,
                clock_skew_s: 300,
                event_types: CORE_EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
                keys: BTreeMap::new(),
                keys_file: None,
            },
            replay_guard: ReplayGuardConfig::default(),
            telemetry: TelemetryConfig {
                listen: "127.0.0.1:9187".into(),
                log_interval_s: 10,
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            shutdown: ShutdownConfig { timeout_ms: 30_000 },
            serve: ServeConfig::default(),
            tlog: TlogConfig::default(),
        }
    }
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: `{key}` = {value}: expected {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl Config {
    /// Loads defaults ← `config/default.toml` (if present in the working directory) ← `file` ←
    /// `NEKHEBET_*` environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let default_file = Path::new("config/default.toml");
        if default_file.exists() {
            fig = fig.merge(Toml::file(default_file));
        }
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file(file));
        }
        // Only our sections: other NEKHEBET_* variables (e.g. the service scripts' ports) are not config.
        let env = Env::prefixed("NEKHEBET_").split("__").filter(|key| {
            let section = key.as_str().split('.').next().unwrap_or_default();
            SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        });
        Self::from_figment(fig.merge(env))
    }

    /// Extracts and validates a configuration from any figment (tests build their own).
    pub fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let config: Config = fig.extract().map_err(|e| {
            // figment's messages already name the key ("for key `batch.max_records`");
            // they never echo secrets because only scalar mismatches are printed.
            ConfigError::Load(
                e.into_iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(
            key: &'static str,
            value: impl fmt::Display,
            expected: &'static str,
        ) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                expected,
            }
        }
        if self.postgres.pool_size == 0 {
            return Err(invalid("postgres.pool_size", 0, "an integer ≥ 1"));
        }
        let concurrent = self.postgres.concurrent_batches;
        if concurrent == 0 || concurrent > self.postgres.pool_size {
            return Err(invalid(
                "postgres.concurrent_batches",
                concurrent,
                "an integer from 1 to postgres.pool_size (each batch in flight holds a connection)",
            ));
        }
        if self.postgres.url.trim().is_empty() {
            return Err(invalid(
                "postgres.url",
                "\"\"",
                "a PostgreSQL URL such as postgres://user@host:5432/db",
            ));
        }
        let pg = self.postgres.tls()?;
        if pg.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(invalid(
                "postgres.url",
                redact_url(&self.postgres.url),
                "a PostgreSQL URL such as postgres://user@host:5432/db (TLS: postgres.sslmode and postgres.ssl_root_cert)",
            ));
        }
        if self.lmdb.map_size < 1 << 20 {
            return Err(invalid(
                "lmdb.map_size",
                self.lmdb.map_size,
                "a size in bytes ≥ 1048576 (1 MiB)",
            ));
        }
        if self.lmdb.max_map_size < self.lmdb.map_size {
            return Err(invalid(
                "lmdb.max_map_size",
                self.lmdb.max_map_size,
                "a size in bytes ≥ lmdb.map_size",
            ));
        }
        if self.lmdb.layout == Some(LmdbLayout::Append) && self.store.mode != StoreMode::Hybrid {
            return Err(invalid(
                "lmdb.layout",
                "\"append\"",
                "\"compatible\" unless store.mode = \"hybrid\" (the append layout needs PostgreSQL's indexes)",
            ));
        }
        if self.lmdb.mirror_rate > 1_000_000 {
            return Err(invalid(
                "lmdb.mirror_rate",
                self.lmdb.mirror_rate,
                "envelopes per second between 0 (off) and 1000000",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(invalid(
                "limits.max_message_bytes",
                self.limits.max_message_bytes,
                "a size in bytes ≥ 1024",
            ));
        }
        if self.batch.max_records == 0 || self.batch.max_records > 100_000 {
            return Err(invalid(
                "batch.max_records",
                self.batch.max_records,
                "an integer between 1 and 100000",
            ));
        }
        if self.batch.max_bytes < self.limits.max_message_bytes {
            return Err(invalid(
                "batch.max_bytes",
                self.batch.max_bytes,
                "a size in bytes ≥ limits.max_message_bytes (one message must fit in a batch)",
            ));
        }
        if self.batch.max_in_flight == 0 || self.batch.max_in_flight > 64 {
            return Err(invalid(
                "batch.max_in_flight",
                self.batch.max_in_flight,
                "an integer between 1 and 64",
            ));
        }
        if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "kafka.topics",
                format!("{:?}", self.kafka.topics),
                "a non-empty list of topic names",
            ));
        }
        self.validate_topics()?;
        if self.kafka.drain_timeout_ms >= self.kafka.session_timeout_ms {
            return Err(invalid(
                "kafka.drain_timeout_ms",
                self.kafka.drain_timeout_ms,
                "milliseconds strictly less than kafka.session_timeout_ms",
            ));
        }
        if self.verify.clock_skew_s < 0 {
            return Err(invalid(
                "verify.clock_skew_s",
                self.verify.clock_skew_s,
                "seconds ≥ 0",
            ));
        }
        if !self.telemetry.listen.is_empty()
            && self
                .telemetry
                .listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(invalid(
                "telemetry.listen",
                &self.telemetry.listen,
                "an address such as 127.0.0.1:9187, or \"\" to disable",
            ));
        }
        if self.telemetry.log_interval_s == 0 {
            return Err(invalid("telemetry.log_interval_s", 0, "seconds ≥ 1"));
        }
        self.serve.validate()?;
        self.tlog.validate()?;
        Ok(())
    }

    /// What would make the worker skip or loop on messages, refused at start (the audit, §9):
    /// `auto.offset.reset` other than `earliest` (a partition without an offset would silently
    /// skip what it holds), and a dead-letter topic the worker itself consumes (a rejected message
    /// would come back, be rejected again, forever).
    fn validate_topics(&self) -> Result<(), ConfigError> {
        if let Some(reset) = self.kafka.properties.get("auto.offset.reset") {
            if !matches!(reset.as_str(), "earliest" | "smallest" | "beginning") {
                return Err(ConfigError::Invalid {
                    key: "kafka.properties.auto.offset.reset",
                    value: format!("{reset:?}"),
                    expected: "\"earliest\" (or leave it out): any other value skips messages of a partition that has no committed offset yet",
                });
            }
        }
        for source in &self.kafka.topics {
            let dlq = self.dlq_topic_for(source);
            let consumed = self.kafka.topics.iter().any(|t| match t.strip_prefix('^') {
                // librdkafka subscribes to every topic matching a `^`-prefixed regular expression.
                Some(_) => regex::Regex::new(t).map_or(true, |re| re.is_match(&dlq)),
                None => *t == dlq,
            });
            if consumed || (source.starts_with('^') && self.kafka.dlq_topic.is_empty()) {
                return Err(ConfigError::Invalid {
                    key: "kafka.dlq_topic",
                    value: format!("{:?} (for source {source:?})", dlq),
                    expected: "a topic the worker does not consume (not one of kafka.topics, not matched by a `^` pattern of it); a pattern subscription needs an explicit kafka.dlq_topic",
                });
            }
        }
        Ok(())
    }

    /// Whether the stores bind each key_id to the first public key seen for it: verification on and
    /// no key registry (`verify.keys`, `verify.keys_file`), which otherwise decides which keys a
    /// key_id may use. Without verification nothing checks the key, so nothing is pinned.
    pub fn pins_keys(&self) -> bool {
        self.verify.enabled && self.verify.keys.is_empty() && self.verify.keys_file.is_none()
    }

    /// How key_ids are bound to public keys, in words (the start-up log).
    pub fn key_binding(&self) -> &'static str {
        if !self.verify.enabled {
            "none (verification disabled)"
        } else if self.pins_keys() {
            "pinning: each key_id to the first public key seen (nekhebet-store keys)"
        } else {
            "key registry (verify.keys / verify.keys_file)"
        }
    }

    /// The dead-letter topic for messages from `source_topic`.
    pub fn dlq_topic_for(&self, source_topic: &str) -> String {
        if self.kafka.dlq_topic.is_empty() {
            format!("{source_topic}.dlq")
        } else {
            self.kafka.dlq_topic.clone()
        }
    }

    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.postgres.pool_timeout_ms)
    }
}

// ---- `serve` (the HTTP read API): its section, defaults and checks, in one block. ----

/// `serve`: the HTTP read API (`nekhebet-store serve`, see `crate::serve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (an IP address and port).
    pub listen: String,
    /// SHA-256 hex digests (64 lowercase hex digits) of the accepted bearer tokens; never tokens
    /// in clear. Any digest configured (here or in `tokens_file`) makes every `/v1` route require
    /// `Authorization: Bearer <token>`.
    pub tokens: Vec<String>,
    /// A file of more digests: one a line, optionally followed by a label; `#` starts a comment.
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain and private key: both set serves HTTPS only (rustls).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Without tokens, `serve` listens on a loopback address only, unless this is true.
    pub allow_anonymous: bool,
    /// Open connections at most; beyond it new connections wait in the listen backlog.
    pub max_connections: usize,
    /// A connection must send a request's complete head (and a TLS handshake) within this, also
    /// between the requests of a kept-alive connection; otherwise it is closed.
    pub header_timeout_ms: u64,
    /// A connection whose client accepts no response bytes for this long is closed.
    pub write_timeout_ms: u64,
    /// A request must have its response head within this, otherwise 503 `timeout`.
    pub request_timeout_ms: u64,
    /// Single-event reads in progress at once (each holds an LMDB reader slot; LMDB has 256 for
    /// every process that opens the environment); more wait.
    pub max_concurrent_reads: usize,
    /// Listings streaming at once (each holds a PostgreSQL connection until it ends); more are
    /// answered 503 `busy`. Must be below `postgres.pool_size`.
    pub max_concurrent_listings: usize,
    /// `/v1/stream` responses open at once (each holds at most one page of envelopes, and a
    /// PostgreSQL connection only while it reads a page); more are answered 503 `busy`.
    pub max_concurrent_streams: usize,
    /// How often, while a stream is open, the server reads the commit horizon to find newly
    /// committed events (one query for all streams).
    pub stream_poll_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            tokens_file: None,
            tls_cert: None,
            tls_key: None,
            allow_anonymous: false,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
            max_concurrent_reads: 64,
            max_concurrent_listings: 4,
            max_concurrent_streams: 64,
            stream_poll_ms: 100,
        }
    }
}

impl ServeConfig {
    /// Checks what can be checked without reading files (`serve` checks the token file, the
    /// certificates and the loopback rule when it starts).
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, expected| ConfigError::Invalid {
            key,
            value,
            expected,
        };
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "serve.listen",
                self.listen.clone(),
                "an IP address and port such as 127.0.0.1:8080",
            ));
        }
        if let Some(i) = self.tokens.iter().position(|t| !is_token_digest(t)) {
            // Not echoed: it may be a token in clear.
            return Err(invalid(
                "serve.tokens",
                format!("entry {} (not shown)", i + 1),
                "the SHA-256 hex digest of a token (64 lowercase hex digits), never the token: printf %s \"$TOKEN\" | sha256sum",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "serve.tls_cert",
                format!("{:?} with serve.tls_key {:?}", self.tls_cert, self.tls_key),
                "both serve.tls_cert and serve.tls_key (PEM files), or neither",
            ));
        }
        let counts = [
            ("serve.max_connections", self.max_connections, 1_000_000, "an integer from 1 to 1000000"),
            ("serve.max_concurrent_reads", self.max_concurrent_reads, 200, "an integer from 1 to 200 (LMDB has 256 reader slots for all the processes that open it)"),
            ("serve.max_concurrent_listings", self.max_concurrent_listings, 1_000, "an integer from 1 to 1000, below postgres.pool_size"),
            ("serve.max_concurrent_streams", self.max_concurrent_streams, 10_000, "an integer from 1 to 10000"),
        ];
        for (key, n, max, expected) in counts {
            if n == 0 || n > max {
                return Err(invalid(key, n.to_string(), expected));
            }
        }
        let timeouts = [
            ("serve.header_timeout_ms", self.header_timeout_ms),
            ("serve.write_timeout_ms", self.write_timeout_ms),
            ("serve.request_timeout_ms", self.request_timeout_ms),
        ];
        if !(10..=60_000).contains(&self.stream_poll_ms) {
            return Err(invalid(
                "serve.stream_poll_ms",
                self.stream_poll_ms.to_string(),
                "milliseconds from 10 to 60000",
            ));
        }
        for (key, ms) in timeouts {
            if !(100..=3_600_000).contains(&ms) {
                return Err(invalid(
                    key,
                    ms.to_string(),
                    "milliseconds from 100 to 3600000",
                ));
            }
        }
        Ok(())
    }
}

/// A bearer token's SHA-256 digest as `serve.tokens` holds it: 64 lowercase hex digits.
pub fn is_token_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---- end of `serve` ----

/// Whether a `kafka.properties` key holds a secret (masked by `config`, never logged): librdkafka's
/// sensitive properties (passwords, private keys, OAuth secrets and configs, JAAS) and anything
/// else that names a password, secret, credential or token.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "credential", "token", "jaas"]
        .iter()
        .any(|w| k.contains(w))
        || matches!(
            k.as_str(),
            "ssl.key.pem" | "ssl_key" | "ssl.keystore.pem" | "sasl.oauthbearer.config"
        )
}

/// `properties` with secret values replaced by `***`.
pub fn mask_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_property(k) {
                "***".to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Toml;

    fn with_toml(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
        )
    }

    #[test]
    fn an_auto_offset_reset_that_skips_messages_is_refused_naming_the_key() {
        for value in ["latest", "error", "largest"] {
            let err = with_toml(&format!(
                "[kafka.properties]\n\"auto.offset.reset\" = \"{value}\""
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("kafka.properties.auto.offset.reset"), "{err}");
            assert!(err.contains("earliest"), "{err}");
        }
        assert!(with_toml("[kafka.properties]\n\"auto.offset.reset\" = \"earliest\"").is_ok());
    }

    #[test]
    fn lmdb_layout_is_optional_and_the_mirror_rate_bounded() {
        assert_eq!(with_toml("").unwrap().lmdb.layout, None);
        let append = with_toml("[lmdb]\nlayout = \"append\"").unwrap();
        assert_eq!(append.lmdb.layout, Some(LmdbLayout::Append));
        assert_eq!(
            with_toml("[lmdb]\nmirror_rate = 0")
                .unwrap()
                .lmdb
                .mirror_rate,
            0
        );
        let err = with_toml("[lmdb]\nmirror_rate = 2000000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lmdb.mirror_rate"), "{err}");
        assert!(err.contains("between 0 (off) and 1000000"), "{err}");
    }

    #[test]
    fn a_dlq_topic_that_is_also_a_source_topic_is_refused() {
        let err = with_toml("[kafka]\ntopics = [\"a\", \"b\"]\ndlq_topic = \"b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.dlq_topic"), "{err}");
        // A pattern subscription that would read its own dead letters.
        let err = with_toml("[kafka]\ntopics = [\"^events\\\\..*\"]\ndlq_topic = \"events.dead\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.dlq_topic"), "{err}");
        // The default `<topic>.dlq` of a pattern subscription matched by the pattern itself.
        let err = with_toml("[kafka]\ntopics = [\"^events.*\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.dlq_topic"), "{err}");
        assert!(with_toml("[kafka]\ntopics = [\"a\"]\ndlq_topic = \"a.dead\"").is_ok());
    }

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        // SECTIONS filters the NEKHEBET_* variables: a section missing there is silently ignored.
        let toml = toml::to_string(&Config::default()).unwrap();
        let tables: Vec<&str> = toml
            .lines()
            .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']'))
            .filter(|t| !t.contains('.'))
            .collect();
        for t in &tables {
            assert!(SECTIONS.contains(t), "section [{t}] is not in SECTIONS");
        }
        assert!(SECTIONS.contains(&"replay_guard"));
    }

    #[test]
    fn defaults_are_valid() {
        let c = with_toml("").unwrap();
        assert_eq!(c.store.mode, StoreMode::Hybrid);
        assert!(c.verify.enabled);
        assert_eq!(c.verify.event_types.len(), 6);
    }

    #[test]
    fn bad_type_names_the_key() {
        let err = with_toml("[batch]\nmax_records = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch.max_records"), "{err}");
    }

    #[test]
    fn bad_mode_names_the_key_and_choices() {
        let err = with_toml("[store]\nmode = \"sqlite\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.mode"), "{err}");
        assert!(err.contains("hybrid"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_key_value_and_form() {
        let err = with_toml("[batch]\nmax_records = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`batch.max_records` = 0"), "{err}");
        assert!(err.contains("between 1 and 100000"), "{err}");
    }

    #[test]
    fn concurrent_batches_must_fit_in_the_pool() {
        for toml in [
            "[postgres]\nconcurrent_batches = 0",
            "[postgres]\npool_size = 2\nconcurrent_batches = 3",
        ] {
            let err = with_toml(toml).unwrap_err().to_string();
            assert!(err.contains("`postgres.concurrent_batches`"), "{err}");
            assert!(err.contains("from 1 to postgres.pool_size"), "{err}");
        }
        let c = with_toml("[postgres]\npool_size = 2\nconcurrent_batches = 2").unwrap();
        assert_eq!(c.postgres.concurrent_batches, 2);
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = with_toml("[batch]\nmax_recrods = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_recrods"), "{err}");
    }

    #[test]
    fn drain_must_be_shorter_than_session() {
        let err = with_toml("[kafka]\nsession_timeout_ms = 10000\ndrain_timeout_ms = 10000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.drain_timeout_ms"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_nesting_uses_double_underscore() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("NEKHEBET_POSTGRES__URL", "postgres://u:secret@db:5432/x");
            jail.set_env("NEKHEBET_BATCH__MAX_RECORDS", "77");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.postgres.url, "postgres://u:secret@db:5432/x");
            assert_eq!(c.batch.max_records, 77);
            Ok(())
        });
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        let c = PostgresConfig {
            url: "postgres://u:secret@h/db".into(),
            pool_size: 1,
            concurrent_batches: 1,
            pool_timeout_ms: 1,
            connect_timeout_ms: 1,
            sslmode: None,
            ssl_root_cert: None,
        };
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn secret_properties() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
        ] {
            assert!(is_secret_property(k), "{k}");
        }
        for k in ["sasl.username", "security.protocol", "ssl.ca.location"] {
            assert!(!is_secret_property(k), "{k}");
        }
        let c = with_toml(
            "[kafka.properties]\n\"sasl.password\" = \"sekrit\"\n\"sasl.username\" = \"me\"",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sekrit") && dbg.contains("me"), "{dbg}");
    }

    #[test]
    fn serve_section_is_checked_naming_the_key() {
        let c = with_toml("").unwrap();
        assert_eq!(c.serve.listen, "127.0.0.1:8080");
        assert!(!c.serve.allow_anonymous);
        let err = |toml: &str| with_toml(toml).unwrap_err().to_string();
        assert!(err("[serve]\nlisten = \"localhost\"").contains("serve.listen"));
        let clear = err("[serve]\ntokens = [\"hunter2\"]");
        assert!(
            clear.contains("serve.tokens") && !clear.contains("hunter2"),
            "{clear}"
        );
        let upper = format!("[serve]\ntokens = [\"{}\"]", "A".repeat(64));
        assert!(err(&upper).contains("serve.tokens"));
        assert!(with_toml(&format!("[serve]\ntokens = [\"{}\"]", "a".repeat(64))).is_ok());
        assert!(err("[serve]\ntls_cert = \"/c.pem\"").contains("serve.tls_cert"));
        assert!(err("[serve]\nmax_concurrent_reads = 0").contains("serve.max_concurrent_reads"));
        assert!(err("[serve]\nheader_timeout_ms = 1").contains("serve.header_timeout_ms"));
        assert!(err("[serve]\nlisten_addr = \"x\"").contains("listen_addr"));
    }

    #[test]
    fn tls_settings_are_validated_with_the_configuration() {
        // Resolving them is tested with the code, in store::postgres::connect.
        let c = with_toml("[postgres]\nsslmode = \"verify-full\"\nssl_root_cert = \"/ca.pem\"")
            .unwrap();
        assert_eq!(c.postgres.sslmode, Some(SslMode::VerifyFull));
        assert!(with_toml("[postgres]\nsslmode = \"verify-full\"").is_err());
        assert!(with_toml("[postgres]\nsslmode = \"allow\"")
            .unwrap_err()
            .to_string()
            .contains("postgres.sslmode"));
    }
}

// ---- `tlog` (the transparency log): its section, defaults and checks, in one block. ----

/// `tlog`: the transparency log over the stored envelopes (see `crate::transparency`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlogConfig {
    /// Build the log (the integrator runs in `ingest` and `serve`; `serve` answers `/log/…` and
    /// `/v1/events/{id}/proof`). On by default: a store whose users need tamper evidence has it
    /// from the first event.
    pub enabled: bool,
    /// The checkpoints' origin line (C2SP tlog-checkpoint), which is also the signing key's name.
    /// Empty: the signing key's name (`nekhebet-store` without a key).
    pub origin: String,
    /// The note signer key (`PRIVATE+KEY+<name>+<hash>+<base64>`, as `nekhebet-store tlog keygen`
    /// writes it). Unset: checkpoints are published unsigned (a start-up warning says so).
    pub signing_key_file: Option<PathBuf>,
    /// Where the last signed checkpoint is remembered outside PostgreSQL (written atomically
    /// before each checkpoint is published): a database restored from a backup can then not make
    /// this process sign a checkpoint inconsistent with one it signed before. Unset: beside the
    /// key, `<signing_key_file>.checkpoint`. Must be on a writable, persistent volume.
    pub state_file: Option<PathBuf>,
    /// A checkpoint is published this often when the tree grew.
    pub checkpoint_interval_ms: u64,
    /// Events integrated per step (one transaction), at most: bounds the integrator's memory.
    pub step_max_leaves: usize,
}

impl Default for TlogConfig {
    fn default() -> Self {
        TlogConfig {
            enabled: true,
            origin: String::new(),
            signing_key_file: None,
            state_file: None,
            checkpoint_interval_ms: 1_000,
            step_max_leaves: 10_000,
        }
    }
}

impl TlogConfig {
    /// The state file: `state_file`, else `<signing_key_file>.checkpoint`; none without a key.
    pub fn state_path(&self) -> Option<PathBuf> {
        let key = self.signing_key_file.as_ref()?;
        Some(self.state_file.clone().unwrap_or_else(|| {
            let mut name = key.as_os_str().to_owned();
            name.push(".checkpoint");
            PathBuf::from(name)
        }))
    }

    /// Checks what can be checked without reading files (the key is read when the log starts).
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, expected| ConfigError::Invalid {
            key,
            value,
            expected,
        };
        if !self.origin.is_empty()
            && (!crate::tlog::is_valid_name(&self.origin)
                || self.origin.chars().any(char::is_control))
        {
            return Err(invalid(
                "tlog.origin",
                format!("{:?}", self.origin),
                "a log name such as example.com/nekhebet (no spaces, no '+', no control characters): it is also the signing key's name",
            ));
        }
        if self.state_file.is_some() && self.signing_key_file.is_none() {
            return Err(invalid(
                "tlog.state_file",
                format!("{:?}", self.state_file),
                "no state file without tlog.signing_key_file: it remembers the last SIGNED checkpoint",
            ));
        }
        if !(100..=3_600_000).contains(&self.checkpoint_interval_ms) {
            return Err(invalid(
                "tlog.checkpoint_interval_ms",
                self.checkpoint_interval_ms.to_string(),
                "milliseconds from 100 to 3600000",
            ));
        }
        if self.step_max_leaves == 0 || self.step_max_leaves > 100_000 {
            return Err(invalid(
                "tlog.step_max_leaves",
                self.step_max_leaves.to_string(),
                "an integer from 1 to 100000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tlog_tests {
    use super::*;
    use figment::providers::Toml;

    fn with_toml(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
        )
    }

    #[test]
    fn tlog_is_on_by_default_and_checked_naming_the_key() {
        let c = with_toml("").unwrap();
        assert!(c.tlog.enabled);
        assert_eq!(c.tlog.checkpoint_interval_ms, 1_000);
        assert_eq!(c.tlog.state_path(), None);
        let err = |toml: &str| with_toml(toml).unwrap_err().to_string();
        let e = err("[tlog]\norigin = \"a b\"");
        assert!(
            e.contains("`tlog.origin`") && e.contains("no spaces"),
            "{e}"
        );
        let e = err("[tlog]\ncheckpoint_interval_ms = 5");
        assert!(
            e.contains("`tlog.checkpoint_interval_ms` = 5") && e.contains("100 to 3600000"),
            "{e}"
        );
        let e = err("[tlog]\nstep_max_leaves = 0");
        assert!(e.contains("`tlog.step_max_leaves` = 0"), "{e}");
        let e = err("[tlog]\nstate_file = \"/s\"");
        assert!(
            e.contains("`tlog.state_file`") && e.contains("signing_key_file"),
            "{e}"
        );
        assert!(err("[tlog]\nsigning_key = \"/k\"").contains("signing_key"));
        let c =
            with_toml("[tlog]\norigin = \"example.com/log\"\nsigning_key_file = \"/keys/log.key\"")
                .unwrap();
        assert_eq!(
            c.tlog.state_path(),
            Some(PathBuf::from("/keys/log.key.checkpoint"))
        );
    }
}

// ---- end of `tlog` ----
