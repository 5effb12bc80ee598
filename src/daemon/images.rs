//! The image workers: DICOM files from the SCP's spool and the watch folder, several at once.
//!
//! A ward round sends radiographs in bursts, and one image is decode, prepare and the
//! models, all on one core: so `N` workers (`[images] workers`, planned in
//! [`crate::plan`]) each own a [`Processor`] — the models forked from the first one, sharing
//! weights and plans, each with its own tract working memory and preparation buffers.
//!
//! One dispatcher thread takes the files as they complete (and first those waiting from
//! before) and hands each to the next free worker. A file is *in flight* from then until its
//! worker has recorded its findings and moved it out of its folder, or left it there: the
//! dispatcher never hands out a file in flight, so a file seen twice (by the scan and by a
//! watch event) is processed once. Findings are recorded in the order the workers finish,
//! each before its file leaves the inbox — the outbox's guarantees are per finding, not per
//! order.
//!
//! When the outbox (or the DICOM outbox) is full, the worker that meets it leaves its file
//! in the inbox and sets `deferred`; the other workers leave theirs too, and the dispatcher
//! drops file events until both have room, then scans the folders again.
//!
//! Model updates (SIGHUP) are taken by the dispatcher once no file is in flight, in every
//! worker's processor at once: an image runs on one processor, so none mixes two versions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::audit::AuditTrail;
use crate::dicom::outbox::DicomOutbox;
use crate::finding::UidHasher;
use crate::live::LiveUpdater;
use crate::model::ModelRef;
use crate::pipeline::Processor;
use crate::publish::{Class, Publisher};
use crate::service::{self, Heartbeat};
use crate::source::SourceKind;
use crate::source::watch::Inbox;
use crate::update::{Outcome, Updater};

/// How long a waiting thread sleeps before it looks at `stop` and beats again.
const TICK: Duration = Duration::from_millis(200);

/// What the image workers need; [`ImageWork::start`] starts them.
pub(super) struct ImageWork {
    /// The first worker's processor; the others get forks of it.
    pub processor: Processor,
    pub workers: usize,
    /// The DICOM spool (if any) first, then the watch folder.
    pub inboxes: Vec<Inbox>,
    pub publisher: Publisher,
    /// Where the DICOM results go, when the profile names destinations.
    pub dicom_out: Option<Arc<DicomOutbox>>,
    /// Set by SIGHUP: take staged model updates before the next image.
    pub reload: Arc<AtomicBool>,
    pub updater: Updater,
    /// The live pipeline's models at start, for the status before it runs.
    pub video_models: Vec<ModelRef>,
    /// Set once the live pipeline runs: updates of its models are taken with the others.
    pub live: Arc<OnceLock<LiveUpdater>>,
    /// Where inputs set aside are noted (findings are noted by the publisher).
    pub audit: Option<Arc<AuditTrail>>,
}

/// The running dispatcher and workers.
pub(super) struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    heartbeats: Vec<(String, Heartbeat)>,
}

/// What the dispatcher and the workers share.
struct Shared {
    inboxes: Vec<Inbox>,
    publisher: Publisher,
    dicom_out: Option<Arc<DicomOutbox>>,
    stop: Arc<AtomicBool>,
    /// A file was left in the inbox because an outbox is full: every worker leaves its file
    /// too, until the dispatcher has seen room and scanned again.
    deferred: AtomicBool,
    /// Files handed to a worker and not yet done with; `idle` is signalled when one is.
    in_flight: Mutex<HashSet<PathBuf>>,
    idle: Condvar,
    /// The workers' processors, each locked by its worker for one image at a time.
    processors: Vec<Mutex<Processor>>,
    made: AtomicU64,
    failed: AtomicU64,
    audit: Option<Arc<AuditTrail>>,
    /// Tags the names of watch-folder files in the log (see [`Shared::log_name`]).
    names: UidHasher,
}

impl Shared {
    /// How the log names `file`. The spool's files are named by bedside (time, process,
    /// sequence) and are logged as they are; a watch folder's are named by whatever wrote
    /// them — often after the patient — so they are logged as a keyed tag. The file itself,
    /// and for a failed one its reason, are in the folder under their own names.
    fn log_name(&self, inbox: &Inbox, file: &Path) -> String {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match inbox.kind {
            SourceKind::DicomScp => name,
            _ => format!("file-{}", self.names.name_tag(&name)),
        }
    }
}

