//! Live video: camera → latest-wins hand-off → inference threads → smoothing → findings.
//!
//! Capture never waits for inference. Frames come from a fixed pool (inference threads + 2,
//! allocated when the camera first opens); when inference is slower than the camera, the
//! pending frame is replaced by the newer one and counted as dropped, so latency stays
//! bounded and nothing queues up. Every frame carries its capture time to the finding.
//! When the camera vanishes or stalls, capture reports it, retries with backoff, and
//! resumes; inference and the rest of the daemon carry on meanwhile.

pub mod handoff;
pub mod smooth;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use crate::finding::{self, Finding, ImageInfo, LabelScore, Latency, Region, Timings, VideoSpan};
use crate::infer::Engine;
use crate::model::ModelRef;
use crate::model::manifest::Task;
use crate::pipeline::Identity;
use crate::prepare::Preparer;
use crate::source::SourceKind;
use crate::source::camera::{Camera, CameraError, Captured};
use crate::task::LabelValues;
use handoff::{Handoff, Taken};
use smooth::{FrameScore, Smoother, Summary};

/// How the live pipeline runs (from the board profile's `[live]` table).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Inference threads.
    pub threads: usize,
    /// CPU cores for the inference threads, in order (thread `i` on `cores[i % len]`);
    /// empty: let the scheduler decide.
    pub cores: Vec<usize>,
    /// Core for the capture thread, if pinned.
    pub capture_core: Option<usize>,
    pub window_frames: usize,
    pub publish_interval: Duration,
    /// Reopening a lost camera: first wait, and the most it grows to.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            threads: 1,
            cores: Vec::new(),
            capture_core: None,
            window_frames: 5,
            publish_interval: Duration::from_secs(10),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// The camera's state, as the status topic shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CameraState {
    Starting,
    Streaming {
        source: String,
    },
    /// Not delivering; bedside keeps trying to open it again.
    Down {
        reason: String,
        since: String,
    },
    /// A recording that does not loop reached its end.
    Ended,
}

/// Latency histogram: 0.1 ms buckets up to 2 s, then one overflow bucket (160 KB, fixed).
const LATENCY_BUCKETS: usize = 20_001;
const LATENCY_BUCKET_US: u128 = 100;

/// Counters of the live pipeline (lock-free; read for metrics and tests).
pub struct LiveStats {
    pub captured: AtomicU64,
    /// Frames replaced in the hand-off before inference took them.
    pub dropped: AtomicU64,
    pub processed: AtomicU64,
    /// Frames the camera delivered broken, or that a model failed on.
    pub bad_frames: AtomicU64,
    /// Times the camera was lost (gone or stalled).
    pub camera_lost: AtomicU64,
    /// Findings handed to the sink.
    pub findings: AtomicU64,
    /// Heap allocations (count, bytes) an inference thread made for its last frame, and the
    /// most for any frame after the first (see `crate::alloc`; zero without the counting
    /// allocator).
    pub frame_allocations: AtomicU64,
    pub frame_allocated_bytes: AtomicU64,
    pub frame_allocations_max: AtomicU64,
    pub frame_allocations_min: AtomicU64,
    latency: Box<[AtomicU64]>,
    /// Beaten whenever an inference thread looks for work (the watchdog watches it).
    heartbeat: crate::service::Heartbeat,
    state: Mutex<CameraState>,
}

impl LiveStats {
    fn new() -> Self {
        LiveStats {
            captured: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            camera_lost: AtomicU64::new(0),
            findings: AtomicU64::new(0),
            frame_allocations: AtomicU64::new(0),
            frame_allocated_bytes: AtomicU64::new(0),
            frame_allocations_max: AtomicU64::new(0),
            frame_allocations_min: AtomicU64::new(u64::MAX),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            heartbeat: crate::service::Heartbeat::new(),
            state: Mutex::new(CameraState::Starting),
        }
    }

