//! TLS to a real Mosquitto, with certificates made by OpenSSL for the test: server-verified
//! TLS with a user name and a password read from a file, mutual TLS with a client
//! certificate, and a broker whose certificate does not chain to our CA, which is refused
//! with an error that says so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const FINDINGS: &str = "bedside/test-site/cart-7/findings";

/// A broker with a TLS listener on `tls_port` (`tls_extra` adds its options) and a plain
/// one for the test's own subscriber.
fn tls_broker(dir: &Path, pki: &Pki, tls_port: u16, plain_port: u16, tls_extra: &str) -> Mosquitto {
    let conf = format!(
        "per_listener_settings true\n\
         listener {tls_port} 127.0.0.1\n\
         cafile {ca}\ncertfile {cert}\nkeyfile {key}\n{tls_extra}\n\
         listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
         persistence false\n",
        ca = pki.path("ca.pem"),
        cert = pki.path("broker.pem"),
        key = pki.path("broker.key"),
    );
    Mosquitto::start_conf(tls_port, dir, &conf)
}

fn setup(tmp: &Path) -> (Pki, u16, u16) {
    let pki = Pki::new(&tmp.join("pki"), "clinic test CA");
    pki.issue("broker", Some("IP:127.0.0.1"));
    pki.issue("cart-7", None);
    (pki, free_port(), free_port())
}

fn drop_one(tmp: &Path) {
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.join("made"), 1);
    move_all_into(&files, &tmp.join("inbox"));
}

#[test]
fn findings_arrive_over_tls_with_a_password_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, tls_port, plain_port) = setup(tmp.path());
    let passwords = tmp.path().join("mosquitto.passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["cart-7", "s3cret-for-the-test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _broker = tls_broker(
        &tmp.path().join("broker"),
        &pki,
        tls_port,
        plain_port,
        &format!(
            "allow_anonymous false\npassword_file {}",
            passwords.display()
        ),
    );
    let mut sub = Subscriber::connect(plain_port, FINDINGS, None);
    let secret = tmp.path().join("mqtt-password");
    std::fs::write(&secret, "s3cret-for-the-test\n").unwrap();
    let board = write_board_with(
        tmp.path(),
        &format!(
            "url = \"mqtts://127.0.0.1:{tls_port}\"\nusername = \"cart-7\"\npassword_file = \"{}\"",
            secret.display()
        ),
        &format!("[mqtt.tls]\nca_file = \"{}\"\n", pki.path("ca.pem")),
    );
    let daemon = Daemon::start(&board, tmp.path());
    drop_one(tmp.path());
    let (_, f) = sub
        .next_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no finding over TLS:\n{}", daemon.log()));
    assert_valid_finding(&f);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("mqtts://127.0.0.1"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the password never reaches the log"
    );
}

#[test]
fn findings_arrive_over_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, tls_port, plain_port) = setup(tmp.path());
    let _broker = tls_broker(
        &tmp.path().join("broker"),
        &pki,
        tls_port,
        plain_port,
        "require_certificate true\nallow_anonymous true",
    );
    let mut sub = Subscriber::connect(plain_port, FINDINGS, None);
    let tls = |with_cert: bool| {
        let mut t = format!("[mqtt.tls]\nca_file = \"{}\"\n", pki.path("ca.pem"));
        if with_cert {
            t.push_str(&format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                pki.path("cart-7.pem"),
                pki.path("cart-7.key")
            ));
        }
        t
    };
    let url = format!("url = \"mqtts://127.0.0.1:{tls_port}\"");

    // Without a client certificate the broker hangs up, and the daemon says so.
    let board = write_board_with(tmp.path(), &url, &tls(false));
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("MQTT", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    drop_one(tmp.path());
    assert!(
        sub.next_json(Duration::from_secs(3)).is_none(),
        "nothing gets through without a client certificate"
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    eprintln!("{log}");
    assert!(!log.contains("connected to MQTT broker"), "{log}");

    // With it, the finding kept in the outbox arrives.
    let board = write_board_with(tmp.path(), &url, &tls(true));
    let run = tmp.path().join("run-2");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = Daemon::start(&board, &run);
    let (_, f) = sub
        .next_json(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no finding over mutual TLS:\n{}", daemon.log()));
    assert_valid_finding(&f);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn a_broker_whose_certificate_does_not_verify_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, tls_port, plain_port) = setup(tmp.path());
    let other = Pki::new(&tmp.path().join("other-pki"), "some other CA");
    let _broker = tls_broker(
        &tmp.path().join("broker"),
        &pki,
        tls_port,
        plain_port,
        "allow_anonymous true",
    );
    let mut sub = Subscriber::connect(plain_port, FINDINGS, None);
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtts://127.0.0.1:{tls_port}\""),
        &format!("[mqtt.tls]\nca_file = \"{}\"\n", other.path("ca.pem")),
    );
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("does not verify", Duration::from_secs(30)),
        "the error names the certificate problem:\n{}",
        daemon.log()
    );
    drop_one(tmp.path());
    assert!(wait_count(
        &tmp.path().join("state/done"),
        1,
        Duration::from_secs(60)
    ));
    assert!(
        sub.next_json(Duration::from_secs(3)).is_none(),
        "nothing is sent to a broker that fails verification"
    );
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
    eprintln!("{log}");
    assert!(log.contains("ERROR"), "said as an error:\n{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(
        log.contains("1 findings wait in the outbox"),
        "the finding is kept:\n{log}"
    );
}
