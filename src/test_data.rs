//! The repository's test data (tests/data, made by scripts/make-test-data) for the unit tests: the
//! nekhebet-core 4.0.0 vectors and the 2,000 sample envelopes, compiled in once.

/// One JSON object a line: `name`, `verdict` (nekhebet-core's), `wire` (base64), … (tests/data/README.md).
pub const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/nekhebet-core-4.0.0.jsonl"
));

/// One valid envelope a line, exactly as nekhebet-core 4.0.0 wrote it.
pub const SAMPLES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/envelopes-2000.jsonl"
));
