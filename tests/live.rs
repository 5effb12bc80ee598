//! The live video pipeline, end to end in the daemon: a recording replayed as a camera
//! (`[video] source = "replay"`), real models in tract, findings and metrics over a real
//! Mosquitto broker.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// The heavy tests run one at a time: each wants a core for its model, and this machine
/// (and CI) has two.
static HEAVY: Mutex<()> = Mutex::new(());

fn clip() -> std::path::PathBuf {
    repo().join("tests/data/us/fast-clip.dcm")
}

fn clip_facts() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("tests/data/us/fast-clip.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn crop_toml() -> String {
    let c = clip_facts()["crop"].clone();
    format!("crop = {c}")
}

/// A board whose only model runs on video, replaying `clip` with `video` settings.
fn video_board(
    dir: &std::path::Path,
    port: u16,
    model: &std::path::Path,
    video: &str,
) -> std::path::PathBuf {
    write_board_with(
        dir,
        &format!("url = \"mqtt://127.0.0.1:{port}\"\nmetrics_interval_s = 1"),
        &format!(
            "[[models]]\npath = \"{}\"\nsources = [\"video\"]\n\n[video]\n{video}\n",
            model.display()
        ),
    )
}

struct Sample {
    at: Duration,
    rss: u64,
    plan: u64,
    captured: u64,
    processed: u64,
    dropped: u64,
}

/// Replays the clip in a loop at `fps` for `seconds` into a model slower than the frame
/// period. Returns the per-second samples (RSS from /proc, counters from the metrics topic)
/// and every video finding.
fn replay_into_slow_model(fps: u32, seconds: u64) -> (Vec<Sample>, Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start_on(port, dir.path(), false);
    let model = repo().join("tests/fixtures/models/us-slow");
    let board = video_board(
        dir.path(),
        port,
        &model,
        &format!(
            "source = \"replay\"\n{}\npublish_interval_s = 2\n[video.replay]\npath = \"{}\"\nfps = {fps}\nloop = true",
            crop_toml(),
            clip().display()
        ),
    );
    let mut metrics = Subscriber::connect(port, "bedside/test-site/cart-7/metrics", None);
    let findings = Collector::start(port, "bedside/test-site/cart-7/findings", "live-findings");
    let daemon = Daemon::start(&board, dir.path());
    assert!(
        daemon.wait_log("camera streaming", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let t0 = Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        if let Some((_, m)) = metrics.next_json(Duration::from_secs(3)) {
            let v = &m["video"]["frames"];
            if v.is_null() {
                continue; // the first document can precede the pipeline's start
            }
            samples.push(Sample {
                at: t0.elapsed(),
                rss: daemon.rss_bytes(),
                plan: m["memory"]["plan_bytes"].as_u64().unwrap(),
                captured: v["captured"].as_u64().unwrap(),
                processed: v["processed"].as_u64().unwrap(),
                dropped: v["dropped"].as_u64().unwrap(),
            });
        }
    }
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    // The end finding of whatever was present is published at shutdown.
    std::thread::sleep(Duration::from_millis(500));
    let docs = findings.docs();
    broker.stop();
    (samples, docs, log)
}

/// Capture keeps the camera's rate while the model cannot: frames are dropped and counted,
/// latency stays bounded (no queue), and memory stays flat. At 30 and 60 fps, 60 s each.
#[test]
fn capture_keeps_its_rate_into_a_slower_model_and_nothing_grows() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    for fps in [30u32, 60] {
        let (samples, findings, log) = replay_into_slow_model(fps, 60);
        assert!(
            samples.len() >= 50,
            "{} metrics samples in 60 s:\n{log}",
            samples.len()
        );
        // Steady state: from 10 s on.
        let steady: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= Duration::from_secs(10))
            .collect();
        let (a, b) = (steady[0], steady[steady.len() - 1]);
        let span = (b.at - a.at).as_secs_f64();
        let capture_fps = (b.captured - a.captured) as f64 / span;
        let process_fps = (b.processed - a.processed) as f64 / span;
        eprintln!(
            "{fps} fps: captured {capture_fps:.1}/s, processed {process_fps:.1}/s, dropped {} in {span:.0} s",
            b.dropped - a.dropped
        );
        assert!(
            capture_fps >= 0.95 * fps as f64,
            "capture fell to {capture_fps:.1} fps of {fps}"
        );
        assert!(
            process_fps < 0.8 * fps as f64,
            "the slow model processed {process_fps:.1} fps: it is not slower than {fps} fps, the test proves nothing"
        );
        // Every captured frame is processed or dropped (at most one pending, one in hand).
        let accounted = b.processed + b.dropped;
        assert!(
            b.captured >= accounted && b.captured - accounted <= 2,
            "captured {} = processed {} + dropped {} + ?",
            b.captured,
            b.processed,
            b.dropped
        );
        assert!(b.dropped - a.dropped > 0, "no drops counted");
        // Latency: bounded by two model times, never growing. From the interval findings'
        // spans (each 2 s).
        let spans: Vec<(f64, f64)> = findings
            .iter()
            .filter_map(|f| {
                let l = &f["video"]["latency_ms"];
                Some((l["mean"].as_f64()?, l["max"].as_f64()?))
            })
            .collect();
        assert!(spans.len() >= 20, "{} video findings", spans.len());
        let model_ms = 1000.0 / process_fps;
        let worst = spans.iter().map(|s| s.1).fold(0.0, f64::max);
        assert!(
            worst <= 3.0 * model_ms + 50.0,
            "worst latency {worst:.1} ms with a model of {model_ms:.1} ms/frame: a queue?"
        );
        let n = spans.len();
        let early: f64 = spans[2..6].iter().map(|s| s.0).sum::<f64>() / 4.0;
        let late: f64 = spans[n - 5..n - 1].iter().map(|s| s.0).sum::<f64>() / 4.0;
        assert!(
            late <= 1.5 * early + 10.0,
            "mean latency grew from {early:.1} ms to {late:.1} ms"
        );
        // Memory: RSS sampled every second from 10 s to the end stays within 2 MiB.
        let (lo, hi) = steady
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.rss), hi.max(s.rss)));
        eprintln!(
            "{fps} fps: RSS {lo}..{hi} bytes from 10 s to 60 s: {:?} KiB",
            steady.iter().map(|s| s.rss >> 10).collect::<Vec<_>>()
        );
        assert!(
            hi - lo <= 2 << 20,
            "RSS moved by {} KiB after warm-up ({lo}..{hi})",
            (hi - lo) >> 10
        );
        assert!(
            hi <= b.plan,
            "RSS {hi} B over the memory plan's {} B",
            b.plan
        );
        for f in &findings {
            assert_valid_finding(f);
        }
    }
}

