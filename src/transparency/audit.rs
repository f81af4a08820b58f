//! `nekhebet-store audit`: recomputes the transparency log from what the store holds and names
//! every difference.
//!
//! In ONE `REPEATABLE READ` snapshot, the log's leaves are streamed in order joined with the
//! `events` row at each leaf's seq and the checkpoint published at that size
//! ([`crate::store::postgres::tlog::audit_rows`]); [`Checker`] (pure) recomputes each leaf's entry
//! from the envelope bytes, rebuilds the tree leaf by leaf in constant memory ([`Frontier`]),
//! compares the stored hashes the tiles are served from, and checks every checkpoint's root and
//! signature. Then the events the integrator passed that have no leaf (inserted behind its back, or
//! whose leaf row was deleted), and checkpoints beyond the leaves. In hybrid mode, LMDB's blob of
//! every leaf's event is hashed and compared too, a page at a time. Memory stays flat: one row, one
//! page of LMDB keys, the frontier.
//!
//! A finding names the event id and the leaf index (and the LMDB key); `audit` exits 1 on any.

use std::fmt;

use futures::StreamExt as _;
use uuid::Uuid;

use super::frontier::Frontier;
use crate::store::lmdb::BlobKey;
use crate::store::postgres::tlog::{self, AuditRow};
use crate::store::postgres::PgError;
use crate::store::{LmdbStore, StoreError};
use crate::tlog::{envelope_entry, Checkpoint, Hash, NoteVerifier, HASH_SIZE};

