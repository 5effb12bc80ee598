//! `bedside infer --overlay`: the picture decodes to the image's size, shows the image as
//! DCMTK's viewer pipeline renders it (its own window, MONOCHROME1 inverted), and draws each
//! region's outline along the polygon the finding gives (which `tests/regions.rs` checks
//! against scikit-image) and each box where the finding puts it.

mod common;

use std::path::Path;

use std::time::{Duration, Instant};

use common::{
    Daemon, Mosquitto, Subscriber, assert_no_identifiers, bedside, drop_into, free_port, repo,
    sample, write_board_with,
};

/// An 8-bit image as RGB triples.
struct Picture {
    w: usize,
    h: usize,
    rgb: Vec<[u8; 3]>,
}

impl Picture {
    fn at(&self, x: i64, y: i64) -> Option<[u8; 3]> {
        (x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h)
            .then(|| self.rgb[y as usize * self.w + x as usize])
    }
}

fn read_png(path: &Path) -> Picture {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf[..w * h * 3]
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect(),
        png::ColorType::Grayscale => buf[..w * h].iter().map(|&v| [v, v, v]).collect(),
        other => panic!("{other:?}"),
    };
    Picture { w, h, rgb }
}

/// Runs `bedside infer FILE --overlay OUT` with `args`; the findings and the picture.
fn overlay(file: &Path, args: &[&str], out: &Path) -> (Vec<serde_json::Value>, Picture) {
    let run = bedside()
        .arg("infer")
        .arg(file)
        .args(args)
        .arg("--overlay")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let findings = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (findings, read_png(out))
}

/// Drawn in the first label's colour (`bedside::overlay::PALETTE[0]`, a yellow), or blended
/// with the grey image at an anti-aliased edge: red and green well above blue. No grey
/// pixel is.
fn is_label0(p: [u8; 3]) -> bool {
    assert_eq!(bedside::overlay::PALETTE[0], (255, 214, 0));
    let [r, g, b] = p.map(i32::from);
    r - b >= 70 && g - b >= 50
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

fn near(pic: &Picture, x: f64, y: f64, r: i64, want: impl Fn([u8; 3]) -> bool) -> bool {
    let (cx, cy) = (x.round() as i64, y.round() as i64);
    (-r..=r).any(|dy| (-r..=r).any(|dx| pic.at(cx + dx, cy + dy).is_some_and(&want)))
}

fn distance_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

#[test]
fn the_outline_is_drawn_along_the_region_and_nowhere_else() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("us.png");
    let (findings, pic) = overlay(
        &repo().join("tests/data/us/fast-clip.dcm"),
        &[
            "--model",
            repo().join("models/us-fast-fluid").to_str().unwrap(),
            "--overlay-frame",
            "130",
        ],
        &out,
    );
    let finding = findings
        .iter()
        .find(|f| f["image"]["frame"] == 130)
        .unwrap();
    assert_eq!(
        (pic.w, pic.h),
        (
            f(&finding["image"]["cols"]) as usize,
            f(&finding["image"]["rows"]) as usize
        )
    );
    let comp = &finding["regions"][0]["components"][0];
    let poly: Vec<(f64, f64)> = comp["outline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (f(&p[0]), f(&p[1])))
        .collect();
    // Along every edge of the polygon, the label's colour within a pixel.
    let (mut samples, mut hit) = (0, 0);
    for e in poly.windows(2) {
        let len = ((e[1].0 - e[0].0).powi(2) + (e[1].1 - e[0].1).powi(2)).sqrt();
        let n = (len / 2.0).ceil().max(1.0) as usize;
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = (
                e[0].0 + t * (e[1].0 - e[0].0),
                e[0].1 + t * (e[1].1 - e[0].1),
            );
            samples += 1;
            hit += near(&pic, x, y, 1, is_label0) as usize;
        }
    }
    assert!(
        samples > 50 && hit * 100 >= samples * 98,
        "{hit} of {samples} outline samples drawn"
    );
    // And the colour nowhere else below the label's caption (which sits above the box):
    // within half the 2 px stroke, one anti-aliased pixel, half a pixel of vertex rounding and
    // a pixel's half-diagonal of the polygon (3.2 px; 3.5 allowed).
    let top = f(&comp["box"][1]);
    let mut stray = 0;
    for y in top.ceil() as usize..pic.h {
        for x in 0..pic.w {
            if is_label0(pic.rgb[y * pic.w + x]) {
                let d = poly
                    .windows(2)
                    .map(|e| distance_to_segment((x as f64 + 0.5, y as f64 + 0.5), e[0], e[1]))
                    .fold(f64::INFINITY, f64::min);
                stray += (d > 3.5) as usize;
            }
        }
    }
    assert_eq!(
        stray, 0,
        "pixels of the outline's colour away from the outline"
    );
    // The polygon encloses the region's area (the mask's, through the simplification).
    let twice: f64 = poly
        .windows(2)
        .map(|e| e[0].0 * e[1].1 - e[1].0 * e[0].1)
        .sum();
    let area = f(&comp["fraction"]) * pic.w as f64 * pic.h as f64;
    assert!(
        (twice.abs() / 2.0 / area - 1.0).abs() < 0.25,
        "polygon {} px² vs region {area} px²",
        twice.abs() / 2.0
    );
}