/// A clip with free fluid in frames 100..=160 (tests/data/us/fast-clip.json), played once at
/// its own 30 fps into the shipped int8 segmentation model: the smoothed findings start and
/// end within a few frames of the event, give its area in mm², and say nothing else.
#[test]
fn smoothed_findings_follow_a_known_event_within_a_few_frames() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let facts = clip_facts();
    let (first, last) = (
        facts["event_first"].as_u64().unwrap(),
        facts["event_last"].as_u64().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start_on(port, dir.path(), false);
    let model = repo().join("models/us-fast-fluid");
    let board = video_board(
        dir.path(),
        port,
        &model,
        &format!(
            "source = \"replay\"\n{}\nwindow_frames = 5\npublish_interval_s = 60\n[video.replay]\npath = \"{}\"",
            crop_toml(),
            clip().display()
        ),
    );
    let findings = Collector::start(port, "bedside/test-site/cart-7/findings", "live-event");
    let mut status = Subscriber::connect(port, "bedside/test-site/cart-7/status", None);
    let daemon = Daemon::start(&board, dir.path());
    // 240 frames at 30 fps: 8 s; the recording's end is reported on the status topic.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut ended = false;
    while !ended && Instant::now() < deadline {
        if let Some((_, doc)) = status.next_json(Duration::from_secs(1)) {
            ended = doc["video"]["state"] == "ended";
        }
    }
    assert!(
        ended,
        "no video state \"ended\" on the status topic:\n{}",
        daemon.log()
    );
    assert!(
        findings.wait_unique(2, Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, log) = daemon.stop();
    let docs = findings.docs();
    broker.stop();
    let events: Vec<(String, u64, u64)> = docs
        .iter()
        .map(|f| {
            let v = &f["video"];
            (
                v["event"].as_str().unwrap().to_string(),
                v["first_frame"].as_u64().unwrap(),
                v["last_frame"].as_u64().unwrap(),
            )
        })
        .collect();
    eprintln!("events: {events:?} (truth: {first}..={last})");
    let onsets: Vec<_> = events.iter().filter(|e| e.0 == "onset").collect();
    let ends: Vec<_> = events.iter().filter(|e| e.0 == "end").collect();
    assert_eq!(onsets.len(), 1, "one onset expected: {events:?}\n{log}");
    assert_eq!(ends.len(), 1, "one end expected: {events:?}\n{log}");
    const SLACK: u64 = 3;
    assert!(
        onsets[0].1.abs_diff(first) <= SLACK,
        "onset at {} for {first}",
        onsets[0].1
    );
    assert!(
        ends[0].1.abs_diff(first) <= SLACK,
        "span starts at {} for {first}",
        ends[0].1
    );
    assert!(
        ends[0].2.abs_diff(last) <= SLACK,
        "span ends at {} for {last}",
        ends[0].2
    );
    let end = docs.iter().find(|f| f["video"]["event"] == "end").unwrap();
    assert_valid_finding(end);
    assert_eq!(end["task"], "segmentation");
    assert_eq!(end["source"], "replay");
    assert_eq!(end["over_threshold"], serde_json::json!(["free_fluid"]));
    let region = &end["regions"][0];
    let area = region["area_mm2"]
        .as_f64()
        .expect("area in mm² (the clip has a pixel spacing)");
    let peak = region["peak_area_mm2"].as_f64().unwrap();
    assert!(
        area > 0.0 && peak >= area,
        "area {area} mm², peak {peak} mm²"
    );
    // The area is the fraction of the cropped frame times its size in mm².
    let c = &facts["crop"];
    let s = &facts["pixel_spacing_mm"];
    let frame_mm2 = c[2].as_f64().unwrap()
        * s[1].as_f64().unwrap()
        * c[3].as_f64().unwrap()
        * s[0].as_f64().unwrap();
    let fraction = region["fraction"].as_f64().unwrap();
    assert!(
        (area - fraction * frame_mm2).abs() <= 0.01 * area.max(1.0),
        "{area} vs {fraction} x {frame_mm2}"
    );
    assert_eq!(
        end["model"]["sha256"],
        serde_json::json!(model_sha256(&model))
    );
}

fn model_sha256(dir: &std::path::Path) -> String {
    let m: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("model.toml")).unwrap()).unwrap();
    m["model"]["sha256"].as_str().unwrap().to_string()
}

