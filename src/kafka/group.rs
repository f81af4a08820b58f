//! What the operator tools ask Kafka about a consumer group and its topics: partitions, watermarks,
//! the group's committed offsets, its members (and which partitions each owns), and committing
//! offsets on the group's behalf. Every call blocks (librdkafka): run them off the async runtime.
//!
//! The tools never join a group: they read with `assign`, so running `status` or `offsets show`
//! next to the workers never triggers a rebalance.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::partition::Partition;

/// How long one request to the brokers may take before the tool reports it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Properties a tool's consumer must not take from `kafka.properties`: a static member id would
/// make it impersonate a worker, and the tools commit only explicitly.
const NOT_FOR_TOOLS: &[&str] = &[
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// A consumer for the tools: `kafka.properties` (security, network, fetch tuning) with our group
/// (or none: reading only) and no automatic commits. It never subscribes, so it never joins.
pub fn tool_consumer(
    kafka: &KafkaConfig,
    group: Option<&str>,
    client_id: &str,
) -> Result<BaseConsumer, KafkaError> {
    tool_config(kafka, group, client_id)
        .create()
        .map_err(super::redact_error)
}

/// A consumer that only reads ranges of a topic, and learns where each partition ends
/// (`enable.partition.eof`): a compacted or transactional topic can end below its high watermark.
/// librdkafka assigns partitions only to a consumer with a `group.id`; this one names a group it
/// never joins nor commits for, so the broker keeps no state for it.
pub fn range_reader(kafka: &KafkaConfig, client_id: &str) -> Result<BaseConsumer, KafkaError> {
    tool_config(kafka, Some("nekhebet-store-reader"), client_id)
        .set("enable.partition.eof", "true")
        .create()
        .map_err(super::redact_error)
}

fn tool_config(kafka: &KafkaConfig, group: Option<&str>, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id);
    for (k, v) in &kafka.properties {
        if !NOT_FOR_TOOLS.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if let Some(g) = group {
        c.set("group.id", g);
    }
    c
}

/// The partition numbers of `topic`, ascending. A topic the brokers do not know is an error that
/// says so (librdkafka reports it as a topic with an error code, not as a failed request).
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    };
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Whether `e` says the topic (or partition) does not exist.
pub fn is_unknown_topic(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
}

/// `(low, high)`: the first offset still held and the offset the next message will get.
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    consumer.fetch_watermarks(topic, partition, TIMEOUT)
}

/// The group's committed offset (the next offset to read) of each partition that has one.
pub fn committed(
    consumer: &BaseConsumer,
    partitions: &[Partition],
) -> Result<BTreeMap<Partition, i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.number);
    }
    let list = consumer.committed_offsets(tpl, TIMEOUT)?;
    Ok(list
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((Partition::new(e.topic(), e.partition()), o)),
            Offset::Beginning
            | Offset::End
            | Offset::Stored
            | Offset::Invalid
            | Offset::OffsetTail(_) => None,
        })
        .collect())
}

/// Commits `offsets` (each the next offset to read) for the consumer's group, synchronously. The
/// consumer is assigned the partitions first: librdkafka commits only for assigned partitions of a
/// consumer that is not a group member. The broker refuses it while the group has members.
pub fn commit(consumer: &BaseConsumer, offsets: &[(Partition, i64)]) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (p, next) in offsets {
        tpl.add_partition_offset(&p.topic, p.number, Offset::Offset(*next))?;
    }
    consumer.assign(&tpl)?;
    let result = consumer.commit(&tpl, CommitMode::Sync);
    consumer.unassign()?;
    result
}

/// A member of a consumer group, as the group coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    /// As the broker saw the connection, e.g. `/10.0.0.7`.
    pub host: String,
    /// The partitions the group's leader assigned to it.
    pub partitions: Vec<Partition>,
}

impl Member {
    /// `client_id@host`, how an operator finds the process.
    pub fn label(&self) -> String {
        format!("{}@{}", self.client_id, self.host.trim_start_matches('/'))
    }
}

/// The group's current members (none when the group is empty or unknown).
pub fn members(consumer: &BaseConsumer, group: &str) -> Result<Vec<Member>, KafkaError> {
    let list = consumer.fetch_group_list(Some(group), TIMEOUT)?;
    let mut out = Vec::new();
    for g in list.groups().iter().filter(|g| g.name() == group) {
        for m in g.members() {
            out.push(Member {
                member_id: m.id().to_string(),
                client_id: m.client_id().to_string(),
                host: m.client_host().to_string(),
                partitions: m.assignment().map(parse_assignment).unwrap_or_default(),
            });
        }
    }
    out.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(out)
}

/// The partitions of a member assignment in the consumer protocol (`ConsumerProtocolAssignment`,
/// every version: int16 version, then an array of (string topic, array of int32 partitions); user
/// data after it is ignored). Bytes it cannot read yield what was read before them: the owner
/// column is informative, never a reason to fail.
pub fn parse_assignment(bytes: &[u8]) -> Vec<Partition> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    let Some(_version) = r.i16() else {
        return out;
    };
    let Some(topics) = r.i32() else { return out };
    for _ in 0..topics.max(0) {
        let Some(topic) = r.string() else { break };
        let Some(count) = r.i32() else { break };
        for _ in 0..count.max(0) {
            let Some(p) = r.i32() else { return out };
            out.push(Partition::new(topic.as_str(), p));
        }
    }
    out
}

/// Big-endian reads over a byte slice (the Kafka protocol's encoding).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn assignments_of_every_version_list_their_partitions() {
        for version in [0, 1, 3] {
            let bytes = assignment(version, &[("a", &[0, 2]), ("b", &[1])], b"sticky");
            assert_eq!(
                parse_assignment(&bytes),
                [
                    Partition::new("a", 0),
                    Partition::new("a", 2),
                    Partition::new("b", 1)
                ]
            );
        }
        assert!(parse_assignment(&assignment(0, &[], b"")).is_empty());
    }

    #[test]
    fn a_cut_assignment_yields_what_was_read_before_the_cut() {
        let bytes = assignment(1, &[("a", &[0, 2]), ("b", &[1])], b"");
        // Cut inside the second partition number of "a".
        assert_eq!(
            parse_assignment(&bytes[..2 + 4 + 2 + 1 + 4 + 4 + 2]),
            [Partition::new("a", 0)]
        );
        assert!(parse_assignment(&[0]).is_empty());
        assert!(parse_assignment(&[]).is_empty());
    }

    #[test]
    fn a_tool_consumer_takes_security_settings_but_not_a_static_member_id() {
        let mut kafka = crate::config::Config::default().kafka;
        kafka
            .properties
            .insert("group.instance.id".into(), "worker-0".into());
        kafka
            .properties
            .insert("enable.auto.commit".into(), "true".into());
        kafka
            .properties
            .insert("socket.timeout.ms".into(), "1234".into());
        let c = tool_config(&kafka, Some("g"), "nekhebet-store-test");
        assert_eq!(c.get("group.instance.id"), None);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("socket.timeout.ms"), Some("1234"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(tool_config(&kafka, None, "x").get("group.id"), None);
    }
}
