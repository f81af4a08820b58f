//! Which rows of a followed page the mirror copies together, and how far each copy lets the cursor
//! move — decided without IO.
//!
//! A page is rows in commit order, each present in LMDB or not. The missing ones are copied in
//! order, in copies of at most `max_rows` rows and `max_bytes` bytes (a single larger envelope is a
//! copy of its own): each copy is ONE short LMDB write transaction, so the worker's batches, which
//! need the same single writer, never wait long.
//!
//! Invariant: a copy's cursor is the last row of the page before the next copy's first row (the
//! page's last row for the last copy), so once a copy is written every row at or before its
//! cursor is in LMDB: present before, or written by this copy or an earlier one.

use crate::store::postgres::CommitPos;

/// A followed row, as the plan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub pos: CommitPos,
    /// The envelope's size in bytes.
    pub bytes: u64,
    /// Whether LMDB already holds its blob.
    pub present: bool,
}

/// Rows to read from PostgreSQL and write in one LMDB transaction, with the cursor that
/// transaction stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Indexes into the page, increasing.
    pub rows: Vec<usize>,
    pub cursor: CommitPos,
}

/// The copies of a page, in order (none when every row is present).
pub fn copies(page: &[Row], max_rows: usize, max_bytes: u64) -> Vec<Copy> {
    let missing: Vec<usize> = (0..page.len()).filter(|&i| !page[i].present).collect();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0u64;
    for i in missing {
        let size = page[i].bytes;
        match groups.last_mut() {
            Some(g) if g.len() < max_rows && bytes.saturating_add(size) <= max_bytes => {
                bytes += size;
                g.push(i);
            }
            Some(_) | None => {
                bytes = size;
                groups.push(vec![i]);
            }
        }
    }
    let starts: Vec<usize> = groups.iter().skip(1).map(|g| g[0]).collect();
    groups
        .into_iter()
        .enumerate()
        .map(|(k, rows)| {
            // Up to the row before the next copy's first one; the whole page for the last copy.
            let end = starts.get(k).map_or(page.len(), |&next| next);
            Copy {
                rows,
                cursor: page[end - 1].pos,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(spec: &[(u64, bool)]) -> Vec<Row> {
        spec.iter()
            .enumerate()
            .map(|(i, &(bytes, present))| Row {
                pos: CommitPos {
                    txid: 100 + i as i64 / 3,
                    seq: i as i64,
                },
                bytes,
                present,
            })
            .collect()
    }

    #[test]
    fn a_page_held_entirely_needs_no_copy() {
        assert_eq!(copies(&page(&[(10, true), (10, true)]), 4, 100), []);
        assert_eq!(copies(&[], 4, 100), []);
    }

    #[test]
    fn copies_close_at_either_limit_and_cursors_stop_before_the_next_copy() {
        let p = page(&[
            (10, true),
            (10, false),
            (10, false),
            (10, true),
            (10, false),
            (500, false),
            (10, false),
            (10, true),
        ]);
        let got = copies(&p, 2, 100);
        assert_eq!(
            got,
            [
                Copy {
                    rows: vec![1, 2],
                    cursor: p[3].pos
                },
                // 500 bytes would pass the limit: the large envelope is a copy of its own.
                Copy {
                    rows: vec![4],
                    cursor: p[4].pos
                },
                Copy {
                    rows: vec![5],
                    cursor: p[5].pos
                },
                Copy {
                    rows: vec![6],
                    cursor: p[7].pos
                },
            ]
        );
    }

    proptest! {
        /// Every missing row is in exactly one copy, in order; copies keep their limits (a single
        /// oversized row excepted); cursors increase, end at the page's end, and never pass a
        /// missing row that no copy up to them writes.
        #[test]
        fn copies_cover_the_missing_rows_and_cursors_never_pass_a_gap(
            spec in proptest::collection::vec((0u64..300, any::<bool>()), 0..60),
            max_rows in 1usize..8,
            max_bytes in 1u64..600,
        ) {
            let p = page(&spec);
            let got = copies(&p, max_rows, max_bytes);
            let flat: Vec<usize> = got.iter().flat_map(|c| c.rows.clone()).collect();
            let missing: Vec<usize> = (0..p.len()).filter(|&i| !p[i].present).collect();
            prop_assert_eq!(&flat, &missing);
            let mut written = std::collections::BTreeSet::new();
            let mut last_cursor = None;
            for c in &got {
                prop_assert!(!c.rows.is_empty());
                let bytes: u64 = c.rows.iter().map(|&i| p[i].bytes).sum();
                prop_assert!(c.rows.len() <= max_rows);
                prop_assert!(c.rows.len() == 1 || bytes <= max_bytes);
                prop_assert!(last_cursor.is_none_or(|l| l < c.cursor));
                last_cursor = Some(c.cursor);
                written.extend(c.rows.iter().copied());
                for (i, row) in p.iter().enumerate().filter(|(_, r)| r.pos <= c.cursor) {
                    prop_assert!(row.present || written.contains(&i), "cursor {:?} passes row {}", c.cursor, i);
                }
            }
            if let (Some(c), Some(last)) = (got.last(), p.last()) {
                prop_assert_eq!(c.cursor, last.pos);
            }
        }
    }
}
