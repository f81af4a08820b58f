//! Binary COPY of a batch's new rows: PostgreSQL's bulk-insert path (several rows per WAL record),
//! which `INSERT … ON CONFLICT` cannot take. Rows are encoded into large CopyData pieces
//! ([`CopyRows`]), and `events.seq` values are taken from the identity's own sequence
//! ([`next_seqs`]), so rows other writers insert with the column default never collide with them.

use bytes::{BufMut, Bytes, BytesMut};
use futures::{pin_mut, SinkExt};
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::{PgError, PgErrorKind};
use crate::envelope::{Envelope, Header};
use crate::partition::Position;
use crate::store::plan::Digest;

/// The `events.seq` values of the rows this batch stores, taken from the identity's own sequence
/// (so rows inserted by other writers with the column default never collide with them). The
/// sequence is resolved once per statement: `pg_get_serial_sequence` is only STABLE, so written
/// inside `nextval(...)` it would look the catalog up again for every row (5x slower).
const NEXT_SEQS_SQL: &str = "WITH s AS MATERIALIZED \
     (SELECT pg_get_serial_sequence('events', 'seq')::regclass AS seq) \
     SELECT nextval(s.seq) FROM s, generate_series(1, $1::int)";

const COPY_GUARD_SQL: &str =
    "COPY replay_guard (key_id, nonce, issued_at, envelope_sha256) FROM STDIN (FORMAT binary)";
const COPY_GUARD_TYPES: [Type; 4] = [Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::BYTEA];

const COPY_EVENTS_SQL: &str = "COPY events (id, event_type, issued_at, source, content_hash, \
     envelope, kafka_topic, kafka_partition, kafka_offset, key_id, nonce, seq) FROM STDIN (FORMAT binary)";
const COPY_EVENTS_TYPES: [Type; 12] = [
    Type::UUID,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
];

