//! One image through every stage: decode → prepare → infer → finding, timed per stage.
//! The CLI and the daemon share this, so `bedside infer` shows exactly what the daemon would
//! publish.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::board::{BoardError, BoardProfile};
use crate::dicom::decode::ImageLimits;
use crate::dicom::derived::DerivedError;
use crate::dicom::results::{self, ResultKind};
use crate::dicom::{self, DecodeError};
use crate::finding::{self, Finding, ImageInfo, InputKey, Timings, UidHasher, round3};
use crate::infer::{Engine, InferError};
use crate::model::ModelError;
use crate::model::ModelRef;
use crate::prepare::{PrepareError, Preparer};
use crate::source::{Image, SourceKind};
use crate::task::{self, Decoded, ImageGeometry, Masks};

/// Why an image produced no finding.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The input itself is bad (unreadable, truncated, unsupported): the operator's problem.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Infer(#[from] InferError),
}

impl ProcessError {
    /// True when the input is at fault rather than bedside.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ProcessError::Decode(_) | ProcessError::Prepare(_))
    }
}

/// Who is making findings.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device: String,
    pub site: String,
    pub uid_hasher: UidHasher,
}

impl Identity {
    /// The device a board profile describes, with its UID-hash key.
    pub fn for_board(profile: &BoardProfile) -> Result<Self, BoardError> {
        Ok(Identity {
            device: profile.device.id.clone(),
            site: profile.device.site.clone(),
            uid_hasher: UidHasher::new(profile.uid_hash_key()?),
        })
    }
}

struct Slot {
    engine: Engine,
    preparer: Preparer,
}

/// Each segmentation model's masks of one image, for the SEG it asks for.
type ModelMasks = Vec<(ModelRef, Masks)>;

/// What one DICOM file gave.
pub struct Processed {
    pub findings: Vec<Finding>,
    /// The frame pictured and reported on (`None` when no model ran).
    pub frame: Option<u32>,
    /// The DICOM results the models ask for, made from the findings about `frame`.
    pub results: Vec<results::Made>,
    /// Why no result could be made (the source lacks what its study needs, …): the findings
    /// stand all the same.
    pub results_error: Option<DerivedError>,
}

/// Which DICOM results to make ([`Processor::with_results`]).
#[derive(Debug, Clone, Default)]
pub struct ResultsSpec {
    /// Model id → what it asks for.
    pub wanted: Vec<(String, Vec<ResultKind>)>,
    /// Longer side of the Secondary Capture picture; `None`: the image's own size.
    pub max_side: Option<u32>,
    /// The frame to picture and report; `None`: the first with a label over threshold, else
    /// the first.
    pub frame: Option<u32>,
}

/// The models of one device, with their preparation buffers.
pub struct Processor {
    identity: Identity,
    slots: Vec<Slot>,
    limits: ImageLimits,
    /// Where the last overlay per source goes, and its largest side (`[overlays]`).
    overlays: Option<(PathBuf, u32)>,
    results: Option<ResultsSpec>,
}

