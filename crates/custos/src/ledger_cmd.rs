//! `custos ledger …`: operations that write to the audit ledger as its
//! single writer. They need the server stopped (the ledger's lock), record
//! themselves in the ledger, and never edit or delete individual records.

use std::path::Path;

use anyhow::Context as _;
use clap::Subcommand;
use custos_ledger::LedgerError;

/// The ledger commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Replaces the ledger's signing key. The `ledger.key_rotated` record
    /// and the checkpoint that includes it are signed by both keys; the old
    /// public key stays valid for older checkpoints. Stop the server first.
    RotateKey {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one ledger command on `<data_dir>/ledger`.
pub fn run(
    config: &custos_config::Config,
    data_dir: &Path,
    cmd: LedgerCommand,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let handle = tokio::runtime::Handle::current();
        let noop: custos_ledger::FsyncObserver = std::sync::Arc::new(|_| {});
        let opened = crate::audit::open(config, data_dir, handle, noop);
        let (ledger, _report) = match opened {
            Ok(l) => l,
            Err(e) => {
                if let Some(LedgerError::Locked { .. }) = e.downcast_ref() {
                    anyhow::bail!(
                        "the ledger is in use by a running server; stop it first (its lock is held)"
                    );
                }
                return Err(e);
            }
        };
        match cmd {
            LedgerCommand::RotateKey { json } => {
                let rotation = ledger.rotate_signing_key().await?;
                ledger.shutdown().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "vkey": rotation.vkey,
                            "record_seq": rotation.record_seq,
                            "first_size": rotation.first_size,
                        })
                    );
                } else {
                    println!("new verifier key (hand it to your auditors):");
                    println!("{}", rotation.vkey);
                    println!(
                        "it signs checkpoints from tree size {}; the rotation is record {}",
                        rotation.first_size, rotation.record_seq
                    );
                }
            }
        }
        Ok(())
    })
}
