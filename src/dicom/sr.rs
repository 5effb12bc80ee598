//! The findings about one image as a DICOM Comprehensive 3D SR, TID 1500 Measurement Report
//! (IHE AI Results): the device as observer (TID 1002), the source image in the image
//! library, and one measurement group per finding: for classification a qualitative
//! evaluation (TID 1501) per label over threshold; for segmentation and detection a planar
//! region (TID 1410) per region or box, its outline a SCOORD POLYLINE on the source image,
//! with its area in mm² when the pixel spacing is known. Labels are coded with the manifest's
//! `code` when it has one, else in bedside's private scheme `99BEDSIDE`.
//!
//! The content tree is typed ([`Item`]), so a report is built from findings, not strings.

use dicom_core::VR;
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::derived::{self, DerivedError, Producer, Source, code, el, seq};
use crate::finding::Finding;
use crate::model::manifest::{LabelCode, Manifest, Task};

/// A coded concept.
#[derive(Debug, Clone, PartialEq)]
pub struct Coded {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

fn dcm(value: &str, meaning: &str) -> Coded {
    Coded {
        value: value.into(),
        scheme: "DCM".into(),
        meaning: meaning.into(),
    }
}

impl Coded {
    /// The concept as a code sequence item (Long Code Value beyond 16 characters).
    pub(crate) fn dataset(&self) -> InMemDicomObject {
        if self.value.len() <= 16 {
            code(&self.value, &self.scheme, &self.meaning)
        } else {
            InMemDicomObject::from_element_iter([
                el(tags::LONG_CODE_VALUE, VR::UC, self.value.as_str()),
                el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme.as_str()),
                el(tags::CODE_MEANING, VR::LO, self.meaning.as_str()),
            ])
        }
    }

    /// A label's concept: the manifest's code, else `99BEDSIDE` with the label's name.
    pub fn label(name: &str, code: Option<&LabelCode>) -> Self {
        match code {
            Some(c) => Coded {
                value: c.value.clone(),
                scheme: c.scheme.clone(),
                meaning: c.meaning.clone(),
            },
            None => Coded {
                value: name.into(),
                scheme: "99BEDSIDE".into(),
                meaning: name.replace('_', " "),
            },
        }
    }
}

/// One content item's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Container,
    Code(Coded),
    Text(String),
    UidRef(String),
    Num {
        value: f64,
        unit: Coded,
    },
    /// A reference to an image (`Source::reference`).
    Image(InMemDicomObject),
    /// `POLYLINE` or `POINT`, (column, row) pairs in image pixels.
    Scoord {
        graphic: &'static str,
        points: Vec<[f32; 2]>,
    },
}

/// One content item: relationship to its parent, concept name, value, children.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub relationship: &'static str,
    pub concept: Option<Coded>,
    pub value: Value,
    pub children: Vec<Item>,
}

fn item(rel: &'static str, concept: Coded, value: Value) -> Item {
    Item {
        relationship: rel,
        concept: Some(concept),
        value,
        children: Vec::new(),
    }
}

fn container(rel: &'static str, concept: Coded, children: Vec<Item>) -> Item {
    Item {
        children,
        ..item(rel, concept, Value::Container)
    }
}

impl Item {
    fn dataset(&self) -> InMemDicomObject {
        let mut d = InMemDicomObject::new_empty();
        d.put(el(tags::RELATIONSHIP_TYPE, VR::CS, self.relationship));
        if let Some(c) = &self.concept {
            d.put(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![c.dataset()]));
        }
        match &self.value {
            Value::Container => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
                d.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
            }
            Value::Code(c) => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "CODE"));
                d.put(seq(tags::CONCEPT_CODE_SEQUENCE, vec![c.dataset()]));
            }
            Value::Text(t) => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "TEXT"));
                d.put(el(tags::TEXT_VALUE, VR::UT, t.as_str()));
            }
            Value::UidRef(u) => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "UIDREF"));
                d.put(el(tags::UID, VR::UI, u.as_str()));
            }
            Value::Num { value, unit } => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "NUM"));
                let mv = InMemDicomObject::from_element_iter([
                    el(tags::NUMERIC_VALUE, VR::DS, ds(*value).as_str()),
                    seq(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![unit.dataset()]),
                ]);
                d.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
            }
            Value::Image(reference) => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "IMAGE"));
                d.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![reference.clone()]));
            }
            Value::Scoord { graphic, points } => {
                d.put(el(tags::VALUE_TYPE, VR::CS, "SCOORD"));
                d.put(el(tags::GRAPHIC_TYPE, VR::CS, *graphic));
                let flat: Vec<f32> = points.iter().flat_map(|p| [p[0], p[1]]).collect();
                d.put(el(
                    tags::GRAPHIC_DATA,
                    VR::FL,
                    PrimitiveValue::F32(flat.into_iter().collect()),
                ));
            }
        }
        if !self.children.is_empty() {
            d.put(seq(
                tags::CONTENT_SEQUENCE,
                self.children.iter().map(Item::dataset).collect(),
            ));
        }
        d
    }
}

