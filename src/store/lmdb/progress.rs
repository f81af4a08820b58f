//! The operator's side of LMDB's `offsets` database (batches advance it in their own write
//! transaction): every stored offset of a topic, and setting offsets on purpose — `offsets reset`
//! after a topic was re-created, which may move an offset backwards, as a batch never does.

use std::collections::BTreeMap;

use heed::BytesDecode;

use super::codecs::PartitionKey;
use super::LmdbStore;
use crate::partition::Position;
use crate::store::StoreError;

impl LmdbStore {
    /// Every stored applied offset of `topic`: partition → highest applied offset. Keys are
    /// `topic \0 partition`, so the topic's entries are one contiguous range after `topic \0`.
    pub async fn topic_offsets(&self, topic: String) -> Result<BTreeMap<i32, i64>, StoreError> {
        self.read_blocking(move |dbs, rtxn| {
            let mut prefix = topic.as_bytes().to_vec();
            prefix.push(0);
            let mut out = BTreeMap::new();
            let by_bytes = dbs.offsets.remap_key_type::<heed::types::Bytes>();
            for kv in by_bytes.prefix_iter(rtxn, &prefix)? {
                let (key, offset) = kv?;
                let p = PartitionKey::bytes_decode(key).map_err(heed::Error::Decoding)?;
                // Kafka topic names hold no NUL, so the prefix is the topic; checked anyway.
                if *p.topic == *topic {
                    out.insert(p.number, offset);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Sets each partition's applied offset to exactly the given one (lower or higher), in one
    /// write transaction: all of them or none.
    pub async fn set_offsets(&self, offsets: Vec<Position>) -> Result<(), StoreError> {
        self.write_blocking(move |dbs, wtxn| {
            for Position { partition, offset } in &offsets {
                dbs.offsets.put(wtxn, partition, offset)?;
            }
            Ok(())
        })
        .await
    }
}
