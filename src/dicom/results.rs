//! The DICOM results of one source object, as its models ask for them (`dicom_results` in the
//! board profile, or `bedside infer --structured-report/--secondary-capture`): the TID 1500
//! report of the findings and the overlay as a Secondary Capture, both about one frame — the
//! first with a label over threshold, else the first with a finding — and both placed in the
//! source's study ([`derived`]). The daemon hands what is made here to the DICOM outbox
//! ([`crate::dicom::outbox`]); the CLI writes it to files.

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileDicomObject, InMemDicomObject};
use serde::Deserialize;

use super::derived::{self, DerivedError, Producer, Source};
use super::{seg, sr};
use crate::draw::Rgb;
use crate::finding::Finding;
use crate::model::ModelRef;
use crate::model::manifest::Manifest;
use crate::task::Masks;

/// A kind of DICOM result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    /// Comprehensive 3D SR, TID 1500 Measurement Report.
    Sr,
    /// The overlay as a Secondary Capture Image, annotations burned in.
    Sc,
    /// DICOM Segmentation (binary) of a segmentation model's masks.
    Seg,
}

impl ResultKind {
    pub fn name(self) -> &'static str {
        match self {
            ResultKind::Sr => "sr",
            ResultKind::Sc => "sc",
            ResultKind::Seg => "seg",
        }
    }
}

/// One model of the processor and the results it asks for.
pub struct Wanted<'a> {
    pub model: &'a ModelRef,
    pub manifest: &'a Manifest,
    pub kinds: &'a [ResultKind],
}

/// A DICOM object made, ready to be written or sent.
pub struct Made {
    pub kind: ResultKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// The models whose findings it holds.
    pub models: Vec<ModelRef>,
    pub object: FileDicomObject<InMemDicomObject>,
}

impl Made {
    fn new(kind: ResultKind, who: &Producer, object: FileDicomObject<InMemDicomObject>) -> Self {
        let text = |tag| {
            object
                .element(tag)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
                .unwrap_or_default()
        };
        Made {
            kind,
            sop_class_uid: text(tags::SOP_CLASS_UID),
            sop_instance_uid: text(tags::SOP_INSTANCE_UID),
            models: who.models.clone(),
            object,
        }
    }

    /// A result already written as a Part-10 file (its kind by its SOP class), to queue it
    /// again: `bedside bench-dicom-send` sends files `bedside infer` wrote.
    pub fn from_file(path: &std::path::Path) -> Result<Self, DerivedError> {
        let object = dicom_object::open_file(path)
            .map_err(|e| DerivedError::Build(format!("{}: {e}", path.display())))?;
        let kind = match object.meta().media_storage_sop_class_uid() {
            c if c.starts_with(dicom_dictionary_std::uids::SEGMENTATION_STORAGE) => ResultKind::Seg,
            c if c.starts_with("1.2.840.10008.5.1.4.1.1.88.") => ResultKind::Sr,
            _ => ResultKind::Sc,
        };
        let who = derived::Producer {
            device: String::new(),
            site: String::new(),
            models: Vec::new(),
        };
        Ok(Made::new(kind, &who, object))
    }

    /// The object as a Part-10 file (preamble, file meta, data set in the file meta's
    /// transfer syntax, Explicit VR Little Endian).
    pub fn to_bytes(&self) -> Result<Vec<u8>, DerivedError> {
        let mut out = Vec::with_capacity(64 << 10);
        self.object
            .write_all(&mut out)
            .map_err(|e| DerivedError::Build(e.to_string()))?;
        Ok(out)
    }
}

/// Whether any of `wanted` asks for a picture (the overlay to burn into a Secondary Capture).
pub fn wants_picture(wanted: &[Wanted<'_>]) -> bool {
    wanted.iter().any(|w| w.kinds.contains(&ResultKind::Sc))
}

/// Makes the results `wanted` asks for from the findings about `frame` of `obj`: one report
/// holding every finding of a model that asks for `sr`, one Secondary Capture of `picture`
/// (the overlay of that frame, with every finding on it) when any model asks for `sc`, and
/// one SEG of each model's `masks` of that frame that asks for `seg` (when its labels cover
/// anything). Nothing is made when no finding is about `frame`.
#[allow(clippy::too_many_arguments)]
pub fn make(
    obj: &DefaultDicomObject,
    findings: &[Finding],
    wanted: &[Wanted<'_>],
    frame: u32,
    picture: Option<&Rgb>,
    masks: &[(ModelRef, Masks)],
    device: (&str, &str),
    when: time::OffsetDateTime,
) -> Result<Vec<Made>, DerivedError> {
    let on_frame: Vec<&Finding> = findings.iter().filter(|f| f.image.frame == frame).collect();
    let asks = |f: &Finding, kind: ResultKind| {
        wanted
            .iter()
            .find(|w| *w.model == f.model)
            .filter(|w| w.kinds.contains(&kind))
            .map(|w| w.manifest)
    };
    let reported: Vec<(&Finding, &Manifest)> = on_frame
        .iter()
        .filter_map(|f| asks(f, ResultKind::Sr).map(|m| (*f, m)))
        .collect();
    let captured = on_frame.iter().any(|f| asks(f, ResultKind::Sc).is_some());
    let segmented: Vec<(&Finding, &Manifest, &Masks)> = on_frame
        .iter()
        .filter_map(|f| {
            let manifest = asks(f, ResultKind::Seg)?;
            let (_, m) = masks.iter().find(|(m, _)| *m == f.model)?;
            Some((*f, manifest, m))
        })
        .collect();
    let mut made = Vec::new();
    if reported.is_empty() && !captured && segmented.is_empty() {
        return Ok(made);
    }
    let source = Source::from_object(obj)?;
    let producer = |models: Vec<ModelRef>| Producer {
        device: device.0.to_owned(),
        site: device.1.to_owned(),
        models,
    };
    if !reported.is_empty() {
        let who = producer(reported.iter().map(|(f, _)| f.model.clone()).collect());
        let report = sr::measurement_report(&source, &who, &reported, frame, when)?;
        made.push(Made::new(ResultKind::Sr, &who, report));
    }
    if captured && let Some(picture) = picture {
        // The picture shows every finding on the frame, so it names every model.
        let who = producer(on_frame.iter().map(|f| f.model.clone()).collect());
        let sc = derived::secondary_capture(&source, &who, picture, frame, when)?;
        made.push(Made::new(ResultKind::Sc, &who, sc));
    }
    for (f, manifest, masks) in segmented {
        let who = producer(vec![f.model.clone()]);
        if let Some(obj) = seg::segmentation(&source, &who, manifest, masks, frame, when)? {
            made.push(Made::new(ResultKind::Seg, &who, obj));
        }
    }
    Ok(made)
}
