//! tract against onnxruntime: the shipped model's outputs on fixed inputs must match the
//! reference outputs that the model factory computed with onnxruntime (committed fixtures).

mod common;

use bedside::infer::{Engine, Variant};
use common::*;

/// fp32 in tract and onnxruntime differ only by summation order: measured 1.9e-6 on x86-64
/// (AVX-512) when the model was made; the int8 tolerance is the manifest's `parity.max_abs`.
const FP32_MAX_ABS: f32 = 1e-5;

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check(variant: Variant, key: &str, tolerance: Option<f32>) -> f32 {
    let fixtures = repo().join("tests/fixtures/cxr-tiny-cls");
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("parity.json")).unwrap())
            .unwrap();
    let mut engine = Engine::load_variant(&model_dir(), variant).unwrap();
    let tolerance = tolerance.unwrap_or_else(|| {
        engine
            .manifest()
            .parity
            .as_ref()
            .expect("manifest states a parity tolerance")
            .max_abs
    });
    let cases = parity["cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "at least six fixtures");
    let mut worst = 0.0f32;
    let mut argmax_agree = 0;
    for case in cases {
        let input = read_f32(&fixtures.join(case["input"].as_str().unwrap()));
        let want: Vec<f32> = case[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = engine.run(&input).unwrap();
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= tolerance,
            "{}: tract {got:?} vs onnxruntime {want:?} (max-abs {diff} > {tolerance})",
            case["input"]
        );
        worst = worst.max(diff);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        argmax_agree += (argmax(&got) == argmax(&want)) as usize;
    }
    assert_eq!(
        argmax_agree,
        cases.len(),
        "tract and onnxruntime pick the same label on every fixture"
    );
    eprintln!(
        "{key}: max-abs tract vs onnxruntime over {} fixtures: {worst:e} (tolerance {tolerance:e})",
        cases.len()
    );
    worst
}

#[test]
fn int8_model_matches_onnxruntime_within_the_manifest_tolerance() {
    check(Variant::Shipped, "ort_int8", None);
}

#[test]
fn fp32_parent_matches_onnxruntime() {
    check(Variant::Parent, "ort_fp32", Some(FP32_MAX_ABS));
}
