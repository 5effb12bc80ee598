//! Model updates on a running device. `bedside models install DIR` checks a model folder the
//! way the daemon will take it and stages it as `<state>/models.d/<id>/`; the daemon takes
//! staged models at start and on SIGHUP (`systemctl reload bedside`), between two images,
//! and keeps the model it has whenever a check fails.
//!
//! The checks, in order: the manifest's ed25519 signature (`model.toml.sig`) when the board
//! profile names `[updates] public_key` — the manifest names the sha256 of every model file,
//! so the signature covers the weights —; the id must be one the device serves; then loading
//! (sha256 of the bytes tract parses, a dry run, the outputs against the labels) and the memory
//! plan with the new model in place of the old, which happen where the engine is built
//! ([`crate::plan`]).

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::board::BoardProfile;
use crate::model::{Manifest, ModelError};

/// The signature of `model.toml`, beside it: 128 hex digits.
pub const SIGNATURE_FILE: &str = "model.toml.sig";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: no {SIGNATURE_FILE}, and this device takes only signed models")]
    Unsigned { path: PathBuf },
    #[error("{path}: the signature of model.toml does not verify with the device's key")]
    BadSignature { path: PathBuf },
    #[error("bad ed25519 key: {0}")]
    BadKey(String),
    #[error(
        "this device serves no model `{id}` (it serves {served:?}); an update replaces a model, it does not add one"
    )]
    NotServed { id: String, served: Vec<String> },
    #[error(
        "{path}: model.toml states no [memory] tract_working_bytes; an update is planned before it is loaded, so it must (bedside-model writes it; `bedside models measure` prints it)"
    )]
    NoMemory { path: PathBuf },
    #[error(transparent)]
    OverBudget(#[from] crate::plan::OverBudget),
    #[error(
        "{path}: model.toml names the file `{file}`, which is not a plain path inside the folder"
    )]
    BadPath { path: PathBuf, file: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// Where staged updates live.
pub fn updates_dir(profile: &BoardProfile) -> PathBuf {
    profile.paths.state.join("models.d")
}

fn key_bytes<const N: usize>(hex_text: &str) -> Result<[u8; N], UpdateError> {
    let bytes = hex::decode(hex_text.trim()).map_err(|e| UpdateError::BadKey(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| UpdateError::BadKey(format!("{} bytes, want {N}", b.len())))
}

/// The device's public key from its hex form.
pub fn verifying_key(hex_text: &str) -> Result<VerifyingKey, UpdateError> {
    VerifyingKey::from_bytes(&key_bytes::<32>(hex_text)?)
        .map_err(|e| UpdateError::BadKey(e.to_string()))
}

/// A new key pair from the operating system's random source: (secret seed, public key), hex.
pub fn keygen() -> Result<(String, String), UpdateError> {
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(io("/dev/urandom"))?,
        &mut seed,
    )
    .map_err(io("/dev/urandom"))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        hex::encode(seed),
        hex::encode(key.verifying_key().to_bytes()),
    ))
}

/// Signs `dir/model.toml` with the secret seed (hex) and writes `dir/model.toml.sig`.
pub fn sign(dir: &Path, secret_hex: &str) -> Result<PathBuf, UpdateError> {
    let key = SigningKey::from_bytes(&key_bytes::<32>(secret_hex)?);
    let manifest = dir.join("model.toml");
    let bytes = std::fs::read(&manifest).map_err(io(manifest.display().to_string()))?;
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, hex::encode(key.sign(&bytes).to_bytes()) + "\n")
        .map_err(io(path.display().to_string()))?;
    Ok(path)
}