/// A decimal string of at most 16 characters.
fn ds(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    if s.len() <= 16 { s } else { format!("{v:.6e}") }
}

/// The measurement groups of one finding, with the manifest that says what its labels mean.
fn groups(f: &Finding, manifest: &Manifest, src: &Source, frame: Option<u32>) -> Vec<Item> {
    let label_code = |name: &str| {
        let code = manifest
            .labels
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.code.as_ref());
        Coded::label(name, code)
    };
    let image = || Value::Image(src.reference(frame));
    let tracking = |n: usize, what: &str| {
        vec![
            item(
                "HAS OBS CONTEXT",
                dcm("112039", "Tracking Identifier"),
                Value::Text(format!("{} {what} {}", f.model.id, n + 1)),
            ),
            item(
                "HAS OBS CONTEXT",
                dcm("112040", "Tracking Unique Identifier"),
                Value::UidRef(derived::uid(&["tracking", &f.id, what, &n.to_string()])),
            ),
        ]
    };
    let group =
        |children: Vec<Item>| container("CONTAINS", dcm("125007", "Measurement Group"), children);
    let region = |points: Vec<[f32; 2]>| Item {
        children: vec![Item {
            relationship: "SELECTED FROM",
            concept: None,
            value: image(),
            children: Vec::new(),
        }],
        ..item(
            "CONTAINS",
            dcm("111030", "Image Region"),
            Value::Scoord {
                graphic: "POLYLINE",
                points,
            },
        )
    };
    let area = |mm2: f64| {
        item(
            "CONTAINS",
            Coded {
                value: "42798000".into(),
                scheme: "SCT".into(),
                meaning: "Area".into(),
            },
            Value::Num {
                value: mm2,
                unit: Coded {
                    value: "mm2".into(),
                    scheme: "UCUM".into(),
                    meaning: "square millimeter".into(),
                },
            },
        )
    };
    let mut out = Vec::new();
    match f.task {
        Task::Classification => {
            for (n, label) in f.over_threshold.iter().enumerate() {
                let mut c = tracking(n, "finding");
                c.push(item(
                    "CONTAINS",
                    dcm("121071", "Finding"),
                    Value::Code(label_code(label)),
                ));
                out.push(group(c));
            }
        }
        Task::Segmentation => {
            let mut n = 0;
            for r in f
                .regions
                .iter()
                .flatten()
                .filter(|r| f.over_threshold.contains(&r.label))
            {
                for comp in r.components.iter().flatten() {
                    let mut c = tracking(n, "region");
                    c.push(item(
                        "CONTAINS",
                        dcm("121071", "Finding"),
                        Value::Code(label_code(&r.label)),
                    ));
                    c.push(region(
                        comp.outline
                            .iter()
                            .map(|p| [p[0] as f32, p[1] as f32])
                            .collect(),
                    ));
                    if let Some(a) = comp.area_mm2 {
                        c.push(area(a));
                    }
                    out.push(group(c));
                    n += 1;
                }
            }
        }
        Task::Detection => {
            for (n, d) in f.detections.iter().flatten().enumerate() {
                let [x1, y1, x2, y2] = d.bbox.map(|v| v as f32);
                let mut c = tracking(n, "box");
                c.push(item(
                    "CONTAINS",
                    dcm("121071", "Finding"),
                    Value::Code(label_code(&d.label)),
                ));
                c.push(region(vec![
                    [x1, y1],
                    [x2, y1],
                    [x2, y2],
                    [x1, y2],
                    [x1, y1],
                ]));
                if let Some([w, h]) = d.size_mm {
                    c.push(area(w * h));
                }
                out.push(group(c));
            }
        }
    }
    out
}

