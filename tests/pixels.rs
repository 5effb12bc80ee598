//! Pixels as a viewer shows them, checked against software nobody here wrote: DCMTK's
//! renderer (`dcmj2pnm`) on large generated radiographs, through every lossless codec DCMTK
//! writes, and pydicom's Modality/VOI LUT functions on pydicom's own test files (fixtures in
//! `tests/fixtures/pixels/`, made by `make_refs.py`).

mod common;

use std::path::Path;

use bedside::model::manifest::{NamedWindow, WindowChoice};
use bedside::prepare;
use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

const ROWS: u32 = 2048;
const COLS: u32 = 2560;

/// A 2048x2560 radiograph-like image, 12 bits stored in 16, every value 0..=4095 present.
fn synthetic(path: &Path, mono1: bool, slope: f64, intercept: f64, center: f64, width: f64) {
    let mut px = Vec::with_capacity((ROWS * COLS * 2) as usize);
    for r in 0..ROWS {
        for c in 0..COLS {
            let (y, x) = (r as f64 / ROWS as f64, c as f64 / COLS as f64);
            let lung = (-((x - 0.3) / 0.15).powi(2) - ((y - 0.5) / 0.3).powi(2)).exp()
                + (-((x - 0.7) / 0.15).powi(2) - ((y - 0.5) / 0.3).powi(2)).exp();
            let ribs = 300.0 * (y * 70.0).sin() * lung;
            let ramp = 4095.0 * ((r as u64 * 7 + c as u64 * 3) % 4096) as f64 / 4095.0;
            let v = if r < 16 {
                ramp
            } else {
                3600.0 - 3000.0 * lung + ribs
            };
            px.extend_from_slice(&(v.clamp(0.0, 4095.0) as u16).to_le_bytes());
        }
    }
    let uid = format!("2.25.{}{}", std::process::id(), if mono1 { 1 } else { 2 });
    let e = |tag, vr, v: PrimitiveValue| DataElement::new(tag, vr, v);
    let obj = InMemDicomObject::from_element_iter([
        e(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION.into(),
        ),
        e(tags::SOP_INSTANCE_UID, VR::UI, uid.as_str().into()),
        e(tags::MODALITY, VR::CS, "DX".into()),
        e(tags::IMAGER_PIXEL_SPACING, VR::DS, "0.139\\0.139".into()),
        e(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        e(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            if mono1 { "MONOCHROME1" } else { "MONOCHROME2" }.into(),
        ),
        e(tags::ROWS, VR::US, PrimitiveValue::from(ROWS as u16)),
        e(tags::COLUMNS, VR::US, PrimitiveValue::from(COLS as u16)),
        e(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        e(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        e(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
        e(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        e(
            tags::WINDOW_CENTER,
            VR::DS,
            center.to_string().as_str().into(),
        ),
        e(
            tags::WINDOW_WIDTH,
            VR::DS,
            width.to_string().as_str().into(),
        ),
        e(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            intercept.to_string().as_str().into(),
        ),
        e(
            tags::RESCALE_SLOPE,
            VR::DS,
            slope.to_string().as_str().into(),
        ),
        e(tags::RESCALE_TYPE, VR::LO, "US".into()),
        e(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(px)),
    ]);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
        .media_storage_sop_instance_uid(uid.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    obj.with_exact_meta(meta).write_to_file(path).unwrap();
}

fn bedside_display(path: &Path) -> Vec<f32> {
    let image = bedside::dicom::read_file(path).unwrap_or_else(|e| panic!("{e}"));
    prepare::display(&image, &WindowChoice::Named(NamedWindow::Dicom))
}

/// DCMTK's rendering with the object's first window, as 16-bit values scaled to [0, 1].
fn dcmtk_display(path: &Path, out: &Path) -> Vec<f32> {
    dcmtk_render(path, out, "+Wi", (COLS, ROWS))
}

/// DCMTK's rendering with its first window (`+Wi`) or VOI LUT (`+Wl`), 16-bit, in [0, 1].
fn dcmtk_render(path: &Path, out: &Path, voi: &str, size: (u32, u32)) -> Vec<f32> {
    dcmtk(
        "dcmj2pnm",
        &[Path::new(voi), Path::new("1"), Path::new("+opw"), path, out],
    );
    let text = std::fs::read_to_string(out).unwrap();
    let mut fields = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split_ascii_whitespace());
    assert_eq!(fields.next(), Some("P2"), "an ASCII PGM");
    let (w, h): (u32, u32) = (
        fields.next().unwrap().parse().unwrap(),
        fields.next().unwrap().parse().unwrap(),
    );
    assert_eq!((w, h), size);
    let max: f32 = fields.next().unwrap().parse().unwrap();
    fields.map(|v| v.parse::<f32>().unwrap() / max).collect()
}

#[test]
fn large_radiographs_match_dcmtk_and_survive_every_lossless_codec_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    // MONOCHROME2 with identity rescale; MONOCHROME1 with a rescale and its own window.
    for (name, mono1, slope, intercept, center, width) in [
        ("mono2", false, 1.0, 0.0, 1800.0, 2500.0),
        ("mono1", true, 2.0, -1024.0, 2000.0, 4000.0),
    ] {
        let src = tmp.path().join(format!("{name}.dcm"));
        synthetic(&src, mono1, slope, intercept, center, width);
        let ours = bedside_display(&src);
        let theirs = dcmtk_display(&src, &tmp.path().join(format!("{name}.pgm")));
        assert_eq!(ours.len(), theirs.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max |bedside - dcmj2pnm| = {worst:.2e} (16-bit output, 1 LSB = 1.5e-5)");
        // DCMTK rounds to 16-bit integers: allow one step and a half.
        assert!(worst <= 1.5 / 65535.0, "{name}: {worst}");
        let spread = ours.iter().filter(|&&v| v > 0.0 && v < 1.0).count();
        assert!(
            spread > ours.len() / 4,
            "{name}: the window leaves most pixels inside"
        );

        // Lossless codecs must give exactly the same display image.
        for (tool, flag) in [
            ("dcmcjpeg", Some("+e1")),
            ("dcmcrle", None),
            ("dcmcjpls", Some("+el")),
        ] {
            let out = tmp.path().join(format!("{name}-{tool}.dcm"));
            let mut args: Vec<&Path> = flag.iter().map(Path::new).collect();
            args.push(&src);
            args.push(&out);
            dcmtk(tool, &args);
            let coded = bedside_display(&out);
            assert!(coded == ours, "{name} through {tool}: display differs");
        }
        let image = bedside::dicom::read_file(&src).unwrap();
        assert_eq!(image.pixel_spacing_mm, Some([0.139, 0.139]));
    }
}

/// A 256x256 12-bit image with a non-linear Modality LUT Sequence (`modality`) or VOI LUT
/// Sequence (`voi`), as a vendor's processing might write it.
fn with_luts(path: &Path, modality: bool, voi: bool) {
    let (rows, cols) = (256u16, 256u16);
    let mut px = Vec::new();
    for r in 0..rows as u32 {
        for c in 0..cols as u32 {
            px.extend_from_slice(&(((r * 16 + c * 3) % 4096) as u16).to_le_bytes());
        }
    }
    let e = |tag, vr, v: PrimitiveValue| DataElement::new(tag, vr, v);
    let lut_item = |data: Vec<u16>, window: bool| {
        let mut elements = vec![
            e(
                tags::LUT_DESCRIPTOR,
                VR::US,
                PrimitiveValue::U16(vec![4096, 0, 16].into()),
            ),
            e(tags::LUT_DATA, VR::OW, PrimitiveValue::U16(data.into())),
        ];
        if !window {
            elements.push(e(tags::LUT_EXPLANATION, VR::LO, "test curve".into()));
        }
        InMemDicomObject::from_element_iter(elements)
    };
    let mut elements = vec![
        e(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE.into(),
        ),
        e(tags::SOP_INSTANCE_UID, VR::UI, "2.25.77".into()),
        e(tags::MODALITY, VR::CS, "CR".into()),
        e(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        e(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        e(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
        e(tags::COLUMNS, VR::US, PrimitiveValue::from(cols)),
        e(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        e(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        e(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
        e(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        e(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(px)),
    ];
    if modality {
        // A gamma-like curve onto 0..=65535.
        let curve = (0..4096u32)
            .map(|i| ((i as f64 / 4095.0).powf(0.6) * 65535.0).round() as u16)
            .collect();
        elements.push(DataElement::new(
            tags::MODALITY_LUT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![lut_item(curve, false)]),
        ));
        elements.push(e(tags::WINDOW_CENTER, VR::DS, "30000".into()));
        elements.push(e(tags::WINDOW_WIDTH, VR::DS, "40000".into()));
    }
    if voi {
        // An S-shaped display curve.
        let curve = (0..4096u32)
            .map(|i| {
                let x = (i as f64 - 2048.0) / 500.0;
                (65535.0 / (1.0 + (-x).exp())).round() as u16
            })
            .collect();
        elements.push(DataElement::new(
            tags::VOILUT_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![lut_item(curve, true)]),
        ));
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("2.25.77")
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    InMemDicomObject::from_element_iter(elements)
        .with_exact_meta(meta)
        .write_to_file(path)
        .unwrap();
}

#[test]
fn modality_and_voi_lut_sequences_render_as_dcmtk_renders_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, modality, voi, dcmtk_voi) in [
        ("modality-lut", true, false, "+Wi"),
        ("voi-lut", false, true, "+Wl"),
    ] {
        let src = tmp.path().join(format!("{name}.dcm"));
        with_luts(&src, modality, voi);
        let ours = bedside_display(&src);
        let theirs = dcmtk_render(
            &src,
            &tmp.path().join(format!("{name}.pgm")),
            dcmtk_voi,
            (256, 256),
        );
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max |bedside - dcmj2pnm| = {worst:.2e}");
        assert!(worst <= 1.5 / 65535.0, "{name}: {worst}");
        let distinct: std::collections::BTreeSet<u32> =
            ours.iter().map(|v| (v * 1000.0) as u32).collect();
        assert!(distinct.len() > 200, "{name}: the curve spreads the values");
    }
}

/// Syntaxes whose decoders may legitimately differ by a few steps from pydicom's
/// (libjpeg/OpenJPEG/CharLS versions, chroma upsampling).
const LOSSY: [&str; 4] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
];

#[test]
fn pydicom_test_files_display_as_pydicom_computes_them() {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/pixels/index.json")).unwrap(),
    )
    .unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for fx in index["fixtures"].as_array().unwrap() {
        let file = repo().join(fx["file"].as_str().unwrap());
        let frame = fx["frame"].as_u64().unwrap() as u32;
        let ts = fx["transfer_syntax"].as_str().unwrap();
        let name = fx["fixture"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let want: Vec<f32> = std::fs::read(repo().join(fx["fixture"].as_str().unwrap()))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let obj = bedside::dicom::decode::open_file(&file).unwrap();
        let image = match bedside::dicom::decode::decode_frame(&obj, frame) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!(image.frame, frame);
        let got = prepare::display(&image, &WindowChoice::Named(NamedWindow::Dicom));
        if got.len() != want.len() {
            failures.push(format!(
                "{name}: {} pixels, fixture has {}",
                got.len(),
                want.len()
            ));
            continue;
        }
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let worst = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let lossy = LOSSY.contains(&ts);
        // pydicom's reference for YBR goes through 8-bit RGB (convert_color_space rounds and
        // clips out-of-gamut values), bedside takes Y, which is BT.601 luma exactly: the
        // reference's rounding is up to about 2 steps of 8 bits at a pixel.
        let ybr = fx["photometric"]
            .as_str()
            .is_some_and(|p| p.starts_with("YBR"));
        // Lossless: the same numbers up to float rounding. Lossy: decoders may differ by a
        // few steps of 8 bits at a pixel, but not on average.
        let (max_tol, mean_tol) = if lossy || ybr {
            (3.0 / 255.0, 0.5 / 255.0)
        } else {
            (1e-5, 1e-6)
        };
        report.push(format!(
            "{name:40} {:>6} px  max {worst:.2e}  mean {mean:.2e}  {}",
            got.len(),
            if lossy {
                "(lossy)"
            } else if ybr {
                "(YBR via 8-bit RGB)"
            } else {
                ""
            }
        ));
        if worst > max_tol || mean > mean_tol {
            failures.push(format!(
                "{name}: max {worst:.3e} mean {mean:.3e} (tolerance {max_tol:.1e}/{mean_tol:.1e})"
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
