//! `custos audit …`: read-only commands on the audit ledger of a data
//! directory (they work while the server runs).

use std::path::Path;

use clap::Subcommand;

/// The audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Prints the ledger's verifier (public) key.
    Pubkey,
}

/// Runs one audit command against `<data_dir>/ledger`.
pub fn run(data_dir: &Path, cmd: AuditCommand) -> anyhow::Result<()> {
    let ledger_dir = data_dir.join("ledger");
    match cmd {
        AuditCommand::Pubkey => {
            let reader = custos_ledger::LedgerReader::open(&ledger_dir);
            let keys = reader.verifier_history()?;
            let Some(last) = keys.last() else {
                anyhow::bail!("no ledger in {}", ledger_dir.display());
            };
            println!("{}", last.verifier);
            Ok(())
        }
    }
}