/// Checks `dir/model.toml` against its signature; `None` (no key on this device) accepts any.
pub fn verify_signature(dir: &Path, key: Option<&VerifyingKey>) -> Result<(), UpdateError> {
    let Some(key) = key else { return Ok(()) };
    let sig_path = dir.join(SIGNATURE_FILE);
    let text = match std::fs::read_to_string(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UpdateError::Unsigned {
                path: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(io(sig_path.display().to_string())(e)),
    };
    let bad = || UpdateError::BadSignature {
        path: dir.to_path_buf(),
    };
    let signature = Signature::from_bytes(&key_bytes::<64>(&text).map_err(|_| bad())?);
    let manifest = dir.join("model.toml");
    let bytes = std::fs::read(&manifest).map_err(io(manifest.display().to_string()))?;
    key.verify(&bytes, &signature).map_err(|_| bad())
}

/// The checks that need no engine: signature, manifest, and an id this device serves.
/// Returns the manifest.
pub fn precheck(profile: &BoardProfile, dir: &Path) -> Result<Manifest, UpdateError> {
    let key = profile
        .updates
        .public_key
        .as_deref()
        .map(verifying_key)
        .transpose()?;
    verify_signature(dir, key.as_ref())?;
    let manifest = Manifest::load(dir)?;
    if manifest
        .memory
        .as_ref()
        .and_then(|m| m.tract_working_bytes)
        .is_none()
    {
        return Err(UpdateError::NoMemory {
            path: dir.to_path_buf(),
        });
    }
    let served = served_ids(profile);
    if !served.contains(&manifest.model.id) {
        return Err(UpdateError::NotServed {
            id: manifest.model.id.clone(),
            served,
        });
    }
    Ok(manifest)
}

/// The ids of the models the profile names (read from their manifests).
pub fn served_ids(profile: &BoardProfile) -> Vec<String> {
    profile
        .models
        .iter()
        .filter_map(|m| Manifest::load(&m.path).ok().map(|m| m.model.id))
        .collect()
}

/// Copies what the manifest names (model files, manifest, signature, card) into
/// `models.d/<id>/`, replacing a staged version of the same id only once the copy is whole.
pub fn stage(
    profile: &BoardProfile,
    dir: &Path,
    manifest: &Manifest,
) -> Result<PathBuf, UpdateError> {
    let root = updates_dir(profile);
    std::fs::create_dir_all(&root).map_err(io(root.display().to_string()))?;
    let id = &manifest.model.id;
    let target = root.join(id);
    let staging = root.join(format!(".{id}.staging"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(io(staging.display().to_string()))?;
    let mut files: Vec<PathBuf> = vec![manifest.model.file.clone()];
    files.extend(manifest.model.parent.iter().map(|p| p.file.clone()));
    files.extend(manifest.model.pruned.iter().map(|p| p.file.clone()));
    for extra in ["model.toml", SIGNATURE_FILE, "MODEL_CARD.md", "README.md"] {
        files.push(PathBuf::from(extra));
    }
    for f in files {
        // Only names inside the folder: a manifest cannot make the copy read or write
        // anywhere else.
        if !f
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(UpdateError::BadPath {
                path: dir.to_path_buf(),
                file: f,
            });
        }
        let from = dir.join(&f);
        if !from.exists() {
            continue;
        }
        let to = staging.join(&f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent.display().to_string()))?;
        }
        std::fs::copy(&from, &to).map_err(io(format!("copying {}", from.display())))?;
    }
    // Data on disk before the names change. A power cut leaves the old staged folder, the
    // new one, or — between the two renames — none, and then the board's own models serve.
    for entry in std::fs::read_dir(&staging).map_err(io(staging.display().to_string()))? {
        let p = entry.map_err(io(staging.display().to_string()))?.path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io(p.display().to_string()))?;
        }
    }
    let old = root.join(format!(".{id}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if target.exists() {
        std::fs::rename(&target, &old).map_err(io(target.display().to_string()))?;
    }
    std::fs::rename(&staging, &target).map_err(io(target.display().to_string()))?;
    let _ = std::fs::remove_dir_all(&old);
    if let Ok(d) = std::fs::File::open(&root) {
        let _ = d.sync_all();
    }
    Ok(target)
}

/// The staged update for model `id`, if there is one.
pub fn staged(profile: &BoardProfile, id: &str) -> Option<PathBuf> {
    let dir = updates_dir(profile).join(id);
    dir.join("model.toml").is_file().then_some(dir)
}

