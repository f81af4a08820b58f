//! Which layout an environment's blobs are kept in, decided once and recorded in the environment
//! (`meta`: `"layout"` → `"compatible"` | `"append"`), so every process that opens it later keeps
//! it whatever its configuration says. This module decides without IO ([`decide`]); opening
//! ([`super::dbs`]) reads what the environment holds and writes the record.
//!
//! | the environment | `lmdb.layout` unset | `lmdb.layout` set |
//! |---|---|---|
//! | records a layout | that layout | that layout, else refused ([`LayoutError::Conflict`]) |
//! | no record, blobs in `events` (nekhebet-store 4.0's, LMDB-only mode's) | compatible | compatible, else refused ([`LayoutError::HoldsOther`]) |
//! | no record, blobs only in `blobs` (an append environment of an earlier version) | append | append, else refused |
//! | no record, no blob, an `events` database (4.0's, empty) | compatible | the configured one |
//! | new (no database) | append in hybrid mode, compatible in LMDB-only mode | the configured one |
//!
//! Invariants: an environment never opens in a layout other than the one its blobs are kept in
//! (they would all look missing); LMDB-only mode never opens the append layout (it needs
//! PostgreSQL's indexes); a recorded layout is never rewritten.

use crate::config::LmdbLayout;

/// The key of the layout record in `meta`.
pub(super) const RECORD_KEY: &str = "layout";

/// What an environment holds, as found when it is opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The layout record, as written (`None`: the environment has none).
    pub record: Option<String>,
    /// Whether the `events` database exists (nekhebet-store 4.0 creates it).
    pub events_db: bool,
    /// Blobs in `events` (content hash → envelope).
    pub events: u64,
    /// Blobs in `blobs` (seq → envelope).
    pub blobs: u64,
}

/// The layout to open the environment in, and whether to record it (it has no record yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub layout: LmdbLayout,
    pub record: bool,
}

/// Why an environment cannot be opened with this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "lmdb.layout = \"{configured}\", but this environment was created with the \"{recorded}\" layout (recorded in it), and an environment keeps its layout: remove lmdb.layout to open it as recorded, or point lmdb.path at a new directory to start one in the \"{configured}\" layout (the LMDB mirror fills it from PostgreSQL)",
        configured = name(*configured),
        recorded = name(*recorded)
    )]
    Conflict {
        configured: LmdbLayout,
        recorded: LmdbLayout,
    },
    #[error(
        "lmdb.layout = \"{configured}\", but this environment holds {count} blobs in the \"{holds}\" layout (written before layouts were recorded): remove lmdb.layout to open it in the \"{holds}\" layout, or point lmdb.path at a new directory to start one in the \"{configured}\" layout (the LMDB mirror fills it from PostgreSQL)",
        configured = name(*configured),
        holds = name(*holds)
    )]
    HoldsOther {
        configured: LmdbLayout,
        holds: LmdbLayout,
        count: u64,
    },
    #[error("store.mode = \"lmdb\" needs the \"compatible\" layout (the append layout is looked up through PostgreSQL's indexes), but this environment is in the \"append\" layout: point lmdb.path at another directory")]
    AppendWithoutPostgres,
    #[error("this environment records the layout {0:?}, which this version does not know (\"compatible\" or \"append\"): was it written by a newer nekhebet-store?")]
    UnknownRecord(String),
}

/// A layout as the configuration and the record write it.
pub fn name(layout: LmdbLayout) -> &'static str {
    match layout {
        LmdbLayout::Compatible => "compatible",
        LmdbLayout::Append => "append",
    }
}

/// The layout a record names.
pub fn parse(record: &str) -> Option<LmdbLayout> {
    match record {
        "compatible" => Some(LmdbLayout::Compatible),
        "append" => Some(LmdbLayout::Append),
        _ => None,
    }
}

/// The layout of a new environment: append in hybrid mode (its rate holds once the file outgrows
/// memory), compatible in LMDB-only mode (`standalone`), which has no PostgreSQL to look seqs up in.
pub fn for_new_environment(standalone: bool) -> LmdbLayout {
    if standalone {
        LmdbLayout::Compatible
    } else {
        LmdbLayout::Append
    }
}

/// The layout to open an environment in (see the module's table).
pub fn decide(
    found: &Found,
    configured: Option<LmdbLayout>,
    standalone: bool,
) -> Result<Decision, LayoutError> {
    let recorded = match found.record.as_deref() {
        Some(r) => Some(parse(r).ok_or_else(|| LayoutError::UnknownRecord(r.to_owned()))?),
        None => None,
    };
    let decision = match recorded {
        Some(recorded) => match configured {
            Some(configured) if configured != recorded => {
                return Err(LayoutError::Conflict {
                    configured,
                    recorded,
                })
            }
            Some(_) | None => Decision {
                layout: recorded,
                record: false,
            },
        },
        None => {
            let layout = match (configured, held(found)) {
                (Some(configured), Some((holds, count))) if configured != holds => {
                    return Err(LayoutError::HoldsOther {
                        configured,
                        holds,
                        count,
                    })
                }
                (Some(configured), _) => configured,
                (None, Some((holds, _))) => holds,
                (None, None) if found.events_db => LmdbLayout::Compatible,
                (None, None) => for_new_environment(standalone),
            };
            Decision {
                layout,
                record: true,
            }
        }
    };
    match (standalone, decision.layout) {
        (true, LmdbLayout::Append) => Err(LayoutError::AppendWithoutPostgres),
        (true, LmdbLayout::Compatible) | (false, _) => Ok(decision),
    }
}

