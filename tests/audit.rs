//! The audit trail with a running daemon and a real Mosquitto: every input processed is a
//! line naming the exact model, with its delivery; inputs set aside are lines with their
//! reason; nothing identifies the patient; a SIGKILL with a torn last line loses nothing
//! written before it; `bedside audit --since` prints it as CSV.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const FINDINGS: &str = "bedside/test-site/cart-7/findings";

/// `bedside audit --board … [--since …]` as CSV rows (header first).
fn audit_csv(board: &Path, since: Option<&str>) -> Vec<Vec<String>> {
    let mut cmd = bedside();
    cmd.arg("audit").arg("--board").arg(board);
    if let Some(s) = since {
        cmd.args(["--since", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&out.stdout[..]);
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

fn column(header: &[String], name: &str) -> usize {
    header.iter().position(|h| h == name).unwrap()
}

/// Waits until the CSV has `findings` finding rows, all delivered.
fn wait_delivered(board: &Path, findings: usize) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = audit_csv(board, None);
        let delivery = column(&rows[0], "delivery");
        let delivered = rows[1..]
            .iter()
            .filter(|r| r[delivery] == "delivered")
            .count();
        if delivered == findings {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {findings} delivered: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_input_is_audited_with_its_model_and_delivery_and_a_torn_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let consumer = Collector::start(broker.port, FINDINGS, "consumer-audit");
    let board = write_board(tmp.path(), broker.port);
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("audit trail open", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let inbox = tmp.path().join("inbox");
    let made = tmp.path().join("made");
    let images = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &made, 3);
    move_all_into(&images, &inbox);
    // Not DICOM: set aside, with its reason. Its name is a patient's (planted identifier):
    // the trail must not repeat it.
    std::fs::write(made.join("DOE_JANE.dcm"), b"not a DICOM file at all").unwrap();
    move_all_into(&[made.join("DOE_JANE.dcm")], &inbox);
    assert!(
        consumer.wait_unique(3, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );

    let rows = wait_delivered(&board, 3);
    let header = &rows[0];
    assert_eq!(
        header.join(","),
        "time,event,source,uid_hash,model_id,model_version,model_sha256,result,decode_ms,\
         prepare_ms,infer_ms,total_ms,delivery,delivered_at,finding_id"
    );
    let findings: Vec<&Vec<String>> = rows[1..]
        .iter()
        .filter(|r| r[column(header, "event")] == "finding")
        .collect();
    assert_eq!(findings.len(), 3, "{rows:?}");
    let ids = consumer.ids();
    for r in &findings {
        assert_eq!(r[column(header, "source")], "watch-folder");
        assert_eq!(r[column(header, "model_id")], "cxr-tiny-cls");
        assert!(!r[column(header, "model_version")].is_empty());
        assert_eq!(r[column(header, "model_sha256")], manifest_sha256());
        assert_eq!(r[column(header, "uid_hash")].len(), 64, "{r:?}");
        assert!(!r[column(header, "result")].is_empty());
        let total: f64 = r[column(header, "total_ms")].parse().unwrap();
        assert!(total > 0.0);
        assert!(
            ids.contains(&r[column(header, "finding_id")]),
            "{r:?} {ids:?}"
        );
        assert!(!r[column(header, "delivered_at")].is_empty());
    }
    let failed: Vec<&Vec<String>> = rows[1..]
        .iter()
        .filter(|r| r[column(header, "event")] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    assert!(!failed[0][column(header, "result")].is_empty());

    // Nothing in the files identifies the patient (the image's planted name, ID and birth
    // date, or the set-aside file's name).
    let dir = tmp.path().join("state/audit");
    let mut text = String::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert_no_identifiers(&text, "the audit trail");
    // Nor in the daemon's log: the set-aside file is named there by a keyed tag, and the
    // reason kept beside it in failed/ says which tag, so the two can be matched.
    let log = daemon.log();
    assert_no_identifiers(&log, "the daemon's log");
    let reason = std::fs::read_to_string(tmp.path().join("state/failed/DOE_JANE.dcm.reason"))
        .expect("the reason is kept beside the set-aside file");
    let tag = reason
        .split("in the log as ")
        .nth(1)
        .and_then(|t| t.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("the reason names no log tag: {reason:?}"));
    assert!(
        log.lines()
            .any(|l| l.contains("no finding") && l.contains(tag)),
        "no log line names {tag}:\n{log}"
    );

    // SIGKILL, and a last line torn as by a power cut: cut at the next start, the lines
    // before it kept, and the trail goes on.
    daemon.kill();
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, b"0badc0de {\"time\":\"2026-12-").unwrap();
    drop(f);
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("torn last line", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let more = distinct_copies(&sample("cxr-normal-mono2.dcm"), &tmp.path().join("more"), 1);
    move_all_into(&more, &inbox);
    let rows = wait_delivered(&board, 4);
    assert_eq!(rows.len(), 1 + 5, "{rows:?}");
    eprintln!(
        "{}",
        rows.iter()
            .map(|r| r.join(","))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // --since: a time after everything gives the header alone; a day back gives all.
    assert_eq!(audit_csv(&board, Some("2999-01-01")).len(), 1);
    assert_eq!(audit_csv(&board, Some("1d")).len(), 6);
    let out = bedside()
        .args(["audit", "--board"])
        .arg(&board)
        .args(["--since", "last tuesday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad --since"));
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}
