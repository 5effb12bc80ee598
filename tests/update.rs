//! Model updates on a running daemon (`bedside models install`, SIGHUP): a signed update is
//! taken between two images while the watch folder and the C-STORE SCP are busy, no image is
//! lost and every finding names the version that made it; unsigned, tampered and unloadable
//! updates are refused with their reason, and the old model keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TOPIC_FINDINGS: &str = "bedside/test-site/cart-7/findings";
const TOPIC_STATUS: &str = "bedside/test-site/cart-7/status";
const NEW_VERSION: &str = "0.2.1-update-test";

fn models(args: &[&std::ffi::OsStr]) -> std::process::Output {
    bedside().arg("models").args(args).output().unwrap()
}

/// A key pair made by `bedside models keygen`: (secret key file, public key hex).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let prefix = dir.join("maker");
    let o = models(&["keygen".as_ref(), "--out".as_ref(), prefix.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let public = std::fs::read_to_string(prefix.with_extension("pub")).unwrap();
    (prefix.with_extension("key"), public.trim().to_string())
}

/// cxr-tiny-cls as a new version (the same weights, `version` changed), signed with `key`
/// when given.
fn candidate(dir: &Path, name: &str, key: Option<&Path>) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["model.onnx", "MODEL_CARD.md"] {
        std::fs::copy(model_dir().join(f), out.join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(model_dir().join("model.toml")).unwrap();
    let bumped = manifest.replacen(
        "version = \"0.2.0\"",
        &format!("version = \"{NEW_VERSION}\""),
        1,
    );
    assert_ne!(manifest, bumped);
    std::fs::write(out.join("model.toml"), bumped).unwrap();
    if let Some(key) = key {
        sign(key, &out);
    }
    out
}

fn sign(key: &Path, dir: &Path) {
    let o = models(&[
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        dir.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn install(board: &Path, dir: &Path) -> std::process::Output {
    models(&[
        "install".as_ref(),
        dir.as_os_str(),
        "--board".as_ref(),
        board.as_os_str(),
    ])
}

fn hup(daemon: &Daemon) {
    // SAFETY: kill(2) on the child's pid; no memory is touched.
    assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) }, 0);
}

/// The retained status, once it satisfies `want` (statuses are republished on change).
fn status_where(port: u16, want: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut s = Subscriber::connect(port, TOPIC_STATUS, None);
        if let Some((_, doc)) = s.next_json(Duration::from_secs(5))
            && want(&doc)
        {
            return Some(doc);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    None
}

/// `n` copies of the pneumothorax sample, each with its own SOP Instance UID (dcmodify -gin):
/// distinct images for the SCP.
fn distinct_copies(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("scp-{i:02}.dcm"));
            std::fs::copy(sample("cxr-ptx-mono2.dcm"), &p).unwrap();
            let o = Command::new("dcmodify")
                .args(["-nb", "-gin"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            p
        })
        .collect()
}

#[test]
fn a_signed_update_is_taken_under_load_and_no_image_is_lost_or_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path());
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let dicom_port = free_port();
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &format!(
            "[dicom]\nae_title = \"BEDSIDE\"\nport = {dicom_port}\nbind = \"127.0.0.1\"\n\n[updates]\npublic_key = \"{public}\"\n"
        ),
    );
    let update = candidate(tmp.path(), "v2", Some(&key));
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("DICOM C-STORE SCP listening", Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    let mut findings = Subscriber::connect(broker.port, TOPIC_FINDINGS, None);

    // Load: 30 files into the watch folder and 10 objects over C-STORE, while the update is
    // installed and taken.
    const FILES: usize = 30;
    const STORED: usize = 10;
    // Half of each before the update is installed, half after: both versions must appear
    // however fast this machine is, and images keep arriving while the swap happens.
    let installed_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wait_installed = |flag: &std::sync::atomic::AtomicBool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let inbox = tmp.path().join("inbox");
    let flag = installed_flag.clone();
    let feeder = std::thread::spawn(move || {
        for i in 0..FILES {
            if i == FILES / 2 {
                wait_installed(&flag);
            }
            let tmp_name = inbox.join(format!("f{i:02}.part"));
            std::fs::copy(sample("cxr-ptx-mono2.dcm"), &tmp_name).unwrap();
            std::fs::rename(&tmp_name, inbox.join(format!("f{i:02}.dcm"))).unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
    });
    let copies = distinct_copies(&tmp.path().join("scp"), STORED);
    let flag = installed_flag.clone();
    let sender = std::thread::spawn(move || {
        let mut ok = 0;
        for (i, c) in copies.into_iter().enumerate() {
            if i == STORED / 2 {
                wait_installed(&flag);
            }
            let o = Command::new("storescu")
                .args([
                    "-aet",
                    "CART",
                    "-aec",
                    "BEDSIDE",
                    "127.0.0.1",
                    &dicom_port.to_string(),
                ])
                .arg(&c)
                .output()
                .unwrap();
            ok += o.status.success() as usize;
            std::thread::sleep(Duration::from_millis(150));
        }
        ok
    });

    let mut versions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut installed = false;
    while versions.len() < FILES + STORED && Instant::now() < deadline {
        if !installed && versions.len() >= 8 {
            let o = install(&board, &update);
            assert!(
                o.status.success(),
                "install: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            hup(&daemon);
            installed = true;
            installed_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some((_, f)) = findings.next_json(Duration::from_secs(5)) {
            assert_valid_finding(&f);
            assert_eq!(f["model"]["id"], "cxr-tiny-cls");
            assert_eq!(
                f["model"]["sha256"],
                manifest_sha256(),
                "same weights, new version"
            );
            versions.push(f["model"]["version"].as_str().unwrap().to_string());
        }
    }
    feeder.join().unwrap();
    assert_eq!(sender.join().unwrap(), STORED, "every C-STORE accepted");
    assert_eq!(
        versions.len(),
        FILES + STORED,
        "one finding per image, none lost:\n{}",
        daemon.log()
    );
    // The findings come in the order they were made: the old version, then the new one,
    // never back.
    let first_new = versions
        .iter()
        .position(|v| v == NEW_VERSION)
        .unwrap_or_else(|| panic!("the update was never taken:\n{}", daemon.log()));
    assert!(
        first_new > 0,
        "findings before the update name the old version"
    );
    assert!(
        versions[..first_new].iter().all(|v| v == "0.2.0"),
        "{versions:?}"
    );
    assert!(
        versions[first_new..].iter().all(|v| v == NEW_VERSION),
        "{versions:?}"
    );
    assert!(daemon.log().contains("model updated"), "{}", daemon.log());

    let status = status_where(broker.port, |s| s["model_update"]["state"] == "taken")
        .unwrap_or_else(|| panic!("no status with the update:\n{}", daemon.log()));
    assert_eq!(status["models"][0]["version"], NEW_VERSION);
    assert_eq!(status["model_update"]["replaced"]["version"], "0.2.0");

    // `models list` shows the staged version; a restart serves it from the start.
    let list = models(&["list".as_ref(), "--board".as_ref(), board.as_os_str()]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains(NEW_VERSION) && text.contains("update"),
        "{text}"
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_no_identifiers(&log, "the daemon log");
    let again = Daemon::start(&board, tmp.path());
    let status = status_where(broker.port, |s| {
        s["state"] == "online" && s["models"][0]["version"] == NEW_VERSION
    });
    assert!(status.is_some(), "after a restart:\n{}", again.log());
    let _ = again.stop();
}

#[test]
fn unsigned_tampered_and_unloadable_updates_are_refused_and_the_old_model_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path());
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &format!("[updates]\npublic_key = \"{public}\"\n"),
    );
    let refused = |dir: &Path, needle: &str| {
        let o = install(&board, dir);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{} was installed", dir.display());
        assert!(stderr.contains(needle), "{}: {stderr}", dir.display());
        assert!(
            !tmp.path().join("state/models.d/cxr-tiny-cls").exists(),
            "nothing is staged"
        );
    };
    // Unsigned.
    refused(
        &candidate(tmp.path(), "unsigned", None),
        "no model.toml.sig",
    );
    // Signed by another key.
    let (other_key, _) = keygen(&tmp.path().join("other-maker").tap_mkdir());
    refused(
        &candidate(tmp.path(), "other-key", Some(&other_key)),
        "does not verify",
    );
    // Signed, then the weights changed: the manifest's sha256 no longer matches.
    let tampered = candidate(tmp.path(), "tampered", Some(&key));
    let mut bytes = std::fs::read(tampered.join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(tampered.join("model.onnx"), &bytes).unwrap();
    refused(&tampered, "sha256");
    // Signed and hashed correctly, but not a model tract can run.
    let broken = candidate(tmp.path(), "broken", None);
    std::fs::write(broken.join("model.onnx"), b"not an onnx model").unwrap();
    let manifest = std::fs::read_to_string(broken.join("model.toml")).unwrap();
    let sha = bedside::model::sha256_hex(b"not an onnx model");
    std::fs::write(
        broken.join("model.toml"),
        manifest.replacen(&manifest_sha256(), &sha, 1),
    )
    .unwrap();
    sign(&key, &broken);
    refused(&broken, "tract cannot prepare");

    // A staged update altered on the device's disk after it was installed: the daemon
    // refuses it on SIGHUP and at start, says so on the status topic, and keeps serving.
    let daemon = Daemon::start(&board, tmp.path());
    let mut findings = Subscriber::connect(broker.port, TOPIC_FINDINGS, None);
    assert!(status_where(broker.port, |s| s["state"] == "online").is_some());
    let good = candidate(tmp.path(), "good", Some(&key));
    assert!(install(&board, &good).status.success());
    let staged = tmp.path().join("state/models.d/cxr-tiny-cls/model.toml");
    let text = std::fs::read_to_string(&staged).unwrap();
    std::fs::write(
        &staged,
        text.replace("threshold = 0.25", "threshold = 0.01"),
    )
    .unwrap();
    hup(&daemon);
    let status = status_where(broker.port, |s| s["model_update"]["state"] == "refused")
        .unwrap_or_else(|| panic!("no refusal in the status:\n{}", daemon.log()));
    assert!(
        status["model_update"]["reason"]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{status}"
    );
    assert_eq!(status["models"][0]["version"], "0.2.0");
    std::fs::copy(
        sample("cxr-ptx-mono2.dcm"),
        tmp.path().join("inbox/after.part"),
    )
    .unwrap();
    std::fs::rename(
        tmp.path().join("inbox/after.part"),
        tmp.path().join("inbox/after.dcm"),
    )
    .unwrap();
    let (_, f) = findings
        .next_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the old model stopped serving:\n{}", daemon.log()));
    assert_eq!(f["model"]["version"], "0.2.0");
    assert!(
        daemon.log().contains("model update refused"),
        "{}",
        daemon.log()
    );
    let (exit, _) = daemon.stop();
    assert!(exit.success());
    let again = Daemon::start(&board, tmp.path());
    let status = status_where(broker.port, |s| {
        s["state"] == "online" && s["model_update"]["state"] == "refused"
    })
    .unwrap_or_else(|| panic!("no refusal at start:\n{}", again.log()));
    assert_eq!(status["models"][0]["version"], "0.2.0");
    let _ = again.stop();
}

trait MkDir {
    fn tap_mkdir(self) -> Self;
}

impl MkDir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn an_update_the_memory_budget_cannot_hold_is_refused_before_it_is_loaded() {
    // cxr-tiny-cls alone plans ~550 MiB here (most of it the largest DICOM file and its
    // decode); the test model (models/factory/big_working_model.py) states ~206 MB of working
    // memory more, so 650 MiB holds the one and not the other, whatever the noise of the
    // measured baseline.
    let big = repo().join("tests/fixtures/models/cxr-big-working");
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        "[memory]\nbudget_mib = 650\n",
    );
    let o = install(&board, &big);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "installed:\n{stderr}");
    assert!(
        stderr.contains("does not fit the budget of 650 MiB"),
        "{stderr}"
    );

    // Put there by hand, past the installer: the daemon plans it from its manifest and
    // refuses it without loading it.
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        status_where(broker.port, |s| s["state"] == "online").is_some(),
        "{}",
        daemon.log()
    );
    let staged = tmp.path().join("state/models.d/cxr-tiny-cls");
    std::fs::create_dir_all(&staged).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(big.join(f), staged.join(f)).unwrap();
    }
    let rss_before = daemon.rss_bytes();
    hup(&daemon);
    let status = status_where(broker.port, |s| s["model_update"]["state"] == "refused")
        .unwrap_or_else(|| panic!("no refusal:\n{}", daemon.log()));
    let reason = status["model_update"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not fit the budget of 650 MiB"),
        "{reason}"
    );
    assert_eq!(status["models"][0]["version"], "0.2.0");
    assert!(
        daemon.rss_bytes() < rss_before + 100 * 1024 * 1024,
        "the refused model was not run: RSS {} -> {}",
        rss_before,
        daemon.rss_bytes()
    );
    let mut findings = Subscriber::connect(broker.port, TOPIC_FINDINGS, None);
    std::fs::copy(sample("cxr-ptx-mono2.dcm"), tmp.path().join("inbox/x.part")).unwrap();
    std::fs::rename(
        tmp.path().join("inbox/x.part"),
        tmp.path().join("inbox/x.dcm"),
    )
    .unwrap();
    let (_, f) = findings
        .next_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the old model stopped serving:\n{}", daemon.log()));
    assert_eq!(f["model"]["version"], "0.2.0");
    let _ = daemon.stop();
}
