//! The read API's queries: one event located by id or content hash, and listings in
//! `(issued_at, id)` order with keyset pagination, streamed from a portal.
//!
//! A listing runs in ONE `REPEATABLE READ READ ONLY` transaction on a connection of its own, in a
//! task: first a peek at the keys of rows `limit` and `limit + 1` (is there more, and where does
//! the page end?), then the page itself through a portal, fetched in chunks of about
//! [`CHUNK_BYTES`], each handed over a channel of one chunk. The task fetches the next chunk only
//! when the reader has taken the last, so a reader that stops reading stops the query: memory per
//! listing stays at a couple of chunks whatever the page size. Both statements see the same
//! snapshot, so the page ends exactly at the peeked key even while the worker writes.
//!
//! Indexes: `(event_type, issued_at)` and `(source, issued_at)` (nekhebet-store 4.0's), plus
//! `(key_id, issued_at, id)` and `(issued_at, id)` (migration 0006) for the other filters and for
//! no filter at all.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};
use uuid::Uuid;

use super::{PgError, PgStore};
use crate::store::read::Key;

/// Where an event is, by PostgreSQL: its identity and its LMDB keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub id: Uuid,
    pub content_hash: String,
    /// The append layout's LMDB key.
    pub seq: i64,
}

// `PgStore::by_keys` answers keys with anything that says where its event is.
impl AsRef<Located> for Located {
    fn as_ref(&self) -> &Located {
        self
    }
}

impl AsRef<Located> for (Located, Vec<u8>) {
    fn as_ref(&self) -> &Located {
        &self.0
    }
}

/// A listing's position: the `(issued_at, id)` of a row.
pub type ListKey = (DateTime<Utc>, Uuid);

/// What a listing selects; every filter present must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub key_id: Option<String>,
    /// Exclusive.
    pub issued_after: Option<DateTime<Utc>>,
    /// Exclusive.
    pub issued_before: Option<DateTime<Utc>>,
}

/// One page: the filter, where the previous page ended, and how many rows at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub after: Option<ListKey>,
    pub limit: u32,
}

/// One listed event, with what its bytes are checked against.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: Uuid,
    pub content_hash: String,
    pub envelope: bytes::Bytes,
}

/// A page being read: whether more rows follow it (the key to continue after), and its rows in
/// chunks.
pub struct Listing {
    pub next: Option<ListKey>,
    chunks: mpsc::Receiver<Result<Vec<Listed>, PgError>>,
}

impl Listing {
    /// The page's rows, a chunk at a time.
    pub fn chunks(self) -> impl Stream<Item = Result<Vec<Listed>, PgError>> {
        futures::stream::unfold(self.chunks, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((chunk, rx))
        })
    }
}

/// The bytes a chunk of a listing aims at.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Rows in a listing's first chunk; later chunks are sized from the rows seen so far.
const FIRST_CHUNK_ROWS: usize = 64;
const MAX_CHUNK_ROWS: usize = 1024;

const LOCATE_BY_IDS: &str = "SELECT id, content_hash, seq FROM events WHERE id = ANY($1)";
const LOCATE_BY_HASHES: &str =
    "SELECT id, content_hash, seq FROM events WHERE content_hash = ANY($1)";
const ENVELOPES_BY_IDS: &str =
    "SELECT id, content_hash, seq, envelope FROM events WHERE id = ANY($1)";
const ENVELOPES_BY_HASHES: &str =
    "SELECT id, content_hash, seq, envelope FROM events WHERE content_hash = ANY($1)";

impl PgStore {
    /// Where the events named by `keys` are, an answer a key in their order (`None`: PostgreSQL
    /// holds no such event): one query for the ids and one for the content hashes among them.
    pub async fn locate(&self, keys: &[Key]) -> Result<Vec<Option<Located>>, PgError> {
        self.by_keys(keys, [LOCATE_BY_IDS, LOCATE_BY_HASHES], located)
            .await
    }

