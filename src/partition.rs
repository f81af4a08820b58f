//! Where a Kafka message lives: one type for a topic partition and one for a message's position,
//! used by the consumer, the ingest ledger, the stores' applied offsets and the offsets tools.

use std::fmt;
use std::sync::Arc;

/// A topic partition. The topic is shared (`Arc<str>`): every record of a batch names one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub topic: Arc<str>,
    pub number: i32,
}

impl Partition {
    pub fn new(topic: impl Into<Arc<str>>, number: i32) -> Partition {
        Partition {
            topic: topic.into(),
            number,
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.number)
    }
}

/// A message's place in Kafka: its partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: Partition,
    pub offset: i64,
}

impl Position {
    pub fn new(topic: impl Into<Arc<str>>, number: i32, offset: i64) -> Position {
        Position {
            partition: Partition::new(topic, number),
            offset,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}
