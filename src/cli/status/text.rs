//! `status` as plain text: the full report (one-shot), and the compact lines `--watch` prints when
//! stdout is not a terminal. The full-screen view (`view`) uses the same summaries.

use super::scrape::outcome_names;
use super::snapshot::Snapshot;
use crate::cli::positions::{self, PartitionRow};
use crate::cli::table::opt;

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `topic/partition`.
pub fn label(r: &PartitionRow) -> String {
    format!("{}/{}", r.topic, r.partition)
}

/// `lag total N   events N (exact)`.
pub fn totals_line(s: &Snapshot) -> String {
    let events = match s.totals.events {
        Some(e) => format!("{}{}", e.count, if e.exact { "" } else { " (estimate)" }),
        None => "-".into(),
    };
    format!("lag total {}   events {events}", s.totals.lag)
}

/// `postgres events 1.2 MiB, guard 80.0 KiB   lmdb 4.0 MiB (used 1.1 MiB)` (fits 80 columns).
pub fn sizes_line(s: &Snapshot) -> String {
    let mut parts = Vec::new();
    if let Some(pg) = s.totals.postgres {
        parts.push(format!(
            "postgres events {}, guard {}",
            bytes(pg.events_bytes.max(0) as u64),
            bytes(pg.replay_guard_bytes.max(0) as u64)
        ));
    }
    if let Some(l) = s.totals.lmdb {
        parts.push(format!(
            "lmdb {} (used {})",
            bytes(l.file_bytes),
            bytes(l.used_bytes)
        ));
    }
    if let Some(n) = s.totals.lmdb_mirror_behind {
        parts.push(format!("mirror behind {n}"));
    }
    if parts.is_empty() {
        "sizes -".into()
    } else {
        parts.join("   ")
    }
}

/// `log 2300 leaves, 0 to integrate, checkpoint 2300 signed 1 s ago` (fits 80 columns); `None`
/// without the log.
pub fn tlog_line(s: &Snapshot) -> Option<String> {
    let t = s.totals.tlog.as_ref()?;
    let checkpoint = match &t.checkpoint {
        Some(c) => format!(
            "checkpoint {} {} {:.0} s ago",
            c.size,
            if c.signed { "signed" } else { "UNSIGNED" },
            c.age_seconds
        ),
        None => "no checkpoint yet".into(),
    };
    Some(format!(
        "log {} leaves, {} to integrate, {checkpoint}",
        t.leaves, t.unlogged
    ))
}

/// `outcomes (last 60 s): stored 10  duplicate 0 …`, or why there are none.
pub fn outcomes_line(s: &Snapshot, scraping: bool) -> String {
    match &s.outcomes {
        Some(o) => {
            let counts: Vec<String> = outcome_names()
                .map(|k| format!("{k} {}", o.counts.get(k).copied().unwrap_or(0)))
                .collect();
            format!(
                "outcomes (last {:.0} s): {}",
                o.window_seconds,
                counts.join("  ")
            )
        }
        None if scraping => "outcomes: measuring…".into(),
        None => "outcomes: give --metrics http://worker:9187/metrics".into(),
    }
}

/// The one-shot report.
pub fn report(s: &Snapshot, scraping: bool) -> String {
    let mut out = format!(
        "group {}   store {}   at {}\n\n",
        s.group, s.store_mode, s.at
    );
    out.push_str(&positions::table(&s.partitions, label).render());
    out.push_str("\n\n");
    for r in s.partitions.iter().filter(|r| r.beyond_end) {
        out.push_str(&format!(
            "{}: the stores hold offsets at or beyond its end — topic re-created? see `nekhebet-store offsets show --topic {}`\n",
            label(r),
            r.topic
        ));
    }
    out.push_str(&totals_line(s));
    out.push('\n');
    out.push_str(&sizes_line(s));
    out.push('\n');
    if let Some(l) = tlog_line(s) {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str(&outcomes_line(s, scraping));
    out.push('\n');
    if let Some(o) = &s.outcomes {
        for (reason, n) in o.rejected_by_reason.iter().filter(|(_, n)| **n > 0) {
            out.push_str(&format!("  rejected {reason} {n}\n"));
        }
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    out
}

/// `--watch` without a terminal: a totals line, then one line per partition, each with the time.
pub fn lines(s: &Snapshot, scraping: bool) -> String {
    let mut out = format!(
        "{} {}   {}\n",
        s.at,
        totals_line(s),
        outcomes_line(s, scraping)
    );
    for r in &s.partitions {
        out.push_str(&format!(
            "{} {} postgres={} lmdb={} committed={} high={} lag={} owner={}\n",
            s.at,
            label(r),
            opt(r.postgres_applied),
            opt(r.lmdb_applied),
            opt(r.kafka_committed),
            opt(r.high),
            opt(r.lag),
            r.owner.as_deref().unwrap_or("-")
        ));
    }
    for p in &s.problems {
        out.push_str(&format!("{} problem: {p}\n", s.at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