impl Processor {
    /// Loads every model folder (checking each file's sha256).
    pub fn new<P: AsRef<Path>>(identity: Identity, model_dirs: &[P]) -> Result<Self, ModelError> {
        let engines = model_dirs
            .iter()
            .map(|dir| Engine::load(dir.as_ref()))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self::from_engines(identity, engines))
    }

    /// Uses models already loaded (and measured, see [`crate::plan`]).
    pub fn from_engines(identity: Identity, engines: Vec<Engine>) -> Self {
        let slots = engines
            .into_iter()
            .map(|engine| {
                let (h, w) = engine.manifest().input_hw();
                let preparer = Preparer::new(engine.manifest().preprocess.clone(), h, w);
                Slot { engine, preparer }
            })
            .collect();
        Processor {
            identity,
            slots,
            limits: ImageLimits::default(),
            overlays: None,
            results: None,
        }
    }

    /// Another processor with the same models for a second image worker: the weights and
    /// plans are shared, the working memory and preparation buffers are its own.
    pub fn fork(&self) -> Self {
        let engines = self.slots.iter().map(|s| s.engine.fork()).collect();
        Processor {
            limits: self.limits,
            overlays: self.overlays.clone(),
            results: self.results.clone(),
            ..Self::from_engines(self.identity.clone(), engines)
        }
    }

    /// Puts `engine` in the place of the model with the same id, between two images (the
    /// processor runs one image at a time, so no finding mixes the two). Returns the model it
    /// replaced, or gives the engine back when no model has its id.
    pub fn replace(&mut self, engine: Engine) -> Result<ModelRef, Box<Engine>> {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.engine.model_ref().id == engine.model_ref().id)
        else {
            return Err(Box::new(engine));
        };
        let (h, w) = engine.manifest().input_hw();
        slot.preparer = Preparer::new(engine.manifest().preprocess.clone(), h, w);
        let old = std::mem::replace(&mut slot.engine, engine);
        Ok(old.model_ref().clone())
    }

    /// Keeps, per source, a picture of the last image with its findings in `dir`
    /// (`<source>.png`, then `<source>.json` naming the findings it shows), at most
    /// `max_side` pixels on its longer side. A picture that cannot be made or written is
    /// logged and skipped: it never costs a finding.
    pub fn with_overlays(mut self, dir: PathBuf, max_side: u32) -> Self {
        self.overlays = Some((dir, max_side));
        self
    }

    /// Makes the DICOM results `spec` asks for with every DICOM file processed
    /// ([`Self::process`]).
    pub fn with_results(mut self, spec: ResultsSpec) -> Self {
        self.results = Some(spec);
        self
    }

    /// Inputs beyond these limits are refused before they are decoded.
    pub fn with_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Who this processor's findings say made them.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.slots.iter().map(|s| &s.engine)
    }

    /// Reads a DICOM file and runs every model on the frames its manifest asks for: one
    /// finding per model and frame. Frames are decoded one at a time, so a long cine never
    /// sits in memory whole.
    pub fn process_file(
        &mut self,
        path: &Path,
        source: SourceKind,
    ) -> Result<Vec<Finding>, ProcessError> {
        self.process(path, source).map(|p| p.findings)
    }

    /// [`Self::process_file`], and the DICOM results the models ask for ([`Self::with_results`]).
    pub fn process(&mut self, path: &Path, source: SourceKind) -> Result<Processed, ProcessError> {
        let t0 = Instant::now();
        let obj = dicom::decode::open_file_within(path, self.limits.max_file_bytes)?;
        let read_ms = ms(t0.elapsed());
        dicom::decode::check_limits(&obj, &self.limits).map_err(|e| e.with_path(path))?;
        let count = dicom::decode::frame_count(&obj);
        let mut wanted: Vec<u32> = self
            .slots
            .iter()
            .flat_map(|s| s.engine.manifest().input.frames.select(count))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let want_picture = self.results.as_ref().is_some_and(|r| {
            r.wanted
                .iter()
                .any(|(_, kinds)| kinds.contains(&ResultKind::Sc))
        });
        let mut findings = Vec::new();
        // The frame pictured and reported: the one asked for, else the first frame with a
        // label over threshold, else the first frame. Drawn when its frame is decoded
        // (bounded by `max_side`), written at the end.
        let mut chosen: Option<(bool, u32)> = None;
        let mut kept: Option<(crate::draw::Rgb, Vec<String>)> = None;
        let mut captured: Option<crate::draw::Rgb> = None;
        let mut segmented: ModelMasks = Vec::new();
        let forced = self.results.as_ref().and_then(|r| r.frame);
        for frame in wanted {
            let t = Instant::now();
            let image = dicom::decode::decode_frame(&obj, frame)
                .map_err(|e| ProcessError::from(e.with_path(path)))?;
            let decode_ms = ms(t.elapsed()) + if frame == 0 { read_ms } else { 0.0 };
            let (made, masks) = self.run_models(&image, decode_ms, source, Some(count))?;
            let over = made.iter().any(|f| !f.over_threshold.is_empty());
            let better = !made.is_empty()
                && match forced {
                    Some(f) => f == frame,
                    None => chosen.is_none_or(|(was_over, _)| over && !was_over),
                };
            if better {
                chosen = Some((over, frame));
                segmented = masks;
                if let Some((_, max_side)) = &self.overlays {
                    match crate::overlay::render(&image, &made, Some(*max_side)) {
                        Ok(rgb) => kept = Some((rgb, made.iter().map(|f| f.id.clone()).collect())),
                        Err(e) => tracing::warn!(error = %e, "no overlay for this image"),
                    }
                }
                if want_picture {
                    let max_side = self.results.as_ref().and_then(|r| r.max_side);
                    match crate::overlay::render(&image, &made, max_side) {
                        Ok(rgb) => captured = Some(rgb),
                        Err(e) => {
                            tracing::warn!(error = %e, "no Secondary Capture for this image")
                        }
                    }
                }
            }
            findings.extend(made);
        }
        if let (Some((dir, _)), Some((rgb, ids)), Some((_, frame))) =
            (&self.overlays, &kept, chosen)
            && let Err(e) = keep_overlay(dir, source, rgb, ids, frame)
        {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot keep the overlay");
        }
        let mut processed = Processed {
            findings,
            frame: chosen.map(|(_, f)| f),
            results: Vec::new(),
            results_error: None,
        };
        if let (Some(spec), Some(frame)) = (&self.results, processed.frame) {
            let wanted: Vec<results::Wanted<'_>> =
                self.slots
                    .iter()
                    .filter_map(|s| {
                        let id = &s.engine.model_ref().id;
                        spec.wanted.iter().find(|(m, _)| m == id).map(|(_, kinds)| {
                            results::Wanted {
                                model: s.engine.model_ref(),
                                manifest: s.engine.manifest(),
                                kinds,
                            }
                        })
                    })
                    .collect();
            match results::make(
                &obj,
                &processed.findings,
                &wanted,
                frame,
                captured.as_ref(),
                &segmented,
                (self.identity.device.as_str(), self.identity.site.as_str()),
                time::OffsetDateTime::now_utc(),
            ) {
                Ok(made) => processed.results = made,
                Err(e) => processed.results_error = Some(e),
            }
        }
        Ok(processed)
    }

    /// Runs every model on an already decoded image (whatever frame it is).
    pub fn process_image(
        &mut self,
        image: &Image,
        decode_ms: f64,
        source: SourceKind,
    ) -> Result<Vec<Finding>, ProcessError> {
        self.run_models(image, decode_ms, source, None)
            .map(|(findings, _)| findings)
    }

    /// `count`: when the image is one frame of an object of `count` frames, only the models
    /// whose manifest asks for this frame run. With the findings, the masks of each
    /// segmentation model that asks for a DICOM SEG ([`Self::with_results`]).
    fn run_models(
        &mut self,
        image: &Image,
        decode_ms: f64,
        source: SourceKind,
        count: Option<u32>,
    ) -> Result<(Vec<Finding>, ModelMasks), ProcessError> {
        let uid_hash = image
            .provenance
            .sop_instance_uid
            .as_ref()
            .map(|u| self.identity.uid_hasher.hash(u));
        let key = match &uid_hash {
            Some(h) => InputKey::UidHash(h.clone()),
            None => InputKey::PixelHash(pixel_hash(image)),
        };
        let mut findings = Vec::with_capacity(self.slots.len());
        let mut masks = Vec::new();
        let asks_seg = |id: &str| {
            self.results.as_ref().is_some_and(|r| {
                r.wanted
                    .iter()
                    .any(|(m, kinds)| m == id && kinds.contains(&ResultKind::Seg))
            })
        };
        for slot in &mut self.slots {
            if let Some(count) = count
                && !slot
                    .engine
                    .manifest()
                    .input
                    .frames
                    .select(count)
                    .contains(&image.frame)
            {
                continue;
            }
            let t = Instant::now();
            let tensor = slot.preparer.prepare(image)?;
            let prepare_ms = ms(t.elapsed());
            let t = Instant::now();
            let outputs = slot.engine.run(tensor)?;
            let infer_ms = ms(t.elapsed());
            let manifest = slot.engine.manifest();
            let Decoded {
                scores,
                over_threshold,
                regions,
                detections,
            } = task::decode(
                manifest,
                &outputs,
                slot.engine.output_hw(),
                &ImageGeometry {
                    rows: image.rows,
                    cols: image.cols,
                    pixel_spacing_mm: image.pixel_spacing_mm,
                },
            );
            let model = slot.engine.model_ref().clone();
            if count.is_some()
                && asks_seg(&model.id)
                && let Some(m) = task::masks(manifest, &outputs, slot.engine.output_hw())
            {
                masks.push((model.clone(), m));
            }
            findings.push(Finding {
                schema: finding::SCHEMA,
                id: finding::finding_id(&model, &key, image.frame),
                device: self.identity.device.clone(),
                site: self.identity.site.clone(),
                source,
                modality: image.provenance.modality.clone(),
                sop_instance_uid_hash: uid_hash.clone(),
                task: manifest.model.task,
                model,
                scores,
                over_threshold,
                image: ImageInfo {
                    rows: image.rows,
                    cols: image.cols,
                    frames: image.provenance.frames,
                    frame: image.frame,
                    pixel_spacing_mm: image.pixel_spacing_mm,
                },
                regions,
                detections,
                video: None,
                timings_ms: Timings {
                    decode: round3(decode_ms),
                    prepare: round3(prepare_ms),
                    infer: round3(infer_ms),
                    total: round3(decode_ms + prepare_ms + infer_ms),
                },
                created_at: finding::now_rfc3339(),
                bedside_version: env!("CARGO_PKG_VERSION"),
            });
        }
        Ok((findings, masks))
    }
}

/// Writes `<dir>/<source>.png` (atomically) and then `<source>.json`, which names the
/// findings the picture shows (ids only: nothing that identifies the patient).
fn keep_overlay(
    dir: &Path,
    source: SourceKind,
    rgb: &crate::draw::Rgb,
    ids: &[String],
    frame: u32,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    rgb.write_png(&dir.join(format!("{}.png", source.name())))?;
    let meta = serde_json::json!({
        "source": source,
        "frame": frame,
        "findings": ids,
        "width": rgb.width,
        "height": rgb.height,
        "written_at": finding::now_rfc3339(),
    });
    let path = dir.join(format!("{}.json", source.name()));
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&meta)?)?;
    std::fs::rename(&tmp, &path)
}

fn pixel_hash(image: &Image) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(image.rows.to_le_bytes());
    h.update(image.cols.to_le_bytes());
    for v in image.pixels.values() {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