/// Sends on `ended` when the thread holding it ends, however it ends (a panic included).
struct Alive(tokio::sync::mpsc::UnboundedSender<String>, String);

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.send(std::mem::take(&mut self.1));
    }
}

impl ImageWork {
    /// Starts the dispatcher (reading completed files from `files`) and the workers. Each
    /// thread sends its name on `ended` when it ends.
    pub fn start(
        self,
        files: Receiver<PathBuf>,
        ended: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> std::io::Result<Running> {
        let n = self.workers.max(1);
        let mut processors = Vec::with_capacity(n);
        for _ in 1..n {
            processors.push(Mutex::new(self.processor.fork()));
        }
        let names = self.processor.identity().uid_hasher.clone();
        processors.insert(0, Mutex::new(self.processor));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            inboxes: self.inboxes,
            publisher: self.publisher,
            dicom_out: self.dicom_out,
            stop: stop.clone(),
            deferred: AtomicBool::new(false),
            in_flight: Mutex::default(),
            idle: Condvar::new(),
            processors,
            made: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            audit: self.audit,
            names,
        });
        // A job waits only while every worker is busy: the dispatcher then blocks, and the
        // files wait where they are safe, in their folders.
        let (jobs_tx, jobs_rx) = sync_channel::<PathBuf>(n);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut running = Running {
            stop,
            threads: Vec::new(),
            heartbeats: Vec::new(),
        };
        for i in 0..n {
            let worker = Worker {
                index: i,
                shared: shared.clone(),
                jobs: jobs_rx.clone(),
                heartbeat: Heartbeat::new(),
                stall_switch: if i == 0 {
                    std::env::var_os(STALL_SWITCH).map(PathBuf::from)
                } else {
                    None
                },
            };
            let name = if n == 1 {
                "image worker".to_owned()
            } else {
                format!("image worker {}", i + 1)
            };
            running
                .heartbeats
                .push((name.clone(), worker.heartbeat.clone()));
            let alive = Alive(ended.clone(), name);
            running
                .threads
                .push(spawn(format!("bedside-img{i}"), move || {
                    let _alive = alive;
                    worker.run()
                })?);
        }
        let dispatcher = Dispatcher {
            shared,
            jobs: jobs_tx,
            heartbeat: Heartbeat::new(),
            reload: self.reload,
            updater: self.updater,
            video_models: self.video_models,
            live: self.live,
        };
        running
            .heartbeats
            .push(("image dispatcher".into(), dispatcher.heartbeat.clone()));
        let alive = Alive(ended, "image dispatcher".into());
        running.threads.push(spawn("bedside-dicom".into(), move || {
            let _alive = alive;
            dispatcher.run(files)
        })?);
        Ok(running)
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(crate::alloc::THREAD_STACK)
        .spawn(f)
}

impl Running {
    /// The heartbeats the service manager's watchdog is fed on: one per thread.
    pub fn heartbeats(&self) -> Vec<(String, Heartbeat)> {
        self.heartbeats.clone()
    }

