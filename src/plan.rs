//! The memory plan: everything the daemon will hold, computed at start from the board
//! profile and the models, against the profile's budget.
//!
//! Unlike an arena whose size is found by trial and error, each line says where its figure
//! comes from: *measured* (a model's weights and tract's working memory, by loading and
//! dry-running it under the counting allocator, [`crate::alloc`]), *computed* from the
//! profile (frame pool, decode buffers for the largest image the profile accepts, outbox,
//! MQTT and DICOM buffers) or *reserved* (thread stacks, counted whole). `bedside check`
//! prints it; `bedside run` refuses to start, with the table and the first line that does
//! not fit, when the total exceeds the budget. Tests hold the running daemon to it.

use std::fmt::Write as _;
use std::path::Path;

use crate::board::{BoardProfile, ModelSource, VideoSource};
use crate::dicom::results::ResultKind;
use crate::infer::Engine;
use crate::model::ModelError;
use crate::model::manifest::Task;

/// Where a line's figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Measured,
    Computed,
    Reserved,
}

impl Basis {
    fn name(self) -> &'static str {
        match self {
            Basis::Measured => "measured",
            Basis::Computed => "computed",
            Basis::Reserved => "reserved",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Line {
    pub what: String,
    pub bytes: u64,
    pub basis: Basis,
    /// Heap (counted by the allocator) rather than code, kernel buffers or stacks.
    pub heap: bool,
}

/// A computed plan.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub lines: Vec<Line>,
    pub budget: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the memory plan does not fit the budget of {budget_mib} MiB: {line} (running total {total_mib:.1} MiB)\n{table}"
)]
pub struct OverBudget {
    pub budget_mib: u64,
    pub line: String,
    pub total_mib: f64,
    pub table: String,
}

/// A model's memory, measured by loading and dry-running it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelMemory {
    /// Heap held once loaded: weights, the optimised plan, tract's state.
    pub resident: u64,
    /// Extra heap at the peak of one run (tract's intermediate tensors).
    pub working: u64,
}

/// Measures `engine` by loading it: call with the model directory; returns the engine and its
/// memory. Without the counting allocator the figures are zero (and the plan says so).
pub fn load_measured(dir: &Path) -> Result<(Engine, ModelMemory), ModelError> {
    let before = crate::alloc::live_bytes();
    let mut engine = Engine::load(dir)?;
    let resident = crate::alloc::live_bytes().saturating_sub(before) as u64;
    let zeros = vec![0.0f32; engine.manifest().input.shape.iter().product()];
    // The first run after load is the dry run inside `Engine::load`; this is a steady one.
    let live = crate::alloc::live_bytes();
    crate::alloc::reset_peak();
    let _ = engine.run_with(&zeros, |_| ());
    let working = crate::alloc::peak_bytes().saturating_sub(live) as u64;
    Ok((engine, ModelMemory { resident, working }))
}

/// A model as the plan sees it.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    pub id: String,
    pub memory: ModelMemory,
    /// Input (height, width).
    pub input_hw: (usize, usize),
    /// How many labels it scores (a SEG holds a frame per label).
    pub labels: usize,
}

impl ModelFacts {
    pub fn of(manifest: &crate::model::manifest::Manifest, memory: ModelMemory) -> Self {
        ModelFacts {
            id: manifest.model.id.clone(),
            memory,
            input_hw: manifest.input_hw(),
            labels: manifest.labels.len(),
        }
    }
}

pub use crate::alloc::THREAD_STACK;

const MIB: f64 = 1048576.0;

