//! Results into PACS, against software nobody here wrote: a real Orthanc (its DICOM port and
//! REST API on 127.0.0.1) and DCMTK's storescp receive the Structured Report and the
//! Secondary Capture the daemon makes, by C-STORE from its durable DICOM outbox.
//!
//! - Both destinations get every object, in the source image's study; dciodvfy finds no
//!   error in them and dsrdump reads every report; the status topic shows the outbox drained.
//! - A destination that refuses a SOP class (storescp with a restricted configuration): the
//!   refused object is retried, then kept in the dead-letter folder with the reason; what it
//!   accepts arrives, and so does everything at the other destination.
//! - DICOM over TLS to storescp, with certificates made by OpenSSL for the test.
//! - Chaos: the destination down while results are made, the daemon SIGKILLed between write
//!   and send, a destination that aborts every association before answering, the daemon
//!   SIGKILLed again mid-send: every object arrives, each intact, nothing half-sent stays.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const STATUS: &str = "bedside/test-site/cart-7/status";
const SR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.34";
const SC_CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";
const SEG_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// A real Orthanc on 127.0.0.1 (DICOM and REST), stopped when dropped.
struct Orthanc {
    child: Child,
    http: u16,
    dicom: u16,
    log: PathBuf,
}

impl Orthanc {
    fn start(dir: &Path) -> Orthanc {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (http, dicom) = (free_port(), free_port());
        let config = serde_json::json!({
            "Name": "bedside-test",
            "StorageDirectory": dir.join("db"),
            "IndexDirectory": dir.join("db"),
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": true,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "HttpServerEnabled": true,
            "DicomServerEnabled": true,
            "Plugins": [],
            "LuaScripts": [],
        });
        let conf = dir.join("orthanc.json");
        std::fs::write(&conf, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.join("orthanc.log");
        let child = Command::new("Orthanc")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot run Orthanc (Debian: apt-get install orthanc)");
        let o = Orthanc {
            child,
            http,
            dicom,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while o.try_get("/system").is_none() {
            assert!(
                Instant::now() < deadline,
                "Orthanc did not answer within 60 s:\n{}",
                std::fs::read_to_string(&o.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        o
    }

    fn try_get_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut all = Vec::new();
        s.read_to_end(&mut all).ok()?;
        let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&all[..split]);
        head.starts_with("HTTP/1.1 200")
            .then(|| all[split + 4..].to_vec())
    }

    fn try_get(&self, path: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.try_get_bytes(path)?).ok()
    }

    fn get(&self, path: &str) -> serde_json::Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("Orthanc GET {path} failed"))
    }

