//! The one read path of single events: `get` (CLI) and `serve` (HTTP) both read here.
//!
//! | `store.mode` | which event, and whether it exists | its bytes |
//! |---|---|---|
//! | `hybrid` | PostgreSQL (id, content hash, seq) | LMDB's blob (by content hash, or by seq in the append layout); PostgreSQL's `envelope` when LMDB lacks the blob or the blob fails the check |
//! | `postgres` | PostgreSQL | PostgreSQL |
//! | `lmdb` | LMDB (`ids`, `events`) | LMDB |
//!
//! Bytes are [`check`]ed before they are served: they must decode as an envelope whose
//! `header.payload_hash` is the content hash, whose payload's canonical SHA-256 is that hash, and
//! (when the event is known) whose `header.id` is the event's. In hybrid mode an LMDB blob that
//! fails (foreign, stale, corrupt) is never served: it is counted, logged, and PostgreSQL's copy
//! is served instead (checked too). When the authority's own copy fails (PostgreSQL's, or LMDB's in
//! LMDB-only mode) the read fails with [`ReadError::Corrupt`].
//!
//! PostgreSQL is asked first in hybrid mode even for content hashes the compatible layout keys
//! LMDB by: it is the authority on which events exist (LMDB may hold a blob PostgreSQL does not),
//! and it names the event's id, which the check compares.
//!
//! Every read is a page: [`Store::read_page`] answers many keys with one PostgreSQL query per kind
//! of key (`= ANY($1)`), one LMDB read transaction, and the checks on the blocking pool, split
//! across the cores for large pages; [`Store::read`] is a page of one, and `serve` gathers the
//! requests that arrive together into pages (`serve::gather`). A copy that fails its check fails
//! only its own key. [`Store::read_many`] is the same policy for a page of events already located
//! (the stream's).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use uuid::Uuid;

use super::lmdb::BlobKey;
use super::postgres::{Followed, Located};
use super::{HybridStore, LmdbStore, PgStore, Store, StoreError};
use crate::envelope::{decode, Limits};
use crate::telemetry::names;

/// How an event is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Id(Uuid),
    /// The content hash: the payload hash, 64 lowercase hex digits.
    Hash(String),
}

impl Key {
    /// An event id as a client writes it (a UUID).
    pub fn parse_id(s: &str) -> Result<Key, String> {
        Uuid::try_parse(s).map(Key::Id).map_err(|e| {
            format!("an event id is a UUID such as 2c3ba479-a68f-4011-ae25-042ef33617ca ({e})")
        })
    }

    /// A content hash as a client writes it: exactly 64 lowercase hex digits.
    pub fn parse_hash(s: &str) -> Result<Key, String> {
        if crate::envelope::is_valid_payload_hash(s) {
            Ok(Key::Hash(s.to_owned()))
        } else {
            Err("a content hash is the payload's SHA-256: 64 lowercase hex digits".into())
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Id(id) => write!(f, "event {id}"),
            Key::Hash(h) => write!(f, "content hash {h}"),
        }
    }
}

/// Which store's copy was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Lmdb,
    Postgres,
}

impl Origin {
    /// The store's name in metrics, logs and the `nekhebet-served-from` header.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Lmdb => "lmdb",
            Origin::Postgres => "postgres",
        }
    }
}

/// An event's envelope bytes, checked.
#[derive(Debug, Clone)]
pub struct Found {
    pub bytes: Bytes,
    pub content_hash: String,
    pub origin: Origin,
}

/// A read that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The authority's own copy fails its check: nothing correct can be served.
    #[error("{key}: the store's own copy fails its hash ({detail}); it needs an operator")]
    Corrupt { key: String, detail: String },
    /// An event located a moment ago has no bytes in its authority: events are never deleted
    /// (PostgreSQL's triggers refuse it), so someone went around them.
    #[error(
        "{key}: located, then not found in {store}; events are never deleted: it needs an operator"
    )]
    Vanished { key: String, store: &'static str },
    /// The blocking task that checked the bytes panicked or was cancelled (shutdown).
    #[error("a check did not finish: {0}")]
    Interrupted(String),
}

