//! The repository's 2,000 sample envelopes (tests/data, made by scripts/make-test-data) as lines,
//! decoded envelopes and store items.

use bytes::Bytes;
use nekhebet_store::envelope::{self, Envelope, Limits};
use nekhebet_store::store::Item;

pub fn sample_lines() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/envelopes-2000.jsonl"
    );
    std::fs::read_to_string(path)
        .expect("tests/data/envelopes-2000.jsonl (scripts/make-test-data)")
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn decode(line: &str) -> Envelope {
    envelope::decode(
        Bytes::from(line.to_string()),
        &Limits {
            max_message_bytes: 2 << 20,
        },
    )
    .expect("sample decodes")
}

/// Items as the stores take them, without Kafka positions.
pub fn items(lines: &[String]) -> Vec<Item> {
    lines
        .iter()
        .map(|l| Item {
            envelope: decode(l),
            pos: None,
        })
        .collect()
}