    /// The inference threads' sign of life.
    pub fn heartbeat(&self) -> &crate::service::Heartbeat {
        &self.heartbeat
    }

    pub fn state(&self) -> CameraState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_latency(&self, d: Duration) {
        let i = ((d.as_micros() / LATENCY_BUCKET_US) as usize).min(LATENCY_BUCKETS - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Capture-to-result latency percentile in ms (the middle of its 0.1 ms bucket, so
    /// within 0.05 ms), over all frames so far.
    pub fn latency_percentile(&self, p: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some((i as f64 + 0.5) * LATENCY_BUCKET_US as f64 / 1000.0);
            }
        }
        None
    }

    /// The metrics document's `video` part.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "camera": self.state(),
            "frames": {
                "captured": get(&self.captured),
                "processed": get(&self.processed),
                "dropped": get(&self.dropped),
                "bad": get(&self.bad_frames),
            },
            "camera_lost": get(&self.camera_lost),
            "heap_per_frame": {
                "allocations": get(&self.frame_allocations),
                "bytes": get(&self.frame_allocated_bytes),
                "max_allocations": get(&self.frame_allocations_max),
                "min_allocations": get(&self.frame_allocations_min),
            },
            "findings": get(&self.findings),
            "latency_ms": {
                "p50": self.latency_percentile(50.0),
                "p99": self.latency_percentile(99.0),
            },
        })
    }
}

/// Opens (or reopens) the camera.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Camera>, CameraError> + Send>;
/// Receives every finding the pipeline makes (the daemon records it in the outbox).
pub type Sink = Box<dyn FnMut(Finding) + Send>;
/// Told whenever the camera's state changes (the daemon republishes its status).
pub type StateHook = Box<dyn Fn(&CameraState) + Send + Sync>;

struct Frame {
    stream: u32,
    captured: Captured,
    luma: Box<[u8]>,
}

struct Scored {
    model: usize,
    /// Which version of the model scored it (0 the first, one more per update).
    generation: u64,
    stream: u32,
    score: FrameScore,
}

/// What the smoothing thread receives: scores, and the news that a model was replaced (sent
/// before any inference thread has the new one, so every later score of the new version
/// comes after it on the channel).
enum Scoring {
    Frame(Scored),
    Model {
        model: usize,
        generation: u64,
        info: ModelInfo,
    },
}

/// A new version of model `model` for one inference thread.
struct SlotUpdate {
    model: usize,
    generation: u64,
    slot: Slot,
}

impl Slot {
    fn of(engine: Engine) -> Slot {
        let m = engine.manifest();
        let (h, w) = m.input_hw();
        Slot {
            preparer: Preparer::new(m.preprocess.clone(), h, w),
            labels: m.labels.clone(),
            task: m.model.task,
            activation: m.output.activation,
            engine,
        }
    }
}

/// Replaces the models of a running pipeline (cheap to clone; see [`Live::updater`]).
#[derive(Clone)]
pub struct LiveUpdater {
    inner: Arc<Mutex<UpdaterState>>,
}

struct UpdaterState {
    /// Taken away when the pipeline stops, so that the smoothing thread can end.
    scoring: Option<SyncSender<Scoring>>,
    threads: Vec<std::sync::mpsc::Sender<SlotUpdate>>,
    models: Vec<ModelRef>,
    generation: u64,
}

impl LiveUpdater {
    /// The models the pipeline runs now.
    pub fn models(&self) -> Vec<ModelRef> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .models
            .clone()
    }

    /// Puts `engine` in the place of the model with its id, between two frames on every
    /// inference thread. The span the old version was following ends with an end finding of
    /// the old version; frames the old version scores after that are dropped, so no
    /// finding mixes the two. Returns the model replaced, or gives the engine back when the
    /// pipeline runs no model of its id (or has stopped).
    pub fn replace(&self, engine: Engine) -> Result<ModelRef, Box<Engine>> {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = st.models.iter().position(|r| r.id == engine.model_ref().id) else {
            return Err(Box::new(engine));
        };
        let Some(scoring) = st.scoring.clone() else {
            return Err(Box::new(engine));
        };
        st.generation += 1;
        let generation = st.generation;
        if scoring
            .send(Scoring::Model {
                model: m,
                generation,
                info: ModelInfo::of(&engine),
            })
            .is_err()
        {
            return Err(Box::new(engine));
        }
        // Each thread its own runner of the one plan (weights shared).
        for tx in &st.threads {
            let _ = tx.send(SlotUpdate {
                model: m,
                generation,
                slot: Slot::of(engine.fork()),
            });
        }
        let old = std::mem::replace(&mut st.models[m], engine.model_ref().clone());
        Ok(old)
    }
}