/// The profile the daemon starts with: each model for which an update is staged, and passes
/// [`precheck`], is taken from `models.d`; the refusals come back with their reasons (the old
/// model then serves).
pub fn resolve(profile: &BoardProfile) -> (BoardProfile, Vec<String>) {
    let mut resolved = profile.clone();
    let mut refused = Vec::new();
    for slot in &mut resolved.models {
        let Ok(current) = Manifest::load(&slot.path) else {
            continue;
        };
        let Some(dir) = staged(profile, &current.model.id) else {
            continue;
        };
        match precheck(profile, &dir) {
            Ok(_) => slot.path = dir,
            Err(e) => refused.push(format!("staged update {} refused: {e}", dir.display())),
        }
    }
    (resolved, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_byte_of_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), "[model]\nid = \"x\"\n").unwrap();
        let (secret, public) = keygen().unwrap();
        let key = verifying_key(&public).unwrap();
        assert!(matches!(
            verify_signature(dir.path(), Some(&key)),
            Err(UpdateError::Unsigned { .. })
        ));
        sign(dir.path(), &secret).unwrap();
        verify_signature(dir.path(), Some(&key)).unwrap();
        std::fs::write(dir.path().join("model.toml"), "[model]\nid = \"y\"\n").unwrap();
        assert!(matches!(
            verify_signature(dir.path(), Some(&key)),
            Err(UpdateError::BadSignature { .. })
        ));
        let (_, other) = keygen().unwrap();
        sign(dir.path(), &secret).unwrap();
        assert!(verify_signature(dir.path(), Some(&verifying_key(&other).unwrap())).is_err());
        assert!(verify_signature(dir.path(), None).is_ok());
    }

    #[test]
    fn a_manifest_cannot_make_staging_read_or_write_outside_its_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let profile_text = format!(
            "[device]\nid = \"d\"\nsite = \"s\"\nboard = \"b\"\n[paths]\ninbox = \"{0}/in\"\nstate = \"{0}/state\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[[models]]\npath = \"{1}\"\n",
            tmp.path().display(),
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models/cxr-tiny-cls")
                .display()
        );
        let board = tmp.path().join("board.toml");
        std::fs::write(&board, profile_text).unwrap();
        let profile = BoardProfile::load(&board).unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cxr-tiny-cls");
        let mut manifest = Manifest::load(&src).unwrap();
        for bad in ["../../escape.onnx", "/etc/passwd"] {
            manifest.model.file = PathBuf::from(bad);
            assert!(matches!(
                stage(&profile, &src, &manifest),
                Err(UpdateError::BadPath { .. })
            ));
        }
        assert!(!updates_dir(&profile).join("cxr-tiny-cls").exists());
    }
}

/// What happened to one staged update.
#[derive(Debug, Clone)]
pub enum Outcome {
    Taken {
        old: crate::model::ModelRef,
        new: crate::model::ModelRef,
    },
    Refused {
        id: String,
        dir: PathBuf,
        reason: String,
    },
}

impl Outcome {
    /// The status topic's `model_update`.
    pub fn to_json(&self) -> serde_json::Value {
        let at = crate::finding::now_rfc3339();
        match self {
            Outcome::Taken { old, new } => serde_json::json!({
                "state": "taken", "model": new, "replaced": old, "at": at,
            }),
            // The first line: a memory plan's table stays in the log.
            Outcome::Refused { id, dir, reason } => serde_json::json!({
                "state": "refused", "model": { "id": id }, "staged": dir.display().to_string(),
                "reason": reason.lines().next().unwrap_or_default(), "at": at,
            }),
        }
    }
}

/// What a running daemon keeps to take updates: the profile and what its memory plan was
/// computed from, so that a new model is planned in the place of the old.
pub struct Updater {
    profile: BoardProfile,
    dicom_facts: Vec<crate::plan::ModelFacts>,
    video_facts: Vec<crate::plan::ModelFacts>,
    baseline_rss: u64,
    /// The image workers the plan holds: a new model runs in each.
    workers: usize,
}

impl Updater {
    pub fn new(profile: BoardProfile, planned: &crate::plan::Planned) -> Self {
        Updater {
            profile,
            dicom_facts: planned.dicom_facts.clone(),
            video_facts: planned.video_facts.clone(),
            baseline_rss: planned.baseline_rss,
            workers: planned.workers.count,
        }
    }

    /// The plan's facts with `id` measured as `memory` wherever it serves.
    fn facts_with(
        &self,
        id: &str,
        memory: crate::plan::ModelMemory,
        manifest: &Manifest,
    ) -> (Vec<crate::plan::ModelFacts>, Vec<crate::plan::ModelFacts>) {
        let swap = |facts: &[crate::plan::ModelFacts]| {
            let mut facts = facts.to_vec();
            for f in facts.iter_mut().filter(|f| f.id == id) {
                *f = crate::plan::ModelFacts::of(manifest, memory);
            }
            facts
        };
        (swap(&self.dicom_facts), swap(&self.video_facts))
    }

