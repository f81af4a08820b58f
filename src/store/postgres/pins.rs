//! The key pins (`nekhebet_key_pins`) as an operator sees them: list, pin a key for a key_id (a
//! producer rotating its key), unpin one (a key retired or leaked). The worker pins the first key
//! it sees for a new key_id itself, in the batch transaction (see `write`).

use chrono::{DateTime, Utc};

use super::{PgError, PgStore};

/// One pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub key_id: String,
    pub public_key: [u8; 32],
    /// `first-seen` (the worker) or `operator`.
    pub pinned_by: String,
    pub pinned_at: DateTime<Utc>,
}

impl PgStore {
    /// Every pin, or those of one key_id, by key_id then time.
    pub async fn pins(&self, key_id: Option<&str>) -> Result<Vec<Pin>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT key_id, public_key, pinned_by, pinned_at FROM nekhebet_key_pins
                  WHERE $1::text IS NULL OR key_id = $1 ORDER BY key_id, pinned_at",
                &[&key_id],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Pin {
                    key_id: r.get(0),
                    public_key: <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(1)).ok()?,
                    pinned_by: r.get(2),
                    pinned_at: r.get(3),
                })
            })
            .collect())
    }

    /// Pins `public_key` for `key_id` (besides the keys pinned already); false if it was.
    pub async fn pin(&self, key_id: &str, public_key: &[u8; 32]) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let key: &[u8] = public_key;
        Ok(client
            .execute(
                "INSERT INTO nekhebet_key_pins (key_id, public_key, pinned_by) VALUES ($1, $2, 'operator')
                 ON CONFLICT (key_id, public_key) DO NOTHING",
                &[&key_id, &key],
            )
            .await?
            == 1)
    }

    /// Unpins `public_key` for `key_id`; false if it was not pinned. Needs the table's owner (the
    /// writer role may not delete pins).
    pub async fn unpin(&self, key_id: &str, public_key: &[u8; 32]) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let key: &[u8] = public_key;
        Ok(client
            .execute(
                "DELETE FROM nekhebet_key_pins WHERE key_id = $1 AND public_key = $2",
                &[&key_id, &key],
            )
            .await?
            == 1)
    }
}
