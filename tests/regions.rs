//! Segmentation regions against scikit-image: `models/factory/region_refs.py` ran
//! `binary_opening`, `label`, `regionprops`, `find_contours` and `approximate_polygon` on fixed
//! masks and committed what they gave (`tests/fixtures/regions/reference.json`); bedside's own
//! implementation (`bedside::task::regions`) must give the same regions, counts, areas,
//! centroids, boxes and outline vertices.

mod common;

use std::path::Path;

use bedside::task::regions::{self, RegionSpec};
use common::{assert_valid_finding, bedside, copy_model, repo};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    mask: Vec<String>,
    spec: Spec,
    opened: Vec<String>,
    count: usize,
    components: Vec<Want>,
}

#[derive(Deserialize)]
struct Spec {
    opening_px: u32,
    min_region_px: u32,
    max_regions: usize,
    outline_points: usize,
    outline_tolerance_px: f64,
}

#[derive(Deserialize)]
struct Want {
    area_px: u32,
    centroid: [f64; 2],
    bbox: [u32; 4],
    outline: Vec<[f64; 2]>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/regions/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("json")
}

fn parse(rows: &[String]) -> (Vec<bool>, usize, usize) {
    let h = rows.len();
    let w = rows.first().map_or(0, |r| r.len());
    (
        rows.iter()
            .flat_map(|r| r.bytes().map(|b| b == b'#'))
            .collect(),
        h,
        w,
    )
}

#[test]
fn regions_match_scikit_image_on_every_reference_mask() {
    let r = reference();
    assert!(
        r.cases.len() >= 12,
        "the reference has {} cases",
        r.cases.len()
    );
    let mut outlines = 0;
    for case in &r.cases {
        let (mask, h, w) = parse(&case.mask);
        let spec = RegionSpec {
            opening_px: case.spec.opening_px,
            min_region_px: case.spec.min_region_px,
            max_regions: case.spec.max_regions,
            outline_points: case.spec.outline_points,
            outline_tolerance_px: case.spec.outline_tolerance_px,
        };
        if spec.opening_px > 0 {
            let mut opened = mask.clone();
            regions::open(&mut opened, h, w, spec.opening_px as usize);
            assert_eq!(opened, parse(&case.opened).0, "{}: opening", case.name);
        }
        let (got, count) = regions::components(&mask, h, w, &spec);
        assert_eq!(count, case.count, "{}: region count", case.name);
        assert_eq!(
            got.len(),
            case.components.len(),
            "{}: regions listed",
            case.name
        );
        for (i, (g, want)) in got.iter().zip(&case.components).enumerate() {
            let at = format!("{} region {i}", case.name);
            assert_eq!(g.area_px, want.area_px, "{at}: area");
            assert_eq!(g.bbox, want.bbox, "{at}: bbox");
            for k in 0..2 {
                assert!(
                    (g.centroid[k] - want.centroid[k]).abs() < 1e-9,
                    "{at}: centroid {:?} vs {:?}",
                    g.centroid,
                    want.centroid
                );
            }
            assert_eq!(g.outline, want.outline, "{at}: outline");
            assert!(
                g.outline.len() <= spec.outline_points + 1,
                "{at}: outline too long"
            );
            outlines += 1;
        }
    }
    assert!(outlines >= 38, "only {outlines} outlines compared");
}

/// Findings for every frame of the FAST clip (free fluid in frames 100..=160) from
/// `bedside infer` with the model folder `model`.
fn clip_findings(model: &Path) -> Vec<serde_json::Value> {
    let out = bedside()
        .arg("infer")
        .arg(repo().join("tests/data/us/fast-clip.dcm"))
        .arg("--model")
        .arg(model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), 240);
    findings
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

