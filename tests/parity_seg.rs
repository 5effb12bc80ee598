//! tract against onnxruntime on the ultrasound segmentation model, in all three forms the
//! factory ships (fp32 dense parent, pruned fp32, pruned int8): the outputs on fixed inputs
//! must match the onnxruntime references committed by the model factory, within the
//! manifest's tolerances, and the thresholded masks must agree pixel by pixel.

mod common;

use bedside::infer::{Engine, Variant};
use common::*;

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check(variant: Variant, key: &str) {
    let dir = repo().join("models/us-fast-fluid");
    let fixtures = repo().join("tests/fixtures/us-fast-fluid");
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("parity.json")).unwrap())
            .unwrap();
    let mut engine = Engine::load_variant(&dir, variant).unwrap();
    let p = engine
        .manifest()
        .parity
        .clone()
        .expect("the manifest states its tolerances");
    let tolerance = match variant {
        Variant::Shipped => p.max_abs,
        _ => p.fp32_max_abs.expect("parity.fp32_max_abs"),
    };
    let min_agreement = p.min_mask_agreement.expect("parity.min_mask_agreement");
    let threshold = engine.manifest().labels[0].threshold;
    let cut = (threshold / (1.0 - threshold)).ln();
    let cases = parity["cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "at least six fixtures");
    let (mut worst, mut worst_agreement, mut positives) = (0.0f32, 1.0f64, 0);
    for case in cases {
        let input = read_f32(&fixtures.join(case["input"].as_str().unwrap()));
        let want: Vec<f32> = case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = engine.run(&input).unwrap();
        assert_eq!(got.len(), want.len(), "{key}: output size");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= tolerance,
            "{key} {}: max-abs {diff} > {tolerance}",
            case["input"]
        );
        worst = worst.max(diff);
        let agree = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| (**a >= cut) == (**b >= cut))
            .count() as f64
            / got.len() as f64;
        assert!(
            agree >= min_agreement as f64,
            "{key} {}: masks agree on {agree} of pixels < {min_agreement}",
            case["input"]
        );
        worst_agreement = worst_agreement.min(agree);
        positives += want.iter().any(|&v| v >= cut) as usize;
    }
    assert!(
        positives >= 2 && positives < cases.len(),
        "fixtures must include fluid and no fluid ({positives} of {} with fluid)",
        cases.len()
    );
    eprintln!(
        "{key}: max-abs tract vs onnxruntime {worst:e} (tolerance {tolerance:e}); worst mask agreement {worst_agreement}"
    );
}

#[test]
fn int8_matches_onnxruntime() {
    check(Variant::Shipped, "int8");
}

#[test]
fn pruned_fp32_matches_onnxruntime() {
    check(Variant::Pruned, "pruned");
}

#[test]
fn dense_fp32_parent_matches_onnxruntime() {
    check(Variant::Parent, "fp32");
}