impl MemoryPlan {
    /// The plan for `profile`, with each model's measured memory (DICOM models, then video
    /// models, in profile order), the process's resident size before any model loaded, and
    /// the image workers (each holds the per-image lines: its own runners, preparation,
    /// decode buffers and results; the weights are shared).
    pub fn compute(
        profile: &BoardProfile,
        dicom_models: &[ModelFacts],
        video_models: &[ModelFacts],
        baseline_rss: u64,
        workers: usize,
    ) -> Self {
        let n = workers.max(1) as u64;
        let per = |what: &str| {
            if n == 1 {
                what.to_owned()
            } else {
                format!("{what}, x{n} image workers")
            }
        };
        let mut lines = Vec::new();
        let mut add = |what: String, bytes: u64, basis: Basis, heap: bool| {
            lines.push(Line {
                what,
                bytes,
                basis,
                heap,
            })
        };
        let measured = crate::alloc::installed();
        let m_basis = if measured {
            Basis::Measured
        } else {
            Basis::Computed
        };
        add(
            "process before any model: code, libraries, runtime".into(),
            baseline_rss,
            Basis::Measured,
            false,
        );
        let mem = &profile.memory;
        let frame_px = mem.max_image_rows as u64 * mem.max_image_cols as u64;
        let dicom_slots = profile
            .models
            .iter()
            .filter(|m| m.sources.contains(&ModelSource::Dicom));
        for (f, slot) in dicom_models.iter().zip(dicom_slots) {
            let (id, m, (h, w)) = (&f.id, &f.memory, f.input_hw);
            add(
                format!("model {id} (DICOM): weights, plan, state"),
                m.resident,
                m_basis,
                true,
            );
            add(
                format!("model {id} (DICOM): tract working memory, {n} runner(s)"),
                m.working * n,
                m_basis,
                true,
            );
            // The preparer's one pass (crate::prepare): one source row and the rows filtered
            // across (f32, the largest frame's rows × the model's width), the stored-value
            // tables (its own and the display map's, 65,536 f32 each), the tensor. No
            // full-size copy of the frame.
            add(
                per(&format!(
                    "model {id} (DICOM): preparation of a {}x{} frame",
                    mem.max_image_rows, mem.max_image_cols
                )),
                n * (mem.max_image_cols as u64 * 4
                    + mem.max_image_rows as u64 * w as u64 * 4
                    + 2 * 65536 * 4
                    + (h * w) as u64 * 4),
                Basis::Computed,
                true,
            );
            if slot.dicom_results.contains(&ResultKind::Seg) {
                // Its masks at about its input size (one byte a pixel per label), and the
                // SEG's 1-bit frames at the largest frame's size: built, then encoded.
                let pixels = crate::dicom::seg::pixel_bytes(
                    f.labels,
                    mem.max_image_rows,
                    mem.max_image_cols,
                );
                add(
                    per(&format!(
                        "model {id} (DICOM): its SEG of {} label(s) at {}x{}",
                        f.labels, mem.max_image_rows, mem.max_image_cols
                    )),
                    n * ((f.labels * h * w) as u64 + 2 * pixels),
                    Basis::Computed,
                    true,
                );
            }
        }
        if !dicom_models.is_empty() {
            let object = mem.max_file_mib << 20;
            add(
                per(&format!(
                    "DICOM object read whole (memory.max_file_mib {} MiB)",
                    mem.max_file_mib
                )),
                n * object,
                Basis::Computed,
                true,
            );
            // Grey: the stored samples (2 B/pixel) and, for codecs behind dicom-pixeldata, its
            // decoded copy while they are taken from it (2 B). Colour needs the most: three
            // 16-bit samples and the luma in f32, 10 B/pixel.
            add(
                per(&format!(
                    "DICOM decode of a {}x{} frame (10 B/pixel)",
                    mem.max_image_rows, mem.max_image_cols
                )),
                n * frame_px * 10,
                Basis::Computed,
                true,
            );
        }
        if let Some(v) = &profile.video {
            let (fw, fh, bpp, buffers) = match (v.source, &v.v4l2) {
                (VideoSource::V4l2, Some(c)) => {
                    (c.width as u64, c.height as u64, 2, c.buffers as u64)
                }
                _ => (
                    v.crop.map_or(1024, |c| c.width as u64 + c.x as u64),
                    v.crop.map_or(768, |c| c.height as u64 + c.y as u64),
                    0,
                    0,
                ),
            };
            let crop_px = v.crop.map_or(fw * fh, |c| c.pixels() as u64);
            let threads = v.threads as u64;
            add(
                format!("video frame pool: {} frames of {} px", threads + 2, crop_px),
                (threads + 2) * crop_px,
                Basis::Computed,
                true,
            );
            if buffers > 0 {
                add(
                    format!("V4L2 capture buffers: {buffers} x {fw}x{fh} x {bpp} B (driver, mmap)"),
                    buffers * fw * fh * bpp,
                    Basis::Computed,
                    false,
                );
            }
            // Decoding a whole frame first: MJPEG scratch, or the replayed recording's frame.
            add(
                format!("video full-frame scratch: {fw}x{fh}"),
                fw * fh * 5,
                Basis::Computed,
                true,
            );
            for f in video_models {
                let (id, m, (h, w)) = (&f.id, &f.memory, f.input_hw);
                add(
                    format!("model {id} (video): weights, plan, state"),
                    m.resident,
                    m_basis,
                    true,
                );
                add(
                    format!("model {id} (video): tract working memory, {threads} runner(s)"),
                    m.working * threads,
                    m_basis,
                    true,
                );
                add(
                    format!("model {id} (video): preparation, {threads} thread(s)"),
                    threads * (crop_px * 4 + (h * w) as u64 * 8),
                    Basis::Computed,
                    true,
                );
            }
            add(
                "live pipeline bookkeeping (latency histogram, channels)".into(),
                256 << 10,
                Basis::Computed,
                true,
            );
        }
        let (_, outbox) = profile.outbox_config();
        add(
            format!("outbox index: {} findings x 32 B", outbox.max_records),
            outbox.max_records as u64 * 32,
            Basis::Computed,
            true,
        );
        add(
            "outbox recovery: one segment read back".into(),
            outbox.segment_bytes,
            Basis::Computed,
            true,
        );
        let payload = outbox.max_payload().min(crate::finding::MAX_FINDING_BYTES) as u64;
        let inflight = profile.mqtt.inflight as u64;
        add(
            format!(
                "MQTT: {} messages of at most {} B, queued and in flight",
                inflight + 8,
                payload
            ),
            (inflight + 8) * payload * 2 + (64 << 10),
            Basis::Computed,
            true,
        );
        if let Some(d) = profile.dicom.as_ref().filter(|d| d.listen) {
            add(
                format!(
                    "DICOM SCP: {} associations x (2 PDUs of 64 KiB + 64 KiB spool buffer)",
                    d.max_associations
                ),
                d.max_associations as u64 * 3 * (64 << 10),
                Basis::Computed,
                true,
            );
        }
        if let Some(r) = profile.results_config() {
            let picture = r.max_side as u64 * r.max_side as u64 * 3;
            let senders = r.destinations.len() as u64;
            add(
                format!(
                    "DICOM results: {n} x a {0} x {0} px Secondary Capture (picture, object, encoding) and {senders} sender(s) holding one object's file and data set, each 1 MiB of PDUs besides",
                    r.max_side
                ),
                n * 3 * picture + senders * (2 * picture + (1 << 20)),
                Basis::Computed,
                true,
            );
        }
        if profile.web.enabled {
            let w = &profile.web;
            let side = profile.overlays.max_side as u64;
            add(
                format!(
                    "findings page: {} findings + {} events, {} connections, {} whole reads",
                    w.max_findings,
                    crate::web::EVENT_RING,
                    crate::web::max_connections(w),
                    2
                ),
                crate::web::planned_bytes(w, side * side * 3),
                Basis::Computed,
                true,
            );
        }
        if profile.overlays.keep_last {
            let o = profile.overlays;
            add(
                per(&format!(
                    "overlays: one picture of at most {0} x {0} px, RGB and its PNG",
                    o.max_side
                )),
                n * o.working_bytes(),
                Basis::Computed,
                true,
            );
        }
        // main, the image dispatcher, 2 tokio workers, the image workers, one more with
        // [dicom] and the SCP's spool threads when it listens, one sender per PACS
        // destination (`bedside-send-…`; not counted before stop 17)
        let dicom = profile.dicom.as_ref().map_or(0, |d| {
            1 + if d.listen {
                crate::source::scp::disk::threads_for(d.max_associations)
            } else {
                0
            }
        }) as u64;
        let senders = profile
            .results_config()
            .map_or(0, |r| r.destinations.len() as u64);
        let threads =
            3 + n + profile.video.as_ref().map_or(0, |v| v.threads + 2) as u64 + dicom + senders;
        add(
            format!("thread stacks: {threads} x {} MiB", THREAD_STACK >> 20),
            threads * THREAD_STACK as u64,
            Basis::Reserved,
            false,
        );
        let heap: u64 = lines.iter().filter(|l| l.heap).map(|l| l.bytes).sum();
        lines.push(Line {
            what: "allocator overhead and fragmentation: 10% of the heap lines".into(),
            bytes: heap / 10,
            basis: Basis::Computed,
            heap: false,
        });
        MemoryPlan {
            lines,
            budget: mem.budget_mib.map(|b| b << 20),
        }
    }

