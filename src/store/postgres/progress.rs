//! The operator's side of `nekhebet_consumer_offsets` (the batches write it in their own
//! transaction, `write`): every stored offset of a topic, and setting offsets on purpose — the way
//! out after a topic was re-created (`offsets reset`), which may move an offset backwards, as the
//! batch upsert never does.

use std::collections::BTreeMap;

use super::{PgError, PgStore};
use crate::partition::Position;

impl PgStore {
    /// Every stored applied offset of `topic`: partition → highest applied offset.
    pub async fn topic_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT partition, applied_offset FROM nekhebet_consumer_offsets WHERE topic = $1",
                &[&topic],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets each partition's applied offset to exactly the given one (lower or higher), in one
    /// transaction: all of them or none. Needs UPDATE and INSERT on the table (the owner, or the
    /// writer role).
    pub async fn set_applied_offsets(&self, offsets: &[Position]) -> Result<(), PgError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare(
                "INSERT INTO nekhebet_consumer_offsets (topic, partition, applied_offset)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (topic, partition)
                 DO UPDATE SET applied_offset = EXCLUDED.applied_offset, updated_at = now()",
            )
            .await?;
        for p in offsets {
            tx.execute(
                &stmt,
                &[&&*p.partition.topic, &p.partition.number, &p.offset],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