/// One model on one inference thread.
struct Slot {
    engine: Engine,
    preparer: Preparer,
    /// The manifest's labels, task and activation, kept apart from the engine so that
    /// scoring borrows nothing from it (and clones nothing per frame).
    labels: Vec<crate::model::manifest::Label>,
    task: Task,
    activation: crate::model::manifest::Activation,
}

/// A running live pipeline.
pub struct Live {
    stats: Arc<LiveStats>,
    stop: Arc<AtomicBool>,
    handoff: Arc<Handoff<Frame>>,
    threads: Vec<JoinHandle<()>>,
    updater: LiveUpdater,
}

/// What the findings of one pipeline say about their source.
pub struct FindingContext {
    pub identity: Identity,
    pub source: SourceKind,
}

impl Live {
    /// Starts capture, `config.threads` inference threads (each running every model in
    /// `engines`, forked per thread) and the smoothing thread.
    pub fn start(
        config: LiveConfig,
        opener: Opener,
        engines: Vec<Engine>,
        context: FindingContext,
        sink: Sink,
        on_state: StateHook,
    ) -> Self {
        let stats = Arc::new(LiveStats::new());
        let stop = Arc::new(AtomicBool::new(false));
        let handoff: Arc<Handoff<Frame>> = Arc::new(Handoff::new());
        let threads_n = config.threads.max(1);
        // The pool: capture holds one, one waits in the hand-off, one per inference thread.
        // (Found by the 30/60 fps test: with one frame short, capture waited for inference.)
        let (pool_tx, pool_rx) = sync_channel::<Frame>(threads_n + 2);
        let (scored_tx, scored_rx) = sync_channel::<Scoring>(4 * threads_n * engines.len().max(1));
        let frame_size: Arc<Mutex<Option<Geometry>>> = Arc::new(Mutex::new(None));
        let geometry = frame_size.clone();
        let mut threads = Vec::new();

        let models: Vec<ModelInfo> = engines.iter().map(ModelInfo::of).collect();
        let mut update_txs = Vec::new();
        for i in 0..threads_n {
            let slots: Vec<Slot> = engines.iter().map(|e| Slot::of(e.fork())).collect();
            let (update_tx, updates) = std::sync::mpsc::channel::<SlotUpdate>();
            update_txs.push(update_tx);
            let core = (!config.cores.is_empty()).then(|| config.cores[i % config.cores.len()]);
            let (handoff, pool_tx, scored_tx, stats, stop, frame_size) = (
                handoff.clone(),
                pool_tx.clone(),
                scored_tx.clone(),
                stats.clone(),
                stop.clone(),
                frame_size.clone(),
            );
            threads.push(spawn(&format!("infer-{i}"), core, move || {
                infer_loop(
                    slots,
                    &updates,
                    &handoff,
                    &pool_tx,
                    &scored_tx,
                    &stats,
                    &stop,
                    &frame_size,
                )
            }));
        }
        let updater = LiveUpdater {
            inner: Arc::new(Mutex::new(UpdaterState {
                scoring: Some(scored_tx),
                threads: update_txs,
                models: engines.iter().map(|e| e.model_ref().clone()).collect(),
                generation: 0,
            })),
        };
        {
            let (handoff, stats, stop, config) =
                (handoff.clone(), stats.clone(), stop.clone(), config.clone());
            threads.push(spawn("capture", config.capture_core, move || {
                capture_loop(
                    opener,
                    &config,
                    &handoff,
                    pool_tx,
                    pool_rx,
                    threads_n + 2,
                    &stats,
                    &stop,
                    &frame_size,
                    &on_state,
                )
            }));
        }
        {
            let stats = stats.clone();
            threads.push(spawn("smooth", None, move || {
                smooth_loop(
                    scored_rx, models, &config, &context, sink, &stats, &geometry,
                )
            }));
        }
        Live {
            stats,
            stop,
            handoff,
            threads,
            updater,
        }
    }