    /// [`PgStore::locate`] with PostgreSQL's copy of each envelope.
    pub async fn envelopes_of(
        &self,
        keys: &[Key],
    ) -> Result<Vec<Option<(Located, Vec<u8>)>>, PgError> {
        self.by_keys(keys, [ENVELOPES_BY_IDS, ENVELOPES_BY_HASHES], |r| {
            (located(r), r.get(3))
        })
        .await
    }

    /// The rows `sql` (by ids, by content hashes; `$1` an array) find for `keys`, an answer a key
    /// (a key asked twice gets the row twice), with statements prepared once per connection.
    async fn by_keys<T: Clone + AsRef<Located>>(
        &self,
        keys: &[Key],
        sql: [&str; 2],
        row: fn(&Row) -> T,
    ) -> Result<Vec<Option<T>>, PgError> {
        let mut ids = Vec::new();
        let mut hashes = Vec::new();
        for key in keys {
            match key {
                Key::Id(id) => ids.push(*id),
                Key::Hash(h) => hashes.push(h.as_str()),
            }
        }
        let client = self.pool.get().await?;
        let mut found = Vec::new();
        if !ids.is_empty() {
            let statement = client.prepare_cached(sql[0]).await?;
            found.extend(client.query(&statement, &[&ids]).await?.iter().map(row));
        }
        if !hashes.is_empty() {
            let statement = client.prepare_cached(sql[1]).await?;
            found.extend(client.query(&statement, &[&hashes]).await?.iter().map(row));
        }
        drop(client);
        let by_id: HashMap<Uuid, &T> = found.iter().map(|t| (t.as_ref().id, t)).collect();
        let by_hash: HashMap<&str, &T> = found
            .iter()
            .map(|t| (t.as_ref().content_hash.as_str(), t))
            .collect();
        Ok(keys
            .iter()
            .map(|key| {
                match key {
                    Key::Id(id) => by_id.get(id),
                    Key::Hash(h) => by_hash.get(h.as_str()),
                }
                .map(|t| (*t).clone())
            })
            .collect())
    }

    /// Every (seq, envelope) pair in seq order (the order of the append layout's LMDB keys),
    /// streamed from the server: `reconcile` on the append layout.
    pub async fn stream_by_seq(
        &self,
    ) -> Result<impl Stream<Item = Result<(i64, Vec<u8>), PgError>>, PgError> {
        let sql = "SELECT seq, envelope FROM events ORDER BY seq";
        self.stream_all(sql, |r| (r.get(0), r.get(1))).await
    }

    /// Starts reading one page of a listing (see the module docs). Returns once PostgreSQL has
    /// said whether more rows follow the page, so the caller can say so before the rows.
    pub async fn list(&self, query: ListQuery) -> Result<Listing, PgError> {
        let client = self.pool.get().await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            if let Err(e) = run_listing(client, &query, &mut ready, &chunk_tx).await {
                match ready.take() {
                    Some(ready) => drop(ready.send(Err(e))),
                    None => drop(chunk_tx.send(Err(e)).await),
                }
            }
        });
        let next = ready_rx.await.map_err(|_| PgError {
            kind: super::PgErrorKind::Other,
            message: "the listing task ended before answering".into(),
        })??;
        Ok(Listing {
            next,
            chunks: chunk_rx,
        })
    }
}

type Ready = oneshot::Sender<Result<Option<ListKey>, PgError>>;

