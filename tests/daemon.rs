//! `bedside run` against a real Mosquitto on 127.0.0.1: files dropped in the inbox come out
//! as findings on the broker; status is retained and turns offline at shutdown or, by the last
//! will, when the daemon dies; a broker that is not there is reported once and findings wait
//! for it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TOPIC_FINDINGS: &str = "bedside/test-site/cart-7/findings";
const TOPIC_STATUS: &str = "bedside/test-site/cart-7/status";

/// Drops a file into the inbox the way an exporter should: write elsewhere, rename in.
fn assert_finding(f: &serde_json::Value) {
    assert_valid_finding(f);
    assert_eq!(f["device"], "cart-7");
    assert_eq!(f["site"], "test-site");
    assert_eq!(f["source"], "watch-folder");
    assert_eq!(f["modality"], "DX");
    assert_eq!(f["model"]["id"], "cxr-tiny-cls");
    assert_eq!(f["model"]["sha256"], manifest_sha256());
    assert_eq!(f["over_threshold"], serde_json::json!(["pneumothorax"]));
    assert!(f["timings_ms"]["total"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_dicom_dropped_in_the_inbox_arrives_as_a_finding_on_mosquitto() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board = write_board(tmp.path(), broker.port);
    let daemon = Daemon::start(&board, tmp.path());

    // The daemon announces itself on the retained status topic.
    let mut status = Subscriber::connect(broker.port, TOPIC_STATUS, None);
    let mut online = None;
    for _ in 0..3 {
        match status.next_json(Duration::from_secs(30)) {
            Some((_, s)) if s["state"] == "online" => {
                online = Some(s);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let online = online.unwrap_or_else(|| panic!("no online status:\n{}", daemon.log()));
    assert_eq!(online["models"][0]["sha256"], manifest_sha256());
    assert_eq!(online["board"], "x86-dev");

    let mut findings = Subscriber::connect(broker.port, TOPIC_FINDINGS, None);
    // A JPEG-lossless file made by DCMTK, as a modality would send it.
    let jpeg = tmp.path().join("ptx-jpeg.dcm");
    dcmtk(
        "dcmcjpeg",
        &[Path::new("+e1"), &sample("cxr-ptx-mono2.dcm"), &jpeg],
    );
    drop_into(&tmp.path().join("inbox"), &jpeg, "image-0001.dcm");

    let (topic, f) = findings
        .next_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no finding arrived:\n{}", daemon.log()));
    assert_eq!(topic, TOPIC_FINDINGS);
    assert_finding(&f);
    assert!(wait_file(
        &tmp.path().join("state/done/image-0001.dcm"),
        Duration::from_secs(10)
    ));

    // A broken file is set aside with its reason, and the daemon carries on.
    let whole = std::fs::read(sample("cxr-normal-mono2.dcm")).unwrap();
    std::fs::write(tmp.path().join("broken.bin"), &whole[..whole.len() / 3]).unwrap();
    drop_into(
        &tmp.path().join("inbox"),
        &tmp.path().join("broken.bin"),
        "image-0002.dcm",
    );
    assert!(wait_file(
        &tmp.path().join("state/failed/image-0002.dcm.reason"),
        Duration::from_secs(30)
    ));
    let reason =
        std::fs::read_to_string(tmp.path().join("state/failed/image-0002.dcm.reason")).unwrap();
    assert!(reason.contains("cannot read DICOM file"), "{reason}");
    drop_into(
        &tmp.path().join("inbox"),
        &sample("cxr-normal-mono2.dcm"),
        "image-0003.dcm",
    );
    let (_, f3) = findings
        .next_json(Duration::from_secs(60))
        .expect("the daemon keeps serving after a bad file");
    assert_eq!(f3["over_threshold"], serde_json::json!(["normal"]));
    assert!(
        findings.next_json(Duration::from_millis(500)).is_none(),
        "one finding per good image, none for the broken one"
    );

    let (exit, log) = daemon.stop();
    assert!(exit.success(), "clean shutdown exits 0:\n{log}");
    assert_no_identifiers(&log, "the daemon log");
    // Its own disconnect at shutdown is not an outage.
    assert!(
        !log.contains("broker unreachable"),
        "a clean shutdown reported the broker unreachable:\n{log}"
    );
    // Clean shutdown leaves the retained status offline.
    let mut late = Subscriber::connect(broker.port, TOPIC_STATUS, None);
    let (_, s) = late
        .next_json(Duration::from_secs(10))
        .expect("retained status");
    assert_eq!(s["state"], "offline", "{s}");
}

#[test]
fn a_missing_broker_is_reported_once_and_findings_wait_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    // A consumer with a persistent session subscribes, then goes away, and the broker stops.
    {
        let broker = Mosquitto::start_on(port, &broker_dir, true);
        Subscriber::connect(broker.port, TOPIC_FINDINGS, Some("consumer-1")).disconnect();
        broker.stop();
    }
    let board = write_board(tmp.path(), port);
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("MQTT broker unreachable", Duration::from_secs(20)),
        "the daemon says the broker is missing:\n{}",
        daemon.log()
    );
    drop_into(
        &tmp.path().join("inbox"),
        &sample("cxr-ptx-mono2.dcm"),
        "a.dcm",
    );
    assert!(
        wait_file(
            &tmp.path().join("state/done/a.dcm"),
            Duration::from_secs(60)
        ),
        "{}",
        daemon.log()
    );
    // Several retries pass while the broker is down; the warning is still said once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        daemon.log().matches("MQTT broker unreachable").count(),
        1,
        "{}",
        daemon.log()
    );

    let broker = Mosquitto::start_on(port, &broker_dir, true);
    assert!(
        daemon.wait_log("connected to MQTT broker", Duration::from_secs(30)),
        "the daemon reconnects:\n{}",
        daemon.log()
    );
    let mut consumer = Subscriber::connect(broker.port, TOPIC_FINDINGS, Some("consumer-1"));
    let (_, f) = consumer
        .next_json(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the finding made while the broker was away never arrived:\n{}",
                daemon.log()
            )
        });
    assert_finding(&f);
    assert_eq!(f["source"], "watch-folder");

    // A device that dies without a word is marked offline by its last will: at once when its
    // connection drops without a DISCONNECT, at the latest when its keep-alive (5 s) expires.
    let mut status = Subscriber::connect(broker.port, TOPIC_STATUS, None);
    let (_, s) = status
        .next_json(Duration::from_secs(10))
        .expect("retained status");
    assert_eq!(s["state"], "online");
    daemon.kill();
    let (_, s) = status
        .next_json(Duration::from_secs(20))
        .expect("the last will arrives after the keep-alive expires");
    assert_eq!(s["state"], "offline");
    assert_eq!(s["device"], "cart-7");
}