/// One difference between the store and its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The event's envelope bytes no longer hash to the leaf's entry.
    EventChanged {
        id: Uuid,
        index: u64,
        seq: i64,
        now: String,
        logged: String,
    },
    /// The leaf's event row is gone from `events`.
    EventMissing { id: Uuid, index: u64, seq: i64 },
    /// Another event sits at the leaf's seq.
    EventReplaced {
        index: u64,
        seq: i64,
        logged: Uuid,
        found: Uuid,
    },
    /// An event at a position the integrator passed, without a leaf.
    EventExtra { id: Uuid, seq: i64, txid: i64 },
    /// LMDB's blob of a leaf's event differs from the logged bytes.
    BlobChanged {
        key: String,
        id: Uuid,
        index: u64,
        now: String,
        logged: String,
    },
    /// LMDB lacks the blob of a leaf's event.
    BlobMissing { key: String, id: Uuid, index: u64 },
    /// Leaf rows are missing from the log (`expected` is the first absent index).
    LeavesMissing { expected: u64, found: u64 },
    /// The stored hashes of a leaf (what tiles are served from) differ from the tree its entries
    /// give.
    HashesDiffer { index: u64 },
    /// A checkpoint whose root is not the tree's root at its size.
    CheckpointRoot {
        size: u64,
        recorded: Hash,
        computed: Hash,
    },
    /// A checkpoint whose note does not verify or does not say what its row says.
    CheckpointNote { size: u64, why: String },
    /// A checkpoint beyond the leaves present.
    CheckpointBeyond { size: u64, leaves: u64 },
    /// The checkpoint given with `--checkpoint` is not a checkpoint of this log.
    KeptCheckpoint { why: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::EventChanged { id, index, seq, now, logged } => write!(
                f,
                "changed  event {id} leaf {index} (seq {seq}): its envelope bytes hash to {now}, the log's entry is {logged}"
            ),
            Finding::EventMissing { id, index, seq } => write!(
                f,
                "missing  event {id} leaf {index} (seq {seq}): the row is gone from events"
            ),
            Finding::EventReplaced { index, seq, logged, found } => write!(
                f,
                "changed  event {logged} leaf {index} (seq {seq}): events holds event {found} at that seq"
            ),
            Finding::EventExtra { id, seq, txid } => write!(
                f,
                "extra    event {id} (seq {seq}, txid {txid}): stored at a position the log already passed, and not in the log"
            ),
            Finding::BlobChanged { key, id, index, now, logged } => write!(
                f,
                "changed  blob {key} of event {id} leaf {index}: LMDB's bytes hash to {now}, the log's entry is {logged}"
            ),
            Finding::BlobMissing { key, id, index } => write!(
                f,
                "missing  blob {key} of event {id} leaf {index}: not in LMDB"
            ),
            Finding::LeavesMissing { expected, found } => write!(
                f,
                "missing  leaves {expected}..{found} of the log: its rows are gone (their events are listed as extra)"
            ),
            Finding::HashesDiffer { index } => write!(
                f,
                "changed  leaf {index}: its stored hashes (served as tiles) differ from the tree its entries give"
            ),
            Finding::CheckpointRoot { size, recorded, computed } => write!(
                f,
                "changed  checkpoint {size}: it records root {recorded}, the log's entries give {computed}"
            ),
            Finding::CheckpointNote { size, why } => {
                write!(f, "changed  checkpoint {size}: {why}")
            }
            Finding::CheckpointBeyond { size, leaves } => write!(
                f,
                "missing  leaves for checkpoint {size}: the log has {leaves} leaves"
            ),
            Finding::KeptCheckpoint { why } => write!(f, "forked   --checkpoint: {why}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The pure part: leaves in order in, findings out.
pub struct Checker {
    origin: String,
    verifier: Option<NoteVerifier>,
    frontier: Frontier,
    /// False after a gap in the leaves: the tree can no longer be rebuilt.
    tree_ok: bool,
    /// A checkpoint a client kept, checked when the tree reaches its size.
    kept: Option<Checkpoint>,
    pub checkpoints: u64,
}

impl Checker {
    pub fn new(origin: &str, verifier: Option<NoteVerifier>, kept: Option<Checkpoint>) -> Checker {
        Checker {
            origin: origin.to_string(),
            verifier,
            frontier: Frontier::new(),
            tree_ok: true,
            kept,
            checkpoints: 0,
        }
    }

    /// Checks one leaf (rows must come in index order).
    pub fn leaf(&mut self, row: &AuditRow, out: &mut Vec<Finding>) {
        let expected = self.frontier.size();
        if self.tree_ok && row.index != expected {
            out.push(Finding::LeavesMissing {
                expected,
                found: row.index,
            });
            self.tree_ok = false;
        }
        match &row.event {
            None => out.push(Finding::EventMissing {
                id: row.id,
                index: row.index,
                seq: row.seq,
            }),
            Some(e) if e.id != row.id => out.push(Finding::EventReplaced {
                index: row.index,
                seq: row.seq,
                logged: row.id,
                found: e.id,
            }),
            Some(e) => {
                let now = envelope_entry(&e.envelope);
                if now[..] != row.entry[..] {
                    out.push(Finding::EventChanged {
                        id: row.id,
                        index: row.index,
                        seq: row.seq,
                        now: hex(&now),
                        logged: hex(&row.entry),
                    });
                }
            }
        }
        if !self.tree_ok {
            return;
        }
        let Ok(entry) = <[u8; HASH_SIZE]>::try_from(&row.entry[..]) else {
            out.push(Finding::HashesDiffer { index: row.index });
            self.tree_ok = false;
            return;
        };
        let written: Vec<u8> = self
            .frontier
            .push(&entry)
            .iter()
            .flat_map(|h| h.0)
            .collect();
        if written != row.hashes {
            out.push(Finding::HashesDiffer { index: row.index });
        }
        let size = self.frontier.size();
        if let Some((root, note, signed)) = &row.checkpoint {
            self.checkpoints += 1;
            self.checkpoint(size, root, note, *signed, out);
        }
        if self.kept.as_ref().is_some_and(|k| k.size() == size) {
            let kept = self.kept.take().expect("checked");
            let computed = self.frontier.root();
            if *kept.root() != computed {
                out.push(Finding::KeptCheckpoint {
                    why: format!(
                        "it has root {} at size {size}, this log has {computed}: the log was rewritten since that checkpoint",
                        kept.root()
                    ),
                });
            }
        }
    }

    fn checkpoint(
        &mut self,
        size: u64,
        root: &[u8],
        note: &str,
        signed: bool,
        out: &mut Vec<Finding>,
    ) {
        let computed = self.frontier.root();
        if root != computed.0 {
            let mut recorded = Hash::default();
            if root.len() == HASH_SIZE {
                recorded.0.copy_from_slice(root);
            }
            out.push(Finding::CheckpointRoot {
                size,
                recorded,
                computed,
            });
        }
        let parsed = match (&self.verifier, signed) {
            (Some(v), true) => {
                Checkpoint::open(note.as_bytes(), &self.origin, std::slice::from_ref(v))
                    .map(|(c, _)| c)
                    .map_err(|e| format!("its note does not verify with the log's key: {e}"))
            }
            (None, true) => match note.split_once("\n\n") {
                Some((body, _)) => {
                    Checkpoint::parse(&format!("{body}\n")).map_err(|e| e.to_string())
                }
                None => Err("it is marked signed but its note has no signature".into()),
            },
            (_, false) => Checkpoint::parse(note).map_err(|e| e.to_string()),
        };
        match parsed {
            Err(why) => out.push(Finding::CheckpointNote { size, why }),
            Ok(c) if c.size() != size || c.root().0 != computed.0 => {
                out.push(Finding::CheckpointNote {
                    size,
                    why: format!(
                        "its note says size {} root {}, the log's entries give {computed} at {size}",
                        c.size(),
                        c.root()
                    ),
                })
            }
            Ok(_) => {}
        }
    }

    /// After the last leaf: the kept checkpoint, if the log never reached its size.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        if let Some(kept) = self.kept.take() {
            out.push(Finding::KeptCheckpoint {
                why: format!(
                    "it has {} leaves, this log only {}: leaves were removed since that checkpoint",
                    kept.size(),
                    self.frontier.size()
                ),
            });
        }
    }
}

