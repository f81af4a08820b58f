//! The listing's opaque cursor: the `(issued_at, id)` of the last row of a page, so the next page
//! starts strictly after it. Encoded as unpadded base64url of 25 bytes: a version byte (1),
//! `issued_at` in microseconds since the Unix epoch (big-endian i64), the id's 16 bytes. Anything
//! else is refused (400 `bad_cursor`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::DateTime;
use uuid::Uuid;

use crate::store::postgres::ListKey;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 16;

pub fn encode((at, id): &ListKey) -> String {
    let mut raw = Vec::with_capacity(LEN);
    raw.push(VERSION);
    raw.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    raw.extend_from_slice(id.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position a cursor names; `Err` says why it is not a cursor of ours.
pub fn decode(cursor: &str) -> Result<ListKey, &'static str> {
    // 25 bytes are 34 characters: refuse longer input before decoding it.
    if cursor.len() != LEN.div_ceil(3) * 4 - 2 {
        return Err("not a cursor this API returned (wrong length)");
    }
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| "not a cursor this API returned (not base64url)")?;
    let (Some(&VERSION), Some(micros), Some(id)) = (raw.first(), raw.get(1..9), raw.get(9..LEN))
    else {
        return Err("not a cursor this API returned (unknown version)");
    };
    let micros = i64::from_be_bytes(micros.try_into().map_err(|_| "truncated")?);
    let at = DateTime::from_timestamp_micros(micros).ok_or("its instant is out of range")?;
    let id = Uuid::from_slice(id).map_err(|_| "truncated")?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_nothing_else_is_one() {
        let at = DateTime::from_timestamp_micros(1_764_087_889_442_123).unwrap();
        let key = (at, Uuid::new_v4());
        let c = encode(&key);
        assert_eq!(c.len(), 34);
        assert_eq!(decode(&c), Ok(key));
        let mut other_version = URL_SAFE_NO_PAD.decode(&c).unwrap();
        other_version[0] = 2;
        for bad in [
            String::new(),
            "x".repeat(34),
            "!".repeat(34),
            format!("{c}A"),
            c[..33].to_string(),
            URL_SAFE_NO_PAD.encode(other_version),
            URL_SAFE_NO_PAD.encode([&[1u8][..], &i64::MAX.to_be_bytes(), &[0; 16]].concat()),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }
}