/// The Measurement Report of the findings `found` (each with the manifest of its model)
/// about one frame of the source. Classification labels under threshold and images with no
/// region or box give no measurement group: the report says what was found, and that the
/// models ran (the contributing equipment) when nothing was.
pub fn measurement_report(
    src: &Source,
    who: &Producer,
    found: &[(&Finding, &Manifest)],
    frame: u32,
    when: time::OffsetDateTime,
) -> Result<FileDicomObject<InMemDicomObject>, DerivedError> {
    let sop_class = uids::COMPREHENSIVE3_DSR_STORAGE;
    let (mut obj, sop_uid) =
        derived::common(src, who, "measurement-report", sop_class, "SR", 9902, when);
    let (date, time_of_day) = derived::date_time(when);
    let frame_ref = (src.frames > 1).then_some(frame);
    let observer = vec![
        item(
            "HAS OBS CONTEXT",
            dcm("121005", "Observer Type"),
            Value::Code(dcm("121007", "Device")),
        ),
        item(
            "HAS OBS CONTEXT",
            dcm("121012", "Device Observer UID"),
            Value::UidRef(derived::uid(&["device", &who.site, &who.device])),
        ),
        item(
            "HAS OBS CONTEXT",
            dcm("121013", "Device Observer Name"),
            Value::Text(who.device.clone()),
        ),
        item(
            "HAS OBS CONTEXT",
            dcm("121014", "Device Observer Manufacturer"),
            Value::Text("bedside".into()),
        ),
        item(
            "HAS OBS CONTEXT",
            dcm("121015", "Device Observer Model Name"),
            Value::Text(
                who.models
                    .iter()
                    .map(|m| format!("{} {}", m.id, m.version))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ),
    ];
    let mut content = vec![item(
        "HAS CONCEPT MOD",
        dcm("121049", "Language of Content Item and Descendants"),
        Value::Code(Coded {
            value: "en-US".into(),
            scheme: "RFC5646".into(),
            meaning: "English (United States)".into(),
        }),
    )];
    content.extend(observer);
    content.push(item(
        "HAS CONCEPT MOD",
        dcm("121058", "Procedure reported"),
        Value::Code(Coded {
            value: "363679005".into(),
            scheme: "SCT".into(),
            meaning: "Imaging".into(),
        }),
    ));
    content.push(container(
        "CONTAINS",
        dcm("111028", "Image Library"),
        vec![container(
            "CONTAINS",
            dcm("126200", "Image Library Group"),
            vec![Item {
                relationship: "CONTAINS",
                concept: None,
                value: Value::Image(src.reference(frame_ref)),
                children: Vec::new(),
            }],
        )],
    ));
    let measurements: Vec<Item> = found
        .iter()
        .flat_map(|(f, m)| groups(f, m, src, frame_ref))
        .collect();
    content.push(container(
        "CONTAINS",
        dcm("126010", "Imaging Measurements"),
        measurements,
    ));
    let root = Item {
        relationship: "",
        concept: Some(dcm("126000", "Imaging Measurement Report")),
        value: Value::Container,
        children: content,
    };
    let mut tree = root.dataset();
    tree.remove_element(tags::RELATIONSHIP_TYPE);
    for e in tree.into_iter() {
        obj.put(e);
    }
    let evidence = InMemDicomObject::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, src.study_uid.as_str()),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::SERIES_INSTANCE_UID, VR::UI, src.series_uid.as_str()),
                seq(tags::REFERENCED_SOP_SEQUENCE, vec![src.reference(None)]),
            ])],
        ),
    ]);
    for e in [
        el(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "bedside findings (decision support)",
        ),
        seq(
            tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
            Vec::new(),
        ),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time_of_day.as_str()),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new()),
        seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        ),
        seq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                el(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
            ])],
        ),
    ] {
        obj.put(e);
    }
    derived::file(obj, sop_class, &sop_uid)
}