/// A capture device that is not there: the status topic says so with the reason, the daemon
/// keeps retrying, and the DICOM side keeps making findings meanwhile.
#[test]
fn a_missing_camera_is_reported_and_dicom_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start_on(port, dir.path(), false);
    let board = write_board_with(
        dir.path(),
        &format!("url = \"mqtt://127.0.0.1:{port}\""),
        &format!(
            "[[models]]\npath = \"{}\"\nsources = [\"video\"]\n\n[video]\nsource = \"v4l2\"\n[video.v4l2]\ndevice = \"/dev/video-bedside-test-absent\"\nwidth = 640\nheight = 480\nfps = 30\n",
            repo().join("models/us-fast-fluid").display()
        ),
    );
    let mut status = Subscriber::connect(port, "bedside/test-site/cart-7/status", None);
    let mut findings = Subscriber::connect(port, "bedside/test-site/cart-7/findings", None);
    let daemon = Daemon::start(&board, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut down = None;
    while down.is_none() && Instant::now() < deadline {
        if let Some((_, doc)) = status.next_json(Duration::from_secs(1))
            && doc["video"]["state"] == "down"
        {
            down = Some(doc);
        }
    }
    let down = down.unwrap_or_else(|| panic!("no video state \"down\":\n{}", daemon.log()));
    let reason = down["video"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("/dev/video-bedside-test-absent"),
        "{reason}"
    );
    assert!(down["video"]["since"].is_string());
    // Retrying with backoff: the log says so more than once within a few seconds.
    assert!(daemon.wait_log("will try again", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_secs(2));
    let retries = daemon.log().matches("camera not delivering").count();
    assert!(retries >= 2, "{retries} attempts in the log");
    // DICOM still works.
    std::fs::copy(sample("cxr-ptx-mono2.dcm"), dir.path().join("inbox/.part")).unwrap();
    std::fs::rename(
        dir.path().join("inbox/.part"),
        dir.path().join("inbox/a.dcm"),
    )
    .unwrap();
    let (_, f) = findings
        .next_json(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no DICOM finding while the camera is down:\n{}",
                daemon.log()
            )
        });
    assert_eq!(f["source"], "watch-folder");
    let (status_code, log) = daemon.stop();
    assert!(status_code.success(), "{log}");
    broker.stop();
}

