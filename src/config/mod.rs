//! Configuration: built-in defaults ← `config/default.toml` ← `--config FILE` ← `NEKHEBET_*`
//! environment variables (`__` separates nesting levels: `NEKHEBET_POSTGRES__URL` → `postgres.url`).
//!
//! Every value is checked at start-up; an error names the key, the value and the expected form, so an
//! operator never has to guess which line of which file is wrong.
//!
//! | module | owns |
//! |---|---|
//! | `mod` | [`Config`]: the layers, the defaults, the checks across sections |
//! | `sections` | the worker's sections and their documented fields |
//! | `serve` | the `serve` section, its defaults and checks, token digests |
//! | `tlog` | the `tlog` section, its defaults and checks |
//! | `secrets` | which `kafka.properties` hold secrets, and their masking |

mod secrets;
mod sections;
mod serve;
mod tlog;

pub use secrets::{is_secret_property, mask_properties};
pub use sections::{
    BatchConfig, KafkaConfig, LimitsConfig, LmdbConfig, LogConfig, PostgresConfig,
    ReplayGuardConfig, ShutdownConfig, SslMode, StoreConfig, TelemetryConfig, VerifySettings,
};
pub use serve::{is_token_digest, ServeConfig};
pub use tlog::TlogConfig;

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

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Toml;

    /// The defaults with `toml` merged over them, as `load` would read a file (also for the
    /// section modules' tests).
    pub(super) fn with_toml(toml: &str) -> Result<Config, ConfigError> {
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
