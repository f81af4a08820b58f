//! Kafka client configuration and administration (topic creation); [`group`]: what the operator
//! tools ask about a consumer group (offsets, members) and its topics.
//!
//! Our settings are applied first and `kafka.properties` last, unchanged, so an operator can
//! override anything (security.protocol, sasl.*, ssl.*, fetch tuning) without a code change —
//! except the few the worker's correctness depends on, which [`consumer_config`] re-asserts.

pub mod group;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// Settings the ingest loop relies on: offsets are committed by us, after both stores hold the
/// batch, never by librdkafka on a timer.
const PINNED_CONSUMER: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// A shared "why Kafka refuses us" (`None` while it does not): credentials, ACLs, certificates.
pub type KafkaProblem = Arc<Mutex<Option<String>>>;

/// librdkafka's own words for "refused until someone acts", in its log lines (its error events
/// carry only the code).
const REFUSALS_IN_LOGS: &[(&str, &str)] = &[
    ("SSL handshake failed", "TLS failed"),
    ("SASL authentication error", "authentication failed"),
    ("Authentication failed", "authentication failed"),
];

/// The client context of every client of the worker (consumer, dead-letter producer, admin):
/// forwards librdkafka's log lines to `tracing`, and records a refusal that lasts until someone
/// acts (wrong credentials, a missing ACL, an untrusted certificate) for `/readyz`, saying so at
/// ERROR level every 30 s rather than at librdkafka's pace.
#[derive(Default)]
pub struct Watch {
    problem: KafkaProblem,
    last_report: Mutex<Option<Instant>>,
}

impl Watch {
    pub fn new(problem: KafkaProblem) -> Watch {
        Watch {
            problem,
            last_report: Mutex::new(None),
        }
    }

    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// The client works again (e.g. the consumer got an assignment).
    pub fn clear(&self) {
        *lock(&self.problem) = None;
    }

    pub fn report(&self, what: String) {
        let now = Instant::now();
        let mut last = lock(&self.last_report);
        if last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30)) {
            *last = Some(now);
            tracing::error!(problem = %what, "Kafka refuses this worker; it stays unready until that is fixed (check kafka.brokers and the security settings in kafka.properties)");
        }
        *lock(&self.problem) = Some(what);
    }
}

/// Whether a client error means "refused until someone acts", not "unavailable for a while".
pub fn needs_operator(e: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::Authentication | C::SaslAuthenticationFailed | C::IllegalSASLState => {
            Some("authentication failed")
        }
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed => Some("not authorized"),
        C::SSL => Some("TLS failed"),
        _ => None,
    }
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        match needs_operator(&error) {
            Some(what) => self.report(format!("kafka: {what}: {reason}")),
            None => tracing::warn!(error = %error, reason, "Kafka client error (retrying)"),
        }
    }

    /// librdkafka's log lines, as rdkafka forwards them, and the detail of a refusal.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
        if let Some((_, what)) = REFUSALS_IN_LOGS.iter().find(|(p, _)| message.contains(p)) {
            self.report(format!("kafka: {what}: {message}"));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Consumer configuration for the ingest worker.
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        // Lag per partition comes from librdkafka's statistics (see ingest); an operator may
        // override the interval through `kafka.properties`.
        .set("statistics.interval.ms", "5000")
        // librdkafka pre-fetches up to 64 MiB by default; a quarter of that keeps several batches
        // ahead of the writer while keeping resident memory flat whatever the backlog.
        .set("queued.max.messages.kbytes", "16384")
        // Once that queue is full librdkafka postpones the next fetch by this much (1 s by
        // default): longer than the writer takes to drain it, so the worker idled ~40% of the
        // time in a backlog (measured: 400–550 ms stalls every ~18,000 messages).
        .set("fetch.queue.backoff.ms", "20")
        .set("client.id", "nekhebet-store");
    for (k, v) in PINNED_CONSUMER {
        c.set(*k, *v);
    }
    apply_properties(&mut c, &kafka.properties);
    for (k, v) in PINNED_CONSUMER {
        if kafka.properties.get(*k).is_some_and(|given| given != v) {
            tracing::warn!(property = *k, "kafka.properties tries to change {k}; the worker needs {v} (offsets are committed only after both stores hold a batch), ignoring it");
        }
        c.set(*k, *v);
    }
    c
}

