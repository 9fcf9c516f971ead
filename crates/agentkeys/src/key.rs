//! `agentkeys key …`: create and inspect wallet key files.

use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::keyfile;
use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a new secp256k1 wallet key, write it to FILE with mode 0600 and print its
    /// address.
    Generate {
        /// Where to write the key (0x followed by 64 hex digits).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,

        /// Replace FILE if it exists. The old key is lost.
        #[arg(long)]
        force: bool,
    },

    /// Print the address of a key file.
    Address {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

/// Runs `agentkeys key …`. Key commands touch neither the broker nor the profile.
pub(crate) fn run(command: KeyCommand, out: &mut dyn Write) -> Result<()> {
    match command {
        KeyCommand::Generate { out: file, force } => key_generate(&file, force, out),
        KeyCommand::Address { key_file } => {
            let signer = keyfile::read(&key_file)?;
            emit(out, &format!("{}\n", keyfile::address_of(&signer)))
        }
    }
}

fn key_generate(file: &Path, force: bool, out: &mut dyn Write) -> Result<()> {
    let signer = keyfile::generate(file, force)?;
    // Address on stdout (so it can be captured), the note on stderr.
    emit(out, &format!("{}\n", keyfile::address_of(&signer)))?;
    eprintln!(
        "Wrote a new wallet key to {} (mode 0600). Keep it secret and backed up.",
        file.display()
    );
    Ok(())
}