    fn instances(&self) -> Vec<String> {
        serde_json::from_value(self.get("/instances")).unwrap()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DCMTK's storescp on 127.0.0.1, each object stored as `<modality>.<SOP Instance UID>.dcm`
/// (a resend overwrites its file; the log counts every reception).
struct Storescp {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Storescp {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Storescp {
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let log = dir.join(format!("storescp-{}.log", now_ns()));
        let child = Command::new("storescp")
            .args(["-v", "-aet", "ARCHIVE", "-fe", ".dcm", "-od"])
            .arg(dir.join("in"))
            .args(extra)
            .arg(port.to_string())
            .stdout(Stdio::null())
            // DCMTK logs to stderr.
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot run storescp (is DCMTK installed?)");
        // Listening once it answers a C-ECHO.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let tls = extra.contains(&"+tls");
            let echo = if tls {
                None
            } else {
                Command::new("echoscu")
                    .args(["-aec", "ARCHIVE", "127.0.0.1", &port.to_string()])
                    .output()
                    .ok()
            };
            match echo {
                Some(o) if o.status.success() => break,
                None if TcpStream::connect(("127.0.0.1", port)).is_ok() => break,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "storescp did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Storescp {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// The objects stored, by SOP Instance UID.
    fn files(&self) -> BTreeMap<String, PathBuf> {
        files_in(&self.dir.join("in"))
    }

    fn wait_files(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.files().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.files().len() >= n
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn files_in(dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .map(|p| {
                    // storescp's `<modality>.<uid>.dcm`, or the outbox's `<uid>~<class>.dcm`.
                    let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                    let uid = match stem.split_once('~') {
                        Some((uid, _)) => uid.to_owned(),
                        None => stem
                            .split_once('.')
                            .map_or(stem.clone(), |(_, u)| u.to_owned()),
                    };
                    (uid, p)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Receptions a set of storescp logs counts (each C-STORE request it took in).
fn receptions(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("storescp-"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("Received Store Request")
                .count()
        })
        .sum()
}

fn dest(name: &str, ae: &str, port: u16, extra: &str) -> String {
    format!(
        "[[dicom.destinations]]\nname = \"{name}\"\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\ntimeout_s = 10\n{extra}\n"
    )
}

/// A profile whose two X-ray models ask for a report and a Secondary Capture, sent to
/// `destinations`; no SCP (a watch-folder device).
fn results_board(dir: &Path, mqtt: u16, destinations: &[String]) -> PathBuf {
    let models = format!(
        "[[models]]\npath = \"{cls}\"\ndicom_results = [\"sr\", \"sc\"]\n\n[[models]]\npath = \"{det}\"\ndicom_results = [\"sr\", \"sc\"]\n",
        cls = model_dir().display(),
        det = repo().join("models/cxr-tiny-det").display(),
    );
    board_with_models(dir, mqtt, &models, destinations)
}

/// A watch-folder profile with `models` (their `[[models]]` tables) sending to `destinations`.
fn board_with_models(dir: &Path, mqtt: u16, models: &str, destinations: &[String]) -> PathBuf {
    let board = dir.join("board.toml");
    std::fs::write(
        &board,
        format!(
            r#"[device]
id = "cart-7"
site = "test-site"
board = "x86-dev"

[paths]
inbox = "{inbox}"
state = "{state}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
keep_alive_s = 5

{models}
[dicom]
ae_title = "BEDSIDE"
listen = false

{destinations}
"#,
            inbox = dir.join("inbox").display(),
            state = dir.join("state").display(),
            destinations = destinations.join("\n"),
        ),
    )
    .unwrap();
    board
}

fn study_uid(file: &Path) -> String {
    dicom_object::open_file(file)
        .unwrap()
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_owned()
}

fn sop_class(file: &Path) -> String {
    dicom_object::open_file(file)
        .unwrap()
        .meta()
        .media_storage_sop_class_uid()
        .to_owned()
}

/// dciodvfy's error lines for `file` (none: valid).
fn dciodvfy_errors(file: &Path) -> Vec<String> {
    let out = Command::new("dciodvfy")
        .arg(file)
        .output()
        .expect("cannot run dciodvfy (Debian: apt-get install dicom3tools)");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.starts_with("Error"))
        .map(str::to_owned)
        .collect()
}

/// Waits for a status document whose DICOM outbox satisfies `ok`.
fn wait_status(
    sub: &mut Subscriber,
    timeout: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some((_, doc)) = sub.next_json(Duration::from_secs(1))
            && let Some(d) = doc.get("dicom_outbox")
            && ok(d)
        {
            return Some(d.clone());
        }
    }
    None
}

#[test]
fn results_reach_orthanc_and_storescp_in_the_source_study() {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let _broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    let orthanc = Orthanc::start(&tmp.path().join("orthanc"));
    let archive = Storescp::start(&tmp.path().join("archive"), free_port(), &[]);
    let board = results_board(
        tmp.path(),
        mqtt,
        &[
            dest("pacs", "ORTHANC", orthanc.dicom, ""),
            dest("archive", "ARCHIVE", archive.port, ""),
        ],
    );
    let mut status = Subscriber::connect(mqtt, STATUS, None);
    let daemon = Daemon::start(&board, tmp.path());
    let n = 3;
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), n);
    let study = study_uid(&files[0]);
    move_all_into(&files, &tmp.path().join("inbox"));

    // Each image gives a report and a capture, to each destination.
    assert!(
        archive.wait_files(2 * n, Duration::from_secs(180)),
        "storescp got {} of {} objects:\n{}",
        archive.files().len(),
        2 * n,
        daemon.log()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while orthanc.instances().len() < 2 * n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let instances = orthanc.instances();
    assert_eq!(
        instances.len(),
        2 * n,
        "Orthanc's instances:\n{}",
        daemon.log()
    );

    // In Orthanc: every instance in the source image's study, n reports and n captures.
    let mut classes: HashMap<String, usize> = HashMap::new();
    let mut capture = None;
    for id in &instances {
        let tags = orthanc.get(&format!("/instances/{id}/simplified-tags"));
        assert_eq!(tags["StudyInstanceUID"], study.as_str(), "{tags}");
        let class = tags["SOPClassUID"].as_str().unwrap().to_owned();
        if class == SC_CLASS {
            assert_eq!(tags["BurnedInAnnotation"], "YES", "{tags}");
            capture = Some(id.clone());
        }
        *classes.entry(class).or_default() += 1;
    }
    assert_eq!(classes.get(SR_CLASS), Some(&n), "{classes:?}");
    assert_eq!(classes.get(SC_CLASS), Some(&n), "{classes:?}");
    let studies: Vec<String> = serde_json::from_value(orthanc.get("/studies")).unwrap();
    assert_eq!(studies.len(), 1, "one study: the source's");
    // Orthanc renders the capture: the picture docs/ shows.
    let preview = orthanc
        .try_get_bytes(&format!("/instances/{}/preview", capture.unwrap()))
        .expect("Orthanc renders the Secondary Capture");
    assert!(preview.starts_with(b"\x89PNG"), "a PNG preview");
    let shot = repo().join("target/pacs-orthanc-preview.png");
    std::fs::write(&shot, &preview).unwrap();

    // At storescp: the same objects, valid by dciodvfy, and every report readable by dsrdump.
    for (uid, file) in archive.files() {
        let errors = dciodvfy_errors(&file);
        assert!(errors.is_empty(), "dciodvfy on {uid}: {errors:#?}");
        assert_eq!(study_uid(&file), study);
        if sop_class(&file) == SR_CLASS {
            let out = Command::new("dsrdump").arg(&file).output().unwrap();
            assert!(
                out.status.success(),
                "dsrdump {uid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Imaging Measurement Report"), "{text}");
        }
    }

    // The status shows both queues drained, every object sent.
    let drained = wait_status(&mut status, Duration::from_secs(20), |d| {
        d["destinations"].as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|q| q["pending"] == 0 && q["sent"] == 2 * n && q["reachable"] == true)
        })
    });
    assert!(
        drained.is_some(),
        "no status with both queues drained:\n{}",
        daemon.log()
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("DICOM results queued"), "{log}");
    assert_no_identifiers(&log, "the daemon's log");
}

#[test]
fn a_segmentation_reaches_orthanc_as_a_seg_in_the_ultrasound_study() {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let _broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    let orthanc = Orthanc::start(&tmp.path().join("orthanc"));
    let models = format!(
        "[[models]]\npath = \"{}\"\ndicom_results = [\"seg\", \"sr\"]\n",
        repo().join("models/us-fast-fluid").display()
    );
    let board = board_with_models(
        tmp.path(),
        mqtt,
        &models,
        &[dest("pacs", "ORTHANC", orthanc.dicom, "")],
    );
    let daemon = Daemon::start(&board, tmp.path());
    let files = distinct_copies(
        &repo().join("tests/data/us/fast-clip.dcm"),
        &tmp.path().join("made"),
        1,
    );
    let study = study_uid(&files[0]);
    move_all_into(&files, &tmp.path().join("inbox"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while orthanc.instances().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let instances = orthanc.instances();
    assert_eq!(instances.len(), 2, "Orthanc's instances:\n{}", daemon.log());
    let mut seg = None;
    for id in &instances {
        let tags = orthanc.get(&format!("/instances/{id}/simplified-tags"));
        assert_eq!(tags["StudyInstanceUID"], study.as_str(), "{tags}");
        if tags["SOPClassUID"] == SEG_CLASS {
            assert_eq!(tags["Modality"], "SEG", "{tags}");
            assert_eq!(
                tags["SegmentSequence"][0]["SegmentLabel"], "free_fluid",
                "{tags}"
            );
            seg = Some(id.clone());
        } else {
            assert_eq!(tags["SOPClassUID"], SR_CLASS, "{tags}");
        }
    }
    // What Orthanc stored is valid by dciodvfy.
    let stored = orthanc
        .try_get_bytes(&format!(
            "/instances/{}/file",
            seg.expect("a SEG in Orthanc")
        ))
        .unwrap();
    let file = tmp.path().join("stored-seg.dcm");
    std::fs::write(&file, stored).unwrap();
    assert_eq!(sop_class(&file), SEG_CLASS);
    let errors = dciodvfy_errors(&file);
    assert!(errors.is_empty(), "dciodvfy: {errors:#?}");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_no_identifiers(&log, "the daemon's log");
}

#[test]
fn a_refused_sop_class_ends_in_the_dead_letter_folder_and_the_rest_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let _broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    // storescp configured to take Secondary Captures only: the report's SOP class is refused
    // at association negotiation.
    let cfg = tmp.path().join("sc-only.cfg");
    std::fs::write(
        &cfg,
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\nTransferSyntax2 = LittleEndianImplicit\n\n\
         [[PresentationContexts]]\n[OnlySC]\nPresentationContext1 = VerificationSOPClass\\Uncompressed\nPresentationContext2 = SecondaryCaptureImageStorage\\Uncompressed\n\n\
         [[Profiles]]\n[SCOnly]\nPresentationContexts = OnlySC\n",
    )
    .unwrap();
    let picky = Storescp::start(
        &tmp.path().join("picky"),
        free_port(),
        &["-xf", cfg.to_str().unwrap(), "SCOnly"],
    );
    let archive = Storescp::start(&tmp.path().join("archive"), free_port(), &[]);
    let board = results_board(
        tmp.path(),
        mqtt,
        &[
            dest("picky", "ARCHIVE", picky.port, "max_attempts = 2"),
            dest("archive", "ARCHIVE", archive.port, ""),
        ],
    );
    let daemon = Daemon::start(&board, tmp.path());
    let files = distinct_copies(&sample("cxr-normal-mono2.dcm"), &tmp.path().join("made"), 1);
    move_all_into(&files, &tmp.path().join("inbox"));

    let dead = tmp.path().join("state/dicom-out/picky/dead");
    assert!(
        daemon.wait_log("moved to the dead-letter folder", Duration::from_secs(120)),
        "{}",
        daemon.log()
    );
    let letters = files_in(&dead);
    assert_eq!(letters.len(), 1, "one dead letter: the report");
    let letter = letters.values().next().unwrap();
    assert!(
        letter
            .to_string_lossy()
            .ends_with(&format!("~{SR_CLASS}.dcm")),
        "{}",
        letter.display()
    );
    let reason = std::fs::read_to_string(letter.with_extension("dcm.reason")).unwrap();
    assert!(
        reason.contains("attempts: 2") && reason.contains("SOP class"),
        "{reason}"
    );
    // The letter is the whole object, ready to send by hand once the PACS is fixed.
    assert!(dciodvfy_errors(letter).is_empty());
    // What the picky one accepts arrived; the other got both.
    assert!(picky.wait_files(1, Duration::from_secs(30)));
    assert_eq!(
        picky
            .files()
            .values()
            .map(|f| sop_class(f))
            .collect::<Vec<_>>(),
        [SC_CLASS]
    );
    assert!(
        archive.wait_files(2, Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    assert!(files_in(&tmp.path().join("state/dicom-out/picky/pending")).is_empty());
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn results_go_over_tls_to_a_destination_whose_certificate_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let _broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    let pki = Pki::new(&tmp.path().join("pki"), "clinic PACS CA");
    pki.issue("pacs", Some("IP:127.0.0.1"));
    let pacs = Storescp::start(
        &tmp.path().join("pacs"),
        free_port(),
        &[
            "+tls",
            &pki.path("pacs.key"),
            &pki.path("pacs.pem"),
            "--add-cert-file",
            &pki.path("ca.pem"),
            "--ignore-peer-cert",
        ],
    );
    let tls = format!(
        "[dicom.destinations.tls]\nca_file = \"{}\"\nserver_name = \"127.0.0.1\"\n",
        pki.path("ca.pem")
    );
    let board = results_board(
        tmp.path(),
        mqtt,
        &[dest("pacs", "ARCHIVE", pacs.port, &tls)],
    );
    let daemon = Daemon::start(&board, tmp.path());
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), 1);
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(
        pacs.wait_files(2, Duration::from_secs(120)),
        "over TLS: {:?}\n{}",
        pacs.files(),
        daemon.log()
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn a_destination_down_aborting_and_sigkills_lose_nothing_and_leave_nothing_half_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let _broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    let port = free_port();
    // Tries to reach the destination at most 2 s apart (60 s by default), to keep the test short.
    let board = results_board(
        tmp.path(),
        mqtt,
        &[dest("pacs", "ARCHIVE", port, "reconnect_max_s = 2")],
    );
    let pending = tmp.path().join("state/dicom-out/pacs/pending");
    let incoming = tmp.path().join("state/dicom-out/.incoming");
    let n = 8;
    let objects = 2 * n;

    // 1. The destination is down: the results are made and wait on disk.
    let daemon = Daemon::start(&board, tmp.path());
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), n);
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(
        wait_count(&pending, objects, Duration::from_secs(180)),
        "{} of {objects} results written:\n{}",
        files_in(&pending).len(),
        daemon.log()
    );
    // 2. SIGKILL between write and send.
    daemon.kill();

    // 3. Back, to a destination that takes each object in and aborts before answering.
    let daemon = Daemon::start(&board, tmp.path());
    assert!(daemon.wait_log("DICOM results from an earlier run", Duration::from_secs(60)));
    let aborting = Storescp::start(&tmp.path().join("dest"), port, &["--abort-after"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receptions(&tmp.path().join("dest")) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        receptions(&tmp.path().join("dest")) >= 3,
        "{}",
        daemon.log()
    );
    assert_eq!(
        entries(&pending),
        objects,
        "an unanswered object is not sent"
    );
    aborting.stop();

    // 4. A working destination; SIGKILL again once a few have arrived.
    let dest = Storescp::start(&tmp.path().join("dest"), port, &[]);
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dest.files().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill();
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        dest.wait_files(objects, Duration::from_secs(180)),
        "{} of {objects} arrived:\n{}",
        dest.files().len(),
        daemon.log()
    );
    let took = t0.elapsed();
    assert!(
        wait_count_zero(&pending, Duration::from_secs(20)),
        "the queue drains"
    );
    assert!(files_in(&incoming).is_empty() && std::fs::read_dir(&incoming).unwrap().count() == 0);

    // Every object arrived, whole: DCMTK reads each file back.
    for (uid, file) in dest.files() {
        let ok = Command::new("dcmftest").arg(&file).output().unwrap();
        assert!(ok.status.success(), "{uid} is not a whole DICOM file");
        assert!(dciodvfy_errors(&file).is_empty(), "{uid}");
    }
    let got = receptions(&tmp.path().join("dest"));
    println!(
        "chaos: {objects} objects, {got} receptions in all ({} duplicates, from the aborted associations and the SIGKILL mid-send); after the last restart {objects} objects in {:.1} s",
        got - objects,
        took.as_secs_f64()
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

/// How many entries `dir` holds (0 when it does not exist).
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn wait_count_zero(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if entries(dir) == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
