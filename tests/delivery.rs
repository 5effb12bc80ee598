//! Findings are never lost: the durable outbox against a real Mosquitto that is missing,
//! killed and restarted, a daemon killed mid-flow, a torn outbox file, and a full outbox.
//! Every test counts finding ids with a persistent-session consumer; duplicates are allowed
//! (at least once) but counted and printed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const FINDINGS: &str = "bedside/test-site/cart-7/findings";
const STATUS: &str = "bedside/test-site/cart-7/status";

/// A persistent broker that saves after every change (`autosave_on_changes` counts changes
/// against `autosave_interval`, whose default is 1800), so that what it acknowledged survives
/// its own SIGKILL as far as Mosquitto can (otherwise the test would measure Mosquitto, not
/// bedside), and that queues without limit for a consumer that is away.
fn outbox_segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("outbox"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    v.sort();
    v
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A small xorshift generator: the test prints its seed so that a failure can be replayed.
#[test]
fn two_hundred_findings_made_while_the_broker_is_down_all_arrive_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    // The consumer's persistent session exists; then the broker goes away.
    {
        let broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
        drop(Collector::start(port, FINDINGS, "consumer-200"));
        broker.stop();
    }
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 200);
    let board = write_board(tmp.path(), port);
    let daemon = Daemon::start(&board, tmp.path());
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(
        wait_count(
            &tmp.path().join("state/done"),
            200,
            Duration::from_secs(300)
        ),
        "200 files processed with the broker down:\n{}",
        daemon.log()
    );
    let made = ids_in_log(&daemon.log());
    assert_eq!(made.len(), 200, "{}", daemon.log());

    let _broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    let consumer = Collector::start(port, FINDINGS, "consumer-200");
    assert!(
        consumer.wait_unique(200, Duration::from_secs(120)),
        "only {} of 200 findings arrived:\n{}",
        consumer.unique(),
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(1)); // a late duplicate would show now
    eprintln!("duplicates: {}", consumer.duplicates());
    assert_eq!(consumer.duplicates(), 0, "each id once");
    assert_eq!(
        consumer.ids(),
        made.into_iter().collect(),
        "exactly the findings the daemon made"
    );
    // Delivered segments are removed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox_segments(&tmp.path().join("state")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(outbox_segments(&tmp.path().join("state")).is_empty());
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_no_identifiers(&log, "the daemon log");
}

#[test]
fn a_broker_killed_three_times_while_1000_findings_flow_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    let mut broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    let consumer = Collector::start(port, FINDINGS, "consumer-1000");
    let files = distinct_copies(
        &sample("cxr-other-8bit.dcm"),
        &tmp.path().join("made"),
        1000,
    );
    let board = write_board(tmp.path(), port);
    let daemon = Daemon::start(&board, tmp.path());
    assert!(daemon.wait_log("connected to MQTT broker", Duration::from_secs(30)));
    move_all_into(&files, &tmp.path().join("inbox"));
    let done = tmp.path().join("state/done");
    for round in 1..=3 {
        assert!(
            wait_count(&done, round * 250, Duration::from_secs(300)),
            "{}",
            daemon.log()
        );
        // A broker life is killed only once the daemon has connected to it and the consumer
        // holds the first round × 250 findings. With fast models 250 images take less than
        // the reconnect back-off: a life the daemon never saw would test nothing, and one
        // killed while it still holds acknowledged findings for an absent consumer would
        // test Mosquitto's disk (it acknowledges before it saves), not bedside.
        let deadline = Instant::now() + Duration::from_secs(120);
        while (daemon.log().matches("connected to MQTT broker").count() < round
            || consumer.unique() < round * 250)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "round {round}: {} processed, {} delivered; SIGKILL to the broker",
            count(&done),
            consumer.unique()
        );
        broker.kill();
        std::thread::sleep(Duration::from_millis(1500));
        broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    }
    assert!(
        wait_count(&done, 1000, Duration::from_secs(300)),
        "{}",
        daemon.log()
    );
    assert!(
        consumer.wait_unique(1000, Duration::from_secs(120)),
        "only {} of 1000 findings arrived:\n{}",
        consumer.unique(),
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "1000 findings, 3 broker kills: {} duplicates",
        consumer.duplicates()
    );
    let made: std::collections::HashSet<String> = ids_in_log(&daemon.log()).into_iter().collect();
    assert_eq!(made.len(), 1000);
    assert_eq!(consumer.ids(), made);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_eq!(
        log.matches("connected to MQTT broker").count(),
        4,
        "one connection per broker life:\n{log}"
    );
}

