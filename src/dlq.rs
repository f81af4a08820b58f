//! The dead-letter sink: rejected messages go to a Kafka topic with the original key and value and
//! headers that say why, and where they came from.
//!
//! A publish counts only once the broker acknowledged it (acks=all, idempotent producer); the
//! ingest loop commits a message's offset only after that. A failed publish is an error the caller
//! retries — nothing is dropped. Delivery is at-least-once: a crash after the broker's ack and
//! before the offset commit publishes the message again on restart, so consumers of the DLQ
//! deduplicate by the `nekhebet.source.*` headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::reason::Reason;
use crate::telemetry::names;

pub const H_REASON: &str = "nekhebet.reason";
pub const H_DETAIL: &str = "nekhebet.detail";
pub const H_SOURCE_TOPIC: &str = "nekhebet.source.topic";
pub const H_SOURCE_PARTITION: &str = "nekhebet.source.partition";
pub const H_SOURCE_OFFSET: &str = "nekhebet.source.offset";
/// Present only on a truncated letter (the dead-letter topic refused the full one for good): the
/// original key and value sizes in bytes. The letter then carries the first [`TRUNCATED_BYTES`]
/// of each.
pub const H_ORIGINAL_KEY_BYTES: &str = "nekhebet.original.key_bytes";
pub const H_ORIGINAL_VALUE_BYTES: &str = "nekhebet.original.value_bytes";

/// How much of the key and of the value a truncated letter keeps.
pub const TRUNCATED_BYTES: usize = 1024;

/// Details longer than this are cut (at a character boundary): a database message or a decoder
/// error can quote input, and headers are not the place for megabytes.
const MAX_DETAIL_BYTES: usize = 2048;

/// One message for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Why it was refused (its stable code goes into the `nekhebet.reason` header).
    pub reason: Reason,
    pub detail: String,
    pub source_topic: Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Set on the truncated copy of a letter the dead-letter topic refused for good.
    pub truncated_from: Option<OriginalSizes>,
}

/// The sizes of a letter before it was truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalSizes {
    pub key_bytes: usize,
    pub value_bytes: usize,
}

/// Whether the broker (or the producer on its behalf) refuses this letter whatever the retries:
/// too large for the topic or the producer, or a record the topic can never take (a compacted
/// topic and a null key).
fn refused_for_good(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidRecord
                | C::InvalidMessage
        )
    )
}

/// The letter cut to what any topic takes: the first [`TRUNCATED_BYTES`] of key and value, a key
/// derived from the source position where there was none (a compacted topic refuses a null key),
/// the original sizes as headers and a detail that says so. The reason is unchanged.
pub fn truncated(letter: &DeadLetter, why: &KafkaError) -> DeadLetter {
    let cut = |b: &Option<Bytes>| b.as_ref().map(|b| b.slice(..b.len().min(TRUNCATED_BYTES)));
    let key = cut(&letter.key).or_else(|| {
        Some(Bytes::from(format!(
            "nekhebet.dlq/{}/{}/{}",
            letter.source_topic, letter.source_partition, letter.source_offset
        )))
    });
    DeadLetter {
        key,
        value: cut(&letter.value),
        reason: letter.reason,
        detail: format!(
            "truncated for the dead-letter topic, which refused the full letter ({why}): key and value cut to their first {TRUNCATED_BYTES} bytes; original detail: {}",
            letter.detail
        ),
        source_topic: letter.source_topic.clone(),
        source_partition: letter.source_partition,
        source_offset: letter.source_offset,
        truncated_from: Some(OriginalSizes {
            key_bytes: letter.key.as_ref().map_or(0, |k| k.len()),
            value_bytes: letter.value.as_ref().map_or(0, |v| v.len()),
        }),
    }
}

/// A publish that did not get the broker's acknowledgement.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter publish to {topic} failed: {error}")]
pub struct DlqError {
    pub topic: String,
    pub error: KafkaError,
}

impl DlqError {
    /// Broker down, leader moving, timeouts: retrying helps. Authorization or configuration
    /// problems do not, but the caller still may not drop the message — it retries more slowly
    /// and shouts.
    pub fn is_retriable(&self) -> bool {
        crate::kafka::is_retriable(&self.error)
    }

    pub fn cause(&self) -> &'static str {
        if self.is_retriable() {
            "dlq_unavailable"
        } else {
            "dlq_refused"
        }
    }
}

/// The dead-letter producer. Cheap to clone.
#[derive(Clone)]
pub struct DlqSink {
    producer: FutureProducer<crate::kafka::Watch>,
    configured_topic: String,
}

impl DlqSink {
    pub fn new(config: &Config, watch: crate::kafka::Watch) -> Result<DlqSink, KafkaError> {
        let cc =
            crate::kafka::letter_producer_config(&config.kafka, config.limits.max_message_bytes);
        Ok(DlqSink {
            producer: cc
                .create_with_context(watch)
                .map_err(crate::kafka::redact_error)?,
            configured_topic: config.kafka.dlq_topic.clone(),
        })
    }

    /// The dead-letter topic for messages from `source_topic` (`kafka.dlq_topic`, or
    /// `<source>.dlq` when that is empty).
    pub fn topic_for(&self, source_topic: &str) -> String {
        dlq_topic(&self.configured_topic, source_topic)
    }

