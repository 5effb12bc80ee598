//! The DICOM C-STORE SCP against DCMTK's `storescu` and `echoscu` — the peers a modality's
//! integrator tests with — with findings counted on a real Mosquitto.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const FINDINGS: &str = "bedside/test-site/cart-7/findings";

fn scp_board(dir: &Path, mqtt_port: u16, dicom_port: u16, extra: &str) -> PathBuf {
    write_board_with(
        dir,
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\""),
        &format!(
            "[dicom]\nae_title = \"BEDSIDE\"\nport = {dicom_port}\nbind = \"127.0.0.1\"\n{extra}\n"
        ),
    )
}

/// A broker, a consumer counting findings, and a daemon with the SCP on a free port;
/// `extra` goes into the `[dicom]` table.
struct Rig {
    tmp: tempfile::TempDir,
    broker: Mosquitto,
    consumer: Collector,
    port: u16,
    board: PathBuf,
    daemon: Daemon,
}

fn rig(consumer_id: &str, persist: bool, extra: &str) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), persist);
    let consumer = Collector::start(broker.port, FINDINGS, consumer_id);
    let port = free_port();
    let board = scp_board(tmp.path(), broker.port, port, extra);
    let daemon = start(&board, tmp.path());
    Rig {
        tmp,
        broker,
        consumer,
        port,
        board,
        daemon,
    }
}