/// The README's way of starting it: a board path relative to the working directory whose
/// own paths are relative to it (`board/dev.toml` → `board/../var/inbox`). The watcher
/// reports files under an absolute spelling of that folder; they must still be recognised.
#[test]
fn a_relative_board_path_still_serves_its_inbox() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board_dir = tmp.path().join("board");
    std::fs::create_dir_all(&board_dir).unwrap();
    let text = std::fs::read_to_string(write_board(tmp.path(), broker.port))
        .unwrap()
        .replace(
            &tmp.path().join("inbox").display().to_string(),
            "../var/inbox",
        )
        .replace(
            &tmp.path().join("state").display().to_string(),
            "../var/state",
        );
    std::fs::write(board_dir.join("dev.toml"), text).unwrap();
    let mut findings = Subscriber::connect(broker.port, TOPIC_FINDINGS, None);
    let log_path = tmp.path().join("daemon.log");
    let mut child = bedside()
        .current_dir(tmp.path())
        .args(["run", "--board", "board/dev.toml"])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let inbox = tmp.path().join("var/inbox");
    assert!(wait_file(&inbox, Duration::from_secs(30)), "{}", log());
    std::thread::sleep(Duration::from_millis(500));
    drop_into(&inbox, &sample("cxr-ptx-mono2.dcm"), "rel.dcm");
    let got = findings.next_json(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let (_, f) = got.unwrap_or_else(|| panic!("no finding:\n{}", log()));
    assert_finding(&f);
    assert!(!log().contains("from no known folder"), "{}", log());
    broker.stop();
}

/// With `[images] workers = 3` a burst is shared among the workers: files waiting from
/// before the start (found by the scan) and files arriving while it runs (watch events) each
/// make exactly one finding, every finding arrives once, and more than one worker made them.
#[test]
fn a_burst_is_shared_by_the_image_workers_and_each_file_makes_one_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        "[images]\nworkers = 3\n",
    );
    let n = 30;
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), n);
    let inbox = tmp.path().join("inbox");
    move_all_into(&files[..n / 2], &inbox);
    let consumer = Collector::start(broker.port, TOPIC_FINDINGS, "burst");
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("bedside running", Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    move_all_into(&files[n / 2..], &inbox);
    assert!(
        wait_count(&tmp.path().join("state/done"), n, Duration::from_secs(180)),
        "{}",
        daemon.log()
    );
    assert!(
        consumer.wait_unique(n, Duration::from_secs(60)),
        "only {} of {n} findings arrived:\n{}",
        consumer.unique(),
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(500)); // a late duplicate would show now
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("3 image workers (images.workers)"), "{log}");
    for i in 0..3 {
        assert!(
            threads.contains(&format!("bedside-img{i}")),
            "worker thread {i} missing: {threads:?}"
        );
    }
    let made = ids_in_log(&log);
    assert_eq!(made.len(), n, "one finding per file:\n{log}");
    assert_eq!(consumer.duplicates(), 0);
    assert_eq!(
        consumer.ids(),
        made.into_iter().collect(),
        "exactly the findings the daemon made"
    );
    for f in consumer.docs() {
        assert_eq!(f["over_threshold"], serde_json::json!(["pneumothorax"]));
    }
    let workers: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("finding made"))
        .filter_map(|l| l.split(" worker=").nth(1)?.split_whitespace().next())
        .collect();
    assert!(
        workers.len() >= 2,
        "one worker made every finding: {workers:?}\n{log}"
    );
    assert_no_identifiers(&log, "the daemon log");
}
