//! DICOM objects bedside makes from a source image, for the patient's study in PACS: what
//! every one of them shares (the source's patient and study, a new series, the equipment that
//! made it, IHE AI Results' Contributing Equipment Sequence naming each model) and the
//! Secondary Capture of an overlay. A small typed builder over dicom-object: dicom-rs has no
//! builder for derived objects.
//!
//! These objects carry the source's Patient and General Study modules because the IODs
//! require them: PACS files them in the patient's study by those attributes. They go to the
//! hospital's PACS only; MQTT findings and logs never carry them.
//!
//! UIDs are derived, not random: `2.25.` and the first 16 bytes of a sha256 over what the
//! object is (its kind, the source instance, the models' hashes, the device). The same
//! source and models always give the same UIDs, so an object sent twice after a power cut
//! is one object in PACS, not a duplicate.

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileDicomObject, FileMetaTableBuilder, InMemDicomObject};
use sha2::{Digest, Sha256};

use crate::draw::Rgb;
use crate::model::ModelRef;

#[derive(Debug, thiserror::Error)]
pub enum DerivedError {
    #[error("the source has no {0}: bedside cannot place a result in its study")]
    Missing(&'static str),
    #[error("cannot build the DICOM object: {0}")]
    Build(String),
}

/// Patient and General Study attributes copied from the source as they are (Type 2: present,
/// empty when the source lacks them).
const PATIENT_AND_STUDY: [(Tag, VR); 10] = [
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// What a derived object needs of its source image.
#[derive(Debug, Clone)]
pub struct Source {
    copied: Vec<DataElement<InMemDicomObject>>,
    charset: Option<DataElement<InMemDicomObject>>,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub modality: String,
    /// Rows and columns of its frames, when it says.
    pub dims: Option<(u32, u32)>,
    /// Number of frames (1 when it does not say).
    pub frames: u32,
    laterality: DataElement<InMemDicomObject>,
}

impl Source {
    pub fn from_object(obj: &DefaultDicomObject) -> Result<Self, DerivedError> {
        let text = |tag: Tag| -> Option<String> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
                .filter(|s| !s.is_empty())
        };
        let need = |tag: Tag, what: &'static str| text(tag).ok_or(DerivedError::Missing(what));
        let number = |tag: Tag| -> Option<u32> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u32>().ok())
                .filter(|&n| n > 0)
        };
        let copied = PATIENT_AND_STUDY
            .iter()
            .map(|&(tag, vr)| match obj.element_opt(tag).ok().flatten() {
                Some(e) => DataElement::new(tag, vr, e.value().clone()),
                None => DataElement::new(tag, vr, PrimitiveValue::Empty),
            })
            .collect();
        Ok(Self {
            copied,
            charset: obj
                .element_opt(tags::SPECIFIC_CHARACTER_SET)
                .ok()
                .flatten()
                .cloned(),
            study_uid: need(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: need(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            sop_class_uid: need(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: need(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            modality: text(tags::MODALITY).unwrap_or_else(|| "OT".into()),
            dims: number(tags::ROWS).zip(number(tags::COLUMNS)),
            frames: number(tags::NUMBER_OF_FRAMES).unwrap_or(1),
            laterality: DataElement::new(
                tags::LATERALITY,
                VR::CS,
                text(tags::LATERALITY)
                    .or_else(|| text(tags::IMAGE_LATERALITY))
                    .filter(|l| ["R", "L"].contains(&l.as_str()))
                    .map_or(PrimitiveValue::Empty, PrimitiveValue::from),
            ),
        })
    }
}

impl Source {
    /// A reference to the source image (SOP class and instance, and the frame, counted from
    /// 0 here and from 1 in DICOM, when it is one frame of several).
    pub fn reference(&self, frame: Option<u32>) -> InMemDicomObject {
        let mut r = InMemDicomObject::from_element_iter([
            el(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                self.sop_class_uid.as_str(),
            ),
            el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                self.sop_instance_uid.as_str(),
            ),
        ]);
        if let Some(f) = frame {
            r.put(el(
                tags::REFERENCED_FRAME_NUMBER,
                VR::IS,
                (f + 1).to_string().as_str(),
            ));
        }
        r
    }
}

/// Who made a derived object: this device and the models whose findings it shows.
#[derive(Debug, Clone)]
pub struct Producer {
    pub device: String,
    pub site: String,
    pub models: Vec<ModelRef>,
}

impl Producer {
    /// The device's own UID (Device UID), stable for a device id and site.
    fn device_uid(&self) -> String {
        uid(&["device", &self.site, &self.device])
    }
}

/// `2.25.<decimal of the first 128 bits of sha256(parts)>`: a valid UID of at most 44
/// characters, the same for the same parts.
pub fn uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

pub(crate) fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

pub(crate) fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A coded concept: `(value, scheme, meaning)`.
pub fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// DICOM date and time of `when` (UTC).
pub(crate) fn date_time(when: time::OffsetDateTime) -> (String, String) {
    let w = when.to_offset(time::UtcOffset::UTC);
    (
        format!("{:04}{:02}{:02}", w.year(), w.month() as u8, w.day()),
        format!("{:02}{:02}{:02}", w.hour(), w.minute(), w.second()),
    )
}

/// The attributes every derived object has: SOP Common (with the Contributing Equipment
/// Sequence), Patient and General Study (copied), General Series (new), General Equipment.
pub(crate) fn common(
    src: &Source,
    who: &Producer,
    kind: &str,
    sop_class: &str,
    modality: &str,
    series_number: i32,
    when: time::OffsetDateTime,
) -> (InMemDicomObject, String) {
    let hashes: Vec<&str> = who.models.iter().map(|m| m.sha256.as_str()).collect();
    let mut parts = vec![
        kind,
        src.sop_instance_uid.as_str(),
        who.site.as_str(),
        who.device.as_str(),
    ];
    parts.extend(&hashes);
    let sop_uid = uid(&parts);
    let series_uid = uid(&[kind, "series", &src.series_uid, &who.site, &who.device]);
    let (date, time_of_day) = date_time(when);
    let mut obj = InMemDicomObject::new_empty();
    if let Some(cs) = &src.charset {
        obj.put(cs.clone());
    }
    for e in &src.copied {
        obj.put(e.clone());
    }
    let version = env!("CARGO_PKG_VERSION");
    let contributing = who
        .models
        .iter()
        .map(|m| {
            InMemDicomObject::from_element_iter([
                seq(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![code("1630", "99IHE", "Processing Algorithm")],
                ),
                el(tags::MANUFACTURER, VR::LO, "bedside"),
                el(tags::INSTITUTION_NAME, VR::LO, who.site.as_str()),
                el(tags::STATION_NAME, VR::SH, truncate(&who.device, 16)),
                el(tags::MANUFACTURER_MODEL_NAME, VR::LO, truncate(&m.id, 64)),
                el(
                    tags::SOFTWARE_VERSIONS,
                    VR::LO,
                    PrimitiveValue::Strs(
                        [
                            truncate(&m.version, 64),
                            format!("sha256:{}", &m.sha256[..m.sha256.len().min(57)]),
                            format!("bedside {version}"),
                        ]
                        .into_iter()
                        .collect(),
                    ),
                ),
                el(tags::DEVICE_UID, VR::UI, who.device_uid().as_str()),
                el(
                    tags::CONTRIBUTION_DATE_TIME,
                    VR::DT,
                    format!("{date}{time_of_day}").as_str(),
                ),
                el(
                    tags::CONTRIBUTION_DESCRIPTION,
                    VR::ST,
                    "decision support, not a diagnosis",
                ),
            ])
        })
        .collect();
    for e in [
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time_of_day.as_str()),
        seq(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, contributing),
        el(tags::MODALITY, VR::CS, modality),
        el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        el(
            tags::SERIES_NUMBER,
            VR::IS,
            series_number.to_string().as_str(),
        ),
        el(tags::SERIES_DATE, VR::DA, date.as_str()),
        el(tags::SERIES_TIME, VR::TM, time_of_day.as_str()),
        el(tags::MANUFACTURER, VR::LO, "bedside"),
        el(tags::STATION_NAME, VR::SH, truncate(&who.device, 16)),
        el(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            format!("bedside {version}").as_str(),
        ),
    ] {
        obj.put(e);
    }
    let known = !matches!(
        src.laterality.value(),
        dicom_core::DicomValue::Primitive(PrimitiveValue::Empty)
    );
    if modality != "SR" && (known || modality != "SEG") {
        // General Series, Type 2C: the source's when it has one, else present and empty
        // (unknown). The SR Document Series module has no Laterality; a SEG's frames carry
        // no Frame Laterality, so dciodvfy wants it absent there rather than empty.
        obj.put(src.laterality.clone());
    }
    (obj, sop_uid)
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The Secondary Capture Image of an overlay: the picture with its annotations burned in
/// (Burned In Annotation YES), RGB, in the source's study, series "bedside overlays", and
/// referencing the source image.
pub fn secondary_capture(
    src: &Source,
    who: &Producer,
    picture: &Rgb,
    frame: u32,
    when: time::OffsetDateTime,
) -> Result<FileDicomObject<InMemDicomObject>, DerivedError> {
    let (mut obj, sop_uid) = common(
        src,
        who,
        "secondary-capture",
        uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        &src.modality,
        9901,
        when,
    );
    let (date, time_of_day) = date_time(when);
    let source_ref = src.reference((src.frames > 1).then_some(frame));
    let models: Vec<String> = who
        .models
        .iter()
        .map(|m| format!("{} {}", m.id, m.version))
        .collect();
    for e in [
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "bedside overlays (decision support)",
        ),
        el(tags::CONVERSION_TYPE, VR::CS, "WSD"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time_of_day.as_str()),
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["DERIVED", "SECONDARY"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        ),
        el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
        el(
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            truncate(
                &format!(
                    "bedside overlay of the findings of {}: decision support, not a diagnosis",
                    models.join(", ")
                ),
                1024,
            )
            .as_str(),
        ),
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_ref]),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        el(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(picture.height as u16),
        ),
        el(
            tags::COLUMNS,
            VR::US,
            PrimitiveValue::from(picture.width as u16),
        ),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(picture.pixels.clone()),
        ),
    ] {
        obj.put(e);
    }
    if picture.width > u16::MAX as u32 || picture.height > u16::MAX as u32 {
        return Err(DerivedError::Build(format!(
            "{} x {} is larger than DICOM rows and columns allow",
            picture.width, picture.height
        )));
    }
    file(obj, uids::SECONDARY_CAPTURE_IMAGE_STORAGE, &sop_uid)
}

/// The object as a Part-10 file: explicit VR little endian, bedside's implementation UID.
pub(crate) fn file(
    obj: InMemDicomObject,
    sop_class: &str,
    sop_uid: &str,
) -> Result<FileDicomObject<InMemDicomObject>, DerivedError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(super::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(super::IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| DerivedError::Build(e.to_string()))?;
    Ok(obj.with_exact_meta(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_stable_and_distinct() {
        let a = uid(&["sc", "1.2.3"]);
        assert_eq!(a, uid(&["sc", "1.2.3"]));
        assert_ne!(a, uid(&["sc", "1.2.4"]));
        assert_ne!(uid(&["a", "bc"]), uid(&["ab", "c"]));
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        let digits = &a[5..];
        assert!(
            digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0') || digits == "0"
        );
    }
}
