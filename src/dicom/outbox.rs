//! The durable DICOM outbox: every result object is written here, and synced, before it
//! counts as made; it leaves a destination's queue only after that destination answered its
//! C-STORE with success (or a warning). The same promises as the findings' outbox
//! ([`crate::publish::outbox`]), for objects of up to a few MB that go to several PACS.
//!
//! # On disk
//! ```text
//! <root>/.incoming/<name>.part     being written (removed at start: never made)
//! <root>/<destination>/pending/<name>      waiting for that destination
//! <root>/<destination>/dead/<name>         refused max_attempts times…
//! <root>/<destination>/dead/<name>.reason  …and why (text)
//! ```
//! `<name>` is `<SOP Instance UID>~<SOP Class UID>.dcm`, a Part-10 file. An object is written
//! once, synced, then hard-linked into every destination's `pending` folder (synced too)
//! before [`DicomOutbox::put`] returns, so that the caller may then let go of the source
//! image. A crash before that leaves at most a `.part` (removed at the next start) and the
//! source still in the inbox or spool, which makes the object again.
//!
//! Sending is at least once: a crash between a destination's success answer and the unlink
//! sends that object again. The UIDs are derived from the source and the models
//! ([`crate::dicom::derived::uid`]), so a resend is the same instance, not a duplicate study
//! entry. An object already waiting for a destination is not queued twice.
//!
//! # Limits
//! At most `max_bytes` on disk, counting each destination's copy and the dead letters (which
//! wait for a person); [`DicomOutbox::put`] refuses new objects past it with
//! [`DicomOutboxError::Full`] and keeps everything it has, and the daemon leaves new images
//! in the inbox or spool until there is room again — a PACS that is down for days loses
//! nothing, it holds the device's intake back instead.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::results::Made;

const INCOMING: &str = ".incoming";
const PENDING: &str = "pending";
const DEAD: &str = "dead";

#[derive(Debug, thiserror::Error)]
pub enum DicomOutboxError {
    #[error(
        "the DICOM outbox is full ({bytes} bytes of {max_bytes}): the new results are refused and every waiting one is kept"
    )]
    Full { bytes: u64, max_bytes: u64 },
    #[error("DICOM outbox {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot encode the result: {0}")]
    Encode(String),
}