/// What an audit went through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub leaves: u64,
    pub checkpoints: u64,
    pub blobs: u64,
    /// Events after the integrator's cursor: stored, not integrated yet (not a finding).
    pub pending: u64,
    pub findings: u64,
}

/// LMDB's side, in hybrid mode.
pub struct Blobs<'a> {
    pub lmdb: &'a LmdbStore,
    /// The append layout keys blobs by seq, the compatible one by content hash.
    pub by_seq: bool,
}

/// LMDB keys hashed in one read transaction.
const BLOB_PAGE: usize = 1024;

/// Audits the store; calls `report` with every finding as it is found and `progress` with the
/// leaves done.
/// `c` is a connection of its own (taken out of the pool): the audit runs in a transaction
/// on it, and a failure drops it.
pub async fn run(
    c: &deadpool_postgres::ClientWrapper,
    mut checker: Checker,
    blobs: Option<Blobs<'_>>,
    mut report: impl FnMut(&Finding),
    mut progress: impl FnMut(u64, u64),
) -> Result<Summary, StoreError> {
    // One snapshot for everything: leaves, events and checkpoints agree with each other.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(PgError::from)?;
    let head = tlog::head(c).await?;
    let size = head.map_or(0, |h| h.size);
    let mut summary = Summary::default();
    let mut found = Vec::new();
    let mut emit = |found: &mut Vec<Finding>, summary: &mut Summary| {
        for f in found.drain(..) {
            summary.findings += 1;
            report(&f);
        }
    };
    // Leaves whose LMDB blobs are still to be hashed: (key, id, index, logged entry).
    let mut page: Vec<(BlobKey, Uuid, u64, Vec<u8>)> = Vec::with_capacity(BLOB_PAGE);
    {
        let rows = tlog::audit_rows(c, 0, size).await?;
        futures::pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row?;
            checker.leaf(&row, &mut found);
            summary.leaves += 1;
            if let (Some(b), Some(e)) = (&blobs, &row.event) {
                let key = if b.by_seq {
                    BlobKey::Seq(row.seq)
                } else {
                    BlobKey::Hash(e.content_hash.clone())
                };
                page.push((key, row.id, row.index, row.entry));
                if page.len() == BLOB_PAGE {
                    check_blobs(b, &mut page, &mut found, &mut summary).await?;
                }
            }
            emit(&mut found, &mut summary);
            if summary.leaves % 4096 == 0 {
                progress(summary.leaves, size);
            }
        }
    }
    if let Some(b) = &blobs {
        check_blobs(b, &mut page, &mut found, &mut summary).await?;
    }
    checker.finish(&mut found);
    summary.checkpoints = checker.checkpoints;
    emit(&mut found, &mut summary);
    progress(summary.leaves, size);

    let cursor = head.map_or(crate::store::postgres::CommitPos::START, |h| h.cursor);
    {
        let extra = tlog::unlogged_before(c, cursor).await?;
        futures::pin_mut!(extra);
        while let Some(e) = extra.next().await {
            let (id, seq, txid) = e?;
            found.push(Finding::EventExtra { id, seq, txid });
            emit(&mut found, &mut summary);
        }
    }
    for cp in tlog::checkpoints_above(c, size).await? {
        found.push(Finding::CheckpointBeyond {
            size: cp.size,
            leaves: size,
        });
    }
    emit(&mut found, &mut summary);
    summary.pending = tlog::count_after(c, cursor).await?;
    c.batch_execute("COMMIT").await.map_err(PgError::from)?;
    Ok(summary)
}

