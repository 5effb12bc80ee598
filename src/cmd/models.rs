//! `bedside models`: what a device serves, and putting a new model on it without downtime
//! (see [`bedside::update`]).

use std::path::Path;
use std::process::ExitCode;

use bedside::board::BoardProfile;
use bedside::model::Manifest;
use bedside::update;

/// Checks `dir` as the running daemon will (signature, id, sha256, load and dry run, the memory
/// plan with it in place of the model of the same id) and stages it under the state folder.
pub fn install(board: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let profile = BoardProfile::load(board)?;
    let manifest = update::precheck(&profile, dir)?;
    let mut trial = profile.clone();
    for slot in &mut trial.models {
        if Manifest::load(&slot.path).is_ok_and(|m| m.model.id == manifest.model.id) {
            slot.path = dir.to_path_buf();
        }
    }
    let planned = bedside::plan::plan_for(&trial)?;
    planned.plan.check()?;
    let staged = update::stage(&profile, dir, &manifest)?;
    println!(
        "{} {} (sha256 {}) staged in {}",
        manifest.model.id,
        manifest.model.version,
        manifest.model.sha256,
        staged.display()
    );
    println!(
        "a running daemon takes it on SIGHUP (`systemctl reload bedside`) between two images; a restart takes it too"
    );
    Ok(ExitCode::SUCCESS)
}

/// The models the profile names and the staged updates, with versions and hashes.
pub fn list(board: &Path) -> anyhow::Result<ExitCode> {
    let profile = BoardProfile::load(board)?;
    let (resolved, refused) = update::resolve(&profile);
    println!(
        "{:<16} {:<10} {:<9} {:<66} folder",
        "model", "version", "from", "sha256"
    );
    for (slot, installed) in resolved.models.iter().zip(&profile.models) {
        let from = if slot.path == installed.path {
            "profile"
        } else {
            "update"
        };
        match Manifest::load(&slot.path) {
            Ok(m) => println!(
                "{:<16} {:<10} {:<9} {:<66} {}",
                m.model.id,
                m.model.version,
                from,
                m.model.sha256,
                slot.path.display()
            ),
            Err(e) => println!("{:<16} {e}", "?"),
        }
    }
    for r in refused {
        println!("refused: {r}");
    }
    println!(
        "(what a running daemon serves now is in its retained status: `models` and `model_update`)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `PREFIX.key` (the secret seed, hex, mode 600) and `PREFIX.pub` (the public key for
/// the board profile's `[updates] public_key`).
pub fn keygen(prefix: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = update::keygen()?;
    let key = prefix.with_extension("key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)?;
    writeln!(f, "{secret}")?;
    std::fs::write(prefix.with_extension("pub"), format!("{public}\n"))?;
    println!("secret key: {} (keep it off the devices)", key.display());
    println!("public key: {public}  (board profile: [updates] public_key)");
    Ok(ExitCode::SUCCESS)
}

/// Signs `dir/model.toml` with the secret key in `key`.
pub fn sign(key: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let secret = std::fs::read_to_string(key)?;
    let path = update::sign(dir, &secret)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Loads and dry-runs a model folder under the counting allocator and prints what its
/// manifest's `[memory]` states (the model tool writes it from this).
pub fn measure(dir: &Path) -> anyhow::Result<ExitCode> {
    let (engine, memory) = bedside::plan::load_measured(dir)?;
    let m = engine.model_ref();
    println!("# {} {} (sha256 {})", m.id, m.version, m.sha256);
    println!("resident_bytes = {}", memory.resident);
    println!("tract_working_bytes = {}", memory.working);
    Ok(ExitCode::SUCCESS)
}