#[test]
fn boxes_are_drawn_where_the_finding_puts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("det.png");
    let (findings, pic) = overlay(
        &sample("cxr-det-nodule.dcm"),
        &[
            "--model",
            repo().join("models/cxr-tiny-det").to_str().unwrap(),
        ],
        &out,
    );
    let dets = findings[0]["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "the sample has a nodule");
    for d in dets.iter().filter(|d| d["label"] == "nodule") {
        let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(f).collect();
        // Each side of the box, sampled every 2 px, is drawn.
        let (mut samples, mut hit) = (0, 0);
        for (x0, y0, x1, y1) in [
            (b[0], b[1], b[2], b[1]),
            (b[2], b[1], b[2], b[3]),
            (b[0], b[3], b[2], b[3]),
            (b[0], b[1], b[0], b[3]),
        ] {
            let n = (((x1 - x0).abs() + (y1 - y0).abs()) / 2.0).ceil() as usize;
            for k in 0..=n {
                let t = k as f64 / n.max(1) as f64;
                samples += 1;
                hit += near(&pic, x0 + t * (x1 - x0), y0 + t * (y1 - y0), 1, is_label0) as usize;
            }
        }
        assert!(
            hit * 100 >= samples * 98,
            "{hit} of {samples} box samples drawn"
        );
        // Inside the box, the image itself (grey).
        let (cx, cy) = (((b[0] + b[2]) / 2.0) as i64, ((b[1] + b[3]) / 2.0) as i64);
        let p = pic.at(cx, cy).unwrap();
        assert!(p[0] == p[1] && p[1] == p[2], "{p:?} inside the box");
    }
}

