//! bedside's int8 ops against onnxruntime, case by case (tests/fixtures/ops, made by
//! models/factory/ops_fixtures.py): randomised QLinearConv shapes (kernels 1/3/5/7, strides,
//! dilation, padding, groups, depthwise, odd channel counts, u8/s8, per-tensor and
//! per-channel), the QLinear element-wise ops, SiLU's QLinearSigmoid + QLinearMul pair,
//! QLinearSoftmax and the f32 Softmax over an inner axis. Each op's tolerance is stated in
//! `bedside::int8::parity::tolerance`; every case must also run on bedside's ops, not fall
//! back to tract's.

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn every_op_case_matches_onnxruntime_on_bedsides_ops_with_every_kernel() {
    let runs =
        bedside::int8::parity::check_dir_every_kernel(Path::new("tests/fixtures/ops")).unwrap();
    assert!(!runs.is_empty(), "no int8 kernel runs here");
    for (kernel, reports) in &runs {
        println!("int8 kernel {kernel}:");
        check(reports);
    }
}

fn check(reports: &[bedside::int8::parity::CaseReport]) {
    assert!(reports.len() >= 60, "only {} cases", reports.len());
    let mut by_op: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in reports {
        let e = by_op.entry(r.op.as_str()).or_default();
        e.0 += 1;
        e.1 += r.differing;
    }
    for (op, (cases, differing)) in &by_op {
        println!("{op}: {cases} cases, {differing} values off by the allowed step");
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases fail:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
    for op in [
        "QLinearConv",
        "QLinearAdd",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QLinearSoftmax",
        "Softmax",
    ] {
        assert!(by_op.contains_key(op), "no {op} case");
    }
    // Both of bedside's convolution kernels are exercised.
    assert!(
        reports
            .iter()
            .any(|r| r.detail.contains("BedsideQDepthwise"))
    );
    assert!(reports.iter().any(|r| r.detail.contains("implicit GEMM")));
    assert!(
        reports
            .iter()
            .any(|r| r.op == "Softmax" && r.detail.contains("BedsideSoftmax"))
    );
    // SiLU's sigmoid-then-multiply pair runs as one folded table.
    let silu: Vec<_> = reports
        .iter()
        .filter(|r| r.op == "QLinearSigmoid+QLinearMul")
        .collect();
    assert!(!silu.is_empty(), "no SiLU case");
    for r in silu {
        assert!(
            r.detail.contains("BedsideQLinearMul(QLinearSigmoid)"),
            "{}: {}",
            r.case,
            r.detail
        );
    }
}