    /// Publishes one letter and waits for the broker's acknowledgement. A letter the broker
    /// refuses for good (key, value or headers over the topic's `max.message.bytes`, a compacted
    /// topic refusing a null key) is published truncated instead ([`truncated`]): retrying it as
    /// it is would stall its partition forever.
    pub async fn publish(&self, letter: &DeadLetter) -> Result<(), DlqError> {
        let topic = self.topic_for(&letter.source_topic);
        let result = match self.send(&topic, letter).await {
            Err(e) if refused_for_good(&e) => {
                tracing::warn!(
                    topic = %topic,
                    source_topic = %letter.source_topic,
                    partition = letter.source_partition,
                    offset = letter.source_offset,
                    key_bytes = letter.key.as_ref().map_or(0, |k| k.len()),
                    value_bytes = letter.value.as_ref().map_or(0, |v| v.len()),
                    error = %e,
                    "the dead-letter topic refuses this letter for good: publishing it truncated"
                );
                self.send(&topic, &truncated(letter, &e)).await
            }
            other => other,
        };
        match result {
            Ok(()) => {
                metrics::counter!(names::DLQ_PUBLISHED, "topic" => topic).increment(1);
                Ok(())
            }
            Err(error) => {
                metrics::counter!(names::DLQ_FAILURES).increment(1);
                Err(DlqError { topic, error })
            }
        }
    }

    /// Publishes every letter concurrently; one result per letter, in order.
    pub async fn publish_all(&self, letters: &[&DeadLetter]) -> Vec<Result<(), DlqError>> {
        join_all(letters.iter().map(|l| self.publish(l))).await
    }

    async fn send(&self, topic: &str, letter: &DeadLetter) -> Result<(), KafkaError> {
        let partition = letter.source_partition.to_string();
        let offset = letter.source_offset.to_string();
        let detail = truncate(&letter.detail, MAX_DETAIL_BYTES);
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header {
                key: H_REASON,
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: H_DETAIL,
                value: Some(detail),
            })
            .insert(Header {
                key: H_SOURCE_TOPIC,
                value: Some(&*letter.source_topic),
            })
            .insert(Header {
                key: H_SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: H_SOURCE_OFFSET,
                value: Some(offset.as_str()),
            });
        let sizes;
        if let Some(t) = &letter.truncated_from {
            sizes = (t.key_bytes.to_string(), t.value_bytes.to_string());
            headers = headers
                .insert(Header {
                    key: H_ORIGINAL_KEY_BYTES,
                    value: Some(sizes.0.as_str()),
                })
                .insert(Header {
                    key: H_ORIGINAL_VALUE_BYTES,
                    value: Some(sizes.1.as_str()),
                });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = letter.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = letter.value.as_deref() {
            record = record.payload(v);
        }
        match self.producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e),
        }
    }

    /// Waits for queued publishes (used at shutdown; publishes are awaited one by one anyway).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

/// The dead-letter topics of every configured source topic, sorted, each once.
pub fn dlq_topics(config: &Config) -> Vec<String> {
    let mut v: Vec<String> = config
        .kafka
        .topics
        .iter()
        .map(|t| config.dlq_topic_for(t))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `configured`, or `<source>.dlq` when it is empty (same rule as [`Config::dlq_topic_for`]).
pub fn dlq_topic(configured: &str, source_topic: &str) -> String {
    if configured.is_empty() {
        format!("{source_topic}.dlq")
    } else {
        configured.to_string()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        let s = "ééé"; // 2 bytes each
        assert_eq!(truncate(s, 3), "é");
        assert_eq!(truncate(s, 4), "éé");
    }

    #[test]
    fn a_truncated_letter_keeps_the_first_kib_the_sizes_and_the_reason() {
        let letter = DeadLetter {
            key: Some(Bytes::from(vec![b'k'; 1_500_000])),
            value: Some(Bytes::from_static(b"short")),
            reason: Reason::MalformedJson,
            detail: "bad".into(),
            source_topic: "src".into(),
            source_partition: 3,
            source_offset: 42,
            truncated_from: None,
        };
        let err = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(refused_for_good(&err));
        let t = truncated(&letter, &err);
        assert_eq!(t.key.as_deref(), Some(&[b'k'; TRUNCATED_BYTES][..]));
        assert_eq!(t.value.as_deref(), Some(&b"short"[..]));
        assert_eq!(t.reason, Reason::MalformedJson);
        assert!(t.detail.starts_with("truncated"), "{}", t.detail);
        assert!(t.detail.ends_with("original detail: bad"), "{}", t.detail);
        assert_eq!(
            t.truncated_from,
            Some(OriginalSizes {
                key_bytes: 1_500_000,
                value_bytes: 5
            })
        );
        // No key at all (a compacted topic refuses a null key): one derived from the source.
        let keyless = DeadLetter {
            key: None,
            ..letter
        };
        let t = truncated(
            &keyless,
            &KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord),
        );
        assert_eq!(t.key.as_deref(), Some(&b"nekhebet.dlq/src/3/42"[..]));
        assert!(!refused_for_good(&KafkaError::MessageProduction(
            RDKafkaErrorCode::BrokerNotAvailable
        )));
    }

    #[test]
    fn topic_rule_matches_config() {
        let mut c = Config::default();
        assert_eq!(dlq_topic(&c.kafka.dlq_topic, "t"), c.dlq_topic_for("t"));
        c.kafka.dlq_topic = "dead".into();
        assert_eq!(dlq_topic(&c.kafka.dlq_topic, "t"), c.dlq_topic_for("t"));
        assert_eq!(dlq_topic("", "t"), "t.dlq");
    }
}
