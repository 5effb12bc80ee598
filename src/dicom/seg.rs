//! A segmentation model's masks of one frame as a DICOM Segmentation (SEG), BINARY: one
//! segment per label that covers any pixel, one 1-bit frame per segment at the source
//! image's rows and columns, each frame derived from the source frame (Derivation Image,
//! purpose "source image for image processing operation") and indexed by its segment
//! (Multi-frame Dimension: Referenced Segment Number). Labels are coded as the report codes
//! them ([`sr::Coded::label`]), their category "Morphologically Abnormal Structure".
//!
//! bedside's sources are projection X-ray and ultrasound, which have no patient frame of
//! reference: the SEG has none either (no Plane Position/Orientation, no Pixel Measures).
//! Its pixels are the source's, so a viewer lays it over the source image it references.
//!
//! The model's mask is at its output size; a source pixel takes the mask pixel its centre
//! falls in (nearest neighbour, the same placement as a finding's regions).

use dicom_core::value::PrimitiveValue;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::derived::{self, DerivedError, Producer, Source, code, el, seq};
use super::sr::Coded;
use crate::model::manifest::Manifest;
use crate::task::Masks;

/// Series number of bedside's segmentations (reports are 9902, overlays 9901).
const SERIES_NUMBER: i32 = 9903;

/// The SEG of `masks` (made by `who`'s one model, described by `manifest`) over `frame` of
/// the source. `None` when no label covers any pixel: a SEG needs at least one segment.
pub fn segmentation(
    src: &Source,
    who: &Producer,
    manifest: &Manifest,
    masks: &Masks,
    frame: u32,
    when: time::OffsetDateTime,
) -> Result<Option<FileDicomObject<InMemDicomObject>>, DerivedError> {
    let (rows, cols) = src.dims.ok_or(DerivedError::Missing("Rows and Columns"))?;
    if masks.labels.len() != manifest.labels.len() {
        return Err(DerivedError::Build(format!(
            "{} masks for {} labels",
            masks.labels.len(),
            manifest.labels.len()
        )));
    }
    // Labels that cover something, numbered 1.. in manifest order.
    let present: Vec<usize> = (0..masks.labels.len())
        .filter(|&c| masks.labels[c].iter().any(|&p| p))
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let model = who.models.first().ok_or(DerivedError::Build(
        "a SEG names the model that made it".into(),
    ))?;
    let (mut obj, sop_uid) = derived::common(
        src,
        who,
        "segmentation",
        uids::SEGMENTATION_STORAGE,
        "SEG",
        SERIES_NUMBER,
        when,
    );
    let (date, time_of_day) = derived::date_time(when);
    let algorithm = derived::truncate(&format!("{} {}", model.id, model.version), 64);
    let segments: Vec<InMemDicomObject> = present
        .iter()
        .enumerate()
        .map(|(n, &c)| {
            let label = &manifest.labels[c];
            let concept = Coded::label(&label.name, label.code.as_ref());
            InMemDicomObject::from_element_iter([
                el(
                    tags::SEGMENT_NUMBER,
                    VR::US,
                    PrimitiveValue::from(n as u16 + 1),
                ),
                el(
                    tags::SEGMENT_LABEL,
                    VR::LO,
                    derived::truncate(&label.name, 64).as_str(),
                ),
                seq(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code(
                        "49755003",
                        "SCT",
                        "Morphologically Abnormal Structure",
                    )],
                ),
                seq(
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![concept.dataset()],
                ),
                el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, algorithm.as_str()),
            ])
        })
        .collect();
    let dimension_uid = derived::uid(&["segmentation-dimensions", &sop_uid]);
    let source_ref = {
        let mut r = src.reference((src.frames > 1).then_some(frame));
        r.put(seq(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code(
                "121322",
                "DCM",
                "Source image for image processing operation",
            )],
        ));
        r
    };
    let shared = InMemDicomObject::from_element_iter([seq(
        tags::DERIVATION_IMAGE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_ref]),
            seq(
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code("113076", "DCM", "Segmentation")],
            ),
        ])],
    )]);
    let per_frame: Vec<InMemDicomObject> = (1..=present.len() as u32)
        .map(|n| {
            InMemDicomObject::from_element_iter([
                seq(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        PrimitiveValue::from(n),
                    )])],
                ),
                seq(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        PrimitiveValue::from(n as u16),
                    )])],
                ),
            ])
        })
        .collect();
    let at = |t: Tag| PrimitiveValue::Tags([t].into_iter().collect());
    let pixels = pack(masks, &present, rows, cols);
    for e in [
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "bedside segmentations (decision support)",
        ),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        // General Image, Type 2C (no Image Orientation (Patient)): unknown.
        el(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time_of_day.as_str()),
        el(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["DERIVED", "PRIMARY"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        ),
        // Enhanced General Equipment: the device that made it.
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "bedside"),
        el(
            tags::DEVICE_SERIAL_NUMBER,
            VR::LO,
            derived::truncate(&who.device, 64).as_str(),
        ),
        // Segmentation Image.
        el(tags::CONTENT_LABEL, VR::CS, "BEDSIDE"),
        el(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            derived::truncate(
                &format!("{algorithm}: decision support, not a diagnosis"),
                64,
            )
            .as_str(),
        ),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, PrimitiveValue::Empty),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        seq(tags::SEGMENT_SEQUENCE, segments),
        // Multi-frame Functional Groups and Dimension.
        el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            present.len().to_string().as_str(),
        ),
        seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
        seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dimension_uid.as_str(),
            )])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(
                    tags::DIMENSION_ORGANIZATION_UID,
                    VR::UI,
                    dimension_uid.as_str(),
                ),
                el(
                    tags::DIMENSION_INDEX_POINTER,
                    VR::AT,
                    at(tags::REFERENCED_SEGMENT_NUMBER),
                ),
                el(
                    tags::FUNCTIONAL_GROUP_POINTER,
                    VR::AT,
                    at(tags::SEGMENT_IDENTIFICATION_SEQUENCE),
                ),
                el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, "Segment"),
            ])],
        ),
        // Common Instance Reference: the source, by series.
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, src.series_uid.as_str()),
                seq(
                    tags::REFERENCED_INSTANCE_SEQUENCE,
                    vec![src.reference(None)],
                ),
            ])],
        ),
        // Image Pixel: 1 bit, frames packed one after another without padding.
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, PrimitiveValue::from(rows as u16)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(cols as u16)),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16)),
        el(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        el(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)),
    ] {
        obj.put(e);
    }
    derived::file(obj, uids::SEGMENTATION_STORAGE, &sop_uid).map(Some)
}