impl DicomOutboxError {
    /// True when the results were refused for lack of room (by the limit or by the disk).
    pub fn is_full(&self) -> bool {
        match self {
            DicomOutboxError::Full { .. } => true,
            DicomOutboxError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            DicomOutboxError::Encode(_) => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DicomOutboxError + '_ {
    move |source| DicomOutboxError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One object waiting for one destination.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The file name: `<SOP Instance UID>~<SOP Class UID>.dcm`.
    pub name: String,
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    bytes: u64,
    attempts: u32,
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Taken by the sender and not yet answered.
    in_flight: Vec<Pending>,
    dead: usize,
    sent: u64,
    refusals: u64,
    reachable: Option<bool>,
    last_error: Option<String>,
}

/// A destination's part of the status topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: String,
    /// Objects waiting (including those being sent).
    pub pending: usize,
    /// Objects in the dead-letter folder.
    pub dead: usize,
    /// Objects stored by the destination since start.
    pub sent: u64,
    /// Refusals since start (each retried until `max_attempts`).
    pub refusals: u64,
    /// Whether the last association succeeded; `None` before the first.
    pub reachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct State {
    queues: BTreeMap<String, Queue>,
    bytes: u64,
    /// What the last refused [`DicomOutbox::put`] needed: there is room again when it fits.
    need: u64,
    /// Bumped on every change, so that the status is republished only when it changed.
    version: u64,
}

/// What [`DicomOutbox::open`] found from an earlier run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub pending: usize,
    pub dead: usize,
    /// Objects whose writing never completed (removed; their sources make them again).
    pub torn: usize,
}

pub struct DicomOutbox {
    root: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    wake: Condvar,
}

impl DicomOutbox {
    /// Opens (creating) the outbox for `destinations` (their names), taking back what an
    /// earlier run left.
    pub fn open(
        root: &Path,
        destinations: &[String],
        max_bytes: u64,
    ) -> Result<(DicomOutbox, Recovery), DicomOutboxError> {
        let mut recovery = Recovery::default();
        let incoming = root.join(INCOMING);
        fs::create_dir_all(&incoming).map_err(io_err(&incoming))?;
        for entry in fs::read_dir(&incoming).map_err(io_err(&incoming))? {
            let path = entry.map_err(io_err(&incoming))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            recovery.torn += 1;
        }
        let mut state = State {
            queues: BTreeMap::new(),
            bytes: 0,
            need: 0,
            version: 0,
        };
        for dest in destinations {
            let mut queue = Queue::default();
            let dir = root.join(dest).join(PENDING);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let dead = root.join(dest).join(DEAD);
            fs::create_dir_all(&dead).map_err(io_err(&dead))?;
            let mut found = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry.metadata().map_err(io_err(&path))?;
                match parse_name(&name) {
                    Some((instance, class)) if meta.is_file() => found.push((
                        meta.modified().ok(),
                        Pending {
                            name: name.clone(),
                            path,
                            sop_instance_uid: instance.into(),
                            sop_class_uid: class.into(),
                            bytes: meta.len(),
                            attempts: 0,
                            not_before: None,
                        },
                    )),
                    _ => warn!(file = %path.display(), "not a bedside result; left alone"),
                }
            }
            // Oldest first, as they were made.
            found.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
            for (_, p) in found {
                state.bytes += p.bytes;
                queue.pending.push_back(p);
            }
            for entry in fs::read_dir(&dead).map_err(io_err(&dead))? {
                let entry = entry.map_err(io_err(&dead))?;
                if let Ok(meta) = entry.metadata() {
                    state.bytes += meta.len();
                }
                if entry.file_name().to_string_lossy().ends_with(".dcm") {
                    queue.dead += 1;
                }
            }
            recovery.pending += queue.pending.len();
            recovery.dead += queue.dead;
            state.queues.insert(dest.clone(), queue);
        }
        for entry in fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != INCOMING && !state.queues.contains_key(&name) {
                warn!(
                    folder = %entry.path().display(),
                    "results for a destination the profile no longer names stay here, unsent"
                );
            }
        }
        Ok((
            DicomOutbox {
                root: root.to_owned(),
                max_bytes,
                state: Mutex::new(state),
                wake: Condvar::new(),
            },
            recovery,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The files are the truth; a panic elsewhere leaves counters at worst.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `made` and queues it for every destination; returns once it is on disk, synced,
    /// in every destination's folder. An object already waiting for a destination is not
    /// queued for it again.
    pub fn put(&self, made: &[Made]) -> Result<(), DicomOutboxError> {
        if made.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(String, &Made, Vec<u8>)> = made
            .iter()
            .map(|m| {
                let bytes = m
                    .to_bytes()
                    .map_err(|e| DicomOutboxError::Encode(e.to_string()))?;
                Ok((file_name(&m.sop_instance_uid, &m.sop_class_uid), m, bytes))
            })
            .collect::<Result<_, DicomOutboxError>>()?;
        // The room is taken (reserved) under the same lock that finds it, so that workers
        // putting at once cannot each find the same room and together pass `max_bytes`; it
        // is given back on every way out, and exchanged for what was queued at the end.
        let (destinations, mut reserved) = {
            let mut s = self.lock();
            let destinations: Vec<String> = s.queues.keys().cloned().collect();
            let adding: u64 =
                encoded.iter().map(|e| e.2.len() as u64).sum::<u64>() * destinations.len() as u64;
            if s.bytes + adding > self.max_bytes {
                s.need = adding;
                return Err(DicomOutboxError::Full {
                    bytes: s.bytes,
                    max_bytes: self.max_bytes,
                });
            }
            s.bytes += adding;
            (
                destinations,
                Reserved {
                    outbox: self,
                    bytes: adding,
                },
            )
        };
        let incoming = self.root.join(INCOMING);
        let mut queued = Vec::new();
        for (name, m, bytes) in &encoded {
            let part = incoming.join(format!("{name}.part"));
            write_synced(&part, bytes)?;
            for dest in &destinations {
                let path = self.root.join(dest).join(PENDING).join(name);
                match fs::hard_link(&part, &path) {
                    Ok(()) => queued.push((
                        dest.clone(),
                        Pending {
                            name: name.clone(),
                            path,
                            sop_instance_uid: m.sop_instance_uid.clone(),
                            sop_class_uid: m.sop_class_uid.clone(),
                            bytes: bytes.len() as u64,
                            attempts: 0,
                            not_before: None,
                        },
                    )),
                    // The same instance (made again from the same source) already waits.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        let _ = fs::remove_file(&part);
                        return Err(io_err(&path)(e));
                    }
                }
            }
            fs::remove_file(&part).map_err(io_err(&part))?;
        }
        for dest in &destinations {
            sync_dir(&self.root.join(dest).join(PENDING))?;
        }
        let mut s = self.lock();
        s.need = 0;
        s.bytes -= std::mem::take(&mut reserved.bytes);
        for (dest, p) in queued {
            s.bytes += p.bytes;
            if let Some(q) = s.queues.get_mut(&dest) {
                q.pending.push_back(p);
            }
        }
        s.version += 1;
        drop(s);
        self.wake.notify_all();
        Ok(())
    }

    /// Up to `max` objects for `destination` that are due, taken in order (they stay on disk
    /// and count as pending until answered). Waits up to `wait` when none is due.
    pub fn take(&self, destination: &str, max: usize, wait: Duration) -> Vec<Pending> {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            let now = Instant::now();
            if let Some(q) = s.queues.get_mut(destination) {
                let mut taken = Vec::new();
                let mut i = 0;
                while i < q.pending.len() && taken.len() < max {
                    if q.pending[i].not_before.is_none_or(|t| t <= now) {
                        let p = q.pending.remove(i).expect("index in range");
                        q.in_flight.push(p.clone());
                        taken.push(p);
                    } else {
                        i += 1;
                    }
                }
                if !taken.is_empty() {
                    return taken;
                }
            }
            if now >= deadline {
                return Vec::new();
            }
            s = self
                .wake
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn finish(&self, destination: &str, name: &str) -> Option<(MutexGuard<'_, State>, Pending)> {
        let mut s = self.lock();
        let q = s.queues.get_mut(destination)?;
        let i = q.in_flight.iter().position(|p| p.name == name)?;
        let p = q.in_flight.swap_remove(i);
        Some((s, p))
    }

    /// The destination stored the object: it leaves that destination's queue.
    pub fn delivered(&self, destination: &str, name: &str) {
        let Some((mut s, p)) = self.finish(destination, name) else {
            return;
        };
        // A lost unlink (crash before the directory reaches the disk) sends it again: at
        // least once, never lost.
        if let Err(e) = fs::remove_file(&p.path) {
            warn!(file = %p.path.display(), "sent, but cannot remove it ({e}); it may be sent again");
        }
        s.bytes = s.bytes.saturating_sub(p.bytes);
        s.version += 1;
        let q = s.queues.get_mut(destination).expect("finish found it");
        q.sent += 1;
        q.reachable = Some(true);
    }

    /// The destination refused the object (`reason`): it is tried again after a pause that
    /// doubles each time, and after `max_attempts` refusals moves to the dead-letter folder
    /// with the reason. Returns true when it went there.
    pub fn refused(&self, destination: &str, name: &str, reason: &str, max_attempts: u32) -> bool {
        let Some((mut s, mut p)) = self.finish(destination, name) else {
            return false;
        };
        p.attempts += 1;
        s.version += 1;
        let q = s.queues.get_mut(destination).expect("finish found it");
        q.refusals += 1;
        q.reachable = Some(true);
        q.last_error = Some(format!("{}: {reason}", p.sop_instance_uid));
        if p.attempts < max_attempts {
            let pause = retry_pause(p.attempts);
            warn!(
                destination, object = %p.name, attempt = p.attempts, max_attempts,
                retry_in_s = pause.as_secs(), "refused: {reason}"
            );
            p.not_before = Some(Instant::now() + pause);
            q.pending.push_back(p);
            return false;
        }
        let dead_dir = self.root.join(destination).join(DEAD);
        let dead = dead_dir.join(&p.name);
        let note = format!(
            "destination: {destination}\nsop_instance_uid: {}\nsop_class_uid: {}\nattempts: {}\nlast_refusal: {reason}\nat: {}\n",
            p.sop_instance_uid,
            p.sop_class_uid,
            p.attempts,
            crate::finding::now_rfc3339()
        );
        let moved = write_synced(
            &dead_dir.join(format!("{}.reason", p.name)),
            note.as_bytes(),
        )
        .and_then(|()| fs::rename(&p.path, &dead).map_err(io_err(&dead)))
        .and_then(|()| sync_dir(&dead_dir))
        .and_then(|()| sync_dir(&self.root.join(destination).join(PENDING)));
        match moved {
            Ok(()) => {
                q.dead += 1;
                s.bytes += note.len() as u64;
                warn!(
                    destination, object = %p.name, attempts = p.attempts, folder = %dead_dir.display(),
                    "refused {} times, moved to the dead-letter folder: {reason}", p.attempts
                );
                true
            }
            Err(e) => {
                warn!(destination, object = %p.name, "cannot move it to the dead-letter folder ({e}); it stays pending");
                p.not_before = Some(Instant::now() + retry_pause(p.attempts));
                q.pending.push_back(p);
                false
            }
        }
    }

    /// The destination could not be reached or broke off: the objects taken go back to the
    /// front of its queue, unchanged (not a refusal: they wait however long it takes).
    pub fn unreachable(&self, destination: &str, names: &[String], error: &str) {
        let mut s = self.lock();
        s.version += 1;
        let Some(q) = s.queues.get_mut(destination) else {
            return;
        };
        let mut back: Vec<Pending> = Vec::new();
        q.in_flight.retain(|p| {
            if names.contains(&p.name) {
                back.push(p.clone());
                false
            } else {
                true
            }
        });
        for p in back.into_iter().rev() {
            q.pending.push_front(p);
        }
        if q.reachable != Some(false) {
            info!(
                destination,
                "results wait until the destination can be reached: {error}"
            );
        }
        q.reachable = Some(false);
        q.last_error = Some(error.to_owned());
    }

    /// Wakes every sender (at shutdown).
    pub fn wake_all(&self) {
        self.wake.notify_all();
    }

    /// True while the results last refused for lack of room would still not fit.
    pub fn is_full(&self) -> bool {
        let s = self.lock();
        s.bytes + s.need.max(1) > self.max_bytes
    }

    /// Objects waiting, all destinations together.
    pub fn depth(&self) -> usize {
        self.lock()
            .queues
            .values()
            .map(|q| q.pending.len() + q.in_flight.len())
            .sum()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Changes with every change of the status.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    pub fn status(&self) -> Vec<DestinationStatus> {
        self.lock()
            .queues
            .iter()
            .map(|(name, q)| DestinationStatus {
                destination: name.clone(),
                pending: q.pending.len() + q.in_flight.len(),
                dead: q.dead,
                sent: q.sent,
                refusals: q.refusals,
                reachable: q.reachable,
                last_error: q.last_error.clone(),
            })
            .collect()
    }
}

/// The pause before the `attempt`+1-th try of a refused object: 5 s, doubling, at most 10 min.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_secs((5u64 << attempt.saturating_sub(1).min(7)).min(600))
}

pub fn file_name(sop_instance: &str, sop_class: &str) -> String {
    format!("{sop_instance}~{sop_class}.dcm")
}

fn parse_name(name: &str) -> Option<(&str, &str)> {
    let (instance, class) = name.strip_suffix(".dcm")?.split_once('~')?;
    let uid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    (uid(instance) && uid(class)).then_some((instance, class))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DicomOutboxError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), DicomOutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Room taken in the outbox for objects being written; given back when dropped (an error on
/// the way), unless the put settled it.
struct Reserved<'a> {
    outbox: &'a DicomOutbox,
    bytes: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.outbox.lock().bytes -= self.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(uid: &str) -> Made {
        let meta = dicom_object::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
            .media_storage_sop_instance_uid(uid)
            .transfer_syntax("1.2.840.10008.1.2.1");
        let obj = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.7"),
            ),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid)),
        ]);
        Made {
            kind: super::super::results::ResultKind::Sc,
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            sop_instance_uid: uid.into(),
            models: Vec::new(),
            object: obj.with_meta(meta).unwrap(),
        }
    }

    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;

    const DESTS: [&str; 2] = ["pacs", "archive"];

    fn dests() -> Vec<String> {
        DESTS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn objects_wait_per_destination_across_a_restart_and_leave_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, rec) = DicomOutbox::open(dir.path(), &dests(), 1 << 20).unwrap();
        assert_eq!(rec, Recovery::default());
        outbox.put(&[made("1.2.3.1"), made("1.2.3.2")]).unwrap();
        // Made again from the same source: not queued twice.
        outbox.put(&[made("1.2.3.1")]).unwrap();
        assert_eq!(outbox.depth(), 4);
        let taken = outbox.take("pacs", 8, Duration::ZERO);
        assert_eq!(
            taken
                .iter()
                .map(|p| p.sop_instance_uid.as_str())
                .collect::<Vec<_>>(),
            ["1.2.3.1", "1.2.3.2"]
        );
        outbox.delivered("pacs", &taken[0].name);
        // A torn write from a crash, then a restart: the .part goes, the rest is back.
        fs::write(dir.path().join(INCOMING).join("x.part"), b"half").unwrap();
        drop(outbox);
        let (outbox, rec) = DicomOutbox::open(dir.path(), &dests(), 1 << 20).unwrap();
        assert_eq!((rec.pending, rec.torn), (3, 1));
        let pacs = outbox.take("pacs", 8, Duration::ZERO);
        assert_eq!(pacs.len(), 1);
        assert_eq!(pacs[0].sop_instance_uid, "1.2.3.2");
        assert_eq!(outbox.take("archive", 8, Duration::ZERO).len(), 2);
        // The file stays while another destination still needs it.
        assert!(
            dir.path()
                .join("archive/pending")
                .join(&pacs[0].name)
                .exists()
        );
    }

    #[test]
    fn refusals_are_retried_then_dead_lettered_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = DicomOutbox::open(dir.path(), &dests()[..1], 1 << 20).unwrap();
        outbox.put(&[made("1.2.3.9")]).unwrap();
        let p = outbox.take("pacs", 1, Duration::ZERO).remove(0);
        assert!(!outbox.refused("pacs", &p.name, "status A700", 2));
        // Not due yet: the pause after a refusal.
        assert!(outbox.take("pacs", 1, Duration::ZERO).is_empty());
        {
            let mut s = outbox.lock();
            s.queues.get_mut("pacs").unwrap().pending[0].not_before = None;
        }
        let p = outbox.take("pacs", 1, Duration::ZERO).remove(0);
        assert!(outbox.refused("pacs", &p.name, "status A700", 2));
        assert_eq!(outbox.depth(), 0);
        let reason = fs::read_to_string(
            dir.path()
                .join("pacs/dead")
                .join(format!("{}.reason", p.name)),
        )
        .unwrap();
        assert!(
            reason.contains("attempts: 2") && reason.contains("A700"),
            "{reason}"
        );
        assert_eq!(outbox.status()[0].dead, 1);
        // Unreachable is not a refusal: the object goes back to the front, untouched.
        outbox.put(&[made("1.2.3.10")]).unwrap();
        let p = outbox.take("pacs", 1, Duration::ZERO);
        outbox.unreachable("pacs", &[p[0].name.clone()], "connection refused");
        assert_eq!(outbox.status()[0].reachable, Some(false));
        assert_eq!(outbox.take("pacs", 1, Duration::ZERO)[0].name, p[0].name);
    }

    #[test]
    fn full_refuses_new_results_and_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let one = made("1.2.3.1").to_bytes().unwrap().len() as u64;
        let (outbox, _) = DicomOutbox::open(dir.path(), &dests(), 3 * one).unwrap();
        outbox.put(&[made("1.2.3.1")]).unwrap();
        let e = outbox.put(&[made("1.2.3.2")]).unwrap_err();
        assert!(e.is_full(), "{e}");
        assert_eq!(outbox.depth(), 2);
    }

    #[test]
    fn workers_putting_at_once_cannot_together_pass_the_limit() {
        // Room for one object on both destinations; two workers put one each at the same
        // moment. Each write is fsynced, so before the room was reserved under the lock both
        // found it free and both went in.
        let dir = tempfile::tempdir().unwrap();
        let one = made("1.2.3.1").to_bytes().unwrap().len() as u64;
        let (outbox, _) = DicomOutbox::open(dir.path(), &dests(), 3 * one).unwrap();
        for round in 0..5 {
            let start = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..2)
                    .map(|w| {
                        let (outbox, start) = (&outbox, &start);
                        scope.spawn(move || {
                            start.wait();
                            outbox.put(&[made(&format!("1.2.3.{round}{w}"))])
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let full = results
                .iter()
                .filter(|r| r.as_ref().is_err_and(|e| e.is_full()));
            assert_eq!(full.count(), 1, "round {round}: {results:?}");
            assert_eq!(outbox.depth(), 2);
            assert!(outbox.lock().bytes <= 3 * one);
            // Delivered: the room is free again for the next round.
            for dest in DESTS {
                for p in outbox.take(dest, 8, Duration::ZERO) {
                    outbox.delivered(dest, &p.name);
                }
            }
            assert_eq!((outbox.depth(), outbox.lock().bytes), (0, 0));
        }
    }

    #[test]
    fn names_carry_both_uids_and_nothing_else_is_taken() {
        assert_eq!(
            parse_name(&file_name("1.2.3", "4.5")),
            Some(("1.2.3", "4.5"))
        );
        assert_eq!(parse_name("../x~1.dcm"), None);
        assert_eq!(parse_name("1.2.dcm"), None);
    }
}
