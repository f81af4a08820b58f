//! The dead-letter topic as the tests see it: the one oracle for "the DLQ holds exactly the poison
//! produced" (positions, values, source topic and reason), and the dead letters by position.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nekhebet_store::dev::produce::{Kind, Poison, ProduceReport};

use super::kafka as k;

/// The reason code a poison kind is dead-lettered with (`verify`: the verification stage is on,
/// and reports a bad nonce in nekhebet-core's category, see docs/reasons.md).
pub fn poison_reason(p: Poison, verify: bool) -> &'static str {
    use nekhebet_store::reason::Reason;
    let reason = match p {
        Poison::TruncatedJson => Reason::TruncatedJson,
        Poison::BadNonce if verify => Reason::StructureInvalid,
        Poison::BadNonce => Reason::InvalidNonce,
        Poison::NotJson => Reason::MalformedJson,
        Poison::EmptyValue => Reason::EmptyMessage,
    };
    reason.as_str()
}

/// The DLQ of `topic` holds the poison set exactly: the SET of source (partition, offset) equals
/// the poison set (nothing missing, nothing else); every message carries its original value, the source topic and the reason of its
/// kind (`verify`: as the workers had `verify.enabled`). Returns how many messages repeated a
/// position (at-least-once after a crash).
pub fn assert_holds_exactly_the_poison(
    topic: &str,
    produced: &ProduceReport,
    verify: bool,
) -> usize {
    let poison: BTreeMap<(i32, i64), (Poison, &[u8])> = produced
        .records
        .iter()
        .filter_map(|r| match r.kind {
            Kind::Poison(p) => Some(((r.partition, r.offset), (p, &r.value[..]))),
            _ => None,
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut repeats = 0;
    let mut wrong_reason: HashMap<String, usize> = HashMap::new();
    for m in k::read_all(&format!("{topic}.dlq")) {
        let pos = source_position(&m);
        let (kind, value) = poison
            .get(&pos)
            .unwrap_or_else(|| panic!("DLQ message for {pos:?} is not a poison record: {m:?}"));
        assert_eq!(
            m.value.as_deref().unwrap_or_default(),
            *value,
            "DLQ value of {pos:?}"
        );
        assert_eq!(
            m.headers.get("nekhebet.source.topic").map(String::as_str),
            Some(topic),
            "source topic header of {pos:?}"
        );
        let reason = m
            .headers
            .get("nekhebet.reason")
            .cloned()
            .unwrap_or_default();
        if reason != poison_reason(*kind, verify) {
            *wrong_reason
                .entry(format!("{} -> {reason}", kind.as_str()))
                .or_default() += 1;
        }
        if !seen.insert(pos) {
            repeats += 1;
        }
    }
    assert!(
        wrong_reason.is_empty(),
        "DLQ reasons differ from the poison kinds: {wrong_reason:?}"
    );
    let missing: Vec<_> = poison.keys().filter(|p| !seen.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} poison message(s) missing from the DLQ, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    repeats
}

fn source_position(m: &k::ReadMessage) -> (i32, i64) {
    let p = m.headers["nekhebet.source.partition"]
        .parse()
        .expect("partition header");
    let o = m.headers["nekhebet.source.offset"]
        .parse()
        .expect("offset header");
    (p, o)
}

/// Source positions of every DLQ message of `topic` (repeats included).
pub fn positions(topic: &str) -> Vec<(i32, i64)> {
    k::read_all(&format!("{topic}.dlq"))
        .iter()
        .map(source_position)
        .collect()
}

/// Dead letters of `topic` by source position: (reason, value). A position dead-lettered twice
/// keeps its last letter.
pub fn by_position(topic: &str) -> BTreeMap<(i32, i64), (String, Vec<u8>)> {
    k::read_all(&format!("{topic}.dlq"))
        .into_iter()
        .map(|m| {
            let reason = m
                .headers
                .get("nekhebet.reason")
                .cloned()
                .unwrap_or_default();
            (source_position(&m), (reason, m.value.unwrap_or_default()))
        })
        .collect()
}
