//! Dead letters read back from a dead-letter topic: their headers (src/dlq.rs writes them) parsed
//! into a [`Letter`], and a reader that streams a range of the topic without a consumer group.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::dlq::{
    H_DETAIL, H_ORIGINAL_KEY_BYTES, H_ORIGINAL_VALUE_BYTES, H_REASON, H_SOURCE_OFFSET,
    H_SOURCE_PARTITION, H_SOURCE_TOPIC,
};
use crate::partition::Position;

/// The headers the dead-letter sink adds; everything else a letter carries travels on when it is
/// re-driven.
pub const SINK_HEADERS: &[&str] = &[
    H_REASON,
    H_DETAIL,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_ORIGINAL_KEY_BYTES,
    H_ORIGINAL_VALUE_BYTES,
];

/// One dead letter.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Where the letter is, in the dead-letter topic.
    pub at: Position,
    pub timestamp: Option<DateTime<Utc>>,
    /// `nekhebet.reason` (empty if absent: not a letter of ours).
    pub reason: String,
    pub detail: String,
    /// Where the message came from (`nekhebet.source.*`), when the headers say.
    pub source: Option<Position>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The original (key, value) sizes of a truncated letter: its bytes are only the first KiB.
    pub truncated: Option<(u64, u64)>,
}

impl Letter {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Letter {
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        // A repeated header: the last one counts, as Kafka clients' "last header" lookups do.
        let text = |name: &str| {
            headers
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let source = match (
            text(H_SOURCE_TOPIC),
            text(H_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            text(H_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        ) {
            (Some(t), Some(p), Some(o)) => Some(Position::new(t, p, o)),
            _ => None,
        };
        let truncated = match (
            text(H_ORIGINAL_KEY_BYTES).and_then(|k| k.parse().ok()),
            text(H_ORIGINAL_VALUE_BYTES).and_then(|v| v.parse().ok()),
        ) {
            (None, None) => None,
            (k, v) => Some((k.unwrap_or(0), v.unwrap_or(0))),
        };
        Letter {
            at: Position::new(m.topic(), m.partition(), m.offset()),
            timestamp: m
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
            reason: text(H_REASON).unwrap_or_default(),
            detail: text(H_DETAIL).unwrap_or_default(),
            source,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            truncated,
        }
    }

    /// The letter as one JSON object (`dlq inspect --json`, one a line).
    pub fn summary(&self) -> LetterSummary<'_> {
        LetterSummary {
            kind: "letter",
            dlq_topic: &self.at.partition.topic,
            dlq_partition: self.at.partition.number,
            dlq_offset: self.at.offset,
            timestamp: self.timestamp.map(|t| t.to_rfc3339()),
            reason: &self.reason,
            detail: &self.detail,
            source_topic: self.source.as_ref().map(|s| &*s.partition.topic),
            source_partition: self.source.as_ref().map(|s| s.partition.number),
            source_offset: self.source.as_ref().map(|s| s.offset),
            key_bytes: self.key.as_ref().map_or(0, Vec::len),
            value_bytes: self.value.as_ref().map_or(0, Vec::len),
            truncated: self.truncated.is_some(),
            original_key_bytes: self.truncated.map(|t| t.0),
            original_value_bytes: self.truncated.map(|t| t.1),
        }
    }
}

/// The JSON form of a letter; field names are stable (README, "Operating").
#[derive(Debug, Serialize)]
pub struct LetterSummary<'a> {
    pub kind: &'static str,
    pub dlq_topic: &'a str,
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub timestamp: Option<String>,
    pub reason: &'a str,
    pub detail: &'a str,
    pub source_topic: Option<&'a str>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub truncated: bool,
    pub original_key_bytes: Option<u64>,
    pub original_value_bytes: Option<u64>,
}

/// Which letters a command takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn new(reason: Option<String>, since: Option<&str>) -> anyhow::Result<Filter> {
        if let Some(r) = &reason {
            if crate::reason::Reason::from_code(r).is_none() {
                let known: Vec<&str> = crate::reason::Reason::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect();
                anyhow::bail!(
                    "--reason {r:?} is not a reason code; the codes are: {}",
                    known.join(", ")
                );
            }
        }
        let since = since
            .map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--since {s:?}: {e}; expected an RFC 3339 instant such as 2026-11-25T16:00:00Z"
                        )
                    })
            })
            .transpose()?;
        Ok(Filter { reason, since })
    }

    pub fn matches(&self, l: &Letter) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == l.reason)
            && self
                .since
                .is_none_or(|s| l.timestamp.is_some_and(|t| t >= s))
    }
}

/// A range of one partition to read: `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub until: i64,
}

/// Streams the letters of `ranges` (partition → range of `topic`) into the returned channel, in
/// offset order per partition, from a thread of its own; the channel closes when every range was
/// read, or after an error (sent last). `consumer` has no group: it only reads.
pub fn read(
    consumer: BaseConsumer,
    topic: &str,
    ranges: BTreeMap<i32, Range>,
) -> mpsc::Receiver<Result<Letter, KafkaError>> {
    let (tx, rx) = mpsc::channel(1024);
    let topic = topic.to_string();
    std::thread::spawn(move || {
        if let Err(e) = read_blocking(&consumer, &topic, ranges, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: BTreeMap<i32, Range>,
    tx: &mpsc::Sender<Result<Letter, KafkaError>>,
) -> Result<(), KafkaError> {
    let mut open: BTreeMap<i32, i64> = ranges
        .iter()
        .filter(|(_, r)| r.from < r.until)
        .map(|(p, r)| (*p, r.until))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, r) in &ranges {
        if open.contains_key(p) {
            tpl.add_partition_offset(topic, *p, Offset::Offset(r.from))?;
        }
    }
    consumer.assign(&tpl)?;
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // The end of what the partition holds (a compacted or transactional topic may
                // end below the high watermark measured before).
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                let until = open.get(&m.partition()).copied();
                match until {
                    Some(until) if m.offset() < until => {
                        if tx.blocking_send(Ok(Letter::from_message(&m))).is_err() {
                            return Ok(()); // The reader's owner stopped listening.
                        }
                        if m.offset() + 1 >= until {
                            open.remove(&m.partition());
                        }
                    }
                    // Past the range (written after it was measured), or a finished partition.
                    Some(_) | None => {
                        open.remove(&m.partition());
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, at: Option<&str>) -> Letter {
        Letter {
            at: Position::new("t.dlq", 0, 7),
            timestamp: at.map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            reason: reason.into(),
            detail: String::new(),
            source: Some(Position::new("t", 1, 42)),
            key: None,
            value: Some(b"v".to_vec()),
            headers: Vec::new(),
            truncated: None,
        }
    }

    #[test]
    fn filters_select_by_reason_code_and_time() {
        let f = Filter::new(Some("key_id_mismatch".into()), Some("2026-11-28T10:00:00Z")).unwrap();
        assert!(f.matches(&letter("key_id_mismatch", Some("2026-11-28T10:00:00Z"))));
        assert!(!f.matches(&letter("key_id_mismatch", Some("2026-11-28T09:59:59Z"))));
        assert!(!f.matches(&letter("key_id_mismatch", None)));
        assert!(!f.matches(&letter("malformed_json", Some("2026-11-28T11:00:00Z"))));
        assert!(Filter::default().matches(&letter("", None)));
        let unknown = Filter::new(Some("no_such_reason".into()), None).unwrap_err();
        assert!(unknown.to_string().contains("key_id_mismatch"), "{unknown}");
        assert!(Filter::new(None, Some("yesterday")).is_err());
    }
}
