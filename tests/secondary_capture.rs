//! `bedside infer --secondary-capture`: the overlay as a DICOM Secondary Capture for the
//! patient's study. dicom3tools' `dciodvfy` finds no error in it; it sits in the source's
//! study in a new series, carries the source's patient module (the IOD requires it; the
//! findings on stdout still carry no identifier), says its annotation is burned in, names
//! each model in the Contributing Equipment Sequence, references the source image, shows
//! exactly the overlay's pixels (DCMTK's `dcmj2pnm` renders it), and has the same UIDs when
//! made again from the same image and models (a resend is not a second object in PACS).

mod common;

use std::path::Path;
use std::process::Command;

use common::{PLANTED_IDENTIFIERS, assert_no_identifiers, bedside, repo, sample};
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

fn png_pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn make(dir: &Path, tag: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (sc, png) = (
        dir.join(format!("{tag}.dcm")),
        dir.join(format!("{tag}.png")),
    );
    let out = bedside()
        .arg("infer")
        .arg(sample("cxr-det-nodule.dcm"))
        .args([
            "--model",
            repo().join("models/cxr-tiny-det").to_str().unwrap(),
        ])
        .args([
            "--model",
            repo().join("models/cxr-tiny-cls").to_str().unwrap(),
        ])
        .arg("--overlay")
        .arg(&png)
        .arg("--secondary-capture")
        .arg(&sc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (sc, png, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_overlay_goes_to_pacs_as_a_valid_secondary_capture_in_the_source_study() {
    let tmp = tempfile::tempdir().unwrap();
    let (sc, png, stdout) = make(tmp.path(), "a");
    assert_no_identifiers(&stdout, "the findings");

    let v = Command::new("dciodvfy")
        .arg(&sc)
        .output()
        .expect("dicom3tools' dciodvfy");
    let report =
        String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    assert!(
        report.contains("SCImage"),
        "dciodvfy did not recognise the IOD:\n{report}"
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy:\n{report}");
    eprintln!("dciodvfy:\n{report}");

    let src = open_file(sample("cxr-det-nodule.dcm")).unwrap();
    let obj = open_file(&sc).unwrap();
    assert_eq!(text(&obj, tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.7");
    assert_eq!(
        text(&obj, tags::STUDY_INSTANCE_UID),
        text(&src, tags::STUDY_INSTANCE_UID)
    );
    assert_ne!(
        text(&obj, tags::SERIES_INSTANCE_UID),
        text(&src, tags::SERIES_INSTANCE_UID)
    );
    assert_eq!(
        text(&obj, tags::PATIENT_NAME),
        text(&src, tags::PATIENT_NAME)
    );
    assert_eq!(text(&obj, tags::PATIENT_ID), text(&src, tags::PATIENT_ID));
    let dump = String::from_utf8_lossy(&Command::new("dcmdump").arg(&sc).output().unwrap().stdout)
        .into_owned();
    assert!(
        PLANTED_IDENTIFIERS.iter().any(|id| dump.contains(id)),
        "the patient module is the source's"
    );
    assert_eq!(text(&obj, tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(text(&obj, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    let refs = obj
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        text(&refs[0], tags::REFERENCED_SOP_INSTANCE_UID),
        text(&src, tags::SOP_INSTANCE_UID)
    );
    let equipment = obj
        .element(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let names: Vec<String> = equipment
        .iter()
        .map(|e| text(e, tags::MANUFACTURER_MODEL_NAME))
        .collect();
    assert_eq!(names, ["cxr-tiny-det", "cxr-tiny-cls"]);
    for (e, dir) in equipment
        .iter()
        .zip(["models/cxr-tiny-det", "models/cxr-tiny-cls"])
    {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(repo().join(dir).join("model.toml")).unwrap())
                .unwrap();
        let versions = e
            .element(tags::SOFTWARE_VERSIONS)
            .unwrap()
            .to_multi_str()
            .unwrap()
            .to_vec();
        assert_eq!(versions[0], manifest["model"]["version"].as_str().unwrap());
        assert_eq!(
            versions[1],
            format!(
                "sha256:{}",
                &manifest["model"]["sha256"].as_str().unwrap()[..57]
            )
        );
        let purpose = e
            .element(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(
            (
                text(&purpose[0], tags::CODE_VALUE),
                text(&purpose[0], tags::CODING_SCHEME_DESIGNATOR)
            ),
            ("1630".into(), "99IHE".into())
        );
    }

    // The pixels are the overlay's, as DCMTK renders them.
    let rendered = tmp.path().join("dcmtk.png");
    let st = Command::new("dcmj2pnm")
        .arg("+on")
        .arg(&sc)
        .arg(&rendered)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(png_pixels(&rendered), png_pixels(&png));

    // Made again: the same object, so PACS keeps one.
    let (again, _, _) = make(tmp.path(), "b");
    let again = open_file(&again).unwrap();
    for tag in [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
        assert_eq!(text(&again, tag), text(&obj, tag));
    }
}