#[test]
fn a_daemon_killed_at_random_moments_loses_no_recorded_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start_with(port, &tmp.path().join("broker"), true, DURABLE_BROKER);
    let consumer = Collector::start(port, FINDINGS, "consumer-kill");
    let n = 150;
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), n);
    let board = write_board(tmp.path(), port);
    move_all_into(&files, &tmp.path().join("inbox"));
    let mut rng = Rng::from_time();
    let mut recorded = std::collections::HashSet::new();
    for round in 0..4 {
        let run = tmp.path().join(format!("run-{round}"));
        std::fs::create_dir_all(&run).unwrap();
        let daemon = Daemon::start(&board, &run);
        assert!(daemon.wait_log("bedside running", Duration::from_secs(30)));
        let after = Duration::from_millis(200 + rng.below(1500));
        std::thread::sleep(after);
        let log = daemon.log();
        daemon.kill();
        let ids = ids_in_log(&log);
        eprintln!(
            "run {round}: SIGKILL after {after:?}; {} findings logged; {} files done",
            ids.len(),
            count(&tmp.path().join("state/done"))
        );
        recorded.extend(ids);
    }
    let run = tmp.path().join("run-last");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = Daemon::start(&board, &run);
    assert!(
        wait_count(&tmp.path().join("state/done"), n, Duration::from_secs(300)),
        "{}",
        daemon.log()
    );
    recorded.extend(ids_in_log(&daemon.log()));
    assert!(
        consumer.wait_unique(n, Duration::from_secs(120)),
        "only {} of {n} findings arrived:\n{}",
        consumer.unique(),
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let got = consumer.ids();
    let missing: Vec<&String> = recorded.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "recorded but never delivered: {missing:?}"
    );
    assert_eq!(got.len(), n, "one finding per file");
    eprintln!(
        "{n} findings, 4 daemon kills: {} duplicates",
        consumer.duplicates()
    );
    assert_eq!(count(&tmp.path().join("inbox")), 0);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn a_torn_record_at_the_outbox_tail_is_cut_and_every_whole_record_before_it_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    {
        let broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
        drop(Collector::start(port, FINDINGS, "consumer-torn"));
        broker.stop();
    }
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 20);
    let board = write_board(tmp.path(), port);
    let daemon = Daemon::start(&board, tmp.path());
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(wait_count(
        &tmp.path().join("state/done"),
        20,
        Duration::from_secs(120)
    ));
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("20 findings wait in the outbox"),
        "the shutdown says what waits:\n{log}"
    );
    let made: std::collections::HashSet<String> = ids_in_log(&log).into_iter().collect();

    // What a power cut in the middle of a write leaves: a header promising more bytes than
    // were written.
    let segments = outbox_segments(&tmp.path().join("state"));
    let last = segments.last().expect("an outbox segment");
    let mut torn = 4000u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xAB; 4]);
    torn.extend_from_slice(b"{\"id\":\"half a finding");
    let mut f = std::fs::File::options().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    let _broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    let consumer = Collector::start(port, FINDINGS, "consumer-torn");
    let run = tmp.path().join("run-2");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = Daemon::start(&board, &run);
    assert!(
        consumer.wait_unique(20, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    assert_eq!(consumer.ids(), made);
    let (_, log) = daemon.stop();
    assert!(log.contains("torn record"), "the cut is reported:\n{log}");
}

#[test]
fn a_full_outbox_keeps_images_in_the_inbox_says_so_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    // A broker that does not let this device publish findings (MQTT 5 answers
    // "not authorized"), so they pile up in its outbox; status and metrics are allowed.
    let acl = tmp.path().join("acl");
    std::fs::write(
        &acl,
        format!(
            "topic read {FINDINGS}\ntopic readwrite {STATUS}\ntopic readwrite bedside/test-site/cart-7/metrics\n"
        ),
    )
    .unwrap();
    let broker = Mosquitto::start_with(
        port,
        &broker_dir,
        true,
        &format!("{DURABLE_BROKER}acl_file {}\n", acl.display()),
    );
    let consumer = Collector::start(port, FINDINGS, "consumer-full");
    let mut status = Subscriber::connect(port, STATUS, None);
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 5);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{port}\"\nprotocol = \"5\""),
        "[outbox]\nmax_records = 3\n",
    );
    let daemon = Daemon::start(&board, tmp.path());
    move_all_into(&files, &tmp.path().join("inbox"));

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut full = None;
    while Instant::now() < deadline {
        if let Some((_, s)) = status.next_json(Duration::from_secs(5))
            && s["outbox"]["full"] == true
        {
            full = Some(s);
            break;
        }
    }
    let full = full.unwrap_or_else(|| panic!("no status saying full:\n{}", daemon.log()));
    assert_eq!(full["state"], "online");
    assert_eq!(full["outbox"]["depth"], 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&tmp.path().join("state/done")), 3, "{}", daemon.log());
    assert_eq!(
        count(&tmp.path().join("inbox")),
        2,
        "the rest wait in the inbox"
    );
    assert_eq!(count(&tmp.path().join("state/failed")), 0);
    let log = daemon.log();
    assert!(log.contains("the outbox is full"), "{log}");
    assert!(
        log.contains("NotAuthorized"),
        "the refusal is named:\n{log}"
    );
    assert_eq!(consumer.unique(), 0);

    // The broker lets findings through again: the outbox drains, the inbox follows.
    broker.stop();
    let _broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    assert!(
        consumer.wait_unique(5, Duration::from_secs(90)),
        "only {} of 5 arrived:\n{}",
        consumer.unique(),
        daemon.log()
    );
    assert_eq!(count(&tmp.path().join("inbox")), 0);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("the outbox has room again"), "{log}");
}