    /// The plan with `manifest`'s model in place of `id`: its measured memory when given,
    /// else what the manifest states (the working memory; the weights not yet counted, so
    /// a model this refuses is refused for certain).
    fn plan_with(
        &self,
        id: &str,
        manifest: &Manifest,
        measured: Option<crate::plan::ModelMemory>,
    ) -> crate::plan::MemoryPlan {
        let memory = measured.unwrap_or(crate::plan::ModelMemory {
            resident: 0,
            working: manifest
                .memory
                .as_ref()
                .and_then(|m| m.tract_working_bytes)
                .unwrap_or(0),
        });
        let (dicom, video) = self.facts_with(id, memory, manifest);
        crate::plan::MemoryPlan::compute(
            &self.profile,
            &dicom,
            &video,
            self.baseline_rss,
            self.workers,
        )
    }

    /// Takes every staged update of a model the device serves — on images (`processors`,
    /// one per image worker, all serving the same models) and on live video (`live`) —
    /// whose version or weights differ from the one serving, each only if every check
    /// passes. Called while no image worker holds an image; the live pipeline swaps between
    /// two frames.
    pub fn take(
        &mut self,
        processors: &mut [&mut crate::pipeline::Processor],
        live: Option<&crate::live::LiveUpdater>,
    ) -> Vec<Outcome> {
        let mut serving: Vec<crate::model::ModelRef> = processors
            .first()
            .map(|p| p.engines().map(|e| e.model_ref().clone()).collect())
            .unwrap_or_default();
        for m in live.map(|l| l.models()).unwrap_or_default() {
            if !serving.iter().any(|s| s.id == m.id) {
                serving.push(m);
            }
        }
        let mut outcomes = Vec::new();
        for current in serving {
            let id = current.id.clone();
            let Some(dir) = staged(&self.profile, &id) else {
                continue;
            };
            // A model is its (id, version, sha256), as every finding names it: a staged
            // folder with the same version and weights is the one serving. (A changed
            // threshold needs a new version, or findings could not tell the two apart.)
            match Manifest::load(&dir) {
                Ok(m) if m.model.sha256 == current.sha256 && m.model.version == current.version => {
                    continue;
                }
                _ => {}
            }
            let refused = |reason: String| Outcome::Refused {
                id: id.clone(),
                dir: dir.clone(),
                reason,
            };
            let on_images = self.dicom_facts.iter().any(|f| f.id == id);
            let on_video = self.video_facts.iter().any(|f| f.id == id);
            if on_video && live.is_none() {
                outcomes.push(refused("the live pipeline is not running here".into()));
                continue;
            }
            let manifest = match precheck(&self.profile, &dir) {
                Ok(m) => m,
                Err(e) => {
                    outcomes.push(refused(e.to_string()));
                    continue;
                }
            };
            // Planned with what the manifest states before anything is loaded: a model
            // too large for the budget must not be loaded to find out (the unit's
            // MemoryMax= would end the daemon).
            if let Err(e) = self.plan_with(&id, &manifest, None).check() {
                outcomes.push(refused(e.to_string()));
                continue;
            }
            // Loaded and dry-run beside the old one, which serves until the swap.
            let (engine, memory) = match crate::plan::load_measured(&dir) {
                Ok(x) => x,
                Err(e) => {
                    outcomes.push(refused(e.to_string()));
                    continue;
                }
            };
            if let Err(e) = self.plan_with(&id, &manifest, Some(memory)).check() {
                outcomes.push(refused(e.to_string()));
                continue;
            }
            let new = engine.model_ref().clone();
            let mut old = None;
            if on_images {
                for p in processors.iter_mut() {
                    old = p.replace(engine.fork()).ok().or(old);
                }
            }
            if on_video && let Some(live) = live {
                old = live.replace(engine).ok().or(old);
            }
            match old {
                Some(old) => {
                    (self.dicom_facts, self.video_facts) = self.facts_with(&id, memory, &manifest);
                    outcomes.push(Outcome::Taken { old, new });
                }
                None => outcomes.push(refused("no model with this id serves".into())),
            }
        }
        outcomes
    }
}