    pub fn total(&self) -> u64 {
        self.lines.iter().map(|l| l.bytes).sum()
    }

    /// The heap the allocator should never exceed.
    pub fn heap(&self) -> u64 {
        self.lines.iter().filter(|l| l.heap).map(|l| l.bytes).sum()
    }

    /// The plan as a table: each line, its basis, and the running total against the budget.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<72} {:>10} {:>10}  basis",
            "memory plan", "MiB", "total MiB"
        );
        let mut total = 0u64;
        let mut marked = false;
        for l in &self.lines {
            total += l.bytes;
            let over = self.budget.is_some_and(|b| total > b) && !marked;
            marked |= over;
            let _ = writeln!(
                out,
                "{:<72} {:>10.2} {:>10.2}  {}{}",
                l.what,
                l.bytes as f64 / MIB,
                total as f64 / MIB,
                l.basis.name(),
                if over { "  <-- over budget here" } else { "" }
            );
        }
        let _ = writeln!(out, "{:<72} {:>10.2}", "total", total as f64 / MIB);
        match self.budget {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "{:<72} {:>10.2} {:>10}  {}",
                    "budget (memory.budget_mib)",
                    b as f64 / MIB,
                    "",
                    if total <= b {
                        format!("fits, {:.1} MiB to spare", (b - total) as f64 / MIB)
                    } else {
                        format!("DOES NOT FIT by {:.1} MiB", (total - b) as f64 / MIB)
                    }
                );
            }
            None => {
                let _ = writeln!(out, "no memory.budget_mib: the plan is not enforced");
            }
        }
        out
    }

    /// `Ok` when the total fits the budget (or there is none); else the table and the first
    /// line at which the running total passes the budget.
    pub fn check(&self) -> Result<(), OverBudget> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let mut total = 0u64;
        for l in &self.lines {
            total += l.bytes;
            if total > budget {
                return Err(OverBudget {
                    budget_mib: budget >> 20,
                    line: format!("{} ({:.2} MiB)", l.what, l.bytes as f64 / MIB),
                    total_mib: self.total() as f64 / MIB,
                    table: self.table(),
                });
            }
        }
        Ok(())
    }
}

