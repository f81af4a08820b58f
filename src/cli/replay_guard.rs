//! `nekhebet-store replay-guard cleanup`: replay-guard retention that cannot reopen the replay
//! window. A row goes only when it was both issued and stored before the cutoff, and the cutoff may
//! not be inside the window (`replay_guard.retention`), within which the ingest pipeline still
//! accepts envelopes: an envelope that could claim a deleted nonce again is then always refused as
//! `outside_replay_window` (it was issued before the cutoff, so before the window).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::Store;

#[derive(clap::Subcommand, Debug)]
pub enum ReplayGuardCommand {
    /// Delete replay-guard entries issued and stored before a cutoff, in every configured store.
    ///
    /// The cutoff must be at least `replay_guard.retention` ago (default: exactly that): envelopes
    /// issued before the window are rejected at ingest (`outside_replay_window`), so a deleted
    /// (key_id, nonce) can never be claimed again. Without a configured retention the window is
    /// unbounded and any deletion reopens it for the nonces it deletes: the command refuses unless
    /// `--force`.
    Cleanup {
        /// A duration ago (30d, 12h, 90m, 45s) or an RFC 3339 instant; default
        /// `replay_guard.retention`.
        #[arg(long)]
        older_than: Option<String>,
        /// Delete even inside the replay window (or without one): those nonces can be replayed.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(command: ReplayGuardCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        ReplayGuardCommand::Cleanup { older_than, force } => {
            let now = Utc::now();
            let retention = config.replay_guard.retention;
            let cutoff = match (&older_than, retention) {
                (Some(s), _) => parse_cutoff(s, now)?,
                (None, Some(w)) => now - chrono::Duration::from_std(w)?,
                (None, None) => anyhow::bail!(
                    "give --older-than, or set replay_guard.retention (the replay window) first"
                ),
            };
            if let Err(why) = check_cutoff(cutoff, now, retention) {
                if !force {
                    anyhow::bail!("{why}; refusing (--force deletes anyway)");
                }
                tracing::warn!(%why, "replay-guard cleanup forced: the deleted nonces can be replayed");
            }
            let store = Store::open(config).await.context("opening the store")?;
            if let Some(pg) = store.postgres() {
                println!(
                    "postgres: deleted {} replay-guard rows issued and stored before {cutoff}",
                    pg.cleanup_replay_guard(cutoff).await?
                );
            }
            if let Some(lmdb) = store.lmdb() {
                println!(
                    "lmdb: deleted {} replay-guard entries issued and stored before {cutoff}",
                    lmdb.cleanup_replay_guard(cutoff, force).await?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether deleting the rows issued and stored before `cutoff` keeps every deleted nonce
/// unreplayable: only when the cutoff is at least the replay window ago.
pub fn check_cutoff(
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    retention: Option<Duration>,
) -> Result<(), String> {
    let Some(window) = retention else {
        return Err(
            "replay_guard.retention is not set: the replay window is unbounded, so every deleted \
             (key_id, nonce) could be replayed; set replay_guard.retention (envelopes issued before \
             it are then rejected at ingest) and clean up rows older than it"
                .to_string(),
        );
    };
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    match now.checked_sub_signed(window) {
        Some(oldest_accepted) if cutoff <= oldest_accepted => Ok(()),
        _ => Err(format!(
            "the cutoff {cutoff} is inside the replay window (replay_guard.retention = {}): \
             envelopes issued after it are still accepted, so their deleted nonces could be replayed",
            humantime::format_duration(window.to_std().unwrap_or_default())
        )),
    }
}

/// `30d`, `12h`, `90m`, `45s` before `now`, or an RFC 3339 instant.
pub fn parse_cutoff(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--older-than {s:?}: expected a duration like 30d, 12h, 90m, 45s or an RFC 3339 instant"))?;
    let d = match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        "s" => chrono::Duration::seconds(n),
        _ => anyhow::bail!("--older-than {s:?}: expected a duration like 30d, 12h, 90m, 45s or an RFC 3339 instant"),
    };
    Ok(now - d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cutoffs() {
        let now = at("2026-01-31T00:00:00Z");
        assert_eq!(
            parse_cutoff("1d", now).unwrap().to_rfc3339(),
            "2026-01-30T00:00:00+00:00"
        );
        assert_eq!(
            parse_cutoff("2026-01-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        assert!(parse_cutoff("soon", now).is_err());
        assert!(parse_cutoff("5y", now).is_err());
    }

    #[test]
    fn a_cutoff_inside_the_replay_window_or_without_one_is_refused() {
        let now = at("2026-01-31T00:00:00Z");
        let hour = Some(Duration::from_secs(3600));
        assert!(check_cutoff(at("2026-01-30T23:00:00Z"), now, hour).is_ok());
        assert!(check_cutoff(at("2026-01-30T00:00:00Z"), now, hour).is_ok());
        let err = check_cutoff(at("2026-01-30T23:30:00Z"), now, hour).unwrap_err();
        assert!(err.contains("replay_guard.retention = 1h"), "{err}");
        // A future cutoff would delete everything.
        assert!(check_cutoff(at("2026-02-01T00:00:00Z"), now, hour).is_err());
        let err = check_cutoff(at("2020-01-01T00:00:00Z"), now, None).unwrap_err();
        assert!(err.contains("replay_guard.retention is not set"), "{err}");
    }
}