fn start(board: &Path, dir: &Path) -> Daemon {
    let daemon = Daemon::start(board, dir);
    assert!(
        daemon.wait_log("DICOM C-STORE SCP listening", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    daemon
}

/// `storescu -v` from `calling` to BEDSIDE; `-v` so that each response is printed.
fn storescu(port: u16, calling: &str, called: &str, flags: &[&str], files: &[PathBuf]) -> Output {
    Command::new("storescu")
        .arg("-v")
        .args(["-aet", calling, "-aec", called])
        .args(flags)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files)
        .output()
        .expect("cannot run storescu (is DCMTK installed?)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many C-STORE responses storescu reports as successful.
fn successes(out: &Output) -> usize {
    text(out)
        .matches("Received Store Response (Success)")
        .count()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Converts `src` into `dst` with a DCMTK tool.
fn convert(tool: &str, flag: Option<&str>, src: &Path, dst: &Path) {
    let mut args: Vec<&Path> = Vec::new();
    if let Some(f) = flag {
        args.push(Path::new(f));
    }
    args.push(src);
    args.push(dst);
    dcmtk(tool, &args);
}

#[test]
fn echo_and_every_common_transfer_syntax_are_acknowledged_and_make_findings() {
    let Rig {
        tmp,
        consumer,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig("consumer-ts", false, "");

    let echo = Command::new("echoscu")
        .args(["-v", "-aec", "BEDSIDE", "127.0.0.1", &port.to_string()])
        .output()
        .unwrap();
    assert!(echo.status.success(), "echoscu: {}", text(&echo));
    assert!(
        text(&echo).contains("Received Echo Response (Success)"),
        "{}",
        text(&echo)
    );

    // (name, 12-bit source?, DCMTK tool and flag, storescu proposal)
    // (JPEG Lossless non-SV1, .57, has no storescu flag: it is sent below with a config file.)
    let variants: [(&str, bool, &str, Option<&str>, &str); 9] = [
        ("explicit-le", true, "dcmconv", Some("+te"), "-xe"),
        ("implicit-le", true, "dcmconv", Some("+ti"), "-xi"),
        ("big-endian", true, "dcmconv", Some("+tb"), "-xb"),
        ("deflated", true, "dcmconv", Some("+td"), "-xd"),
        ("rle", true, "dcmcrle", None, "-xr"),
        ("jpeg-lossless-sv1", true, "dcmcjpeg", Some("+e1"), "-xs"),
        ("jpeg-extended-12bit", true, "dcmcjpeg", Some("+ee"), "-xx"),
        ("jpeg-extended-8bit", false, "dcmcjpeg", Some("+ee"), "-xx"),
        ("jpeg-baseline-8bit", false, "dcmcjpeg", Some("+eb"), "-xy"),
    ];
    let made = tmp.path().join("made");
    let twelve = distinct_copies(
        &sample("cxr-ptx-mono2.dcm"),
        &made.join("12"),
        variants.len(),
    );
    let eight = distinct_copies(
        &sample("cxr-other-8bit.dcm"),
        &made.join("8"),
        variants.len(),
    );
    for (i, (name, is12, tool, flag, propose)) in variants.iter().enumerate() {
        let src = if *is12 { &twelve[i] } else { &eight[i] };
        let file = made.join(format!("{name}.dcm"));
        convert(tool, *flag, src, &file);
        let flags: Vec<&str> = [*propose].into_iter().filter(|f| !f.is_empty()).collect();
        let out = storescu(port, "XRAY-1", "BEDSIDE", &flags, &[file]);
        assert!(
            out.status.success() && successes(&out) == 1,
            "{name}: storescu:\n{}\ndaemon:\n{}",
            text(&out),
            daemon.log()
        );
    }
    // JPEG Lossless, Non-hierarchical, Process 14 (.57), proposed through a storescu profile.
    let cfg = made.join("storescu.cfg");
    std::fs::write(
        &cfg,
        "[[TransferSyntaxes]]\n[P14]\nTransferSyntax1 = 1.2.840.10008.1.2.4.57\n\
         [[PresentationContexts]]\n[DX]\nPresentationContext1 = 1.2.840.10008.5.1.4.1.1.1.1\\P14\n\
         [[Profiles]]\n[P14]\nPresentationContexts = DX\n",
    )
    .unwrap();
    let p14 = made.join("jpeg-lossless-p14.dcm");
    let src = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &made.join("p14"), 1);
    convert("dcmcjpeg", Some("+el"), &src[0], &p14);
    let out = storescu(
        port,
        "XRAY-1",
        "BEDSIDE",
        &["-xf", cfg.to_str().unwrap(), "P14"],
        &[p14],
    );
    assert_eq!(successes(&out), 1, "{}", text(&out));
    let variants_len = variants.len() + 1;
    assert!(
        consumer.wait_unique(variants_len, Duration::from_secs(60)),
        "{} of {} findings:\n{}",
        consumer.unique(),
        variants_len,
        daemon.log()
    );
    for f in consumer.docs() {
        assert_valid_finding(&f);
        assert_eq!(f["source"], "dicom-scp");
    }
    let labels: Vec<String> = consumer
        .docs()
        .iter()
        .map(|f| f["over_threshold"].to_string())
        .collect();
    let ptx = labels.iter().filter(|l| l.contains("pneumothorax")).count();
    assert_eq!(
        ptx,
        variants_len - 2,
        "every 12-bit variant (lossy Extended included) decodes to the same verdict: {labels:?}"
    );
    assert_eq!(
        count(&tmp.path().join("state/failed")),
        0,
        "{}",
        daemon.log()
    );

    // Spooled objects leave once their findings are recorded.
    assert_eq!(count(&tmp.path().join("state/spool")), 0);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_no_identifiers(&log, "the daemon log");
}

#[test]
fn eight_storescu_at_once_fifty_images_each_all_acknowledged_none_twice() {
    let Rig {
        tmp,
        consumer,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig("consumer-400", false, "max_associations = 8");
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 400);
    let senders: Vec<_> = files
        .chunks(50)
        .enumerate()
        .map(|(i, chunk)| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || storescu(port, &format!("XRAY-{i}"), "BEDSIDE", &[], &chunk))
        })
        .collect();
    let mut acknowledged = 0;
    for s in senders {
        let out = s.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        acknowledged += successes(&out);
    }
    assert_eq!(acknowledged, 400, "{}", daemon.log());
    assert!(
        consumer.wait_unique(400, Duration::from_secs(180)),
        "{} of 400 findings:\n{}",
        consumer.unique(),
        daemon.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(consumer.duplicates(), 0, "none twice");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert_eq!(log.matches("DICOM association released").count(), 8);
}

/// A copy of `src` whose elements `edit` changes, written as Explicit VR Little Endian.
fn edited(src: &Path, dst: &Path, edit: impl FnOnce(&mut dicom_object::DefaultDicomObject)) {
    let mut obj = dicom_object::open_file(src).unwrap();
    edit(&mut obj);
    obj.write_to_file(dst).unwrap();
}

fn put_us(obj: &mut dicom_object::DefaultDicomObject, tag: dicom_core::Tag, v: u16) {
    obj.put(dicom_object::mem::InMemElement::new(
        tag,
        dicom_core::VR::US,
        dicom_core::PrimitiveValue::from(v),
    ));
}

#[test]
fn strangers_and_broken_objects_get_clear_failures_and_the_scp_keeps_serving() {
    use dicom_dictionary_std::tags;
    let Rig {
        tmp,
        consumer,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig(
        "consumer-bad",
        false,
        "allowed_callers = [\"XRAY-1\"]\nallowed_addresses = [\"127.0.0.0/8\"]\nmax_object_mib = 1",
    );
    let made = tmp.path().join("made");
    let good = distinct_copies(&sample("cxr-other-8bit.dcm"), &made, 4);

    // Callers the profile does not know are turned away at association time.
    let out = storescu(port, "INTRUDER", "BEDSIDE", &[], &good[..1]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Association Rejected"),
        "{}",
        text(&out)
    );
    let out = storescu(port, "XRAY-1", "NOT-BEDSIDE", &[], &good[..1]);
    assert!(
        text(&out).contains("Association Rejected"),
        "{}",
        text(&out)
    );
    let log = daemon.log();
    assert!(
        log.contains("DICOM association rejected")
            && log.contains("INTRUDER")
            && log.contains("not in dicom.allowed_callers"),
        "the log says who and why:\n{log}"
    );
    assert!(log.contains("called AE title is not ours"), "{log}");

    // Pixel data shorter than rows x cols: acknowledged (it is a valid object, kept), then
    // set aside with its reason.
    let short = made.join("short.dcm");
    edited(&good[1], &short, |o| {
        let px = o
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec();
        o.put(dicom_object::mem::InMemElement::new(
            tags::PIXEL_DATA,
            dicom_core::VR::OB,
            dicom_core::PrimitiveValue::from(px[..px.len() / 2].to_vec()),
        ));
    });
    // A header that claims a 60000 x 60000 image in a few bytes.
    let huge = made.join("huge.dcm");
    edited(&good[2], &huge, |o| {
        put_us(o, tags::ROWS, 60000);
        put_us(o, tags::COLUMNS, 60000);
    });
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &[short, huge]);
    assert_eq!(successes(&out), 2, "{}", text(&out));
    let failed = tmp.path().join("state/failed");
    assert!(
        wait_count(&failed, 4, Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    let reasons = failed_reasons(&failed);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("refused before decoding")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("pixel")), "{reasons:?}");

    // An object over dicom.max_object_mib: refused with "out of resources", nothing kept.
    let big = made.join("big.dcm");
    edited(&good[3], &big, |o| {
        put_us(o, tags::ROWS, 1024);
        put_us(o, tags::COLUMNS, 1100);
        o.put(dicom_object::mem::InMemElement::new(
            tags::PIXEL_DATA,
            dicom_core::VR::OB,
            dicom_core::PrimitiveValue::from(vec![7u8; 1024 * 1100]),
        ));
    });
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &[big]);
    assert_eq!(successes(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("Refused: OutOfResources"),
        "{}",
        text(&out)
    );
    assert!(
        daemon
            .log()
            .contains("larger than the 1048576 bytes allowed")
    );

    // A transfer syntax bedside cannot decode is not accepted: the sender says so.
    let mpeg = made.join("mpeg.dcm");
    edited(&good[0], &mpeg, |o| {
        o.update_meta(|m| m.transfer_syntax = "1.2.840.10008.1.2.4.100".into());
    });
    let out = storescu(port, "XRAY-1", "BEDSIDE", &["-xm"], &[mpeg]);
    assert_eq!(successes(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("No presentation context")
            || text(&out).contains("no presentation context")
            || text(&out).contains("No Acceptable Presentation Contexts"),
        "{}",
        text(&out)
    );

    // And the next good object is stored and makes its finding.
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &good[..1]);
    assert_eq!(successes(&out), 1, "{}", text(&out));
    assert!(
        consumer.wait_unique(1, Duration::from_secs(60)),
        "{}",
        daemon.log()
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(
        !log.contains("panicked") && !log.contains("internal error"),
        "{log}"
    );
}

#[test]
fn an_object_acknowledged_just_before_a_sigkill_still_makes_its_finding() {
    let Rig {
        tmp,
        consumer,
        port,
        board,
        daemon,
        broker: _broker,
        ..
    } = rig("consumer-kill-scp", true, "");
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), 20);
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &files);
    assert_eq!(successes(&out), 20, "{}", text(&out));
    daemon.kill();
    let waiting = count(&tmp.path().join("state/spool"));
    eprintln!(
        "SIGKILL right after the 20th acknowledgement: {} findings delivered, {waiting} objects still in the spool",
        consumer.unique()
    );
    let run = tmp.path().join("run-2");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = start(&board, &run);
    assert!(
        consumer.wait_unique(20, Duration::from_secs(60)),
        "{} of 20:\n{}",
        consumer.unique(),
        daemon.log()
    );
    // The spool empties. An object leaves it once its findings are recorded, and the
    // publisher may deliver the last finding before that unlink: wait for it, bounded.
    let spool = tmp.path().join("state/spool");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&spool) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&spool), 0, "{}", daemon.log());
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn jpeg_ls_and_jpeg_2000_from_other_encoders_are_received_and_decoded() {
    // MR is not an X-ray class: the profile adds it, as a site would for its own modalities.
    let Rig {
        tmp,
        consumer,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig(
        "consumer-codecs",
        false,
        "extra_sop_classes = [\"1.2.840.10008.5.1.4.1.1.4\"]",
    );
    let made = tmp.path().join("made");
    let src = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &made.join("src"), 2);
    let lossless = made.join("jls-lossless.dcm");
    convert("dcmcjpls", Some("+el"), &src[0], &lossless);
    let near = made.join("jls-near.dcm");
    convert("dcmcjpls", Some("+en"), &src[1], &near);
    let pyd = |name: &str| repo().join("tests/data/pydicom").join(name);
    let sends: [(&str, PathBuf); 5] = [
        ("-xt", lossless),
        ("-xu", near),
        ("-xu", pyd("JPEGLSNearLossless_16.dcm")),
        ("-xw", pyd("JPEG2000.dcm")),
        ("-xv", pyd("MR_small_jp2klossless.dcm")),
    ];
    for (i, (flag, file)) in sends.iter().enumerate() {
        let out = storescu(
            port,
            "XRAY-1",
            "BEDSIDE",
            &[flag],
            std::slice::from_ref(file),
        );
        assert_eq!(
            successes(&out),
            1,
            "{}: {}\n{}",
            file.display(),
            text(&out),
            daemon.log()
        );
        assert!(
            consumer.wait_unique(i + 1, Duration::from_secs(60)),
            "no finding for {}:\n{}",
            file.display(),
            daemon.log()
        );
        if i < 2 {
            // The chest images keep their verdict through JPEG-LS (near-lossless too).
            let f = consumer.docs().last().cloned().unwrap();
            assert_eq!(
                f["over_threshold"],
                serde_json::json!(["pneumothorax"]),
                "{f}"
            );
        }
    }
    assert_eq!(
        count(&tmp.path().join("state/failed")),
        0,
        "{}",
        daemon.log()
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    // All 14 of TRANSFER_SYNTAXES, HTJ2K included, with both codec features on.
    assert!(log.contains("transfer_syntaxes=14"), "{log}");
}

#[test]
fn a_source_address_outside_the_allow_list_is_rejected_and_logged() {
    let Rig {
        tmp,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig(
        "consumer-addr",
        false,
        "allowed_addresses = [\"10.0.0.0/8\", \"192.168.1.7\"]",
    );
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 1);
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &files);
    assert!(
        text(&out).contains("Association Rejected"),
        "{}",
        text(&out)
    );
    assert_eq!(successes(&out), 0);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("source address is not in dicom.allowed_addresses")
            && log.contains("peer=127.0.0.1"),
        "{log}"
    );
}

#[test]
fn a_full_spool_answers_out_of_resources_and_keeps_nothing() {
    let Rig {
        tmp,
        port,
        daemon,
        broker: _broker,
        ..
    } = rig(
        "consumer-spool",
        false,
        "spool_max_mib = 1\nmax_object_mib = 1",
    );
    // What other objects waiting in the spool would take: a file the inbox ignores (a
    // dotfile) that the spool counts.
    let spool = tmp.path().join("state/spool");
    std::fs::write(spool.join(".ballast"), vec![0u8; 1 << 20]).unwrap();
    let files = distinct_copies(&sample("cxr-other-8bit.dcm"), &tmp.path().join("made"), 1);
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &files);
    assert_eq!(successes(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("Refused: OutOfResources"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&spool), 1, "nothing kept beside the ballast");
    // Room again: the next one is taken.
    std::fs::remove_file(spool.join(".ballast")).unwrap();
    let out = storescu(port, "XRAY-1", "BEDSIDE", &[], &files);
    assert_eq!(successes(&out), 1, "{}", text(&out));
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("the spool is full"), "{log}");
}