/// Takes `n` values from the `events.seq` identity's sequence, in order.
pub(crate) async fn next_seqs(
    tx: &deadpool_postgres::Transaction<'_>,
    n: usize,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(NEXT_SEQS_SQL).await?;
    let n = i32::try_from(n).expect("a batch holds fewer than 2^31 rows");
    Ok(tx
        .query(&stmt, &[&n])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Rows in PostgreSQL's binary COPY format, handed to the connection in large pieces.
/// tokio-postgres's `BinaryCopyInWriter` flushes every 4 KiB and waits for the connection task each
/// time: ~350 hand-offs (and as many small socket writes) per batch of events, on a machine whose
/// two cores the worker shares with PostgreSQL and the broker.
pub(super) struct CopyRows {
    types: &'static [Type],
    buf: BytesMut,
    /// Pieces ready to send.
    pieces: Vec<Bytes>,
}

/// Size of one CopyData message: large enough to make hand-offs rare, small enough that the
/// server starts on the first rows while later ones are still being encoded and sent.
const COPY_PIECE: usize = 256 * 1024;

impl CopyRows {
    pub(super) fn new(types: &'static [Type]) -> CopyRows {
        let mut buf = BytesMut::with_capacity(COPY_PIECE + 8 * 1024);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        CopyRows {
            types,
            buf,
            pieces: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), PgError> {
        debug_assert_eq!(values.len(), self.types.len());
        self.buf.put_i16(self.types.len() as i16);
        for (value, ty) in values.iter().zip(self.types) {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let len = match value.to_sql_checked(ty, &mut self.buf) {
                Ok(IsNull::Yes) => -1,
                Ok(IsNull::No) => i32::try_from(self.buf.len() - at - 4).map_err(|_| PgError {
                    kind: PgErrorKind::Data,
                    message: format!("a {ty} value is larger than PostgreSQL accepts"),
                })?,
                // Our typed rows only fail here on a value PostgreSQL cannot represent.
                Err(e) => {
                    return Err(PgError {
                        kind: PgErrorKind::Data,
                        message: format!("cannot encode a {ty} value for COPY: {e}"),
                    })
                }
            };
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        if self.buf.len() >= COPY_PIECE {
            self.pieces.push(self.buf.split().freeze());
        }
        Ok(())
    }

    /// Runs `sql` (a `COPY … FROM STDIN (FORMAT binary)`) with these rows.
    pub(super) async fn send(
        mut self,
        tx: &deadpool_postgres::Transaction<'_>,
        sql: &str,
    ) -> Result<u64, PgError> {
        self.buf.put_i16(-1);
        self.pieces.push(self.buf.split().freeze());
        let sink = tx.copy_in(sql).await?;
        pin_mut!(sink);
        for piece in self.pieces {
            // `feed`, not `send`: queue the piece without waiting for it to be written.
            sink.feed(piece).await?;
        }
        Ok(sink.finish().await?)
    }
}

/// Binary COPY of `replay_guard` rows (the worker's batches, and `bench-ceiling`).
pub(crate) async fn copy_guard(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(&Header, &Digest)],
) -> Result<(), PgError> {
    let mut copy = CopyRows::new(&COPY_GUARD_TYPES);
    for (h, digest) in rows {
        let digest: &[u8] = &digest[..];
        copy.push(&[&h.key_id, &h.nonce, &h.issued_at_ts, &digest])?;
    }
    copy.send(tx, COPY_GUARD_SQL).await?;
    Ok(())
}

/// Binary COPY of `events` rows: each envelope with its Kafka position (if any) and its `seq`.
pub(crate) async fn copy_events(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[(&Envelope, Option<&Position>, i64)],
) -> Result<(), PgError> {
    let mut copy = CopyRows::new(&COPY_EVENTS_TYPES);
    for &(envelope, pos, seq) in rows {
        let h = &envelope.header;
        let blob: &[u8] = &envelope.bytes;
        let topic = pos.map(|p| &*p.partition.topic);
        let partition = pos.map(|p| p.partition.number);
        let offset = pos.map(|p| p.offset);
        copy.push(&[
            &h.id,
            &h.event_type,
            &h.issued_at_ts,
            &h.source,
            &h.payload_hash,
            &blob,
            &topic,
            &partition,
            &offset,
            &h.key_id,
            &h.nonce,
            &seq,
        ])?;
    }
    copy.send(tx, COPY_EVENTS_SQL).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_are_framed_as_postgres_binary_copy() {
        const TYPES: [Type; 3] = [Type::TEXT, Type::INT4, Type::INT8];
        let mut rows = CopyRows::new(&TYPES);
        let none: Option<i64> = None;
        rows.push(&[&"ab", &7i32, &none]).unwrap();
        rows.buf.put_i16(-1);
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend(0i32.to_be_bytes()); // flags
        want.extend(0i32.to_be_bytes()); // header extension
        want.extend(3i16.to_be_bytes()); // fields in the row
        want.extend(2i32.to_be_bytes());
        want.extend(b"ab");
        want.extend(4i32.to_be_bytes());
        want.extend(7i32.to_be_bytes());
        want.extend((-1i32).to_be_bytes()); // NULL
        want.extend((-1i16).to_be_bytes()); // trailer
        assert_eq!(&rows.buf[..], &want[..]);
        assert!(rows.pieces.is_empty());
    }

    #[test]
    fn copy_rows_are_cut_into_pieces_and_a_wrong_type_is_a_data_error() {
        const TYPES: [Type; 1] = [Type::BYTEA];
        let mut rows = CopyRows::new(&TYPES);
        let blob = vec![0u8; 100_000];
        for _ in 0..6 {
            rows.push(&[&blob.as_slice()]).unwrap();
        }
        assert_eq!(rows.pieces.len(), 2);
        assert!(rows.pieces.iter().all(|p| p.len() >= COPY_PIECE));

        let mut wrong = CopyRows::new(&TYPES);
        let err = wrong.push(&[&7i32]).unwrap_err();
        assert_eq!(err.kind, PgErrorKind::Data);
    }
}