/// The listing task: peek, say whether more follow, then the page in chunks until the reader is
/// gone or the page ends. Dropping the transaction rolls it back and returns the connection.
async fn run_listing(
    mut client: deadpool_postgres::Object,
    query: &ListQuery,
    ready: &mut Option<Ready>,
    chunks: &mpsc::Sender<Result<Vec<Listed>, PgError>>,
) -> Result<(), PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let (conditions, mut params) = where_clause(query);
    let limit = i64::from(query.limit.max(1));

    // The keys of rows `limit` and `limit + 1`: a second row means more follow the page.
    let offset = limit - 1;
    let peek_sql = statement(Part::Peek, &conditions, params.len() + 1);
    let peek = tx.prepare_cached(&peek_sql).await?;
    params.push(&offset);
    let keys = tx.query(&peek, &params).await?;
    params.pop();
    let next = match keys.as_slice() {
        [last, _more] => Some((last.get(0), last.get(1))),
        _ => None,
    };
    if let Some(ready) = ready.take() {
        if ready.send(Ok(next)).is_err() {
            return Ok(());
        }
    }

    let page_sql = statement(Part::Page, &conditions, params.len() + 1);
    let page = tx.prepare_cached(&page_sql).await?;
    params.push(&limit);
    let portal = tx.bind(&page, &params).await?;
    let mut rows_per_chunk = FIRST_CHUNK_ROWS;
    loop {
        let rows = tx.query_portal(&portal, rows_per_chunk as i32).await?;
        let done = rows.len() < rows_per_chunk;
        let mut bytes = 0;
        let chunk: Vec<Listed> = rows
            .iter()
            .map(|r| {
                let envelope: Vec<u8> = r.get(2);
                bytes += envelope.len();
                Listed {
                    id: r.get(0),
                    content_hash: r.get(1),
                    envelope: envelope.into(),
                }
            })
            .collect();
        if !chunk.is_empty() {
            let per_row = (bytes / chunk.len()).max(1);
            rows_per_chunk = (CHUNK_BYTES / per_row).clamp(1, MAX_CHUNK_ROWS);
            if chunks.send(Ok(chunk)).await.is_err() {
                return Ok(()); // the reader is gone
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// The two statements of a listing.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The keys of rows `limit` and `limit + 1` (`$last` is the offset `limit - 1`).
    Peek,
    /// The page (`$last` is `limit`).
    Page,
}

/// The statement for `part` of the rows `conditions` select, in listing order.
fn statement(part: Part, conditions: &str, last: usize) -> String {
    let (columns, tail) = match part {
        Part::Peek => ("issued_at, id", format!("OFFSET ${last} LIMIT 2")),
        Part::Page => ("id, content_hash, envelope", format!("LIMIT ${last}")),
    };
    format!("SELECT {columns} FROM events {conditions} ORDER BY issued_at, id {tail}")
}

/// `WHERE …` for the filter and the position after which the page starts, with its parameters
/// (`$1`…, in order).
fn where_clause(query: &ListQuery) -> (String, Vec<&(dyn ToSql + Sync)>) {
    let f = &query.filter;
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let texts = [
        ("event_type", &f.event_type),
        ("source", &f.source),
        ("key_id", &f.key_id),
    ];
    for (column, value) in texts {
        if let Some(v) = value {
            params.push(v);
            conditions.push(format!("{column} = ${}", params.len()));
        }
    }
    if let Some(t) = &f.issued_after {
        params.push(t);
        conditions.push(format!("issued_at > ${}", params.len()));
    }
    if let Some(t) = &f.issued_before {
        params.push(t);
        conditions.push(format!("issued_at < ${}", params.len()));
    }
    if let Some((at, id)) = &query.after {
        params.push(at);
        params.push(id);
        let (a, i) = (params.len() - 1, params.len());
        // The first condition lets an index on (…, issued_at) start at the position.
        conditions.push(format!(
            "issued_at >= ${a} AND (issued_at, id) > (${a}, ${i})"
        ));
    }
    let sql = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    (sql, params)
}

fn located(r: &Row) -> Located {
    Located {
        id: r.get(0),
        content_hash: r.get(1),
        seq: r.get(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_where_clause_numbers_its_parameters_in_order() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let query = ListQuery {
            filter: ListFilter {
                source: Some("s".into()),
                key_id: Some("k".into()),
                issued_before: Some(at),
                ..ListFilter::default()
            },
            after: Some((at, Uuid::nil())),
            limit: 10,
        };
        let (sql, params) = where_clause(&query);
        assert_eq!(
            sql,
            "WHERE source = $1 AND key_id = $2 AND issued_at < $3 AND issued_at >= $4 AND (issued_at, id) > ($4, $5)"
        );
        assert_eq!(params.len(), 5);
        let everything = ListQuery {
            filter: ListFilter::default(),
            after: None,
            limit: 1,
        };
        let (sql, params) = where_clause(&everything);
        assert_eq!((sql.as_str(), params.len()), ("", 0));
    }
}
