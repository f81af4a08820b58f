//! `nekhebet-store tlog`: the transparency log's key. `keygen NAME` writes a note signer key
//! (Go `sumdb/note` format) to a new file readable by its owner only and prints the verifier key
//! that clients check checkpoints with.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;
use crate::tlog::NoteSigner;
use crate::transparency::signing::write_key_file;

#[derive(clap::Subcommand, Debug)]
pub enum TlogCommand {
    /// Write a new signer key named NAME (the log's origin, e.g. example.com/nekhebet) to a new
    /// file with permissions 0600, and print its verifier key on stdout.
    Keygen {
        /// The key's name, which is also the checkpoints' origin line (`tlog.origin`).
        name: String,
        /// The file to create (never replaced); default `tlog.signing_key_file`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(command: TlogCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        TlogCommand::Keygen { name, out } => {
            let Some(path) = out.or_else(|| config.tlog.signing_key_file.clone()) else {
                anyhow::bail!(
                    "where to write the key: give --out FILE or set tlog.signing_key_file"
                );
            };
            let signer = NoteSigner::generate(&name, &mut rand::rngs::OsRng).map_err(|e| {
                anyhow::anyhow!(
                    "NAME {name:?}: {e}: expected a log name such as example.com/nekhebet \
                     (no spaces, no '+')"
                )
            })?;
            write_key_file(&path, &signer).with_context(|| {
                format!(
                    "writing the key to {} (an existing file is never replaced)",
                    path.display()
                )
            })?;
            eprintln!(
                "signer key written to {} (mode 0600); its verifier key (give it to clients):",
                path.display()
            );
            println!("{}", signer.verifier());
            Ok(ExitCode::SUCCESS)
        }
    }
}