/// Resident memory of this process now, from /proc (0 where there is none).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Loads every model of `profile` with its memory measured, and computes the plan.
pub struct Planned {
    pub dicom: Vec<Engine>,
    pub video: Vec<Engine>,
    pub plan: MemoryPlan,
    /// What the plan was computed from, to compute it again when a model is replaced.
    pub dicom_facts: Vec<ModelFacts>,
    pub video_facts: Vec<ModelFacts>,
    pub baseline_rss: u64,
    /// Image workers planned for (see [`crate::board::Images`]).
    pub workers: Workers,
}

/// How many image workers the plan holds, and why that many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    /// `images.workers` set in the profile.
    pub explicit: bool,
    /// Without `images.workers`: the cores left beside the live video.
    pub free_cores: usize,
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.count == 1 { "" } else { "s" };
        if self.explicit {
            write!(f, "{} image worker{plural} (images.workers)", self.count)
        } else if self.count < self.free_cores {
            write!(
                f,
                "{} image worker{plural}: {} core(s) free beside the live video, lowered to what the memory budget holds",
                self.count, self.free_cores
            )
        } else {
            write!(
                f,
                "{} image worker{plural}: one per core free beside the live video",
                self.count
            )
        }
    }
}

pub fn plan_for(profile: &BoardProfile) -> Result<Planned, ModelError> {
    let baseline = rss_bytes();
    let load = |source| -> Result<(Vec<Engine>, Vec<ModelFacts>), ModelError> {
        let mut engines = Vec::new();
        let mut facts = Vec::new();
        for dir in profile.models_for(source) {
            let (e, m) = load_measured(dir)?;
            if source == ModelSource::Video && e.manifest().model.task == Task::Detection {
                return Err(ModelError::Manifest {
                    path: dir.join("model.toml"),
                    reason: "a detection model runs on DICOM images, not on live video: give it sources = [\"dicom\"]".into(),
                });
            }
            if source == ModelSource::Dicom
                && e.manifest().model.task != Task::Segmentation
                && profile
                    .models
                    .iter()
                    .any(|slot| slot.path == dir && slot.dicom_results.contains(&ResultKind::Seg))
            {
                return Err(ModelError::Manifest {
                    path: dir.join("model.toml"),
                    reason: format!(
                        "its [[models]] entry asks for dicom_results \"seg\", but a {} model has no mask: only segmentation models make a DICOM SEG",
                        format!("{:?}", e.manifest().model.task).to_lowercase()
                    ),
                });
            }
            facts.push(ModelFacts::of(e.manifest(), m));
            engines.push(e);
        }
        Ok((engines, facts))
    };
    let (dicom, dicom_facts) = load(ModelSource::Dicom)?;
    let (video, video_facts) = if profile.video.is_some() {
        load(ModelSource::Video)?
    } else {
        (Vec::new(), Vec::new())
    };
    // Without models for DICOM, one worker only moves files that make no finding.
    let free_cores = if dicom.is_empty() {
        1
    } else {
        crate::board::Images::default_workers(profile.video.as_ref())
    };
    let mut workers = Workers {
        count: profile.images.workers.unwrap_or(free_cores),
        explicit: profile.images.workers.is_some(),
        free_cores,
    };
    let compute = |n| MemoryPlan::compute(profile, &dicom_facts, &video_facts, baseline, n);
    let mut plan = compute(workers.count);
    // The default never makes a profile refuse to start that one worker fits: fewer
    // workers, down to one. A count the profile sets is planned as set (and refused).
    while !workers.explicit && workers.count > 1 && plan.check().is_err() {
        workers.count -= 1;
        plan = compute(workers.count);
    }
    Ok(Planned {
        dicom,
        video,
        plan,
        dicom_facts,
        video_facts,
        baseline_rss: baseline,
        workers,
    })
}
