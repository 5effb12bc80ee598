//! `bedside infer --structured-report`: the findings as a Comprehensive 3D SR, TID 1500
//! Measurement Report, in the source's study. dicom3tools' `dciodvfy` finds no error, DCMTK's
//! `dsrdump` reads the whole tree, and its content is the findings': each box and each region
//! outline as a SCOORD on the source image with the finding's coordinates and area, each
//! classification label over threshold as a coded finding (the manifest's code when it has
//! one).
//!
//! `bedside infer --segmentation`: a segmentation model's mask as a DICOM Segmentation
//! (binary), valid by dciodvfy, whose pixels are the finding's regions at the source's size.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bedside, copy_model, repo, sample};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn report(file: &Path, models: &[&Path], out: &Path) -> Vec<serde_json::Value> {
    let mut cmd = bedside();
    cmd.arg("infer").arg(file);
    for m in models {
        cmd.arg("--model").arg(m);
    }
    let run = cmd.arg("--structured-report").arg(out).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// dciodvfy without errors, dsrdump without complaint; the dump.
fn validate(sr: &Path) -> String {
    let v = Command::new("dciodvfy")
        .arg(sr)
        .output()
        .expect("dicom3tools' dciodvfy");
    let out = String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    assert!(
        out.contains("Comprehensive3DSR"),
        "dciodvfy did not recognise the IOD:\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("Error")),
        "dciodvfy:\n{out}"
    );
    let d = Command::new("dsrdump")
        .arg(sr)
        .output()
        .expect("DCMTK's dsrdump");
    assert!(
        d.status.success() && d.stderr.is_empty(),
        "dsrdump: {}",
        String::from_utf8_lossy(&d.stderr)
    );
    String::from_utf8(d.stdout).unwrap()
}

/// Every SCOORD of the report with its measurement group's finding code and area.
fn regions(obj: &InMemDicomObject) -> Vec<(String, Vec<f32>, Option<f64>)> {
    let mut out = Vec::new();
    fn walk(items: &[InMemDicomObject], out: &mut Vec<(String, Vec<f32>, Option<f64>)>) {
        for it in items {
            let Ok(children) = it
                .element(tags::CONTENT_SEQUENCE)
                .map(|e| e.items().unwrap().to_vec())
            else {
                continue;
            };
            let concept = |c: &InMemDicomObject| {
                c.element(tags::CONCEPT_NAME_CODE_SEQUENCE)
                    .ok()
                    .map(|s| text(&s.items().unwrap()[0], tags::CODE_MEANING))
            };
            if concept(it).as_deref() == Some("Measurement Group") {
                let mut label = String::new();
                let (mut points, mut area) = (Vec::new(), None);
                for c in &children {
                    match concept(c).as_deref() {
                        Some("Finding") => {
                            label = text(
                                &c.element(tags::CONCEPT_CODE_SEQUENCE)
                                    .unwrap()
                                    .items()
                                    .unwrap()[0],
                                tags::CODE_VALUE,
                            )
                        }
                        Some("Image Region") => {
                            points = c
                                .element(tags::GRAPHIC_DATA)
                                .unwrap()
                                .to_multi_float32()
                                .unwrap()
                        }
                        Some("Area") => {
                            let mv = &c
                                .element(tags::MEASURED_VALUE_SEQUENCE)
                                .unwrap()
                                .items()
                                .unwrap()[0];
                            area = Some(text(mv, tags::NUMERIC_VALUE).parse().unwrap());
                        }
                        _ => {}
                    }
                }
                out.push((label, points, area));
            }
            walk(&children, out);
        }
    }
    walk(
        obj.element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap(),
        &mut out,
    );
    out
}

