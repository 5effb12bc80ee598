//! `bedside infer` end to end on real DICOM files, including ones DCMTK compresses.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

fn infer_ok(file: &Path) -> serde_json::Value {
    let out = run_infer(&[file.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bedside infer {} failed: {stderr}",
        file.display()
    );
    assert_no_identifiers(&stdout, "bedside infer's output");
    assert_no_identifiers(&stderr, "bedside infer's log");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one model, one finding: {stdout}");
    let finding: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_valid_finding(&finding);
    finding
}

fn scores(f: &serde_json::Value) -> Vec<f64> {
    f["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect()
}

fn over(f: &serde_json::Value) -> Vec<String> {
    f["over_threshold"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn jpeg_lossless_16_bit_gives_a_valid_finding_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = tmp.path().join("ptx-jpegls.dcm");
    // DCMTK compresses the native sample with JPEG lossless, first-order prediction (SV1).
    dcmtk(
        "dcmcjpeg",
        &[Path::new("+e1"), &sample("cxr-ptx-mono2.dcm"), &jpeg],
    );
    let f = infer_ok(&jpeg);
    assert_eq!(f["model"]["id"], "cxr-tiny-cls");
    assert_eq!(f["model"]["sha256"], manifest_sha256());
    assert_eq!(f["task"], "classification");
    assert_eq!(f["modality"], "DX");
    assert_eq!(f["source"], "file");
    assert_eq!(over(&f), ["pneumothorax"]);
    assert_eq!(f["image"]["rows"], 512);
    // Lossless: the same pixels as the native file, so the same scores and the same id.
    let native = infer_ok(&sample("cxr-ptx-mono2.dcm"));
    assert_eq!(f["id"], native["id"]);
    for (a, b) in scores(&f).iter().zip(scores(&native)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn each_sample_gets_its_class() {
    for (file, label) in [
        ("cxr-ptx-mono2.dcm", "pneumothorax"),
        ("cxr-normal-mono2.dcm", "normal"),
        ("cxr-other-8bit.dcm", "other"),
    ] {
        let f = infer_ok(&sample(file));
        assert_eq!(over(&f), [label], "{file}: {f:#}");
    }
}

#[test]
fn monochrome1_and_modality_lut_display_like_the_plain_image() {
    // Same picture stored three ways: a viewer shows them identically, so the model must
    // see the same tensor.
    let base = scores(&infer_ok(&sample("cxr-ptx-mono2.dcm")));
    for file in ["cxr-ptx-mono1.dcm", "cxr-ptx-rescaled.dcm"] {
        let s = scores(&infer_ok(&sample(file)));
        for (a, b) in base.iter().zip(&s) {
            assert!((a - b).abs() < 1e-4, "{file}: {s:?} vs {base:?}");
        }
    }
}

#[test]
fn same_input_same_id_and_different_inputs_differ() {
    let a = infer_ok(&sample("cxr-ptx-mono2.dcm"));
    let b = infer_ok(&sample("cxr-ptx-mono2.dcm"));
    let c = infer_ok(&sample("cxr-normal-mono2.dcm"));
    assert_eq!(a["id"], b["id"]);
    assert_ne!(a["id"], c["id"]);
    assert!(a["sop_instance_uid_hash"].as_str().unwrap().len() == 64);
}

fn assert_bad_input(file: &Path, expect: &str) {
    let out = run_infer(&[file.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
    assert!(out.stdout.is_empty(), "no finding on bad input");
    assert_eq!(stderr.lines().count(), 1, "one clear line, got:\n{stderr}");
    assert!(stderr.contains(expect), "expected {expect:?} in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn truncated_and_foreign_files_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = std::fs::read(sample("cxr-ptx-mono2.dcm")).unwrap();
    for cut in [whole.len() / 2, whole.len() - 1, 200, 132] {
        let f = tmp.path().join(format!("cut-{cut}.dcm"));
        std::fs::write(&f, &whole[..cut]).unwrap();
        assert_bad_input(&f, &f.display().to_string());
    }
    let txt = tmp.path().join("notes.dcm");
    std::fs::write(
        &txt,
        "this is not DICOM at all, but long enough to have a preamble ".repeat(10),
    )
    .unwrap();
    assert_bad_input(&txt, "cannot read DICOM file");
    assert_bad_input(&tmp.path().join("missing.dcm"), "cannot read DICOM file");
}

#[test]
fn a_model_file_that_does_not_match_its_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cxr-tiny-cls");
    std::fs::create_dir(&dir).unwrap();
    for f in ["model.toml", "model.onnx"] {
        std::fs::copy(model_dir().join(f), dir.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    let out = run_infer(&[
        sample("cxr-ptx-mono2.dcm").as_os_str(),
        OsStr::new("--model"),
        dir.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(2), "a bad model is not a bad input");
    assert!(
        stderr.contains("sha256") && stderr.contains("refusing"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn every_shipped_board_profile_checks_out() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("board")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = bedside()
                .arg("check")
                .arg("--board")
                .arg(&path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("cxr-tiny-cls") && stdout.contains("verified"),
                "{stdout}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "board/dev.toml at least");
}

#[test]
fn a_bad_board_profile_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("board/dev.toml")).unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:notaport"),
    )
    .unwrap();
    let out = bedside()
        .arg("check")
        .arg("--board")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mqtt.url") && stderr.contains("notaport"),
        "{stderr}"
    );
}

#[test]
fn a_cine_gives_one_finding_per_frame_the_manifest_asks_for() {
    // The shipped model reads the first frame; a copy of it whose manifest asks for frames
    // 0, 5, 9 and 40 (past the end of this 10-frame MR cine, so skipped).
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "model.fp32.onnx", "model.toml"] {
        std::fs::copy(model_dir().join(f), tmp.path().join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(tmp.path().join("model.toml")).unwrap();
    assert!(manifest.contains("layout = \"NCHW\""));
    std::fs::write(
        tmp.path().join("model.toml"),
        manifest.replace(
            "layout = \"NCHW\"",
            "layout = \"NCHW\"\nframes = [0, 5, 9, 40]",
        ),
    )
    .unwrap();
    let cine = repo().join("tests/data/pydicom/emri_small_RLE.dcm");
    let out = run_infer(&[cine.as_os_str(), "--model".as_ref(), tmp.path().as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let frames: Vec<u64> = findings
        .iter()
        .map(|f| f["image"]["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, vec![0, 5, 9]);
    let ids: std::collections::HashSet<&str> =
        findings.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "one id per frame");
    for f in &findings {
        assert_valid_finding(f);
        assert_eq!(f["image"]["frames"], 10);
    }

    // And the default manifest: the first frame only; pixel spacing travels with it.
    let out = run_infer(&[sample("cxr-ptx-mono2.dcm").as_os_str()]);
    let f: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(f["image"]["frame"], 0);
    assert!(f["image"].get("pixel_spacing_mm").is_some(), "{f}");
}

/// `bench-dicom` measures bedside and DCMTK's decoder on the same file and prints their
/// ratios and bedside's stages; a file DCMTK has no decoder for is named and skipped.
#[test]
fn bench_dicom_compares_infer_with_dcmtk_on_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let jpeg = tmp.path().join("ptx-jpegls.dcm");
    dcmtk(
        "dcmcjpeg",
        &[Path::new("+e1"), &sample("cxr-ptx-mono2.dcm"), &jpeg],
    );
    let native = sample("cxr-ptx-mono2.dcm");
    let out = bedside_ok(&[
        OsStr::new("bench-dicom"),
        OsStr::new("--rounds"),
        OsStr::new("1"),
        OsStr::new("--dir"),
        tmp.path().as_os_str(),
        jpeg.as_os_str(),
        native.as_os_str(),
    ]);
    assert!(out.contains("ratio bedside/dcmdjpeg: time "), "{out}");
    assert!(out.contains("bedside stages (median"), "{out}");
    assert!(
        out.contains("has no DCMTK decoder to compare with; skipped"),
        "{out}"
    );
    // Its scratch folder is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