    /// A handle that replaces the pipeline's models while it runs (model updates).
    pub fn updater(&self) -> LiveUpdater {
        self.updater.clone()
    }

    pub fn stats(&self) -> &Arc<LiveStats> {
        &self.stats
    }

    /// Stops capture, lets inference finish the frame in hand, publishes an end for every
    /// label still present, and joins every thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handoff.close();
        // The updater's sender goes, so that smoothing ends once inference has.
        self.updater
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scoring = None;
        for t in self.threads {
            let name = t.thread().name().unwrap_or("live").to_string();
            if t.join().is_err() {
                error!(thread = %name, "live pipeline thread panicked");
            }
        }
    }
}

fn spawn(name: &str, core: Option<usize>, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(crate::alloc::THREAD_STACK)
        .spawn(move || {
            if let Some(core) = core
                && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
            {
                warn!(thread = %name, core, "cannot pin the thread to its core; running unpinned");
            }
            f()
        })
        .expect("spawn a live pipeline thread")
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    mut opener: Opener,
    config: &LiveConfig,
    handoff: &Handoff<Frame>,
    pool_tx: SyncSender<Frame>,
    pool_rx: Receiver<Frame>,
    pool_size: usize,
    stats: &LiveStats,
    stop: &AtomicBool,
    frame_size: &Mutex<Option<Geometry>>,
    on_state: &StateHook,
) {
    let set_state = |s: CameraState| {
        let mut cur = stats.state.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != s {
            *cur = s.clone();
            drop(cur);
            on_state(&s);
        }
    };
    let mut backoff = config.retry_min;
    let mut stream = 0u32;
    let mut pool_made = false;
    let mut down_since: Option<String> = None;
    let sleep = |d: Duration| {
        let until = Instant::now() + d;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let lost = |e: &CameraError, backoff: &mut Duration, down_since: &mut Option<String>| {
            let since = down_since.get_or_insert_with(finding::now_rfc3339).clone();
            set_state(CameraState::Down {
                reason: e.to_string(),
                since,
            });
            warn!(error = %e, retry_in = ?*backoff, "camera not delivering; will try again");
            sleep(*backoff);
            *backoff = (*backoff * 2).min(config.retry_max);
        };
        let mut camera = match opener() {
            Ok(c) => c,
            Err(e) => {
                lost(&e, &mut backoff, &mut down_since);
                continue;
            }
        };
        let (w, h) = camera.frame_size();
        {
            let mut size = frame_size.lock().unwrap_or_else(|p| p.into_inner());
            match *size {
                None => *size = Some((w, h, camera.pixel_spacing_mm())),
                Some((w0, h0, _)) if (w0, h0) != (w, h) => {
                    drop(size);
                    let e = CameraError::Config {
                        device: camera.describe(),
                        reason: format!(
                            "delivers {w}x{h} frames, the pipeline was made for {w0}x{h0}"
                        ),
                    };
                    lost(&e, &mut backoff, &mut down_since);
                    continue;
                }
                Some(_) => {}
            }
        }
        if !pool_made {
            for _ in 0..pool_size {
                let luma = vec![0u8; w as usize * h as usize].into_boxed_slice();
                let frame = Frame {
                    stream: 0,
                    captured: Captured {
                        seq: 0,
                        at: Instant::now(),
                        wall: SystemTime::now(),
                    },
                    luma,
                };
                pool_tx
                    .send(frame)
                    .expect("the pool has room for its frames");
            }
            pool_made = true;
        }
        stream += 1;
        info!(camera = %camera.describe(), stream, "camera streaming");
        down_since = None;
        set_state(CameraState::Streaming {
            source: camera.describe(),
        });
        let mut good = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // Always one free: the pool holds threads + 2 frames.
            let Ok(mut frame) = pool_rx.recv_timeout(Duration::from_millis(500)) else {
                continue;
            };
            match camera.capture(&mut frame.luma) {
                Ok(c) => {
                    frame.stream = stream;
                    frame.captured = c;
                    stats.captured.fetch_add(1, Ordering::Relaxed);
                    good += 1;
                    if good == 50 {
                        backoff = config.retry_min;
                    }
                    if let Some(old) = handoff.offer(frame) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        let _ = pool_tx.send(old);
                    }
                }
                Err(CameraError::BadFrame { device, reason }) => {
                    let _ = pool_tx.send(frame);
                    let n = stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        warn!(%device, %reason, bad_frames = n + 1, "bad frame skipped");
                    }
                }
                Err(CameraError::Ended { device }) => {
                    let _ = pool_tx.send(frame);
                    info!(%device, "recording played to its end");
                    set_state(CameraState::Ended);
                    handoff.close();
                    return;
                }
                Err(e) => {
                    let _ = pool_tx.send(frame);
                    stats.camera_lost.fetch_add(1, Ordering::Relaxed);
                    drop(camera);
                    lost(&e, &mut backoff, &mut down_since);
                    break;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn infer_loop(
    mut slots: Vec<Slot>,
    updates: &Receiver<SlotUpdate>,
    handoff: &Handoff<Frame>,
    pool_tx: &SyncSender<Frame>,
    scored_tx: &SyncSender<Scoring>,
    stats: &LiveStats,
    stop: &AtomicBool,
    frame_size: &Mutex<Option<Geometry>>,
) {
    let mut size: Option<(u32, u32)> = None;
    let mut generations = vec![0u64; slots.len()];
    loop {
        stats.heartbeat.beat();
        // A new model version takes effect between two frames.
        while let Ok(u) = updates.try_recv() {
            slots[u.model] = u.slot;
            generations[u.model] = u.generation;
        }
        let frame = match handoff.take(Duration::from_millis(200)) {
            Taken::Item(f) => f,
            Taken::Empty if !stop.load(Ordering::Relaxed) => continue,
            Taken::Empty | Taken::Closed => return,
        };
        let (allocs0, bytes0) = crate::alloc::thread_allocations();
        let (w, h) = *size.get_or_insert_with(|| {
            let s = frame_size.lock().unwrap_or_else(|p| p.into_inner());
            s.map(|(w, h, _)| (w, h))
                .expect("frames exist only after the size is known")
        });
        for (m, slot) in slots.iter_mut().enumerate() {
            let (task, activation, labels) = (slot.task, slot.activation, &slot.labels);
            let (mut scores, mut peaks) = (LabelValues::new(), LabelValues::new());
            let result = match slot.preparer.prepare_luma(&frame.luma, w, h) {
                Ok(tensor) => slot
                    .engine
                    .run_with(tensor, |out| {
                        crate::task::score_into(
                            task,
                            out,
                            labels,
                            activation,
                            &mut scores,
                            &mut peaks,
                        )
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                let n = stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    error!(error = %e, "a video frame failed in a model");
                }
                continue;
            }
            let score = FrameScore {
                seq: frame.captured.seq,
                captured: frame.captured.at,
                wall: frame.captured.wall,
                done: Instant::now(),
                scores,
                peaks,
            };
            let scored = Scoring::Frame(Scored {
                model: m,
                generation: generations[m],
                stream: frame.stream,
                score,
            });
            if send_without_parking(scored_tx, scored).is_err() {
                return;
            }
        }
        stats.record_latency(frame.captured.at.elapsed());
        let (allocs1, bytes1) = crate::alloc::thread_allocations();
        let allocs = allocs1 - allocs0;
        stats.frame_allocations.store(allocs, Ordering::Relaxed);
        stats
            .frame_allocated_bytes
            .store(bytes1 - bytes0, Ordering::Relaxed);
        if stats.processed.fetch_add(1, Ordering::Relaxed) > 0 {
            stats
                .frame_allocations_max
                .fetch_max(allocs, Ordering::Relaxed);
            stats
                .frame_allocations_min
                .fetch_min(allocs, Ordering::Relaxed);
        }
        let _ = pool_tx.send(frame);
    }
}

/// What a finding needs to know of a model, kept by the smoothing thread.
struct ModelInfo {
    model: ModelRef,
    task: Task,
    labels: Vec<(String, f32)>,
}

impl ModelInfo {
    fn of(e: &Engine) -> Self {
        let m = e.manifest();
        ModelInfo {
            model: e.model_ref().clone(),
            task: m.model.task,
            labels: m
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.finding_threshold(m.model.task)))
                .collect(),
        }
    }
}

/// Sends on a bounded channel, waiting while it is full without parking on it.
///
/// Why not `send`: the first time a thread parks on one of std's channels it allocates (its
/// waiting context, and a place in the channel's list of waiters), and a frame that happens
/// to be the first to find the smoothing thread behind then allocates 43 times instead of
/// 41. The frame path allocates a documented constant (`tests/memory.rs`), whatever the
/// load; so a full channel is retried every millisecond instead (it is full only while the
/// smoothing thread is starved, and a frame takes tens of milliseconds anyway). `Err` once
/// the receiver is gone.
fn send_without_parking<T>(tx: &SyncSender<T>, mut value: T) -> Result<(), ()> {
    loop {
        match tx.try_send(value) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                value = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}

fn smooth_loop(
    scored_rx: Receiver<Scoring>,
    mut models: Vec<ModelInfo>,
    config: &LiveConfig,
    context: &FindingContext,
    mut sink: Sink,
    stats: &LiveStats,
    frame_size: &Mutex<Option<Geometry>>,
) {
    let new_smoother = |m: &ModelInfo| {
        let t: Vec<f32> = m.labels.iter().map(|(_, t)| *t).collect();
        Smoother::new(
            &t,
            m.task == Task::Segmentation,
            config.window_frames,
            config.publish_interval,
            Instant::now(),
        )
    };
    let mut smoothers: Vec<Smoother> = models.iter().map(new_smoother).collect();
    let mut generations = vec![0u64; models.len()];
    let mut stream = (0u32, String::new());
    let geometry = || {
        frame_size
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or((0, 0, None))
    };
    let emit = |m: &ModelInfo, s: Summary, stream_id: &str, sink: &mut Sink| {
        sink(make_finding(m, &s, stream_id, context, geometry()));
        stats.findings.fetch_add(1, Ordering::Relaxed);
    };
    while let Ok(message) = scored_rx.recv() {
        let scored = match message {
            Scoring::Frame(s) => s,
            // A model was replaced: what the old version follows ends, under its name.
            Scoring::Model {
                model,
                generation,
                info,
            } => {
                if let Some(end) = smoothers[model].finish() {
                    emit(&models[model], end, &stream.1, &mut sink);
                }
                smoothers[model] = new_smoother(&info);
                models[model] = info;
                generations[model] = generation;
                continue;
            }
        };
        if scored.generation != generations[scored.model] {
            continue; // scored by the old version after the swap
        }
        if scored.stream != stream.0 {
            for (m, s) in smoothers.iter_mut().enumerate() {
                if let Some(end) = s.finish() {
                    emit(&models[m], end, &stream.1, &mut sink);
                }
            }
            smoothers = models.iter().map(new_smoother).collect();
            let started = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            stream = (
                scored.stream,
                format!("{}-{started}", context.identity.device),
            );
        }
        for s in smoothers[scored.model].push(scored.score, Instant::now()) {
            emit(&models[scored.model], s, &stream.1, &mut sink);
        }
    }
    // Every sender gone: the pipeline stopped. Close what is still open.
    for (m, s) in smoothers.iter_mut().enumerate() {
        if let Some(end) = s.finish() {
            emit(&models[m], end, &stream.1, &mut sink);
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Width, height and pixel spacing (mm) of the frames the models see.
type Geometry = (u32, u32, Option<[f64; 2]>);

fn make_finding(
    m: &ModelInfo,
    s: &Summary,
    stream: &str,
    ctx: &FindingContext,
    geometry: Geometry,
) -> Finding {
    let (w, h, spacing) = geometry;
    let present: Vec<String> = m
        .labels
        .iter()
        .enumerate()
        .filter(|(i, _)| s.present & (1 << i) != 0)
        .map(|(_, (n, _))| n.clone())
        .collect();
    let scores: Vec<LabelScore> = m
        .labels
        .iter()
        .enumerate()
        .map(|(i, (name, threshold))| LabelScore {
            label: name.clone(),
            score: s.mean.get(i).copied().unwrap_or(0.0),
            threshold: *threshold,
            peak: Some(s.peak.get(i).copied().unwrap_or(0.0)),
        })
        .collect();
    let key = format!("video:{stream}:{:?}:{}", s.event, s.first_seq);
    let id = finding::finding_id(
        &m.model,
        &finding::InputKey::PixelHash(key),
        s.last_seq as u32,
    );
    let span_frames = s.last_seq - s.first_seq + 1;
    let area = spacing.map(|[r, c]| h as f64 * r * w as f64 * c);
    let regions = (m.task == Task::Segmentation).then(|| {
        m.labels
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let mean = s.mean.get(i).copied().unwrap_or(0.0);
                let peak = s.peak.get(i).copied().unwrap_or(0.0);
                Region {
                    label: name.clone(),
                    fraction: mean,
                    area_mm2: area.map(|a| finding::round3(a * mean as f64)),
                    peak_area_mm2: area.map(|a| finding::round3(a * peak as f64)),
                    peak_probability: s.peak_probability.get(i).copied().unwrap_or(0.0),
                    // Outlines move from frame to frame: a span has no single one.
                    count: None,
                    components: None,
                }
            })
            .collect()
    });
    let latency_ms = s.latency_mean.as_secs_f64() * 1e3;
    Finding {
        schema: finding::SCHEMA,
        id,
        device: ctx.identity.device.clone(),
        site: ctx.identity.site.clone(),
        source: ctx.source,
        modality: Some("US".into()),
        sop_instance_uid_hash: None,
        model: m.model.clone(),
        task: m.task,
        over_threshold: present.clone(),
        scores,
        image: ImageInfo {
            rows: h,
            cols: w,
            frames: span_frames.min(u32::MAX as u64) as u32,
            frame: s.last_seq.min(u32::MAX as u64) as u32,
            pixel_spacing_mm: spacing,
        },
        regions,
        detections: None,
        video: Some(VideoSpan {
            stream: stream.to_string(),
            event: s.event,
            present,
            first_frame: s.first_seq,
            last_frame: s.last_seq,
            frames_processed: s.frames,
            frames_dropped: span_frames.saturating_sub(s.frames),
            first_captured_at: rfc3339(s.first_wall),
            last_captured_at: rfc3339(s.last_wall),
            latency_ms: Latency {
                mean: finding::round3(s.latency_mean.as_secs_f64() * 1e3),
                max: finding::round3(s.latency_max.as_secs_f64() * 1e3),
            },
        }),
        timings_ms: Timings {
            total: finding::round3(latency_ms),
            ..Timings::default()
        },
        created_at: finding::now_rfc3339(),
        bedside_version: env!("CARGO_PKG_VERSION"),
    }
}