/// Every region of every finding is where its own numbers say: inside the image, its
/// centroid and outline inside its box, its outline closed, its area its fraction of the
/// image in mm², the components' fractions within the label's.
fn check_geometry(findings: &[serde_json::Value], max_vertices: usize) {
    for finding in findings {
        assert_valid_finding(finding);
        let img = &finding["image"];
        let (rows, cols) = (f(&img["rows"]), f(&img["cols"]));
        let [sr, sc] = [
            f(&img["pixel_spacing_mm"][0]),
            f(&img["pixel_spacing_mm"][1]),
        ];
        let region = &finding["regions"][0];
        let comps = region["components"].as_array().unwrap();
        assert!(comps.len() <= region["count"].as_u64().unwrap() as usize);
        let sum: f64 = comps.iter().map(|c| f(&c["fraction"])).sum();
        assert!(
            sum <= f(&region["fraction"]) + 1e-6,
            "{sum} > {}",
            region["fraction"]
        );
        for c in comps {
            let b: Vec<f64> = c["box"].as_array().unwrap().iter().map(f).collect();
            assert!(
                b[0] < b[2] && b[1] < b[3] && b[2] <= cols && b[3] <= rows,
                "{b:?}"
            );
            let inside = |x: f64, y: f64| {
                x >= b[0] - 0.051 && x <= b[2] + 0.051 && y >= b[1] - 0.051 && y <= b[3] + 0.051
            };
            let (cx, cy) = (f(&c["centroid"][0]), f(&c["centroid"][1]));
            assert!(inside(cx, cy), "centroid {cx},{cy} outside {b:?}");
            let outline = c["outline"].as_array().unwrap();
            assert!(
                outline.len() >= 4 && outline.len() <= max_vertices,
                "{} vertices",
                outline.len()
            );
            assert_eq!(outline.first(), outline.last(), "the outline is closed");
            for p in outline {
                assert!(inside(f(&p[0]), f(&p[1])), "vertex {p} outside {b:?}");
            }
            let want_mm2 = f(&c["fraction"]) * rows * sr * cols * sc;
            assert!(
                (f(&c["area_mm2"]) - want_mm2).abs() < 0.01 + want_mm2 * 1e-5,
                "{c}"
            );
        }
    }
}

#[test]
fn a_segmentation_finding_says_where_each_region_is() {
    let findings = clip_findings(&repo().join("models/us-fast-fluid"));
    check_geometry(&findings, 33);
    for finding in &findings {
        let frame = finding["image"]["frame"].as_u64().unwrap();
        let region = &finding["regions"][0];
        let comps = region["components"].as_array().unwrap();
        if (100..=160).contains(&frame) {
            // The fluid: one region holding nearly all of the label's pixels, in the sector.
            assert!(!comps.is_empty(), "frame {frame}: no region");
            let largest = f(&comps[0]["fraction"]);
            assert!(
                largest >= 0.8 * f(&region["fraction"]),
                "frame {frame}: {region}"
            );
            let b: Vec<f64> = comps[0]["box"].as_array().unwrap().iter().map(f).collect();
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            assert!(
                w > 20.0 && h > 20.0 && w < 300.0 && h < 200.0,
                "frame {frame}: {b:?}"
            );
        } else if frame < 90 {
            assert_eq!(region["count"], 0, "frame {frame}: {region}");
        }
    }
}

/// `[segmentation]` in the manifest: an opening removes the specks the model leaves outside
/// the fluid's frames (frames 170 and 190 have one, below the finding threshold) and keeps
/// the fluid in nearly every frame it is in (a thin stripe: a 3 × 3 opening can break it in
/// a few); `outline_points` caps every outline. The label's score is not changed: regions
/// are cleaned, the validated fraction is not.
#[test]
fn the_manifest_opening_and_outline_cap_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo().join("models/us-fast-fluid");
    copy_model(&src, tmp.path());
    let count =
        |fs: &[serde_json::Value], frame: usize| fs[frame]["regions"][0]["count"].as_u64().unwrap();
    let outside = |fs: &[serde_json::Value]| {
        (0..240)
            .filter(|f| !(100..=160).contains(f) && count(fs, *f) > 0)
            .count()
    };
    let inside = |fs: &[serde_json::Value]| (100..=160).filter(|f| count(fs, *f) > 0).count();
    let before = clip_findings(&src);
    assert!(
        count(&before, 170) >= 1 && count(&before, 190) >= 1,
        "the clip changed: no specks to remove"
    );
    assert_eq!(inside(&before), 61);
    let toml = tmp.path().join("model.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text = text.replacen(
        "[[labels]]",
        "[segmentation]\nopening_px = 1\noutline_points = 6\n\n[[labels]]",
        1,
    );
    std::fs::write(&toml, text).unwrap();
    let after = clip_findings(tmp.path());
    check_geometry(&after, 7);
    assert_eq!(outside(&after), 0, "specks left after the opening");
    assert!(
        inside(&after) >= 55,
        "the opening removed the fluid in {} of 61 frames",
        61 - inside(&after)
    );
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a["scores"], b["scores"], "the opening changed a score");
    }
}