/// Bytes of a SEG of `labels` segments over a `rows` × `cols` source: its pixel data.
pub fn pixel_bytes(labels: usize, rows: u32, cols: u32) -> u64 {
    (labels as u64 * rows as u64 * cols as u64)
        .div_ceil(8)
        .next_multiple_of(2)
}

/// The frames of `present` labels, each `masks` resampled to `rows` × `cols` (a source pixel
/// takes the mask pixel its centre falls in), bit `i` of the data being pixel `i` of the
/// frames in order, least significant bit first, padded to an even length.
fn pack(masks: &Masks, present: &[usize], rows: u32, cols: u32) -> Vec<u8> {
    let (rows, cols) = (rows as usize, cols as usize);
    let map = |n: usize, of: usize| -> Vec<usize> {
        (0..n)
            .map(|i| (((i as f64 + 0.5) * of as f64 / n as f64) as usize).min(of - 1))
            .collect()
    };
    let (row_of, col_of) = (map(rows, masks.h), map(cols, masks.w));
    let mut out = vec![0u8; pixel_bytes(present.len(), rows as u32, cols as u32) as usize];
    let mut bit = 0usize;
    for &c in present {
        let mask = &masks.labels[c];
        for &mr in &row_of {
            let line = &mask[mr * masks.w..(mr + 1) * masks.w];
            for &mc in &col_of {
                if line[mc] {
                    out[bit / 8] |= 1 << (bit % 8);
                }
                bit += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_pack_least_significant_bit_first_without_padding_between_them() {
        // A 2 x 2 mask onto a 3 x 3 image: centres at 0.5, 1.5, 2.5 of 3 fall in mask
        // pixels 0, 1, 1.
        let masks = Masks {
            h: 2,
            w: 2,
            labels: vec![
                vec![true, false, false, false],
                vec![false, false, false, true],
            ],
        };
        let p = pack(&masks, &[0, 1], 3, 3);
        // Frame 1: only (0, 0). Frame 2 (bits 9..18): rows 1-2 x cols 1-2.
        let bits: Vec<bool> = (0..18).map(|i| p[i / 8] >> (i % 8) & 1 == 1).collect();
        let want: Vec<bool> = [
            "100000000", // label 0, rows 0..3
            "000011011", // label 1
        ]
        .concat()
        .bytes()
        .map(|b| b == b'1')
        .collect();
        assert_eq!(bits, want);
        assert_eq!(p.len(), 4, "18 bits, 3 bytes, padded to even");
        assert_eq!(pixel_bytes(2, 3, 3), 4);
        assert!(p[2] >> 2 == 0, "no bit past the last frame");
    }
}
