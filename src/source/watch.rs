//! The watch folder: DICOM files dropped into the inbox are picked up once complete — when
//! the writer closes them (`cp`, a modality's exporter) or renames them in (`mv`) — and moved
//! to `done/` or `failed/` afterwards, with a `.reason` file beside a failed one.
//!
//! Files named with a leading dot or ending in `.tmp`/`.part` are writers' temporaries and
//! are ignored until renamed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

use super::SourceKind;

/// The inbox and where processed files go.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub dir: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    /// Carried into every finding from this folder.
    pub kind: SourceKind,
    /// Whether processed files are kept in `done/` (the watch folder) or removed (the DICOM
    /// spool: the modality and the PACS hold the image; bedside needs only its findings).
    pub keep_done: bool,
}

impl Inbox {
    /// The watch folder: processed files are kept in `done/`. Creates the folders if needed.
    pub fn open(inbox: &Path, state: &Path) -> io::Result<Self> {
        Self::open_as(inbox, state, SourceKind::WatchFolder, true)
    }

    /// An inbox for files from `kind`; see [`Inbox::keep_done`].
    pub fn open_as(
        inbox: &Path,
        state: &Path,
        kind: SourceKind,
        keep_done: bool,
    ) -> io::Result<Self> {
        let mut inbox = Inbox {
            dir: inbox.to_owned(),
            done: state.join("done"),
            failed: state.join("failed"),
            kind,
            keep_done,
        };
        for d in [&inbox.dir, &inbox.done, &inbox.failed] {
            std::fs::create_dir_all(d)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
        }
        // One spelling of the folder for the watcher, the scan and the daemon's lookup of
        // which inbox a file came from: a profile given as `board/dev.toml` spells it
        // `board/../var/inbox`, and the watcher reports it absolute.
        inbox.dir = inbox
            .dir
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", inbox.dir.display())))?;
        Ok(inbox)
    }

    /// Files already waiting (left by a previous run, or dropped while stopped), oldest name first.
    pub fn scan(&self) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && is_candidate(&entry.path()) {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Watches the inbox and sends each completed file to `tx`. Events stop when the returned
    /// watcher is dropped. If the kernel's event queue overflows, the folder is rescanned.
    pub fn watch(&self, tx: SyncSender<PathBuf>) -> notify::Result<RecommendedWatcher> {
        let this = self.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let event = match res {
                    Ok(e) => e,
                    Err(e) => {
                        warn!("watch folder error: {e}");
                        return;
                    }
                };
                let complete = match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.first(),
                    // inotify reports a rename as From, To and then Both: To alone is enough.
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
                    _ => None,
                };
                let mut paths: Vec<PathBuf> = complete
                    .filter(|p| is_candidate(p))
                    .cloned()
                    .into_iter()
                    .collect();
                if event.need_rescan() {
                    warn!(
                        "watch folder events overflowed; rescanning {}",
                        this.dir.display()
                    );
                    paths.extend(this.scan().unwrap_or_default());
                }
                for p in paths {
                    debug!(file = %p.display(), "inbox file complete");
                    if tx.send(p).is_err() {
                        return; // the daemon is stopping
                    }
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    /// Moves a processed file to `done/`, or removes it when this inbox keeps nothing.
    pub fn mark_done(&self, file: &Path) -> io::Result<()> {
        if self.keep_done {
            move_into(file, &self.done).map(|_| ())
        } else {
            std::fs::remove_file(file)
        }
    }

    /// Moves a file that could not be processed to `failed/`, with `<name>.reason` beside it.
    pub fn mark_failed(&self, file: &Path, reason: &str) -> io::Result<PathBuf> {
        let dest = move_into(file, &self.failed)?;
        let mut reason_path = dest.clone().into_os_string();
        reason_path.push(".reason");
        std::fs::write(&reason_path, format!("{reason}\n"))?;
        Ok(dest)
    }
}

fn is_candidate(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !(name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part"))
}

/// Renames `file` into `dir`, never overwriting: a name already taken gets `.1`, `.2`, ….
fn move_into(file: &Path, dir: &Path) -> io::Result<PathBuf> {
    let name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut dest = dir.join(name);
    let mut n = 1;
    while dest.exists() {
        let mut alt = name.to_owned();
        alt.push(format!(".{n}"));
        dest = dir.join(alt);
        n += 1;
    }
    match std::fs::rename(file, &dest) {
        Ok(()) => Ok(dest),
        // Across file systems: copy, then remove.
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            std::fs::copy(file, &dest)?;
            std::fs::remove_file(file)?;
            Ok(dest)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    #[test]
    fn picks_up_closed_and_renamed_files_but_not_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(&tmp.path().join("in"), &tmp.path().join("state")).unwrap();
        let (tx, rx) = sync_channel(16);
        let _w = inbox.watch(tx).unwrap();
        std::fs::write(inbox.dir.join(".hidden"), b"x").unwrap();
        std::fs::write(inbox.dir.join("b.part"), b"x").unwrap();
        std::fs::write(inbox.dir.join("a.dcm"), b"x").unwrap();
        std::fs::rename(inbox.dir.join("b.part"), inbox.dir.join("b.dcm")).unwrap();
        let got: Vec<PathBuf> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, vec![inbox.dir.join("a.dcm"), inbox.dir.join("b.dcm")]);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "temporaries must be ignored"
        );
        assert_eq!(
            inbox.scan().unwrap(),
            vec![inbox.dir.join("a.dcm"), inbox.dir.join("b.dcm")]
        );
    }

    #[test]
    fn failed_files_keep_their_reason_and_never_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(&tmp.path().join("in"), &tmp.path().join("state")).unwrap();
        for _ in 0..2 {
            let f = inbox.dir.join("x.dcm");
            std::fs::write(&f, b"x").unwrap();
            inbox.mark_failed(&f, "truncated").unwrap();
        }
        assert!(inbox.failed.join("x.dcm").exists());
        assert!(inbox.failed.join("x.dcm.1").exists());
        let reason = std::fs::read_to_string(inbox.failed.join("x.dcm.1.reason")).unwrap();
        assert_eq!(reason, "truncated\n");
    }
}