#[test]
fn boxes_and_labels_become_a_valid_measurement_report_in_the_source_study() {
    let tmp = tempfile::tempdir().unwrap();
    let sr = tmp.path().join("sr.dcm");
    let det = repo().join("models/cxr-tiny-det");
    let findings = report(
        &sample("cxr-det-nodule.dcm"),
        &[&det, &repo().join("models/cxr-tiny-cls")],
        &sr,
    );
    let dump = validate(&sr);
    assert!(
        dump.contains("\"Imaging Measurement Report\"") && dump.contains("(121007,DCM,\"Device\")"),
        "{dump}"
    );
    let obj = open_file(&sr).unwrap();
    let src = open_file(sample("cxr-det-nodule.dcm")).unwrap();
    assert_eq!(
        text(&obj, tags::STUDY_INSTANCE_UID),
        text(&src, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(text(&obj, tags::MODALITY), "SR");
    let template = &obj
        .element(tags::CONTENT_TEMPLATE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(text(template, tags::TEMPLATE_IDENTIFIER), "1500");
    let evidence = &obj
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let series = &evidence
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let sop = &series
        .element(tags::REFERENCED_SOP_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(sop, tags::REFERENCED_SOP_INSTANCE_UID),
        text(&src, tags::SOP_INSTANCE_UID)
    );

    let got = regions(&obj);
    let boxes = findings[0]["detections"].as_array().unwrap();
    let over = findings[1]["over_threshold"].as_array().unwrap();
    assert_eq!(got.len(), boxes.len() + over.len(), "{got:?}");
    for (d, (label, points, area)) in boxes.iter().zip(&got) {
        // The finding's concept: the manifest's SNOMED CT code (nodule), else the label's name.
        let want = match d["label"].as_str().unwrap() {
            "nodule" => "27925004",
            name => name,
        };
        assert_eq!(label, want);
        let b: Vec<f32> = d["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            points,
            &vec![b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3], b[0], b[1]]
        );
        let s = &d["size_mm"];
        let want = s[0].as_f64().unwrap() * s[1].as_f64().unwrap();
        assert!((area.unwrap() - want).abs() < 1e-3, "{area:?} vs {want}");
    }
    for (l, (label, points, _)) in over.iter().zip(&got[boxes.len()..]) {
        assert_eq!(label, l.as_str().unwrap());
        assert!(points.is_empty(), "a classification finding has no region");
    }
}

#[test]
fn region_outlines_are_the_findings_and_labels_use_the_manifest_code() {
    let tmp = tempfile::tempdir().unwrap();
    // Segmentation: frame 130 of the FAST clip, where there is fluid.
    let sr = tmp.path().join("us.dcm");
    let run = bedside()
        .arg("infer")
        .arg(repo().join("tests/data/us/fast-clip.dcm"))
        .args([
            "--model",
            repo().join("models/us-fast-fluid").to_str().unwrap(),
            "--overlay-frame",
            "130",
        ])
        .arg("--structured-report")
        .arg(&sr)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    validate(&sr);
    let finding: serde_json::Value = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|f| f["image"]["frame"] == 130)
        .unwrap();
    let comps = finding["regions"][0]["components"].as_array().unwrap();
    let got = regions(&open_file(&sr).unwrap());
    assert_eq!(got.len(), comps.len());
    for (c, (label, points, area)) in comps.iter().zip(&got) {
        assert_eq!(label, "free_fluid");
        let want: Vec<f32> = c["outline"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
            .collect();
        assert_eq!(points, &want);
        assert!((area.unwrap() - c["area_mm2"].as_f64().unwrap()).abs() < 1e-3);
    }

    // The shipped manifest codes pneumothorax in SNOMED CT; without that code the report uses
    // bedside's private scheme.
    let sr = tmp.path().join("ptx.dcm");
    report(
        &sample("cxr-ptx-mono2.dcm"),
        &[&repo().join("models/cxr-tiny-cls")],
        &sr,
    );
    let dump = validate(&sr);
    assert!(dump.contains("(36118008,SCT,\"Pneumothorax\")"), "{dump}");
    let model = tmp.path().join("cls");
    copy_model(&repo().join("models/cxr-tiny-cls"), &model);
    let shipped = std::fs::read_to_string(model.join("model.toml")).unwrap();
    let uncoded = shipped.replace(
        "code = { value = \"36118008\", scheme = \"SCT\", meaning = \"Pneumothorax\" }\n",
        "",
    );
    assert_ne!(uncoded, shipped, "the shipped manifest codes pneumothorax");
    std::fs::write(model.join("model.toml"), uncoded).unwrap();
    let sr = tmp.path().join("ptx-private.dcm");
    report(&sample("cxr-ptx-mono2.dcm"), &[&model], &sr);
    let dump = validate(&sr);
    assert!(
        dump.contains("(pneumothorax,99BEDSIDE,\"pneumothorax\")"),
        "{dump}"
    );
}

/// Pixel `i` of a BINARY SEG's pixel data (frames one after another, LSB first).
fn bit(data: &[u8], i: usize) -> bool {
    data[i / 8] >> (i % 8) & 1 == 1
}

#[test]
fn a_segmentation_is_a_valid_binary_seg_whose_pixels_are_the_finding_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = repo().join("tests/data/us/fast-clip.dcm");
    let seg = tmp.path().join("seg.dcm");
    let infer = |frame: &str, out: &Path| {
        bedside()
            .arg("infer")
            .arg(&clip)
            .args([
                "--model",
                repo().join("models/us-fast-fluid").to_str().unwrap(),
                "--overlay-frame",
                frame,
            ])
            .arg("--segmentation")
            .arg(out)
            .output()
            .unwrap()
    };
    // Frame 130 of the FAST clip has fluid.
    let run = infer("130", &seg);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v = Command::new("dciodvfy").arg(&seg).output().unwrap();
    let out = String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    assert!(
        out.lines().next() == Some("Segmentation"),
        "dciodvfy did not recognise the IOD:\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("Error")),
        "dciodvfy:\n{out}"
    );

    let finding: serde_json::Value = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|f| f["image"]["frame"] == 130)
        .unwrap();
    let region = &finding["regions"][0];
    let comps = region["components"].as_array().unwrap();
    assert_eq!(
        region["count"].as_u64().unwrap() as usize,
        comps.len(),
        "every region listed, so the SEG holds exactly their pixels"
    );

    let obj = open_file(&seg).unwrap();
    let source = open_file(&clip).unwrap();
    assert_eq!(
        text(&obj, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(text(&obj, tags::MODALITY), "SEG");
    assert_eq!(text(&obj, tags::SEGMENTATION_TYPE), "BINARY");
    assert_eq!(
        text(&obj, tags::STUDY_INSTANCE_UID),
        text(&source, tags::STUDY_INSTANCE_UID)
    );
    let (rows, cols) = (
        obj.element(tags::ROWS).unwrap().to_int::<usize>().unwrap(),
        obj.element(tags::COLUMNS)
            .unwrap()
            .to_int::<usize>()
            .unwrap(),
    );
    assert_eq!((rows, cols), (360, 480), "the source's size");
    assert_eq!(
        text(&obj, tags::NUMBER_OF_FRAMES),
        "1",
        "one label, one frame"
    );
    let segment = &obj
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(text(segment, tags::SEGMENT_LABEL), "free_fluid");
    let derived_from = &obj
        .element(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .element(tags::DERIVATION_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(derived_from, tags::REFERENCED_SOP_INSTANCE_UID),
        text(&source, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(text(derived_from, tags::REFERENCED_FRAME_NUMBER), "131");

    // Every pixel set lies in a region's box, and the pixels set cover the regions' share of
    // the image (nearest-neighbour resampling of the model's 224 x 224 mask: within 2 %).
    let data = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(data.len(), (rows * cols).div_ceil(8).next_multiple_of(2));
    let boxes: Vec<[f64; 4]> = comps
        .iter()
        .map(|c| {
            let b: Vec<f64> = c["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            [b[0], b[1], b[2], b[3]]
        })
        .collect();
    let mut set = 0usize;
    for r in 0..rows {
        for c in 0..cols {
            if bit(&data, r * cols + c) {
                set += 1;
                let (x, y) = (c as f64 + 0.5, r as f64 + 0.5);
                assert!(
                    boxes.iter().any(|b| x >= b[0] - 0.1
                        && x <= b[2] + 0.1
                        && y >= b[1] - 0.1
                        && y <= b[3] + 0.1),
                    "pixel ({r}, {c}) is outside every region's box {boxes:?}"
                );
            }
        }
    }
    let want: f64 = comps.iter().map(|c| c["fraction"].as_f64().unwrap()).sum();
    let got = set as f64 / (rows * cols) as f64;
    assert!(
        want > 0.0 && (got - want).abs() <= 0.02 * want,
        "SEG covers {got}, regions {want}"
    );

    // A frame where the model sees no fluid has nothing to segment: said, nothing written.
    let empty = tmp.path().join("empty.dcm");
    let run = infer("0", &empty);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("no seg made"), "{err}");
    assert!(!empty.exists());
}