    /// Lets each worker finish its current image, then joins every thread. Files waiting
    /// for a worker stay in their folders, for the next start.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Reads completed files, hands them out, rescans after a deferral, takes model updates.
struct Dispatcher {
    shared: Arc<Shared>,
    jobs: SyncSender<PathBuf>,
    heartbeat: Heartbeat,
    reload: Arc<AtomicBool>,
    updater: Updater,
    video_models: Vec<ModelRef>,
    live: Arc<OnceLock<LiveUpdater>>,
}

impl Dispatcher {
    /// Files already waiting first, then files as they complete.
    fn run(mut self, files: Receiver<PathBuf>) {
        self.dispatch_waiting();
        while !self.shared.stopping() {
            self.heartbeat.beat();
            if self.reload.swap(false, Ordering::SeqCst) {
                self.take_updates();
            }
            if self.shared.deferred.load(Ordering::SeqCst) {
                // Files wait in the inbox while an outbox is full; events are dropped
                // because the scan below finds every file anyway.
                while files.try_recv().is_ok() {}
                if self.shared.full() {
                    std::thread::sleep(TICK);
                    continue;
                }
                // The workers' files that were left behind must be out of flight first,
                // or the scan would skip them.
                if !self.wait_idle() {
                    continue;
                }
                info!("the outbox has room again: processing the files left in the inbox");
                self.shared.deferred.store(false, Ordering::SeqCst);
                self.dispatch_waiting();
                continue;
            }
            match files.recv_timeout(TICK) {
                Ok(file) => self.dispatch(file),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn dispatch_waiting(&mut self) {
        let mut waiting = Vec::new();
        for inbox in &self.shared.inboxes {
            let files = inbox.scan().unwrap_or_else(|e| {
                error!("cannot list {}: {e}", inbox.dir.display());
                Vec::new()
            });
            if !files.is_empty() {
                info!(files = files.len(), folder = %inbox.dir.display(), "processing files waiting from before");
            }
            waiting.extend(files);
        }
        for file in waiting {
            if self.shared.stopping() || self.shared.deferred.load(Ordering::SeqCst) {
                return;
            }
            self.dispatch(file);
        }
    }

    /// Hands `file` to the next free worker, unless a worker has it already or it is gone
    /// (seen twice, by the scan and by an event: already handled).
    fn dispatch(&mut self, file: PathBuf) {
        self.heartbeat.beat();
        if !file.exists() || !self.shared.in_flight().insert(file.clone()) {
            return;
        }
        if let Err(e) = self.jobs.send(file) {
            // Every worker has ended (the daemon is stopping, or one died and takes the
            // daemon with it): the file stays where it is, for the next start.
            self.shared.done_with(&e.0);
        }
        self.heartbeat.beat();
    }

    /// Waits (beating) until no file is in flight; `false` when stopping.
    fn wait_idle(&self) -> bool {
        let mut in_flight = self.shared.in_flight();
        while !in_flight.is_empty() {
            if self.shared.stopping() {
                return false;
            }
            self.heartbeat.beat();
            in_flight = self
                .shared
                .idle
                .wait_timeout(in_flight, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Takes the staged model updates that pass every check, in every worker's processor,
    /// between two images; the old model keeps serving when one fails, and the status and
    /// the log say why.
    fn take_updates(&mut self) {
        if !self.wait_idle() {
            return;
        }
        let mut guards: Vec<MutexGuard<Processor>> = self
            .shared
            .processors
            .iter()
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut processors: Vec<&mut Processor> = guards.iter_mut().map(|g| &mut **g).collect();
        let outcomes = self.updater.take(&mut processors, self.live.get());
        if outcomes.is_empty() {
            info!("no staged model update differs from the models serving");
        }
        for o in &outcomes {
            match o {
                Outcome::Taken { old, new } => info!(
                    model = %new.id, version = %new.version, sha256 = %new.sha256,
                    replaced_version = %old.version, replaced_sha256 = %old.sha256,
                    "model updated: the next image runs on the new version"
                ),
                Outcome::Refused { id, dir, reason } => warn!(
                    model = %id, staged = %dir.display(),
                    "model update refused, the old model keeps serving: {reason}"
                ),
            }
            let video = self
                .live
                .get()
                .map_or_else(|| self.video_models.clone(), |l| l.models());
            let models = super::current_models(processors[0], &video);
            self.shared.publisher.set_models(models, o.to_json());
        }
    }
}

/// Test-only switch: when this variable names a file and the file appears, the first image
/// worker removes it and stops beating for good, as a worker wedged in a decoder would — so
/// that a test under a real systemd (tests/vm.sh) can watch the watchdog restart the daemon.
/// Read once at start; without it nothing is looked at.
pub const STALL_SWITCH: &str = "BEDSIDE_TEST_STALL_FILE";

/// Runs the images it is handed on its own processor.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    jobs: Arc<Mutex<Receiver<PathBuf>>>,
    heartbeat: Heartbeat,
    /// [`STALL_SWITCH`]'s file, for the first worker when the variable is set.
    stall_switch: Option<PathBuf>,
}

impl Worker {
    fn run(self) {
        while !self.shared.stopping() {
            if let Some(switch) = &self.stall_switch
                && std::fs::remove_file(switch).is_ok()
            {
                warn!(
                    "{STALL_SWITCH}: {} appeared; this image worker stalls now (test switch)",
                    switch.display()
                );
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            self.heartbeat.beat();
            // One worker waits on the queue at a time (for at most one tick); the others
            // look again every quarter tick, beating each time. Blocking on the lock instead
            // would leave them silent for as long as the (unfair) lock keeps going to the
            // same worker, and the watchdog would take the pool for wedged.
            let job = match self.jobs.try_lock() {
                Ok(queue) => queue.recv_timeout(TICK),
                Err(TryLockError::Poisoned(p)) => p.into_inner().recv_timeout(TICK),
                Err(TryLockError::WouldBlock) => {
                    std::thread::sleep(TICK / 4);
                    continue;
                }
            };
            match job {
                Ok(file) => {
                    if !self.shared.stopping() {
                        self.handle_file(&file);
                    }
                    self.shared.done_with(&file);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle_file(&self, file: &Path) {
        self.heartbeat.beat();
        let shared = &*self.shared;
        if shared.deferred.load(Ordering::SeqCst) || !file.exists() {
            return; // picked up by the scan once the outbox has room; or already handled
        }
        let Some(inbox) = shared
            .inboxes
            .iter()
            .find(|i| file.parent() == Some(i.dir.as_path()))
        else {
            warn!("a file from no known folder; ignored");
            return;
        };
        let name = shared.log_name(inbox, file);
        let metrics = shared.publisher.metrics();
        let result = shared.processors[self.index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .process(file, inbox.kind);
        match result {
            Ok(processed) => {
                if let Some(e) = &processed.results_error {
                    warn!(file = %name, "no DICOM results for this image: {e}");
                }
                // The results first: once they are on disk (and the findings recorded) the
                // file may go. Made again after a crash, they are the same instances.
                if let Some(out) = &shared.dicom_out
                    && !processed.results.is_empty()
                {
                    if let Err(e) = out.put(&processed.results) {
                        if e.is_full() {
                            warn!(file = %name, "{e}; the file stays in the inbox until the DICOM outbox has room");
                        } else {
                            error!(file = %name, "cannot keep the DICOM results ({e}); the file stays in the inbox");
                        }
                        return shared.defer(metrics);
                    }
                    let kinds: Vec<_> = processed.results.iter().map(|m| m.kind.name()).collect();
                    info!(file = %name, results = ?kinds, "DICOM results queued for every destination");
                }
                for f in &processed.findings {
                    if let Err(e) = shared.publisher.record(Class::Image, f) {
                        if e.is_full() {
                            warn!(file = %name, "{e}; the file stays in the inbox until the outbox has room");
                        } else {
                            error!(file = %name, "cannot record the finding ({e}); the file stays in the inbox");
                        }
                        return shared.defer(metrics);
                    }
                    info!(
                        file = %name,
                        worker = self.index + 1,
                        id = %f.id,
                        model = %f.model.id,
                        over_threshold = ?f.over_threshold,
                        total_ms = f.timings_ms.total,
                        "finding made"
                    );
                    shared.made.fetch_add(1, Ordering::Relaxed);
                }
                metrics.inputs_processed.fetch_add(1, Ordering::Relaxed);
                // Only now: a file leaves the inbox once its findings are on disk.
                if let Err(e) = inbox.mark_done(file) {
                    error!(file = %name, "processed, but cannot move it out of {}: {e}", inbox.dir.display());
                }
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                metrics.inputs_failed.fetch_add(1, Ordering::Relaxed);
                // Without the file's path: an inbox file may be named after the patient.
                let reason = e
                    .to_string()
                    .replace(&file.display().to_string(), "the input");
                warn!(file = %name, "no finding: {reason}");
                if let Some(audit) = &shared.audit {
                    audit.failed(inbox.kind, &reason);
                }
                if let Err(m) = inbox.mark_failed(file, &format!("{e}\n(in the log as {name})")) {
                    error!(file = %name, "cannot move it to {}: {m}", inbox.failed.display());
                }
            }
        }
        self.heartbeat.beat();
        service::status(&format!(
            "{} findings made, {} files failed, {} waiting in the outbox; broker {}",
            shared.made.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            shared.publisher.depth(),
            if shared.publisher.is_connected() {
                "connected"
            } else {
                "unreachable"
            }
        ));
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The outbox or the DICOM outbox refuses new records.
    fn full(&self) -> bool {
        self.publisher.is_full() || self.dicom_out.as_ref().is_some_and(|o| o.is_full())
    }

    /// A file stays in its folder because an outbox refused what it made: counted, and
    /// every worker leaves its file too until the dispatcher has seen room.
    fn defer(&self, metrics: &crate::publish::mqtt::Metrics) {
        metrics.inputs_deferred.fetch_add(1, Ordering::Relaxed);
        self.deferred.store(true, Ordering::SeqCst);
    }

    fn in_flight(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn done_with(&self, file: &Path) {
        self.in_flight().remove(file);
        self.idle.notify_all();
    }
}
