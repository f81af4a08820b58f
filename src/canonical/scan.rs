//! Finding the next byte a JSON string cannot hold raw, eight bytes at a time.
//!
//! Both the parser (a string's end or its next escape) and the writers (the next byte to escape)
//! walk strings looking for the same three kinds of byte: `"`, `\` and the C0 controls below
//! 0x20. Payload strings are mostly plain, so testing a word of eight bytes per step (SWAR: the
//! zero-byte test of Hacker's Delight §6-1 on `x ^ pattern`, and the "byte below n" variant)
//! instead of one byte halves the time of canonicalizing a payload — which every stored
//! envelope pays when it is verified and every served one when it is checked.
//!
//! Invariant: [`plain_prefix`] returns exactly the index of the first such byte (or the length),
//! whatever the bytes (tested against the byte-at-a-time definition). Bytes of 0x80 and above
//! (UTF-8 sequences) are never special.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether a JSON string must escape `b`: `"`, `\` or a control character below 0x20.
#[inline]
pub(crate) fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The length of the longest prefix of `bytes` without a [special](is_special) byte.
#[inline]
pub(crate) fn plain_prefix(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let x = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (resp. below 0x20), and may be set wrongly
        // only above such a byte (the borrow), so the lowest flag is always a true one.
        let flags = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if flags != 0 {
            return at + (flags.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + words
        .remainder()
        .iter()
        .position(|&b| is_special(b))
        .unwrap_or(words.remainder().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn byte_at_a_time(bytes: &[u8]) -> usize {
        bytes
            .iter()
            .position(|&b| is_special(b))
            .unwrap_or(bytes.len())
    }

    #[test]
    fn every_special_byte_at_every_place_of_a_word_is_found() {
        let specials: Vec<u8> = (0u8..0x20).chain([b'"', b'\\']).collect();
        for len in 0..24 {
            for at in 0..len {
                for &special in &specials {
                    // Plain bytes around it, including the high ones a UTF-8 text has.
                    let mut bytes: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0xC3, 0xA9, 0x7F, b'!'][i % 5])
                        .collect();
                    bytes[at] = special;
                    assert_eq!(plain_prefix(&bytes), at, "{special:#x} at {at} of {len}");
                }
            }
            let plain: Vec<u8> = (0..len)
                .map(|i| 0x20 + (i as u8).wrapping_mul(37) % 0x60)
                .filter(|b| !is_special(*b))
                .collect();
            assert_eq!(plain_prefix(&plain), plain.len());
        }
    }

    #[test]
    fn the_first_of_several_is_found_whatever_follows_it() {
        // A special byte just after another, and above one (where the borrow flags wrongly).
        for bytes in [
            &b"ab\"\x00cdefgh"[..],
            b"\x00\"\\\x1f",
            b"abcdefg\\\x00",
            b"\x01\x00",
        ] {
            assert_eq!(plain_prefix(bytes), byte_at_a_time(bytes), "{bytes:?}");
        }
    }

    proptest! {
        #[test]
        fn the_prefix_is_the_byte_at_a_time_one(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(plain_prefix(&bytes), byte_at_a_time(&bytes));
        }

        #[test]
        fn the_prefix_of_mostly_plain_text_is_the_byte_at_a_time_one(
            text in "[a-zé€\"\\\\\u{0}-\u{1f} ]{0,64}"
        ) {
            prop_assert_eq!(plain_prefix(text.as_bytes()), byte_at_a_time(text.as_bytes()));
        }
    }
}
