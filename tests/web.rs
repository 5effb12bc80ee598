//! The findings page (`[web]`), in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) against the daemon, a Mosquitto broker, and a DICOM dropped into
//! the inbox while the page is open. The new finding's card appears without a reload, its
//! overlay loads, and the patient's name and ID planted in the DICOM appear nowhere in the
//! page or its event stream. Screenshots at a tablet's and a phone's size are kept under
//! `target/` (`BEDSIDE_REFRESH_DOCS=1` writes them to `docs/`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

struct Chromedriver(Child);

impl Chromedriver {
    fn start(port: u16) -> Chromedriver {
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium-driver)");
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "chromedriver did not listen"
        );
        Chromedriver(child)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

async fn browser(driver: u16, profile: &Path, width: u32, height: u32) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                format!("--user-data-dir={}", profile.display()),
                format!("--window-size={width},{height}"),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver}"))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// A raw GET of `path`, read for `for_how_long` (an event stream does not end by itself).
fn get_for(port: u16, path: &str, for_how_long: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + for_how_long;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What every test of the page starts from: a scratch folder, a broker in it on a free port,
/// and a free port for the page.
fn broker_and_ports() -> (tempfile::TempDir, u16, Mosquitto, u16) {
    let tmp = tempfile::tempdir().unwrap();
    let mqtt = free_port();
    let broker = Mosquitto::start_on(mqtt, tmp.path(), false);
    (tmp, mqtt, broker, free_port())
}

/// A board for the broker on `mqtt` with `tail` after it (the `[web]` section and the like).
fn page_board(dir: &Path, mqtt: u16, tail: &str) -> std::path::PathBuf {
    write_board_with(dir, &format!("url = \"mqtt://127.0.0.1:{mqtt}\""), tail)
}

/// The daemon on `board`, once its page listens on `web`.
fn start_with_page(board: &Path, dir: &Path, web: u16) -> Daemon {
    let daemon = Daemon::start(board, dir);
    assert!(
        wait_port(web, Duration::from_secs(60)),
        "no page:\n{}",
        daemon.log()
    );
    daemon
}

/// Two X-ray models on the inbox, the FAST model on the replayed ultrasound clip.
fn web_board(dir: &Path, mqtt: u16, web: u16) -> std::path::PathBuf {
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/us/fast-clip.json")).unwrap(),
    )
    .unwrap();
    write_board_with(
        dir,
        &format!("url = \"mqtt://127.0.0.1:{mqtt}\""),
        &format!(
            "\n[[models]]\npath = \"{det}\"\n\n[[models]]\npath = \"{us}\"\nsources = [\"video\"]\n\n\
             [video]\nsource = \"replay\"\ncrop = {crop}\npublish_interval_s = 2\n\
             [video.replay]\npath = \"{clip}\"\nfps = 30\nloop = true\n\n\
             [web]\nenabled = true\nport = {web}\n\n[overlays]\nkeep_last = true\nmax_side = 512\n",
            det = repo().join("models/cxr-tiny-det").display(),
            us = repo().join("models/us-fast-fluid").display(),
            crop = facts["crop"],
            clip = repo().join("tests/data/us/fast-clip.dcm").display(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_finding_appears_on_the_open_page_with_its_overlay_and_no_patient_data() {
    let (tmp, mqtt, _broker, web) = broker_and_ports();
    let board = web_board(tmp.path(), mqtt, web);
    let daemon = start_with_page(&board, tmp.path(), web);
    let driver_port = free_port();
    let _driver = Chromedriver::start(driver_port);
    let c = browser(driver_port, &tmp.path().join("chromium"), 800, 1280).await;
    c.goto(&format!("http://127.0.0.1:{web}/")).await.unwrap();
    // The status arrives over the event stream: the broker is connected.
    let online = async {
        loop {
            if let Ok(e) = c.find(Locator::Id("state")).await
                && e.text().await.unwrap_or_default() == "online"
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), online)
        .await
        .expect("the page never showed the device online");
    let xray = Locator::Css(".card[data-source='watch-folder']");
    assert!(c.find_all(xray).await.unwrap().is_empty());
    // A mark on the page: still there after the card appears means no reload.
    c.execute(
        "window.__bedsideMark = 42; window.__seen = {}; return 0;",
        vec![],
    )
    .await
    .unwrap();
    c.execute(
        "new MutationObserver(() => { for (const a of document.querySelectorAll('.card .result')) \
           if (!window.__seen[a.dataset.finding]) window.__seen[a.dataset.finding] = Date.now(); }) \
           .observe(document.getElementById('cards'), { subtree: true, childList: true, attributes: true }); return 0;",
        vec![],
    )
    .await
    .unwrap();

    // Listen to the event stream as a second client while the image arrives.
    let stream = std::thread::spawn(move || get_for(web, "/events", Duration::from_secs(12)));
    std::thread::sleep(Duration::from_millis(500));
    drop_into(
        &tmp.path().join("inbox"),
        &sample("cxr-ptx-mono2.dcm"),
        "ptx.dcm",
    );

    let shown = async {
        loop {
            let cards = c.find_all(xray).await.unwrap();
            if let Some(card) = cards.first() {
                let text = card.text().await.unwrap_or_default();
                if text.contains("pneumothorax") && text.contains("cxr-tiny-det") {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(60), shown)
        .await
        .unwrap_or_else(|_| panic!("no card for the new finding:\n{}", daemon.log()));
    assert!(text.contains("cxr-tiny-cls"), "{text}");
    assert_eq!(
        c.find_all(xray).await.unwrap().len(),
        1,
        "one card for the watch folder"
    );
    // The live ultrasound's card, updated as the smoother publishes.
    let live = async {
        loop {
            for card in c.find_all(Locator::Css(".card")).await.unwrap() {
                let text = card.text().await.unwrap_or_default();
                if text.contains("Live ultrasound") && text.contains("frames over") {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let live = tokio::time::timeout(Duration::from_secs(30), live)
        .await
        .unwrap_or_else(|_| panic!("no live ultrasound card:\n{}", daemon.log()));
    assert!(live.contains("us-fast-fluid"), "{live}");
    let mark = c
        .execute("return window.__bedsideMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(42), "the page was reloaded");

    // The overlay loaded: a picture of the image's proportions.
    let loaded = async {
        loop {
            let w = c
                .execute(
                    "const i = document.querySelector(\".card[data-source='watch-folder'] img.overlay\"); return i && i.complete ? i.naturalWidth : 0;",
                    vec![],
                )
                .await
                .unwrap();
            if w.as_u64().unwrap_or(0) > 0 {
                return w.as_u64().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let width = tokio::time::timeout(Duration::from_secs(20), loaded)
        .await
        .expect("the overlay never loaded");
    assert_eq!(
        width, 512,
        "the overlay at max_side 512 of a 512 x 512 image"
    );

    // Finding to card: from the finding's created_at to the card's first sight.
    let seen = c.execute("return window.__seen;", vec![]).await.unwrap();
    let state: serde_json::Value = serde_json::from_str(
        get_for(web, "/api/state", Duration::from_secs(2))
            .split("\r\n\r\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    for f in state["findings"].as_array().unwrap() {
        let id = f["id"].as_str().unwrap();
        let made = time::OffsetDateTime::parse(
            f["created_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        if let Some(at) = seen[id].as_i64() {
            let ms = at as f64 - (made.unix_timestamp_nanos() as f64 / 1e6);
            eprintln!("finding {id}: on the page {ms:.0} ms after it was made");
        }
    }
    let first_id = state["findings"][0]["id"].as_str().unwrap().to_owned();

    // The finding's JSON is one click away.
    let href = c
        .find(Locator::Css(
            ".card[data-source='watch-folder'] .result a.json",
        ))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let json = get_for(web, &href, Duration::from_secs(2));
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    assert!(json.contains("\"over_threshold\""), "{json}");

    // Screenshots: tablet portrait, then a phone.
    let shots = if std::env::var_os("BEDSIDE_REFRESH_DOCS").is_some() {
        repo().join("docs")
    } else {
        repo().join("target")
    };
    std::fs::write(
        shots.join("findings-page-tablet.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    c.set_window_size(390, 844).await.unwrap();
    std::fs::write(
        shots.join("findings-page-phone.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // No patient data anywhere: the page as rendered, its event stream, its state.
    let html = c.source().await.unwrap();
    assert_no_identifiers(&html, "the page");
    let events = stream.join().unwrap();
    assert!(events.contains("event: finding"), "{events}");
    assert!(events.contains(&first_id), "{events}");
    assert_no_identifiers(&events, "the event stream");
    assert_no_identifiers(&state.to_string(), "the page's state");
    c.close().await.unwrap();
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

/// One page's event stream, read as an HTTP/1.0 client (no chunking: the stream ends when
/// the server drops it): the ids of the findings it saw, and whether it ended. A `slow` page
/// has a 4 KiB receive buffer and reads 512 bytes every 50 ms.
fn read_events(port: u16, want: usize, timeout: Duration, slow: bool) -> (Vec<String>, bool) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if slow {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(s, "GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let deadline = Instant::now() + timeout;
    let (mut text, mut ended) = (Vec::new(), false);
    let mut buf = vec![0u8; if slow { 512 } else { 64 << 10 }];
    // The findings whose event arrived whole (its data line ended).
    let parse = |text: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(text)
            .split("event: finding\ndata: ")
            .skip(1)
            .filter_map(|rest| {
                let (line, _) = rest.split_once('\n')?;
                let f: serde_json::Value = serde_json::from_str(line).ok()?;
                Some(f["id"].as_str()?.to_owned())
            })
            .collect()
    };
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if parse(&text).len() >= want {
                    break;
                }
            }
            Err(_) => {}
        }
        if slow {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let ids = parse(&text);
    (ids, ended)
}

/// 20 pages read while 100 images are processed (200 findings: two models), 2 of them slowly
/// through a 4 KiB receive buffer, and 2 more that never read: every reading page sees every
/// finding or is dropped cleanly, and the images go through all the same — the worker never
/// waits on a page (the two that never read would stop it if it did). (On loopback the
/// kernel's autotuned send buffers hold all 200 findings, so no page falls behind the ring
/// here; `web::tests` drops one that does.)
#[test]
fn twenty_pages_and_two_stuck_ones_never_hold_the_worker() {
    let (tmp, mqtt, _broker, web) = broker_and_ports();
    let board = page_board(
        tmp.path(),
        mqtt,
        &format!(
            "\n[[models]]\npath = \"{}\"\n\n[web]\nenabled = true\nport = {web}\nmax_findings = 200\n",
            repo().join("models/cxr-tiny-det").display()
        ),
    );
    let collector = Collector::start(mqtt, "bedside/test-site/cart-7/findings", "web-load");
    let daemon = start_with_page(&board, tmp.path(), web);
    let n = 100;
    let findings = 2 * n;
    let readers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || read_events(web, findings, Duration::from_secs(120), i < 2))
        })
        .collect();
    let stuck: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", web)).unwrap();
            write!(s, "GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let files = distinct_copies(&sample("cxr-ptx-mono2.dcm"), &tmp.path().join("made"), n);
    let t0 = Instant::now();
    move_all_into(&files, &tmp.path().join("inbox"));
    assert!(
        collector.wait_unique(findings, Duration::from_secs(240)),
        "{} of {findings} findings published:\n{}",
        collector.unique(),
        daemon.log()
    );
    eprintln!(
        "{n} images through the worker in {:.1} s with 22 pages open",
        t0.elapsed().as_secs_f64()
    );
    let published = collector.ids();
    let (mut complete, mut dropped) = (0, 0);
    for r in readers {
        let (ids, ended) = r.join().unwrap();
        let seen: std::collections::HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(seen.len(), ids.len(), "a page got a finding twice");
        assert!(
            seen.is_subset(&published),
            "a page got a finding never published"
        );
        if seen.len() == findings {
            complete += 1;
        } else {
            assert!(
                ended,
                "a page saw {} of {findings} and was not dropped",
                seen.len()
            );
            dropped += 1;
        }
    }
    eprintln!(
        "20 reading pages: {complete} saw all {findings} findings, {dropped} dropped cleanly"
    );
    assert!(complete >= 18, "the 18 that read at once see everything");
    if dropped > 0 {
        assert!(daemon.log().contains("fell behind and was dropped"));
    }
    drop(stuck);
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

/// As many clients as the page takes (`max_clients` + 8 connections) connect and say nothing:
/// the next one waits in the backlog, each silent one is closed after `idle_timeout_s`, and
/// the one that waited is served — a handful of idle sockets cannot take the page (or, in
/// their thousands, the daemon's file descriptors) away.
#[test]
fn silent_connections_are_closed_and_the_page_serves_the_next_client() {
    let (tmp, mqtt, _broker, web) = broker_and_ports();
    let board = page_board(
        tmp.path(),
        mqtt,
        &format!("\n[web]\nenabled = true\nport = {web}\nmax_clients = 2\nidle_timeout_s = 2\n"),
    );
    let daemon = start_with_page(&board, tmp.path(), web);
    // wait_port's own connection closes at once and gives its place back.
    std::thread::sleep(Duration::from_millis(300));
    let silent: Vec<TcpStream> = (0..2 + 8)
        .map(|_| TcpStream::connect(("127.0.0.1", web)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let page = get_for(web, "/", Duration::from_secs(15));
    let waited = t0.elapsed();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<html"), "{page}");
    assert!(
        waited > Duration::from_secs(1) && waited < Duration::from_secs(10),
        "served after {waited:?}: it should have waited for a silent connection to be closed"
    );
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection was not closed by the page: {other:?}"),
        }
    }
    eprintln!("10 silent connections closed; the next client served after {waited:.1?}");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}

/// `curl` against the page: the HTTP status, the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// HTTPS with the profile's certificate, and basic authentication from a file only bedside
/// can read: no page without the password, none over plain HTTP, and a password file others
/// can read stops the daemon at start with the reason.
#[test]
fn https_and_a_password_guard_the_page() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, mqtt, _broker, web) = broker_and_ports();
    let pki = Pki::new(&tmp.path().join("pki"), "clinic-ca");
    pki.issue("page", Some("IP:127.0.0.1"));
    let password = tmp.path().join("web-password");
    std::fs::write(&password, "nurse:correct-horse\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let board = page_board(
        tmp.path(),
        mqtt,
        &format!(
            "\n[web]\nenabled = true\nport = {web}\npassword_file = \"{}\"\n\n[web.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            password.display(),
            pki.dir.join("page.pem").display(),
            pki.dir.join("page.key").display()
        ),
    );
    // Readable by others: refused at start, with the reason.
    let out = bedside()
        .arg("run")
        .arg("--board")
        .arg(&board)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a readable password file"
    );
    assert!(err.contains("can be read by others"), "{err}");

    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = start_with_page(&board, tmp.path(), web);
    let url = format!("https://127.0.0.1:{web}/api/state");
    let ca = pki.dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let (code, body) = curl(&["--cacert", ca, "-u", "nurse:correct-horse", &url]);
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(state["findings"].is_array(), "{state}");
    for bad in [
        vec!["--cacert", ca, url.as_str()],
        vec!["--cacert", ca, "-u", "nurse:wrong", url.as_str()],
    ] {
        let (code, _) = curl(&bad);
        assert_eq!(code, 401, "{bad:?}");
    }
    // The certificate must verify: without the CA, curl refuses; plain HTTP gets nothing.
    let (code, _) = curl(&["-u", "nurse:correct-horse", &url]);
    assert_eq!(
        code, 0,
        "a certificate not from the clinic's CA was accepted"
    );
    let (code, _) = curl(&[
        "-u",
        "nurse:correct-horse",
        &format!("http://127.0.0.1:{web}/api/state"),
    ]);
    assert_ne!(code, 200, "plain HTTP served the page");
    let (exit, log) = daemon.stop();
    assert!(exit.success(), "{log}");
}