#[test]
fn the_image_is_shown_as_dcmtk_renders_it() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["cxr-ptx-mono1.dcm", "cxr-ptx-mono2.dcm"] {
        let out = tmp.path().join(format!("{name}.png"));
        let (findings, pic) = overlay(&sample(name), &[], &out);
        assert_eq!(findings.len(), 1);
        let reference = tmp.path().join(format!("{name}.dcmtk.png"));
        let st = std::process::Command::new("dcmj2pnm")
            .args(["+Wi", "1", "+on"])
            .arg(sample(name))
            .arg(&reference)
            .status()
            .expect("DCMTK's dcmj2pnm");
        assert!(st.success());
        let theirs = read_png(&reference);
        assert_eq!((pic.w, pic.h), (theirs.w, theirs.h));
        // Between the banner at the top and the disclaimer at the foot (dark bars, 15 % of
        // the height each at most), a classification overlay is the image itself.
        let (y0, y1) = (pic.h * 15 / 100, pic.h * 85 / 100);
        let mut worst = 0;
        for y in y0..y1 {
            for x in 0..pic.w {
                let (a, b) = (pic.rgb[y * pic.w + x], theirs.rgb[y * pic.w + x]);
                assert!(a[0] == a[1] && a[1] == a[2], "{name}: colour at {x},{y}");
                worst = worst.max((a[0] as i32 - b[0] as i32).abs());
            }
        }
        assert!(worst <= 1, "{name}: max |overlay - dcmj2pnm| = {worst}");
        // The foot is a bar darkening the image to 40 % under white text.
        let (mut dark, mut text, mut n) = (0, 0, 0);
        for y in pic.h - pic.h / 20..pic.h - 2 {
            for x in 0..pic.w {
                let (a, b) = (
                    pic.rgb[y * pic.w + x][1] as f64,
                    theirs.rgb[y * pic.w + x][1] as f64,
                );
                n += 1;
                dark += (a <= 0.4 * b + 2.0) as usize;
                text += (a >= 200.0 && a > b) as usize;
            }
        }
        assert!(
            dark * 10 >= n * 7 && text > 50,
            "{name}: foot bar: {dark} dark, {text} text of {n}"
        );
    }
}

/// Waits until `<source>.json` names exactly the findings `ids` (the picture is written
/// before it), and returns the metadata.
fn wait_overlay(meta: &Path, ids: &[String], daemon: &Daemon) -> serde_json::Value {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(meta) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut got: Vec<String> = v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect();
            got.sort();
            if got == ids {
                return v;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no overlay for {ids:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `[overlays] keep_last`: the daemon keeps the last picture per source, shrunk to
/// `max_side`, beside a note of the findings it shows; the memory plan counts it; nothing
/// of it leaves the device.
#[test]
fn the_daemon_keeps_the_last_overlay_per_source() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &format!(
            "[[models]]\npath = \"{}\"\n\n[overlays]\nkeep_last = true\nmax_side = 256\n",
            repo().join("models/cxr-tiny-det").display()
        ),
    );
    let check = bedside()
        .arg("check")
        .arg("--board")
        .arg(&board)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && plan.contains("overlays: one picture of at most 256 x 256 px"),
        "{plan}"
    );
    let daemon = Daemon::start(&board, tmp.path());
    let mut findings = Subscriber::connect(broker.port, "bedside/test-site/cart-7/findings", None);
    let overlays = tmp.path().join("state/overlays");
    for (n, name) in ["cxr-det-nodule.dcm", "cxr-normal-mono2.dcm"]
        .iter()
        .enumerate()
    {
        drop_into(
            &tmp.path().join("inbox"),
            &sample(name),
            &format!("image-{n}.dcm"),
        );
        let mut ids: Vec<String> = (0..2)
            .map(|_| {
                let (_, f) = findings
                    .next_json(Duration::from_secs(60))
                    .unwrap_or_else(|| panic!("no finding for {name}:\n{}", daemon.log()));
                f["id"].as_str().unwrap().to_owned()
            })
            .collect();
        ids.sort();
        let meta = wait_overlay(&overlays.join("watch-folder.json"), &ids, &daemon);
        assert_eq!(
            (meta["width"].as_u64(), meta["height"].as_u64()),
            (Some(256), Some(256))
        );
        assert_eq!(meta["source"], "watch-folder");
        let pic = read_png(&overlays.join("watch-folder.png"));
        assert_eq!((pic.w, pic.h), (256, 256));
        let coloured = pic.rgb.iter().filter(|p| is_label0(**p)).count();
        if n == 0 {
            assert!(coloured > 20, "the nodule's box is drawn ({coloured} px)");
        }
        assert_no_identifiers(
            &std::fs::read_to_string(overlays.join("watch-folder.json")).unwrap(),
            "the overlay note",
        );
    }
    let names: Vec<String> = std::fs::read_dir(&overlays)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "one picture and one note per source, nothing left behind: {names:?}"
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}