#[test]
fn over_mqtt_3_1_1_status_and_metrics_report_what_the_outbox_did() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let consumer = Collector::start(broker.port, FINDINGS, "consumer-metrics");
    let mut metrics = Subscriber::connect(broker.port, "bedside/test-site/cart-7/metrics", None);
    let board = write_board_with(
        tmp.path(),
        &format!(
            "url = \"mqtt://127.0.0.1:{}\"\nprotocol = \"3.1.1\"\nmetrics_interval_s = 1",
            broker.port
        ),
        "",
    );
    let daemon = Daemon::start(&board, tmp.path());
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 3);
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(
        consumer.wait_unique(3, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    // Metrics every second: wait for one that has seen all three.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        let Some((_, m)) = metrics.next_json(Duration::from_secs(5)) else {
            continue;
        };
        if m["findings"]["delivered"] == 3 {
            last = Some(m);
            break;
        }
    }
    let m = last.unwrap_or_else(|| panic!("no metrics with 3 delivered:\n{}", daemon.log()));
    assert_eq!(m["schema"], "bedside.metrics.v1");
    assert_eq!(m["device"], "cart-7");
    assert_eq!(m["inputs"]["processed"], 3);
    assert_eq!(m["inputs"]["failed"], 0);
    assert_eq!(m["findings"]["recorded"], 3);
    assert_eq!(m["outbox"]["depth"], 0);
    assert_eq!(m["mqtt"]["protocol"], "3.1.1");
    assert!(m["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20, "{m}");
    assert!(
        m["memory"]["peak_rss_bytes"].as_u64().unwrap()
            >= m["memory"]["rss_bytes"].as_u64().unwrap()
    );
    let mut status = Subscriber::connect(broker.port, STATUS, None);
    let (_, s) = status
        .next_json(Duration::from_secs(10))
        .expect("retained status");
    assert_eq!(s["state"], "online");
    assert_eq!(s["protocol"], "3.1.1");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["models"][0]["sha256"], manifest_sha256());
    assert!(s["outbox"]["max_records"].as_u64().unwrap() > 0, "{s}");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("protocol=\"3.1.1\""), "{log}");
}