/// Producer configuration (dead-letter sink, `produce` command): every write acknowledged by all
/// in-sync replicas, idempotent so a retried send cannot duplicate or reorder.
pub fn producer_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("client.id", "nekhebet-store");
    apply_properties(&mut c, &producer_properties(properties));
    c
}

/// Producer configuration for messages as large as the worker accepts (dead letters, and their
/// re-drive): the producer's own limit follows `limits.max_message_bytes`, and a delivery fails
/// after 30 s so an unavailable broker shows up as retries instead of one silent stall.
pub fn letter_producer_config(kafka: &KafkaConfig, max_message_bytes: usize) -> ClientConfig {
    let mut cc = producer_config(&kafka.brokers, &kafka.properties);
    // A rejected message can be up to the consumer's limit (or bigger: "oversize" is a reason);
    // librdkafka's own 1 MB default would refuse those before the broker sees them.
    let max = (max_message_bytes + 64 * 1024).max(1_000_000);
    if !kafka.properties.contains_key("message.max.bytes") {
        cc.set("message.max.bytes", max.to_string());
    }
    // librdkafka's default is 5 min.
    if !kafka.properties.contains_key("message.timeout.ms")
        && !kafka.properties.contains_key("delivery.timeout.ms")
    {
        cc.set("message.timeout.ms", "30000");
    }
    cc
}

/// Admin client configuration.
pub fn admin_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    apply_properties(&mut c, &common_properties(properties));
    c
}

fn apply_properties(c: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (k, v) in properties {
        c.set(k, v);
    }
}

/// Consumer-only librdkafka properties that a producer or admin client would reject with a
/// configuration error (librdkafka refuses consumer properties on producers only with a warning
/// for most keys, but these few make client creation fail).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "check.crcs",
    "enable.partition.eof",
    "group.protocol",
    "group.remote.assignor",
];

/// Properties shared by every client (security, network), i.e. everything but consumer tuning.
fn common_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .filter(|(k, _)| !CONSUMER_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn producer_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    common_properties(properties)
}

/// Creates the topics that do not exist yet; an existing topic is fine (its partition count is
/// left as it is). `partitions` is the count for a new topic; replication is the broker default.
pub async fn ensure_topics(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topics: &[(&str, i32)],
) -> Result<(), KafkaError> {
    ensure_topics_watched(brokers, properties, topics, Watch::default()).await
}

/// [`ensure_topics`] with a client context that reports why Kafka refuses us.
pub async fn ensure_topics_watched(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topics: &[(&str, i32)],
    watch: Watch,
) -> Result<(), KafkaError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<Watch> = admin_config(brokers, properties)
        .create_with_context(watch)
        .map_err(redact_error)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        // -1: the broker's default.replication.factor (KIP-464), so production clusters get
        // their usual replication and a single local broker gets 1.
        .map(|(name, partitions)| {
            NewTopic::new(name, (*partitions).max(1), TopicReplication::Fixed(-1))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new.iter(), &opts).await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::warn!(topic = %name, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// rust-rdkafka's configuration errors quote the property's value ("Client config error: <what>
/// <key> <value>"): for a secret property (`sasl.password`, `ssl.key.password`…, see
/// [`crate::config::is_secret_property`]) that would print the secret in the error. Every client
/// is created through this: the value (and any copy of it in librdkafka's text) becomes `***`.
pub fn redact_error(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(res, desc, key, value)
            if crate::config::is_secret_property(&key) =>
        {
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(&value, "***")
            };
            KafkaError::ClientConfig(res, desc, key, "***".into())
        }
        e => e,
    }
}

/// Whether a Kafka error is worth retrying (broker unreachable, leader moving, timeouts…) as
/// opposed to a configuration or authorization problem that retrying will not fix.
pub fn is_retriable(e: &KafkaError) -> bool {
    match e.rdkafka_error_code() {
        Some(code) => is_retriable_code(code),
        // Errors without a code are client-side (config, NUL in a string, client dropped).
        None => false,
    }
}

pub fn is_retriable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    !matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidConfig
            | C::InvalidArgument
            | C::InvalidTopic
            | C::InvalidRecord
            | C::UnsupportedVersion
            | C::UnsupportedCompressionType
            | C::Fatal
    )
}