/// A camera that comes back: the recording is not there at start (as a device not yet
/// plugged in), capture retries with backoff, and streams once it appears — reported on the
/// status topic both times.
#[test]
fn capture_resumes_when_the_camera_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start_on(port, dir.path(), false);
    let later = dir.path().join("camera/fast-clip.dcm");
    let board = video_board(
        dir.path(),
        port,
        &repo().join("models/us-fast-fluid"),
        &format!(
            "source = \"replay\"\n{}\n[video.replay]\npath = \"{}\"\nloop = true",
            crop_toml(),
            later.display()
        ),
    );
    let mut status = Subscriber::connect(port, "bedside/test-site/cart-7/status", None);
    let daemon = Daemon::start(&board, dir.path());
    let mut wait_state = |want: &str, limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some((_, doc)) = status.next_json(Duration::from_secs(1))
                && doc["video"]["state"] == want
            {
                return Some(doc);
            }
        }
        None
    };
    let down = wait_state("down", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no \"down\" state:\n{}", daemon.log()));
    assert!(
        down["video"]["reason"]
            .as_str()
            .unwrap()
            .contains("fast-clip.dcm")
    );
    std::thread::sleep(Duration::from_secs(2));
    std::fs::create_dir_all(later.parent().unwrap()).unwrap();
    std::fs::copy(clip(), later.with_extension("part")).unwrap();
    std::fs::rename(later.with_extension("part"), &later).unwrap();
    let up = wait_state("streaming", Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "never streaming after the camera came back:\n{}",
            daemon.log()
        )
    });
    assert!(
        up["video"]["source"]
            .as_str()
            .unwrap()
            .contains("fast-clip.dcm")
    );
    assert!(daemon.wait_log("camera streaming", Duration::from_secs(5)));
    let (code, log) = daemon.stop();
    assert!(code.success(), "{log}");
    assert!(
        log.matches("camera not delivering").count() >= 2,
        "retried with backoff:\n{log}"
    );
    broker.stop();
}

/// A model update while the live pipeline runs (issue 15): the new version takes over between
/// two frames, the span the old version was following ends under the old version, and no
/// video finding mixes the two — the findings go from the old version to the new, never back.
#[test]
fn a_live_model_is_updated_between_two_frames_without_mixing_versions() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start_on(port, dir.path(), false);
    let model = repo().join("models/us-fast-fluid");
    // The same weights as a new version (the update path is what is under test).
    let update = dir.path().join("v2");
    std::fs::create_dir_all(&update).unwrap();
    std::fs::copy(model.join("model.onnx"), update.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
    let bumped = manifest.replacen("version = \"0.1.0\"", "version = \"0.1.1-live-update\"", 1);
    assert_ne!(manifest, bumped);
    std::fs::write(update.join("model.toml"), bumped).unwrap();
    let board = video_board(
        dir.path(),
        port,
        &model,
        &format!(
            "source = \"replay\"\n{}\nwindow_frames = 5\npublish_interval_s = 1\n[video.replay]\npath = \"{}\"\nfps = 30\nloop = true",
            crop_toml(),
            clip().display()
        ),
    );
    let findings = Collector::start(port, "bedside/test-site/cart-7/findings", "live-update");
    let daemon = Daemon::start(&board, dir.path());
    assert!(
        daemon.wait_log("camera streaming", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    // The clip's fluid event comes around every 8 s: run through one, update, run through
    // another.
    std::thread::sleep(Duration::from_secs(9));
    let o = bedside()
        .args(["models", "install"])
        .arg(&update)
        .arg("--board")
        .arg(&board)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SAFETY: kill(2) on the child's pid.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) }, 0);
    assert!(
        daemon.wait_log("model updated", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(9));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    let docs = findings.docs();
    broker.stop();
    let versions: Vec<(&str, &str)> = docs
        .iter()
        .map(|f| {
            (
                f["model"]["version"].as_str().unwrap(),
                f["video"]["event"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    eprintln!("video findings (version, event): {versions:?}");
    let first_new = versions
        .iter()
        .position(|v| v.0 == "0.1.1-live-update")
        .unwrap_or_else(|| panic!("no finding from the new version: {versions:?}\n{log}"));
    assert!(first_new > 0, "findings before the update: {versions:?}");
    assert!(
        versions[..first_new].iter().all(|v| v.0 == "0.1.0"),
        "{versions:?}"
    );
    assert!(
        versions[first_new..]
            .iter()
            .all(|v| v.0 == "0.1.1-live-update"),
        "an old-version finding after the new version's first: {versions:?}"
    );
    for f in &docs {
        assert_valid_finding(f);
        assert_eq!(
            f["model"]["sha256"],
            serde_json::json!(model_sha256(&model))
        );
    }
    assert!(log.contains("model updated"), "{log}");
}
