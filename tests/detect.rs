//! The X-ray detector (`models/cxr-tiny-det`): bedside's box decoding and non-maximum
//! suppression against the model factory's Python decoder, and `bedside infer` end to end on
//! DICOM radiographs whose objects are known.

mod common;

use std::path::PathBuf;

use bedside::model::Manifest;
use bedside::task::detect::{self, BoxDet};
use common::*;

fn det_dir() -> PathBuf {
    repo().join("models/cxr-tiny-det")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn label_index(m: &Manifest, name: &str) -> usize {
    m.labels
        .iter()
        .position(|l| l.name == name)
        .unwrap_or_else(|| panic!("no label {name}"))
}

fn boxes_of(m: &Manifest, v: &serde_json::Value) -> Vec<BoxDet> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = floats(&d["box"]);
            BoxDet {
                label: label_index(m, d["label"].as_str().unwrap()),
                score: d["score"].as_f64().unwrap_or(1.0) as f32,
                x1: b[0],
                y1: b[1],
                x2: b[2],
                y2: b[3],
            }
        })
        .collect()
}

/// onnxruntime's outputs of every form, decoded by bedside, give exactly the boxes the
/// factory's decoder (Python, the same contract) found: same order, labels, scores and
/// coordinates. This checks the decoder and NMS on their own, apart from tract.
#[test]
fn decoding_matches_the_factory_on_onnxruntime_outputs() {
    let m = Manifest::load(&det_dir()).unwrap();
    assert!(m.detection.is_some(), "[detection]");
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/cxr-tiny-det/parity.json")).unwrap();
    let parity: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = parity["cases"].as_array().unwrap();
    let (mut empty, mut per_label) = (0, vec![0; m.labels.len()]);
    let mut compared = 0;
    for case in cases {
        for form in ["int8", "pruned", "fp32"] {
            let got = detect::decode_with(&m, &floats(&case[form]));
            let want = boxes_of(&m, &case["detections"][form]);
            assert_eq!(
                got.len(),
                want.len(),
                "{} {form}: bedside decodes {got:?}, the factory {want:?}",
                case["input"]
            );
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.label, w.label, "{} {form}", case["input"]);
                // The fixture's outputs and scores are rounded to 7 significant digits.
                assert!((g.score - w.score).abs() < 2e-5, "{g:?} vs {w:?}");
                for (a, b) in [(g.x1, w.x1), (g.y1, w.y1), (g.x2, w.x2), (g.y2, w.y2)] {
                    assert!((a - b).abs() < 0.01, "{g:?} vs {w:?}");
                }
                compared += 1;
            }
        }
        let truth = boxes_of(&m, &case["truth"]);
        if truth.is_empty() {
            empty += 1;
        }
        for t in &truth {
            per_label[t.label] += 1;
        }
    }
    // The fixtures must exercise empty images and every label, or agreement proves little.
    assert!(empty >= 1, "no fixture without objects");
    assert!(
        per_label.iter().all(|&n| n >= 1),
        "a label without a fixture: {per_label:?}"
    );
    assert!(compared >= 6, "only {compared} boxes compared");
}

/// `bedside infer` on DICOM radiographs made by the factory: the boxes, in image pixels,
/// match what the factory's pipeline (its own preprocessing, onnxruntime, its decoder) found
/// on the same files, and they land on the objects that were drawn there.
#[test]
fn infer_finds_the_drawn_objects_in_image_pixels() {
    let m = Manifest::load(&det_dir()).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/data/cxr-det.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = expected["files"].as_array().unwrap();
    assert!(files.len() >= 3);
    let (mut positives, mut negatives) = (0, 0);
    for want in files {
        let name = want["file"].as_str().unwrap();
        let stdout = bedside_ok(&[
            "infer".as_ref(),
            repo().join("tests/data").join(name).as_os_str(),
            "--model".as_ref(),
            det_dir().as_os_str(),
        ]);
        assert_no_identifiers(&stdout, "bedside infer's output");
        let f: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        assert_valid_finding(&f);
        assert_eq!(f["task"], "detection");
        assert_eq!(f["model"]["id"], "cxr-tiny-det");
        let got = boxes_of(&m, &f["detections"]);
        // The factory lists every box over the lowest threshold; a finding reports those at
        // or over their own label's threshold.
        let factory: Vec<BoxDet> = boxes_of(&m, &want["detections"])
            .into_iter()
            .filter(|b| b.score >= m.labels[b.label].threshold)
            .collect();
        assert!(
            bedside::model::parity::boxes_match(&got, &factory, 0.9),
            "{name}: bedside {got:?}, the factory {factory:?}"
        );
        let truth = boxes_of(&m, &want["truth"]);
        for t in &truth {
            assert!(
                got.iter().any(|g| g.label == t.label && g.iou(t) >= 0.5),
                "{name}: the {} at {t:?} was not found: {got:?}",
                m.labels[t.label].name
            );
        }
        let over: Vec<&str> = f["over_threshold"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if truth.is_empty() {
            negatives += 1;
            assert!(got.is_empty(), "{name}: boxes on an empty image: {got:?}");
            assert!(over.is_empty(), "{name}: {over:?}");
        } else {
            positives += 1;
            for t in &truth {
                assert!(
                    over.contains(&m.labels[t.label].name.as_str()),
                    "{name}: {over:?}"
                );
            }
        }
        // Sizes in mm follow the pixel spacing.
        if let Some(sp) = f["image"]["pixel_spacing_mm"].as_array() {
            let col = sp[1].as_f64().unwrap();
            for d in f["detections"].as_array().unwrap() {
                let b = floats(&d["box"]);
                let w_mm = d["size_mm"][0].as_f64().unwrap();
                assert!((w_mm - (b[2] - b[0]) as f64 * col).abs() < 0.1, "{d}");
            }
        }
    }
    assert!(
        positives >= 2 && negatives >= 1,
        "{positives} with objects, {negatives} without"
    );
}

/// A detection model cannot be given live video: the board is refused with the reason.
#[test]
fn a_detection_model_on_video_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let board = write_board_with(
        tmp.path(),
        "url = \"mqtt://127.0.0.1:9\"",
        &format!(
            "[[models]]\npath = \"{}\"\nsources = [\"video\"]\n\n[video]\nsource = \"replay\"\n[video.replay]\npath = \"{}\"\n",
            det_dir().display(),
            repo().join("tests/data/us/fast-clip.dcm").display()
        ),
    );
    let out = bedside()
        .args(["check".as_ref(), "--board".as_ref(), board.as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("detection model runs on DICOM images"),
        "{stderr}"
    );
}