async fn check_blobs(
    blobs: &Blobs<'_>,
    page: &mut Vec<(BlobKey, Uuid, u64, Vec<u8>)>,
    found: &mut Vec<Finding>,
    summary: &mut Summary,
) -> Result<(), StoreError> {
    if page.is_empty() {
        return Ok(());
    }
    let keys = page.iter().map(|p| p.0.clone()).collect();
    let digests = blobs.lmdb.blob_digests(keys).await?;
    for ((key, id, index, logged), digest) in page.drain(..).zip(digests) {
        summary.blobs += 1;
        match digest {
            None => found.push(Finding::BlobMissing {
                key: key.to_string(),
                id,
                index,
            }),
            Some(d) if d[..] != logged[..] => found.push(Finding::BlobChanged {
                key: key.to_string(),
                id,
                index,
                now: hex(&d),
                logged: hex(&logged),
            }),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::tlog::AuditEvent;
    use crate::tlog::{NoteSigner, EMPTY_TREE_HASH};

    /// A log of `n` envelopes as `audit_rows` streams it, with a signed checkpoint at `n`.
    fn rows(n: u64, signer: &NoteSigner) -> Vec<AuditRow> {
        let mut f = Frontier::new();
        (0..n)
            .map(|i| {
                let envelope = format!("{{\"n\":{i}}}").into_bytes();
                let entry = envelope_entry(&envelope);
                let hashes: Vec<u8> = f.push(&entry).iter().flat_map(|h| h.0).collect();
                let checkpoint = (i + 1 == n).then(|| {
                    let root = f.root();
                    let note = Checkpoint::new("example.com/log", n, root)
                        .unwrap()
                        .sign(&[signer])
                        .unwrap();
                    (root.0.to_vec(), note, true)
                });
                let id = Uuid::from_u128(u128::from(i) + 1);
                AuditRow {
                    index: i,
                    seq: i as i64 + 100,
                    id,
                    entry: entry.to_vec(),
                    hashes,
                    event: Some(AuditEvent {
                        id,
                        content_hash: format!("{i:064x}"),
                        envelope,
                    }),
                    checkpoint,
                }
            })
            .collect()
    }

    fn check(rows: &[AuditRow], signer: &NoteSigner, kept: Option<Checkpoint>) -> Vec<Finding> {
        let mut c = Checker::new("example.com/log", Some(signer.verifier()), kept);
        let mut out = Vec::new();
        for r in rows {
            c.leaf(r, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn an_untouched_log_has_no_finding_and_each_change_is_named_by_id_and_leaf() {
        let signer = NoteSigner::from_seed("example.com/log", &[3; 32]).unwrap();
        let good = rows(300, &signer);
        assert_eq!(check(&good, &signer, None), vec![]);

        let mut changed = good.clone();
        changed[77].event.as_mut().unwrap().envelope[3] ^= 1;
        let found = check(&changed, &signer, None);
        assert!(
            matches!(&found[..], [Finding::EventChanged { index: 77, seq: 177, id, .. }] if *id == good[77].id),
            "{found:?}"
        );
        assert!(found[0].to_string().contains(&good[77].id.to_string()));

        let mut missing = good.clone();
        missing[5].event = None;
        assert_eq!(
            check(&missing, &signer, None),
            vec![Finding::EventMissing {
                id: good[5].id,
                index: 5,
                seq: 105
            }]
        );

        let mut gap = good.clone();
        gap.remove(200);
        let found = check(&gap, &signer, None);
        assert_eq!(
            found,
            vec![Finding::LeavesMissing {
                expected: 200,
                found: 201
            }]
        );

        let mut hashes = good.clone();
        hashes[13].hashes[0] ^= 1;
        assert_eq!(
            check(&hashes, &signer, None),
            vec![Finding::HashesDiffer { index: 13 }]
        );

        let other = NoteSigner::from_seed("example.com/log", &[4; 32]).unwrap();
        let found = check(&good, &other, None);
        assert!(
            matches!(&found[..], [Finding::CheckpointNote { size: 300, .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn a_kept_checkpoint_must_be_a_prefix_of_the_log() {
        let signer = NoteSigner::from_seed("example.com/log", &[3; 32]).unwrap();
        let good = rows(300, &signer);
        let mut f = Frontier::new();
        for r in &good[..120] {
            f.push(&r.entry.clone().try_into().unwrap());
        }
        let kept = Checkpoint::new("example.com/log", 120, f.root()).unwrap();
        assert_eq!(check(&good, &signer, Some(kept)), vec![]);
        let forked = Checkpoint::new("example.com/log", 120, EMPTY_TREE_HASH).unwrap();
        let found = check(&good, &signer, Some(forked));
        assert!(
            matches!(&found[..], [Finding::KeptCheckpoint { .. }]),
            "{found:?}"
        );
        let beyond = Checkpoint::new("example.com/log", 301, EMPTY_TREE_HASH).unwrap();
        let found = check(&good, &signer, Some(beyond));
        assert!(found[0].to_string().contains("301 leaves"), "{found:?}");
    }
}
