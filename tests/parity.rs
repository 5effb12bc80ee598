//! tract against onnxruntime: every form of every shipped model, run on the fixed inputs the
//! model factory committed, must match onnxruntime's outputs within the manifest's tolerances
//! and make the same decisions (argmax, or the thresholded mask pixel by pixel).

mod common;

use bedside::infer::Variant;
use bedside::model::parity;
use common::*;

/// Checks `model` against `fixtures`, expecting exactly the forms `want`.
fn check(model: &str, want: &[Variant]) -> Vec<parity::FormReport> {
    let reports = parity::check(
        &repo().join("models").join(model),
        &repo().join("tests/fixtures").join(model),
    )
    .unwrap();
    let forms: Vec<Variant> = reports.iter().map(|r| r.variant).collect();
    assert_eq!(forms, want, "{model}: forms with reference outputs");
    for r in &reports {
        eprintln!("{r}");
        assert!(r.cases >= 6, "{r}: at least six fixtures");
        assert!(r.ok(), "{r}");
    }
    reports
}

#[test]
fn cxr_classifier_all_three_forms_match_onnxruntime() {
    let r = check(
        "cxr-tiny-cls",
        &[Variant::Shipped, Variant::Pruned, Variant::Parent],
    );
    // fp32 differs only by summation order: no looser than the tight default.
    for form in &r[1..] {
        assert!(form.tolerance <= parity::DEFAULT_FP32_MAX_ABS, "{form}");
    }
}

#[test]
fn ultrasound_segmenter_all_three_forms_match_onnxruntime() {
    check(
        "us-fast-fluid",
        &[Variant::Shipped, Variant::Pruned, Variant::Parent],
    );
    // The fixtures must include fluid and no fluid, or mask agreement proves little.
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/us-fast-fluid/parity.json")).unwrap();
    let parity: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = parity["cases"].as_array().unwrap();
    let positives = cases
        .iter()
        .filter(|c| {
            c["int8"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v.as_f64().unwrap() >= 0.0)
        })
        .count();
    assert!(
        positives >= 2 && positives < cases.len(),
        "{positives} of {} fixtures with fluid",
        cases.len()
    );
}

#[test]
fn xray_detector_all_three_forms_match_onnxruntime_box_for_box() {
    let r = check(
        "cxr-tiny-det",
        &[Variant::Shipped, Variant::Pruned, Variant::Parent],
    );
    // Box agreement is all-or-nothing per case: every case must decode to the same boxes.
    for form in &r {
        assert_eq!(form.needed, 1.0, "{form}");
    }
}