impl From<super::PgError> for ReadError {
    fn from(e: super::PgError) -> Self {
        ReadError::Store(e.into())
    }
}

/// Checks stored bytes against the content hash they are kept under (and the event id when known):
/// `Err` says how they fail.
pub fn check(bytes: &Bytes, id: Option<Uuid>, content_hash: &str) -> Result<(), String> {
    let limits = Limits {
        max_message_bytes: usize::MAX,
    };
    let env = decode(bytes.clone(), &limits).map_err(|e| format!("not an envelope: {e}"))?;
    if env.header.payload_hash != content_hash {
        return Err(format!(
            "its header.payload_hash is {:.64}",
            env.header.payload_hash
        ));
    }
    if let Some(id) = id.filter(|id| *id != env.header.id) {
        return Err(format!("it is event {:.40}, not {id}", env.header.id_raw));
    }
    let actual = crate::canonical::payload_hash(env.payload.get())
        .map_err(|e| format!("its payload cannot be canonicalized: {e}"))?;
    if actual != content_hash {
        return Err(format!("its payload's SHA-256 is {actual}"));
    }
    Ok(())
}

/// Envelopes at least this large are checked on the blocking pool: canonicalizing megabytes
/// would stall the async runtime.
const INLINE_CHECK_BYTES: usize = 64 * 1024;

/// [`check`], off the async runtime for large envelopes.
async fn checked(bytes: &Bytes, id: Option<Uuid>, content_hash: &str) -> Result<(), String> {
    if bytes.len() < INLINE_CHECK_BYTES {
        return check(bytes, id, content_hash);
    }
    let (bytes, hash) = (bytes.clone(), content_hash.to_owned());
    tokio::task::spawn_blocking(move || check(&bytes, id, &hash))
        .await
        .unwrap_or_else(|e| Err(format!("the check did not finish: {e}")))
}

/// The answer to one key: the event's checked bytes, `None` when the store holds no such event, or
/// why that one could not be answered.
pub type Answer = Result<Option<Found>, ReadError>;

/// A key of a PostgreSQL-only page and its row with the envelope bytes, if PostgreSQL holds it.
type KeyedRow = (Key, Option<(Located, Vec<u8>)>);

impl Store {
    /// The checked envelope bytes of an event (see the module docs): [`Store::read_page`] of one.
    pub async fn read(&self, key: &Key) -> Answer {
        let mut answers = self.read_page(std::slice::from_ref(key)).await?;
        answers.pop().expect("an answer a key")
    }

    /// An answer a key, in their order, by the policy of the module docs, with one PostgreSQL query
    /// per kind of key and one LMDB read transaction for the whole page (`serve` gathers
    /// concurrent requests into pages: [`crate::serve`]'s `gather`). `Err`: no key could be
    /// answered (a store unreachable); a copy that fails its check fails only its own key.
    pub async fn read_page(&self, keys: &[Key]) -> Result<Vec<Answer>, ReadError> {
        match self {
            Store::Postgres(pg) => {
                let rows = pg.envelopes_of(keys).await?;
                let work: Vec<KeyedRow> = keys.iter().cloned().zip(rows).collect();
                in_parallel(work, |chunk: Vec<KeyedRow>| {
                    Ok(chunk
                        .into_iter()
                        .map(|(key, row)| {
                            row.map(|(at, envelope)| {
                                authority_copy(&key, &at, Bytes::from(envelope), Origin::Postgres)
                            })
                            .transpose()
                        })
                        .collect())
                })
                .await
            }
            Store::Hybrid(h) => {
                let located = h.pg().locate(keys).await?;
                let rows: Vec<Located> = located.iter().flatten().cloned().collect();
                let mut found = h.read_located(&rows).await?.into_iter();
                Ok(located
                    .iter()
                    .map(|at| match at {
                        Some(_) => found.next().expect("an answer a row").map(Some),
                        None => Ok(None),
                    })
                    .collect())
            }
            Store::Lmdb(lmdb) => {
                let mut answers = Vec::with_capacity(keys.len());
                for key in keys {
                    answers.push(read_lmdb(lmdb, key).await);
                }
                Ok(answers)
            }
        }
    }