/// A short stable label for a Kafka error code (metrics `cause`, DLQ failure logs).
pub fn code_label(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "client".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn get(c: &ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_string)
    }

    #[test]
    fn consumer_defaults() {
        let mut cfg = Config::default().kafka;
        cfg.brokers = "b:1".into();
        cfg.group_id = "g".into();
        let c = consumer_config(&cfg);
        assert_eq!(get(&c, "bootstrap.servers").as_deref(), Some("b:1"));
        assert_eq!(get(&c, "group.id").as_deref(), Some("g"));
        assert_eq!(get(&c, "enable.auto.commit").as_deref(), Some("false"));
        assert_eq!(
            get(&c, "enable.auto.offset.store").as_deref(),
            Some("false")
        );
        assert_eq!(
            get(&c, "partition.assignment.strategy").as_deref(),
            Some("cooperative-sticky")
        );
        assert_eq!(get(&c, "auto.offset.reset").as_deref(), Some("earliest"));
        assert_eq!(get(&c, "session.timeout.ms").as_deref(), Some("45000"));
    }

    #[test]
    fn properties_are_applied_last_unchanged_but_cannot_enable_auto_commit() {
        let mut cfg = Config::default().kafka;
        cfg.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        cfg.properties
            .insert("auto.offset.reset".into(), "latest".into());
        cfg.properties
            .insert("fetch.max.bytes".into(), "1234".into());
        cfg.properties
            .insert("enable.auto.commit".into(), "true".into());
        let c = consumer_config(&cfg);
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&c, "auto.offset.reset").as_deref(), Some("latest"));
        assert_eq!(get(&c, "fetch.max.bytes").as_deref(), Some("1234"));
        assert_eq!(get(&c, "enable.auto.commit").as_deref(), Some("false"));
    }

    #[test]
    fn producer_is_idempotent_with_acks_all_and_drops_consumer_keys() {
        let mut props = BTreeMap::new();
        props.insert("sasl.username".to_string(), "u".to_string());
        props.insert("group.id".to_string(), "x".to_string());
        props.insert("fetch.max.bytes".to_string(), "1".to_string());
        let c = producer_config("b:1", &props);
        assert_eq!(get(&c, "acks").as_deref(), Some("all"));
        assert_eq!(get(&c, "enable.idempotence").as_deref(), Some("true"));
        assert_eq!(get(&c, "sasl.username").as_deref(), Some("u"));
        assert_eq!(get(&c, "group.id"), None);
        assert_eq!(get(&c, "fetch.max.bytes"), None);
    }

    #[test]
    fn config_errors_do_not_quote_secrets() {
        use rdkafka::types::RDKafkaConfRes;
        let e = KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"sekrit\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "sekrit".into(),
        );
        let shown = redact_error(e).to_string();
        assert!(
            !shown.contains("sekrit") && shown.contains("***"),
            "{shown}"
        );
        let e = KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property".into(),
            "no.such.property".into(),
            "harmless".into(),
        );
        assert!(redact_error(e).to_string().contains("harmless"));
        // A real refusal, where this librdkafka build has no OAuth/OIDC support.
        let mut props = BTreeMap::new();
        props.insert(
            "sasl.oauthbearer.client.secret".to_string(),
            "sekrit".to_string(),
        );
        if let Err(e) = producer_config("b:1", &props).create::<rdkafka::producer::BaseProducer>() {
            let shown = redact_error(e).to_string();
            assert!(!shown.contains("sekrit"), "{shown}");
        }
    }

    #[test]
    fn retriable_codes() {
        assert!(is_retriable_code(RDKafkaErrorCode::AllBrokersDown));
        assert!(is_retriable_code(RDKafkaErrorCode::MessageTimedOut));
        assert!(is_retriable_code(RDKafkaErrorCode::NotEnoughReplicas));
        assert!(!is_retriable_code(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!is_retriable_code(
            RDKafkaErrorCode::TopicAuthorizationFailed
        ));
        assert!(is_retriable(&KafkaError::MessageProduction(
            RDKafkaErrorCode::QueueFull
        )));
        assert!(!is_retriable(&KafkaError::Canceled));
    }
}
