//! `bedside audit`: the device's audit trail as CSV, for the quality officer.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use bedside::audit;
use bedside::board::BoardProfile;

/// Prints the inputs processed at or after `since` (all when absent), oldest first.
pub fn print(board: &Path, since: Option<&str>) -> anyhow::Result<ExitCode> {
    let profile = BoardProfile::load(board)?;
    let config = profile
        .audit_config()
        .context("the audit trail is off in this board profile ([audit] enabled = false)")?;
    let since = match since {
        Some(text) => audit::parse_since(text, time::OffsetDateTime::now_utc())?,
        None => time::OffsetDateTime::UNIX_EPOCH,
    };
    if !config.dir.is_dir() {
        anyhow::bail!(
            "no audit trail at {} yet (the daemon makes it when it starts)",
            config.dir.display()
        );
    }
    let rows = audit::read(&config.dir, since)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    audit::write_csv(&rows, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