    /// The content hash of an event, if the store holds it, without reading its bytes where the
    /// store can tell (conditional requests).
    pub async fn content_hash_of(&self, key: &Key) -> Result<Option<String>, ReadError> {
        let pg = match self {
            Store::Postgres(pg) => pg,
            Store::Hybrid(h) => h.pg(),
            Store::Lmdb(_) => return Ok(self.read(key).await?.map(|f| f.content_hash)),
        };
        let mut located = pg.locate(std::slice::from_ref(key)).await?;
        Ok(located.pop().flatten().map(|at| at.content_hash))
    }

    /// The checked envelope bytes of `rows` (located by PostgreSQL's commit order), in their order,
    /// by the policy of [`Store::read`]; any copy of the authority's that fails fails the page.
    pub async fn read_many(&self, rows: &[Followed]) -> Result<Vec<Bytes>, ReadError> {
        let located: Vec<Located> = rows.iter().map(Followed::located).collect();
        let found = match self {
            Store::Postgres(pg) => fill_from_postgres(pg, &located, vec![None; rows.len()]).await?,
            Store::Hybrid(h) => h.read_located(&located).await?,
            Store::Lmdb(lmdb) => with_blobs(lmdb, located, |row, blob| {
                let key = Key::Id(row.id);
                let bytes = blob.ok_or_else(|| ReadError::Vanished {
                    key: key.to_string(),
                    store: Origin::Lmdb.name(),
                })?;
                authority_copy(&key, row, bytes, Origin::Lmdb)
            })
            .await?
            .into_iter()
            .map(Ok)
            .collect(),
        };
        found.into_iter().map(|f| f.map(|f| f.bytes)).collect()
    }
}

impl HybridStore {
    /// An answer a row located by PostgreSQL: LMDB's blob when it passes its check, else
    /// PostgreSQL's copy (checked as the authority's). One LMDB read transaction, at most one
    /// PostgreSQL query.
    async fn read_located(
        &self,
        rows: &[Located],
    ) -> Result<Vec<Result<Found, ReadError>>, ReadError> {
        let kept = with_blobs(self.lmdb(), rows.to_vec(), |row, blob| {
            Ok(lmdb_copy(row, blob))
        })
        .await?;
        let misses = kept.iter().filter(|b| b.is_none()).count() as u64;
        metrics::counter!(names::LMDB_READ_HITS).increment(rows.len() as u64 - misses);
        metrics::counter!(names::LMDB_FALLBACKS).increment(misses);
        fill_from_postgres(self.pg(), rows, kept).await
    }
}

/// `per_row` of each row and LMDB's blob for it (if any), on the blocking pool: the rows split
/// across the cores ([`in_parallel`]), each share read in a read transaction of its own and handed
/// to `per_row` in the same task — one hop to the blocking pool for the reads and the checks.
async fn with_blobs<R: Send + 'static>(
    lmdb: &LmdbStore,
    rows: Vec<Located>,
    per_row: fn(&Located, Option<Bytes>) -> Result<R, ReadError>,
) -> Result<Vec<R>, ReadError> {
    let lmdb = lmdb.clone();
    in_parallel(rows, move |share: Vec<Located>| {
        let keys: Vec<BlobKey> = share
            .iter()
            .map(|r| BlobKey::of(lmdb.layout(), r.seq, &r.content_hash))
            .collect();
        let blobs = lmdb.read_blobs(&keys)?;
        share
            .iter()
            .zip(blobs)
            .map(|(row, blob)| per_row(row, blob))
            .collect()
    })
    .await
}

