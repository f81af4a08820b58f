//! msgspec's base64 for `bytes` fields (the signature and the public key).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// msgspec's base64: standard alphabet, canonical `=` padding required, no whitespace;
/// unlike the base64 crate's default it ignores non-zero bits in the last symbol.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Strict base64 as msgspec decodes `bytes` fields.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(s)
}

/// Standard padded base64, as msgspec encodes `bytes` fields.
pub fn encode_base64(b: &[u8]) -> String {
    BASE64.encode(b)
}
