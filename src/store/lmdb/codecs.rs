//! Typed keys and values of our own LMDB databases (heed codecs). Their byte layouts ARE the
//! on-disk format, which existing environments hold: the tests below pin them byte for byte.
//!
//! | database | key | value |
//! |---|---|---|
//! | `offsets` | [`PartitionKey`]: `topic \0 partition (be i32)` | [`BeI64`]: highest applied offset |
//! | `blobs` (append layout) | [`BeI64`]: PostgreSQL's `events.seq` | envelope bytes |
//! | `ids` | [`IdKey`]: the event id's 16 bytes | content hash (text) |
//! | `guard_claims` (LMDB-only) | `"{key_id}:{nonce}"` (as `replay_guard`) | [`Claim`]: the claiming envelope's SHA-256, then when it was stored (be i64 µs) |
//! | `key_pins` (LMDB-only) | key_id (text) | [`PublicKeys`]: 32-byte Ed25519 keys, concatenated |
//! | `meta` | `"layout"` (text) | `"compatible"` or `"append"` (text) |
//! | `mirror` | `"cursor"` (text) | [`CommitOrder`]: the mirror's place in PostgreSQL's commit order |
//!
//! `events` and `replay_guard` are nekhebet-store 4.0's (Python reads them): they stay plain bytes
//! as Python writes them, with no decoder of ours between them and the reader.

use std::borrow::Cow;

use heed::{BoxedError, BytesDecode, BytesEncode};
use uuid::Uuid;

use crate::partition::Partition;
use crate::store::postgres::CommitPos;

/// A topic partition as `topic \0 partition`, the partition number big-endian (`i32`).
pub enum PartitionKey {}

/// The separator and the partition number after the topic.
const PARTITION_TAIL: usize = 1 + 4;

impl<'a> BytesEncode<'a> for PartitionKey {
    type EItem = Partition;

    fn bytes_encode(p: &'a Partition) -> Result<Cow<'a, [u8]>, BoxedError> {
        let mut k = Vec::with_capacity(p.topic.len() + PARTITION_TAIL);
        k.extend_from_slice(p.topic.as_bytes());
        k.push(0);
        k.extend_from_slice(&p.number.to_be_bytes());
        Ok(Cow::Owned(k))
    }
}

impl<'a> BytesDecode<'a> for PartitionKey {
    type DItem = Partition;

    fn bytes_decode(bytes: &'a [u8]) -> Result<Partition, BoxedError> {
        let split = bytes
            .len()
            .checked_sub(PARTITION_TAIL)
            .filter(|&at| bytes[at] == 0)
            .ok_or("an offsets key is `topic \\0 partition(be i32)`")?;
        let topic = std::str::from_utf8(&bytes[..split])?;
        let number = i32::from_be_bytes(bytes[split + 1..].try_into()?);
        Ok(Partition::new(topic, number))
    }
}

/// An `i64`, big-endian, exactly 8 bytes: applied offsets, and PostgreSQL's `events.seq` (positive,
/// so LMDB's byte order is their numeric order and MDB_APPEND sees them increase).
pub enum BeI64 {}

impl<'a> BytesEncode<'a> for BeI64 {
    type EItem = i64;

    fn bytes_encode(n: &'a i64) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(n.to_be_bytes().to_vec()))
    }
}

impl<'a> BytesDecode<'a> for BeI64 {
    type DItem = i64;

    fn bytes_decode(bytes: &'a [u8]) -> Result<i64, BoxedError> {
        Ok(i64::from_be_bytes(bytes.try_into()?))
    }
}

/// An event id as its 16 bytes.
pub enum IdKey {}

impl<'a> BytesEncode<'a> for IdKey {
    type EItem = Uuid;

    fn bytes_encode(id: &'a Uuid) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Borrowed(id.as_bytes()))
    }
}

impl<'a> BytesDecode<'a> for IdKey {
    type DItem = Uuid;

    fn bytes_decode(bytes: &'a [u8]) -> Result<Uuid, BoxedError> {
        Ok(Uuid::from_slice(bytes)?)
    }
}

/// Who claimed a `(key_id, nonce)` and when: the SHA-256 of the envelope's bytes and the time it
/// was stored (µs since the epoch), 40 bytes.
pub enum Claim {}

/// A claim: (envelope digest, stored at in µs since the epoch).
pub type ClaimValue = ([u8; 32], i64);

impl<'a> BytesEncode<'a> for Claim {
    type EItem = ClaimValue;

    fn bytes_encode((digest, stored_at): &'a ClaimValue) -> Result<Cow<'a, [u8]>, BoxedError> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(digest);
        v.extend_from_slice(&stored_at.to_be_bytes());
        Ok(Cow::Owned(v))
    }
}

impl<'a> BytesDecode<'a> for Claim {
    type DItem = ClaimValue;