/// LMDB's blob of `row` when it has one that passes its check (a failure is counted and logged).
fn lmdb_copy(row: &Located, blob: Option<Bytes>) -> Option<Bytes> {
    let Some(blob) = blob else {
        tracing::debug!(id = %row.id, seq = row.seq, "LMDB lacks the blob: serving PostgreSQL's copy");
        return None;
    };
    match check(&blob, Some(row.id), &row.content_hash) {
        Ok(()) => Some(blob),
        Err(why) => {
            metrics::counter!(names::READ_CHECK_FAILURES, "store" => "lmdb").increment(1);
            tracing::warn!(id = %row.id, seq = row.seq, %why,
                "LMDB's blob fails its check: not served, serving PostgreSQL's copy (reconcile --repair replaces it)");
            None
        }
    }
}

async fn read_lmdb(lmdb: &LmdbStore, key: &Key) -> Answer {
    let (id, content_hash) = match key {
        Key::Id(id) => match lmdb.hash_of_id(*id).await? {
            Some(h) => (Some(*id), h),
            None => return Ok(None),
        },
        Key::Hash(h) => (None, h.clone()),
    };
    let Some(bytes) = lmdb.read_blob(BlobKey::Hash(content_hash.clone())).await? else {
        return Ok(None);
    };
    let verdict = checked(&bytes, id, &content_hash).await;
    authority(key, "lmdb", verdict)?;
    Ok(Some(Found {
        bytes,
        content_hash,
        origin: Origin::Lmdb,
    }))
}

/// An answer a row: LMDB's checked blob where `slots` holds one, else PostgreSQL's copy, read for
/// all of them in one query and checked as the authority's.
async fn fill_from_postgres(
    pg: &PgStore,
    rows: &[Located],
    slots: Vec<Option<Bytes>>,
) -> Result<Vec<Result<Found, ReadError>>, ReadError> {
    let missing: Vec<i64> = rows
        .iter()
        .zip(&slots)
        .filter(|(_, b)| b.is_none())
        .map(|(r, _)| r.seq)
        .collect();
    fn from_lmdb(row: &Located, bytes: Bytes) -> Found {
        Found {
            bytes,
            content_hash: row.content_hash.clone(),
            origin: Origin::Lmdb,
        }
    }
    if missing.is_empty() {
        return Ok(rows
            .iter()
            .zip(slots)
            .map(|(row, b)| Ok(from_lmdb(row, b.expect("no slot is missing"))))
            .collect());
    }
    let by_seq: HashMap<i64, Bytes> = pg
        .envelopes_by_seq(&missing)
        .await?
        .into_iter()
        .map(|(seq, envelope)| (seq, Bytes::from(envelope)))
        .collect();
    let by_seq = std::sync::Arc::new(by_seq);
    let work: Vec<(Located, Option<Bytes>)> = rows.iter().cloned().zip(slots).collect();
    in_parallel(work, move |chunk: Vec<(Located, Option<Bytes>)>| {
        Ok(chunk
            .into_iter()
            .map(|(row, slot)| {
                if let Some(bytes) = slot {
                    return Ok(from_lmdb(&row, bytes));
                }
                let key = Key::Id(row.id);
                let bytes = by_seq
                    .get(&row.seq)
                    .cloned()
                    .ok_or_else(|| ReadError::Vanished {
                        key: format!("{key} (seq {})", row.seq),
                        store: Origin::Postgres.name(),
                    })?;
                authority_copy(&key, &row, bytes, Origin::Postgres)
            })
            .collect())
    })
    .await
}

/// The authority's copy of `row`'s event, read from `origin`, checked: a copy that fails its
/// check is an error naming `key` (counted and logged by [`authority`]).
fn authority_copy(
    key: &Key,
    row: &Located,
    bytes: Bytes,
    origin: Origin,
) -> Result<Found, ReadError> {
    authority(
        key,
        origin.name(),
        check(&bytes, Some(row.id), &row.content_hash),
    )?;
    Ok(Found {
        bytes,
        content_hash: row.content_hash.clone(),
        origin,
    })
}

