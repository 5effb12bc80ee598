//! Chaos under load: four `storescu` senders stream X-rays and the live replay runs while the
//! daemon is SIGKILLed at random moments (20 times) and the broker too (5 times), each
//! restarted. Every image that received a C-STORE success must have its finding at the
//! subscriber at least once; duplicates are counted and reported; no file may be left in the
//! spool or the inbox that is neither processed nor set aside with its reason.
//!
//! The seed is printed; `BEDSIDE_TEST_SEED=<seed>` replays the same moments.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bedside::board::BoardProfile;
use bedside::finding::UidHasher;
use bedside::source::SopInstanceUid;
use common::*;

const FINDINGS: &str = "bedside/test-site/cart-7/findings";
const DAEMON_KILLS: usize = 20;
const BROKER_KILLS: usize = 5;
const SENDERS: usize = 4;
/// Each sender's pause after an acknowledged image: four senders, ~16 images a second.
const PACE: Duration = Duration::from_millis(200);

fn uid_of(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

/// One modality: sends its images one association each, retrying an image until it is
/// acknowledged (as a modality's queue does); the UIDs acknowledged.
fn sender(port: u16, images: Vec<PathBuf>, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    for image in images {
        let uid = uid_of(&image);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let (ok, _) = store_one(port, &image, &["-to", "10", "-ta", "10"]);
            if ok {
                acked.lock().unwrap().push(uid);
                // A steady stream across all the daemon's lives, not a burst in the first.
                std::thread::sleep(PACE);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn sigkills_of_the_daemon_and_the_broker_under_load_lose_no_acknowledged_image() {
    let mut rng = Rng::from_time();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_dir = tmp.path().join("broker");
    let mut broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
    let consumer = Collector::start(port, FINDINGS, "consumer-chaos");
    let dicom_port = free_port();
    let board = scp_and_video_board(tmp.path(), port, dicom_port, 2);
    let hasher = UidHasher::new(BoardProfile::load(&board).unwrap().uid_hash_key().unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let images = distinct_copies(
                &sample("cxr-other-8bit.dcm"),
                &tmp.path().join(format!("made-{i}")),
                300,
            );
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || sender(dicom_port, images, stop, acked))
        })
        .collect();

    // The kills: 20 daemon lives of 0.3–3 s; the broker killed in 5 of them, at a random
    // moment, and back 0.3–1.5 s later.
    let mut broker_lives: HashSet<usize> = HashSet::new();
    while broker_lives.len() < BROKER_KILLS {
        broker_lives.insert(rng.below(DAEMON_KILLS as u64) as usize);
    }
    let started = Instant::now();
    for life in 0..DAEMON_KILLS {
        let run = tmp.path().join(format!("run-{life}"));
        std::fs::create_dir_all(&run).unwrap();
        let daemon = Daemon::start(&board, &run);
        assert!(
            daemon.wait_log("DICOM C-STORE SCP listening", Duration::from_secs(60)),
            "{}",
            daemon.log()
        );
        let up = Duration::from_millis(300 + rng.below(2700));
        if broker_lives.contains(&life) {
            let at = Duration::from_millis(rng.below(up.as_millis() as u64));
            std::thread::sleep(at);
            broker.kill();
            std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
            broker = Mosquitto::start_with(port, &broker_dir, true, DURABLE_BROKER);
            std::thread::sleep(up.saturating_sub(at));
        } else {
            std::thread::sleep(up);
        }
        daemon.kill();
        let log = std::fs::read_to_string(run.join("daemon.log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
        eprintln!(
            "life {life}: SIGKILL after {up:?}{}; {} images acknowledged so far",
            if broker_lives.contains(&life) {
                " (the broker killed in it)"
            } else {
                ""
            },
            acked.lock().unwrap().len()
        );
    }
    let chaos = started.elapsed();

    // A last life that is left alone: the senders stop, the daemon drains.
    let run = tmp.path().join("run-last");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = Daemon::start(&board, &run);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let want: HashSet<String> = acked
        .iter()
        .map(|uid| hasher.hash(&SopInstanceUid::new(uid.clone())))
        .collect();
    assert!(
        acked.len() >= 20,
        "only {} images acknowledged in {chaos:?}",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let missing = loop {
        let have: HashSet<String> = consumer
            .docs()
            .iter()
            .filter_map(|d| d["sop_instance_uid_hash"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = want.difference(&have).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged images have no finding at the subscriber\n{}",
        want.len(),
        daemon.log()
    );

    // Nothing left behind: the spool and the inbox empty once drained, everything set aside
    // with its reason.
    let state = tmp.path().join("state");
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".dcm") || n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    };
    while !(left(&state.join("spool")).is_empty() && left(&tmp.path().join("inbox")).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "left behind: spool {:?}, inbox {:?}",
            left(&state.join("spool")),
            left(&tmp.path().join("inbox"))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let failed: Vec<String> = std::fs::read_dir(state.join("failed"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for f in failed.iter().filter(|f| !f.ends_with(".reason")) {
        assert!(
            failed.contains(&format!("{f}.reason")),
            "{f} set aside without a reason: {failed:?}"
        );
    }
    let video = consumer
        .docs()
        .iter()
        .filter(|d| d["source"] == "replay")
        .count();
    eprintln!(
        "chaos: {DAEMON_KILLS} daemon SIGKILLs, {BROKER_KILLS} broker SIGKILLs in {chaos:.0?}; \
         {} images acknowledged, all {} with their finding at the subscriber; {} duplicate \
         deliveries; {video} live-video findings; {} set aside",
        acked.len(),
        want.len(),
        consumer.duplicates(),
        failed.iter().filter(|f| !f.ends_with(".reason")).count()
    );
    assert!(video > 0, "the live replay made no finding");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    drop(broker);
}