    fn bytes_decode(bytes: &'a [u8]) -> Result<ClaimValue, BoxedError> {
        if bytes.len() != 40 {
            return Err("a claim is a 32-byte digest and a be i64 time".into());
        }
        Ok((
            bytes[..32].try_into()?,
            i64::from_be_bytes(bytes[32..].try_into()?),
        ))
    }
}

/// Ed25519 public keys, 32 bytes each, concatenated.
pub enum PublicKeys {}

impl<'a> BytesEncode<'a> for PublicKeys {
    type EItem = Vec<[u8; 32]>;

    fn bytes_encode(keys: &'a Vec<[u8; 32]>) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(keys.concat()))
    }
}

impl<'a> BytesDecode<'a> for PublicKeys {
    type DItem = Vec<[u8; 32]>;

    fn bytes_decode(bytes: &'a [u8]) -> Result<Vec<[u8; 32]>, BoxedError> {
        if !bytes.len().is_multiple_of(32) {
            return Err("public keys are 32 bytes each".into());
        }
        bytes.chunks_exact(32).map(|k| Ok(k.try_into()?)).collect()
    }
}

/// A place in PostgreSQL's commit order: the transaction id, then the seq, each big-endian (`i64`),
/// 16 bytes.
pub enum CommitOrder {}

impl<'a> BytesEncode<'a> for CommitOrder {
    type EItem = CommitPos;

    fn bytes_encode(pos: &'a CommitPos) -> Result<Cow<'a, [u8]>, BoxedError> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&pos.txid.to_be_bytes());
        v.extend_from_slice(&pos.seq.to_be_bytes());
        Ok(Cow::Owned(v))
    }
}

impl<'a> BytesDecode<'a> for CommitOrder {
    type DItem = CommitPos;

    fn bytes_decode(bytes: &'a [u8]) -> Result<CommitPos, BoxedError> {
        if bytes.len() != 16 {
            return Err("a commit position is a be i64 transaction id and a be i64 seq".into());
        }
        Ok(CommitPos {
            txid: i64::from_be_bytes(bytes[..8].try_into()?),
            seq: i64::from_be_bytes(bytes[8..].try_into()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<'a, C: BytesEncode<'a>>(item: &'a C::EItem) -> Vec<u8> {
        C::bytes_encode(item).unwrap().into_owned()
    }

    #[test]
    fn partition_keys_are_topic_nul_big_endian_partition() {
        let p = Partition::new("events", 258);
        let bytes = encode::<PartitionKey>(&p);
        assert_eq!(bytes, b"events\0\x00\x00\x01\x02");
        assert_eq!(PartitionKey::bytes_decode(&bytes).unwrap(), p);
        assert!(PartitionKey::bytes_decode(b"events\x01\x00\x00\x01\x02").is_err());
        assert!(PartitionKey::bytes_decode(b"\0\0\0").is_err());
    }

    #[test]
    fn offsets_and_seqs_are_eight_big_endian_bytes() {
        assert_eq!(
            encode::<BeI64>(&0x0102_0304_0506_0708),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(encode::<BeI64>(&-1), [0xff; 8]);
        assert_eq!(BeI64::bytes_decode(&[0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        // Not a prefix read: a value of another length is refused.
        assert!(BeI64::bytes_decode(&[0; 7]).is_err());
        assert!(BeI64::bytes_decode(&[0; 9]).is_err());
        // Positive seqs sort in LMDB's (byte) order as numbers.
        assert!(encode::<BeI64>(&255) < encode::<BeI64>(&256));
    }

    #[test]
    fn claims_and_pins_round_trip_and_refuse_other_lengths() {
        let claim = ([7u8; 32], 1_790_000_000_123_456);
        let bytes = encode::<Claim>(&claim);
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[32..], 1_790_000_000_123_456i64.to_be_bytes());
        assert_eq!(Claim::bytes_decode(&bytes).unwrap(), claim);
        assert!(Claim::bytes_decode(&bytes[..39]).is_err());
        let keys = vec![[1u8; 32], [2u8; 32]];
        let bytes = encode::<PublicKeys>(&keys);
        assert_eq!(bytes.len(), 64);
        assert_eq!(PublicKeys::bytes_decode(&bytes).unwrap(), keys);
        assert!(PublicKeys::bytes_decode(&bytes[..63]).is_err());
    }

    #[test]
    fn commit_positions_are_txid_then_seq_big_endian() {
        let pos = CommitPos {
            txid: 0x0102,
            seq: 0x0304,
        };
        let bytes = encode::<CommitOrder>(&pos);
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4]);
        assert_eq!(CommitOrder::bytes_decode(&bytes).unwrap(), pos);
        assert!(CommitOrder::bytes_decode(&bytes[..15]).is_err());
    }

    #[test]
    fn ids_are_their_sixteen_bytes() {
        let id = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(encode::<IdKey>(&id), id.as_bytes());
        assert_eq!(IdKey::bytes_decode(id.as_bytes()).unwrap(), id);
        assert!(IdKey::bytes_decode(&[0; 15]).is_err());
    }
}
