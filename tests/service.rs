//! bedside as a systemd service: the unit file passes `systemd-analyze verify` and meets the
//! hardening goal, and the daemon speaks the notify protocol (READY, STATUS, WATCHDOG,
//! STOPPING) to a socket standing in for systemd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The unit as shipped, but starting this build's binary on the dev profile, so that
/// `systemd-analyze` can check the command too.
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(repo().join("systemd/bedside.service")).unwrap();
    let shipped = "ExecStart=/usr/bin/bedside run --board /etc/bedside/board.toml";
    assert!(
        unit.contains(shipped),
        "the unit starts /usr/bin/bedside with /etc/bedside/board.toml"
    );
    let local = format!(
        "ExecStart={} run --board {}",
        env!("CARGO_BIN_EXE_bedside"),
        repo().join("board/dev.toml").display()
    );
    let path = dir.join("bedside.service");
    std::fs::write(&path, unit.replace(shipped, &local)).unwrap();
    path
}

#[test]
fn the_unit_verifies_cleanly_and_meets_the_exposure_goal() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(tmp.path());
    verify_cleanly(&unit);
    let (level, line) = exposure(&unit);
    eprintln!("systemd-analyze security: {line}");
    assert!(level <= 2.0, "exposure {level} is above the goal of 2.0");
}

/// `systemd-analyze verify` passes without a word: unknown or misspelt settings are only
/// warnings to systemd, so any output is a failure.
fn verify_cleanly(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", unit.display());
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );
}

/// `systemd-analyze security`'s overall exposure level, and its line.
fn exposure(unit: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    (level, line.to_string())
}

/// Reads notify datagrams until one satisfies `want`, returning everything read.
fn read_until(
    sock: &UnixDatagram,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = want(&msg);
        seen.push(msg);
        if hit {
            return Some(seen);
        }
    }
    None
}

#[test]
fn the_daemon_speaks_the_notify_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // No broker: readiness and the watchdog do not depend on it.
    let board = write_board(tmp.path(), free_port());
    let daemon = Daemon::start_with_env(
        &board,
        tmp.path(),
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("400000")),
        ],
    );
    let ready = read_until(&sock, Duration::from_secs(30), |m| m.contains("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log()));
    assert!(
        ready.last().unwrap().contains("STATUS=watching"),
        "{ready:?}"
    );

    // Pinged every half period (0.2 s) while the worker is idle and alive.
    let t = Instant::now();
    for _ in 0..3 {
        read_until(&sock, Duration::from_secs(5), |m| {
            m.trim_end() == "WATCHDOG=1"
        })
        .expect("watchdog pings");
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "three pings took {:?}",
        t.elapsed()
    );

    std::fs::copy(sample("cxr-ptx-mono2.dcm"), tmp.path().join("inbox/x.dcm")).unwrap();
    let status = read_until(&sock, Duration::from_secs(30), |m| {
        m.contains("STATUS=1 findings made")
    })
    .unwrap_or_else(|| panic!("no status after a finding:\n{}", daemon.log()));
    assert!(
        status.last().unwrap().contains("broker unreachable"),
        "{status:?}"
    );

    let stopper = std::thread::spawn(move || daemon.stop());
    read_until(&sock, Duration::from_secs(20), |m| m.contains("STOPPING=1"))
        .expect("STOPPING=1 at shutdown");
    let (exit, log) = stopper.join().unwrap();
    assert!(exit.success(), "{log}");
}

/// Every shipped board profile's drop-in (MemoryMax= from its budget, its capture device)
/// verifies with the unit, keeps the exposure goal, and carries the profile's budget.
#[test]
fn board_dropins_carry_the_budget_and_keep_the_unit_hardened() {
    for board in board_profiles() {
        let tmp = tempfile::tempdir().unwrap();
        let unit = unit_for_this_build(tmp.path());
        let dropin = bedside_ok(&[
            "systemd-dropin".as_ref(),
            "--board".as_ref(),
            board.as_os_str(),
        ]);
        let profile: toml::Value =
            toml::from_str(&std::fs::read_to_string(&board).unwrap()).unwrap();
        let budget = profile["memory"]["budget_mib"].as_integer().unwrap();
        assert!(
            dropin.contains(&format!("MemoryMax={budget}M")),
            "{}: {dropin}",
            board.display()
        );
        if let Some(dev) = profile
            .get("video")
            .and_then(|v| v.get("v4l2"))
            .and_then(|v| v.get("device"))
        {
            assert!(dropin.contains(&format!("DeviceAllow={} rw", dev.as_str().unwrap())));
        }
        let dir = tmp.path().join("bedside.service.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("board.conf"), &dropin).unwrap();
        verify_cleanly(&unit);
        let (level, line) = exposure(&unit);
        eprintln!("{} with its drop-in: {line}", board.display());
        assert!(level <= 2.0, "{}: exposure {level}", board.display());
    }
}