/// Items a blocking task checks at least: below that, splitting a page costs more than it saves.
const CHECKS_PER_TASK: usize = 64;

/// `f` over the items, in order, on the blocking pool, the items split into chunks across the
/// cores (a page of the stream checks hundreds of envelopes; one thread would leave the other cores
/// idle); `f` answers its chunk item by item, in order.
async fn in_parallel<T, R>(
    items: Vec<T>,
    f: impl Fn(Vec<T>) -> Result<Vec<R>, ReadError> + Clone + Send + 'static,
) -> Result<Vec<R>, ReadError>
where
    T: Send + 'static,
    R: Send + 'static,
{
    // Asked once: on Linux the answer reads the cgroup's files, too dear for every page.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
    let tasks = (items.len() / CHECKS_PER_TASK).clamp(1, cores);
    let per_task = items.len().div_ceil(tasks).max(1);
    let mut items = items.into_iter();
    let mut running = Vec::with_capacity(tasks);
    loop {
        let chunk: Vec<T> = items.by_ref().take(per_task).collect();
        if chunk.is_empty() {
            break;
        }
        let f = f.clone();
        running.push(tokio::task::spawn_blocking(move || f(chunk)));
    }
    let mut out = Vec::new();
    for task in running {
        out.extend(
            task.await
                .map_err(|e| ReadError::Interrupted(e.to_string()))??,
        );
    }
    Ok(out)
}

/// The authority's copy failed its check: counted, logged, and an error.
fn authority(key: &Key, store: &'static str, checked: Result<(), String>) -> Result<(), ReadError> {
    checked.map_err(|detail| {
        metrics::counter!(names::READ_CHECK_FAILURES, "store" => store).increment(1);
        tracing::error!(%key, store, %detail, "the store's own copy fails its hash");
        ReadError::Corrupt {
            key: key.to_string(),
            detail,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::signing::{sign, EnvelopeSpec};

    fn envelope(n: u64) -> (Bytes, Uuid, String) {
        let spec = EnvelopeSpec::observed("k", serde_json::json!({ "n": n }));
        let bytes = Bytes::from(sign(
            &spec,
            &ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
        ));
        let env = decode(bytes.clone(), &Limits::default()).unwrap();
        (bytes, env.header.id, env.header.payload_hash)
    }

    #[test]
    fn bytes_pass_only_under_their_own_hash_and_id() {
        let (a, a_id, a_hash) = envelope(1);
        let (b, b_id, b_hash) = envelope(2);
        assert_eq!(check(&a, Some(a_id), &a_hash), Ok(()));
        assert_eq!(check(&a, None, &a_hash), Ok(()));
        // Another envelope's bytes under this hash (a foreign blob).
        let e = check(&b, Some(a_id), &a_hash).unwrap_err();
        assert!(e.contains(&b_hash), "{e}");
        // The same payload under another id (a duplicate's bytes) is not this event.
        let e = check(&a, Some(b_id), &a_hash).unwrap_err();
        assert!(e.contains(&a_id.to_string()), "{e}");
        // A header that claims the hash over a payload that does not hash to it.
        let tampered = String::from_utf8(a.to_vec())
            .unwrap()
            .replace("\"n\":1", "\"n\":7");
        let e = check(&Bytes::from(tampered), Some(a_id), &a_hash).unwrap_err();
        assert!(e.contains("payload's SHA-256"), "{e}");
        assert!(check(&Bytes::from_static(b"\x00garbage"), None, &a_hash)
            .unwrap_err()
            .contains("not an envelope"));
    }

    #[test]
    fn keys_are_parsed_strictly() {
        assert!(Key::parse_id("2c3ba479-a68f-4011-ae25-042ef33617ca").is_ok());
        assert!(Key::parse_id("2c3ba479").is_err());
        assert!(Key::parse_hash(&"a".repeat(64)).is_ok());
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "g".repeat(64),
            "a".repeat(65),
        ] {
            assert!(Key::parse_hash(&bad).is_err(), "{bad}");
        }
    }
}
