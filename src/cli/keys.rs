//! `nekhebet-store keys`: the public keys each key_id is pinned to, when no key registry is
//! configured (`verify.keys`, `verify.keys_file`). The worker pins the first key it sees for a new
//! key_id; an operator pins another one when a producer rotates its key (both are accepted until
//! the old one is unpinned), and unpins a key that is retired or leaked.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use crate::envelope::{decode_base64, encode_base64};
use crate::store::Store;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// The pinned keys, of every key_id or of one.
    List { key_id: Option<String> },
    /// Pin PUBLIC_KEY (base64 of the 32-byte Ed25519 key) for KEY_ID, besides its other keys.
    Pin { key_id: String, public_key: String },
    /// Unpin PUBLIC_KEY for KEY_ID: its envelopes are then refused `key_id_mismatch`.
    Unpin { key_id: String, public_key: String },
}

pub async fn run(command: KeysCommand, config: &Config) -> anyhow::Result<ExitCode> {
    if !config.pins_keys() {
        eprintln!(
            "note: pins are not used with this configuration ({}); they are kept for when they are",
            if config.verify.enabled {
                "a key registry, verify.keys / verify.keys_file, decides"
            } else {
                "verification is disabled"
            }
        );
    }
    let store = Store::open(config).await.context("opening the store")?;
    match command {
        KeysCommand::List { key_id } => {
            println!("{:<40} {:<46} pinned", "key_id", "public key");
            match &store {
                Store::Postgres(_) | Store::Hybrid(_) => {
                    let pg = store.postgres().context("PostgreSQL")?;
                    for p in pg.pins(key_id.as_deref()).await? {
                        println!(
                            "{:<40} {:<46} {} at {}",
                            p.key_id,
                            encode_base64(&p.public_key),
                            p.pinned_by,
                            p.pinned_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        );
                    }
                }
                Store::Lmdb(lmdb) => {
                    for (k, key) in lmdb.pins(key_id).await? {
                        println!("{k:<40} {:<46}", encode_base64(&key));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Pin { key_id, public_key } => change(&store, key_id, &public_key, true).await,
        KeysCommand::Unpin { key_id, public_key } => {
            change(&store, key_id, &public_key, false).await
        }
    }
}

/// Pins (`add`) or unpins a key; exit 0 when it changed something, 1 when it was already so.
async fn change(
    store: &Store,
    key_id: String,
    public_key: &str,
    add: bool,
) -> anyhow::Result<ExitCode> {
    let key: [u8; 32] = decode_base64(public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| {
            format!("{public_key:?}: expected base64 of a 32-byte Ed25519 public key")
        })?;
    let changed = match store {
        Store::Postgres(_) | Store::Hybrid(_) => {
            let pg = store.postgres().context("PostgreSQL")?;
            if add {
                pg.pin(&key_id, &key).await?
            } else {
                pg.unpin(&key_id, &key).await?
            }
        }
        Store::Lmdb(lmdb) => lmdb.set_pin(key_id.clone(), key, add).await?,
    };
    let verb = if add { "pinned" } else { "unpinned" };
    if changed {
        println!("{key_id}: {verb} {public_key}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{key_id}: {public_key} was already {verb}");
        Ok(ExitCode::from(1))
    }
}
