//! Decode, validate, canonicalize and verify arbitrary bytes: none of it may panic, overflow the
//! stack or loop, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nekhebet_store::envelope::{self, Limits};
use nekhebet_store::verify::{VerifyConfig, Verifier};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message_bytes: 2 << 20 };
    let Ok(env) = envelope::decode(bytes::Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    let _ = envelope::validate(&env);
    let _ = envelope::canonical_header(&env.header);
    let _ = nekhebet_store::canonical::payload_hash(env.payload.get());
    let verifier = Verifier::new(VerifyConfig::default());
    let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
    let _ = verifier.verify(&env, now);
    let _ = verifier.verify_batch(&[&env], now);
});