/// The layout an unrecorded environment's blobs are in, and how many there are: `events` first
/// (nekhebet-store 4.0 writes only there).
fn held(found: &Found) -> Option<(LmdbLayout, u64)> {
    if found.events > 0 {
        Some((LmdbLayout::Compatible, found.events))
    } else if found.blobs > 0 {
        Some((LmdbLayout::Append, found.blobs))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use LmdbLayout::{Append, Compatible};

    fn found(record: Option<&str>, events_db: bool, events: u64, blobs: u64) -> Found {
        Found {
            record: record.map(str::to_owned),
            events_db,
            events,
            blobs,
        }
    }

    fn layout(f: &Found, configured: Option<LmdbLayout>, standalone: bool) -> LmdbLayout {
        decide(f, configured, standalone).unwrap().layout
    }

    #[test]
    fn a_new_environment_is_append_in_hybrid_mode_and_compatible_alone() {
        let new = Found::default();
        assert_eq!(
            decide(&new, None, false),
            Ok(Decision {
                layout: Append,
                record: true
            })
        );
        assert_eq!(layout(&new, None, true), Compatible);
        assert_eq!(layout(&new, Some(Compatible), false), Compatible);
        assert_eq!(
            decide(&new, Some(Append), true),
            Err(LayoutError::AppendWithoutPostgres)
        );
    }

    #[test]
    fn an_environment_of_nekhebet_store_4_opens_compatible() {
        // Its `events` database, with blobs or empty, and no record.
        for events in [0, 3] {
            let old = found(None, true, events, 0);
            assert_eq!(
                decide(&old, None, false),
                Ok(Decision {
                    layout: Compatible,
                    record: true
                })
            );
        }
        assert_eq!(
            decide(&found(None, true, 3, 0), Some(Append), false),
            Err(LayoutError::HoldsOther {
                configured: Append,
                holds: Compatible,
                count: 3
            })
        );
        // Empty, it may still become append when asked to.
        assert_eq!(
            layout(&found(None, true, 0, 0), Some(Append), false),
            Append
        );
    }

    #[test]
    fn an_unrecorded_append_environment_of_an_earlier_version_stays_append() {
        let earlier = found(None, true, 0, 7);
        assert_eq!(layout(&earlier, None, false), Append);
        assert_eq!(layout(&earlier, Some(Append), false), Append);
        assert!(decide(&earlier, Some(Compatible), false).is_err());
    }

    #[test]
    fn a_recorded_layout_wins_and_a_different_configured_one_is_refused_by_name() {
        let recorded = found(Some("append"), true, 0, 0);
        assert_eq!(
            decide(&recorded, None, false),
            Ok(Decision {
                layout: Append,
                record: false
            })
        );
        let err = decide(&recorded, Some(Compatible), false).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Conflict {
                configured: Compatible,
                recorded: Append
            }
        );
        let message = err.to_string();
        assert!(
            message.starts_with("lmdb.layout = \"compatible\", but this environment was created with the \"append\" layout"),
            "{message}"
        );
        assert_eq!(
            decide(&found(Some("columnar"), true, 0, 0), None, false),
            Err(LayoutError::UnknownRecord("columnar".into()))
        );
    }

    fn any_layout() -> impl Strategy<Value = LmdbLayout> {
        prop_oneof![Just(Compatible), Just(Append)]
    }

    proptest! {
        /// Whatever the environment and the configuration: a recorded layout is kept, a configured
        /// one is honoured or refused, blobs are never hidden by opening the other layout, and
        /// LMDB-only mode never gets the append layout.
        #[test]
        fn the_decision_keeps_what_the_environment_holds(
            record in proptest::option::of(any_layout()),
            events_db: bool,
            events in prop_oneof![Just(0u64), 1u64..1000],
            blobs in prop_oneof![Just(0u64), 1u64..1000],
            configured in proptest::option::of(any_layout()),
            standalone: bool,
        ) {
            let f = found(record.map(name), events_db || events > 0, events, blobs);
            match decide(&f, configured, standalone) {
                Ok(d) => {
                    if let Some(r) = record {
                        prop_assert_eq!(d.layout, r);
                        prop_assert!(!d.record);
                    } else {
                        prop_assert!(d.record);
                        if let Some((holds, _)) = held(&f) {
                            prop_assert_eq!(d.layout, holds);
                        }
                    }
                    if let Some(c) = configured {
                        prop_assert_eq!(d.layout, c);
                    }
                    prop_assert!(!(standalone && d.layout == Append));
                }
                Err(LayoutError::Conflict { configured: c, recorded: r }) => {
                    prop_assert_eq!(Some(r), record);
                    prop_assert_eq!(Some(c), configured);
                    prop_assert_ne!(c, r);
                }
                Err(LayoutError::HoldsOther { configured: c, holds, count }) => {
                    prop_assert!(record.is_none());
                    prop_assert_eq!(Some(c), configured);
                    prop_assert_eq!(held(&f), Some((holds, count)));
                    prop_assert_ne!(c, holds);
                }
                Err(LayoutError::AppendWithoutPostgres) => prop_assert!(standalone),
                Err(LayoutError::UnknownRecord(r)) => prop_assert!(false, "unexpected {}", r),
            }
        }
    }
}
