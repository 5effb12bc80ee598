//! Hostile DICOM peers: raw TCP to the SCP with what a broken modality, a port scanner or an
//! attacker sends — malformed and oversized requests, PDUs out of order, fragments that never
//! end, lying element lengths, idle connections and associations by the fifty, one byte a
//! second. Each must get the DICOM answer (A-ABORT, A-ASSOCIATE-RJ or a timeout), nothing may
//! leak (open files, threads, memory back to where they were), and DCMTK's `storescu`,
//! sending all the while from another thread, must be served throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dicom_ul::pdu::{
    AbortRQSource, AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem,
};

const FINDINGS: &str = "bedside/test-site/cart-7/findings";
const DX: &str = "1.2.840.10008.5.1.4.1.1.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

struct Rig {
    tmp: tempfile::TempDir,
    _broker: Mosquitto,
    consumer: Collector,
    port: u16,
    daemon: Daemon,
}

fn rig(consumer_id: &str, dicom: &str) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start_on(free_port(), &tmp.path().join("broker"), false);
    let consumer = Collector::start(broker.port, FINDINGS, consumer_id);
    let port = free_port();
    let board = write_board_with(
        tmp.path(),
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &format!("[dicom]\nae_title = \"BEDSIDE\"\nport = {port}\nbind = \"127.0.0.1\"\n{dicom}\n"),
    );
    let daemon = Daemon::start(&board, tmp.path());
    assert!(
        daemon.wait_log("DICOM C-STORE SCP listening", Duration::from_secs(30)),
        "{}",
        daemon.log()
    );
    Rig {
        tmp,
        _broker: broker,
        consumer,
        port,
        daemon,
    }
}

impl Rig {
    /// Starts the well-behaved modality, lets a first image through (so that the baseline
    /// includes a served association) and takes the baseline.
    fn serving(&self, patience: Duration) -> (Modality, Use) {
        let modality = Modality::start(self.port, &self.tmp.path().join("made"), patience);
        std::thread::sleep(Duration::from_secs(2));
        (modality, usage(&self.daemon))
    }

    /// After the attack: the modality was served throughout (at least `min_sent` images,
    /// each with its finding), the resources are back to `base`, nothing panicked. The log.
    fn served_throughout(
        &self,
        modality: Modality,
        base: Use,
        min_sent: usize,
        what: &str,
    ) -> String {
        let sent = modality.finish();
        assert!(sent >= min_sent, "only {sent} images sent meanwhile");
        assert!(
            self.consumer.wait_unique(sent, Duration::from_secs(60)),
            "{} of {sent} findings\n{}",
            self.consumer.unique(),
            self.daemon.log()
        );
        let after = assert_back_to(&self.daemon, base, 16.0);
        eprintln!("{what}: {sent} images served meanwhile; before {base:?}, after {after:?}");
        let log = self.daemon.log();
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

// ---- the daemon's resources ----

#[derive(Debug, Clone, Copy)]
struct Use {
    fds: usize,
    threads: usize,
    rss_mib: f64,
}

fn usage(daemon: &Daemon) -> Use {
    let (fds, threads) = fds_and_threads(daemon.pid());
    Use {
        fds,
        threads,
        rss_mib: daemon.rss_bytes() as f64 / (1 << 20) as f64,
    }
}

/// Waits (up to 20 s: tokio's idle blocking threads live 10 s) until open files and threads
/// are back to `base`, and RSS within `rss_slack_mib` of it.
fn assert_back_to(daemon: &Daemon, base: Use, rss_slack_mib: f64) -> Use {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = usage(daemon);
        if now.fds <= base.fds
            && now.threads <= base.threads
            && now.rss_mib <= base.rss_mib + rss_slack_mib
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "resources not back to baseline: before {base:?}, now {now:?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---- a well-behaved modality, all the while ----

/// `storescu` sending one new image at a time from a thread until stopped; every send must
/// succeed, and none may take longer than `patience`.
struct Modality {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Modality {
    fn start(port: u16, dir: &Path, patience: Duration) -> Modality {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let images = distinct_copies(&sample("cxr-other-8bit.dcm"), dir, 400);
        let thread = {
            let (stop, failures) = (stop.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                for image in images {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let (ok, text) = store_one(port, &image, &["-to", "60"]);
                    let took = started.elapsed();
                    if !ok || took > patience {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("after {took:?}: {text}"));
                    } else {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                sent
            })
        };
        Modality {
            stop,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops it; the number of images acknowledged. Panics on any failure.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.thread.take().unwrap().join().unwrap();
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "the well-behaved storescu was not served ({} failures):\n{}",
            failures.len(),
            failures.join("\n---\n")
        );
        sent
    }
}

// ---- raw PDUs ----

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn request(called: &str, protocol_version: u16) -> Vec<u8> {
    let rq = Pdu::AssociationRQ(AssociationRQ {
        protocol_version,
        calling_ae_title: "HOSTILE".into(),
        called_ae_title: called.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: DX.into(),
            transfer_syntaxes: vec![EXPLICIT_LE.into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, &rq).unwrap();
    bytes
}

/// One PDU from the SCP, or what ended the wait: `Err("closed")` or `Err("timeout")`.
fn next_pdu(s: &mut TcpStream) -> Result<Pdu, &'static str> {
    let mut header = [0u8; 6];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err("closed"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err("closed"),
        Err(_) => return Err("timeout"),
    }
    let length = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
    assert!(length < 1 << 20, "a PDU of {length} bytes from the SCP");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).map_err(|_| "closed")?;
    let mut whole = header.to_vec();
    whole.extend(body);
    Ok(dicom_ul::pdu::read_pdu(&whole[..], 1 << 20, false)
        .unwrap()
        .unwrap())
}

/// An A-ABORT, as the SCP sends it (dicom-ul's own aborts say "service user").
fn is_abort(pdu: &Result<Pdu, &'static str>) -> bool {
    matches!(
        pdu,
        Ok(Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(_) | AbortRQSource::ServiceUser
        })
    )
}

/// Whether the SCP has said something (or closed) on `s`, without waiting.
fn answered(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut peek = [0u8; 1];
    // Ok(0): closed; Ok(n): a PDU is there; Err(WouldBlock): nothing yet.
    let answered = s.peek(&mut peek).is_ok();
    s.set_nonblocking(false).unwrap();
    answered
}

/// Writes `chunk` again and again until the SCP answers; its answer and the bytes this side
/// wrote (at most `limit`, or the test fails). Every `pause_every` bytes it gives the SCP (a
/// debug build on a busy machine) 20 ms to read.
fn flood(
    s: &mut TcpStream,
    chunk: &[u8],
    limit: usize,
    pause_every: usize,
) -> (Result<Pdu, &'static str>, usize) {
    let mut sent = 0usize;
    loop {
        if s.write_all(chunk).is_err() {
            return (next_pdu(s), sent);
        }
        sent += chunk.len();
        assert!(sent < limit, "{sent} bytes accepted without an answer");
        if sent % pause_every < chunk.len() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if answered(s) {
            return (next_pdu(s), sent);
        }
    }
}

/// Writes `bytes` one a second (at most 20) until the SCP answers or closes.
fn trickle(s: &mut TcpStream, bytes: &[u8]) -> Result<Pdu, &'static str> {
    for b in bytes.iter().take(20) {
        if s.write_all(&[*b]).is_err() {
            return Err("closed");
        }
        std::thread::sleep(Duration::from_secs(1));
        if answered(s) {
            return next_pdu(s);
        }
    }
    Err("timeout")
}

/// Associates as a modality would; panics unless accepted.
fn associate(port: u16) -> TcpStream {
    let mut s = connect(port);
    s.write_all(&request("BEDSIDE", 1)).unwrap();
    let answer = next_pdu(&mut s);
    assert!(
        matches!(answer, Ok(Pdu::AssociationAC(_))),
        "not accepted: {answer:?}"
    );
    s
}

/// A P-DATA-TF PDU with one presentation data value on context 1.
fn pdata(command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let mut pdv = Vec::with_capacity(data.len() + 6);
    pdv.extend(((data.len() + 2) as u32).to_be_bytes());
    pdv.push(1);
    pdv.push(u8::from(command) | (u8::from(last) << 1));
    pdv.extend_from_slice(data);
    let mut pdu = vec![0x04, 0];
    pdu.extend((pdv.len() as u32).to_be_bytes());
    pdu.extend(pdv);
    pdu
}

/// Explicit VR little endian elements: (group, element, VR, value) with its true length, or
/// with `lie` as the length written.
fn element(out: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8], lie: Option<u32>) {
    out.extend(tag.0.to_le_bytes());
    out.extend(tag.1.to_le_bytes());
    out.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend([0, 0]);
        out.extend(lie.unwrap_or(value.len() as u32).to_le_bytes());
    } else {
        out.extend((lie.unwrap_or(value.len() as u32) as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

/// A DX data set whose element lengths lie: `pixel_lie` claims pixel data far longer than
/// what follows; otherwise the patient's name claims more bytes than the data set holds.
fn lying_data_set(uid: &str, pixel_lie: bool) -> Vec<u8> {
    let mut d = Vec::new();
    element(
        &mut d,
        (0x0008, 0x0016),
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.1.1\0",
        None,
    );
    let mut uid = uid.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    element(&mut d, (0x0008, 0x0018), b"UI", &uid, None);
    if !pixel_lie {
        element(&mut d, (0x0010, 0x0010), b"PN", b"Doe^J", Some(0xfff0));
        return d;
    }
    element(&mut d, (0x0028, 0x0002), b"US", &1u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0004), b"CS", b"MONOCHROME2 ", None);
    element(&mut d, (0x0028, 0x0010), b"US", &64u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0011), b"US", &64u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0100), b"US", &16u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0101), b"US", &12u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0102), b"US", &11u16.to_le_bytes(), None);
    element(&mut d, (0x0028, 0x0103), b"US", &0u16.to_le_bytes(), None);
    element(
        &mut d,
        (0x7fe0, 0x0010),
        b"OW",
        &[7u8; 100],
        Some(0x7fff_fff0),
    );
    d
}

/// Sends one C-STORE of `data_set` on an accepted association; the response's status.
fn c_store(s: &mut TcpStream, uid: &str, data_set: &[u8]) -> u16 {
    let command = bedside::dicom::dimse::store_request(1, DX, uid);
    s.write_all(&pdata(true, true, &command)).unwrap();
    s.write_all(&pdata(false, true, data_set)).unwrap();
    match next_pdu(s) {
        Ok(Pdu::PData { data }) => {
            bedside::dicom::dimse::parse_store_response(&data[0].data)
                .unwrap()
                .status
        }
        other => panic!("no C-STORE response: {other:?}"),
    }
}

#[test]
fn malformed_and_out_of_order_pdus_get_an_abort_or_a_rejection() {
    let rig = rig("consumer-hostile-1", "timeout_s = 5");
    let (modality, base) = rig.serving(Duration::from_secs(20));

    let answer = |bytes: &[u8]| {
        let mut s = connect(rig.port);
        s.write_all(bytes).unwrap();
        next_pdu(&mut s)
    };
    // An A-ASSOCIATE-RQ whose items are garbage: abort.
    let mut garbage = request("BEDSIDE", 1);
    for b in garbage.iter_mut().skip(74) {
        *b = 0xA5;
    }
    let a = answer(&garbage);
    assert!(is_abort(&a), "garbage request: {a:?}");
    // A request too short to hold its fixed fields: abort.
    let a = answer(&[1, 0, 0, 0, 0, 4, 0, 1, 0, 0]);
    assert!(is_abort(&a), "truncated request: {a:?}");
    // A request announcing 4 GiB: abort at once, without waiting for (or allocating) it.
    let started = Instant::now();
    let a = answer(&[1, 0, 0xff, 0xff, 0xff, 0xf0, 0, 1]);
    assert!(is_abort(&a), "oversized request: {a:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // P-DATA, a release request and an unknown PDU type before any association: abort.
    let a = answer(&pdata(true, true, &[0; 16]));
    assert!(is_abort(&a), "P-DATA first: {a:?}");
    let a = answer(&[5, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
    assert!(is_abort(&a), "A-RELEASE-RQ first: {a:?}");
    let a = answer(b"GET / HTTP/1.1\r\nHost: bedside\r\n\r\n");
    assert!(is_abort(&a), "HTTP: {a:?}");
    // A protocol version we do not speak, and another's AE title: rejected.
    let a = answer(&request("BEDSIDE", 2));
    assert!(matches!(a, Ok(Pdu::AssociationRJ(_))), "version 2: {a:?}");
    let a = answer(&request("SOMEONE-ELSE", 1));
    assert!(matches!(a, Ok(Pdu::AssociationRJ(_))), "wrong AE: {a:?}");

    // Inside an association: an oversized PDU, a command that never ends, data with no
    // command: each aborts that association.
    let mut s = associate(rig.port);
    s.write_all(&[4, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0]).unwrap();
    let a = next_pdu(&mut s);
    assert!(is_abort(&a), "oversized P-DATA: {a:?}");

    let mut s = associate(rig.port);
    let (a, sent) = flood(
        &mut s,
        &pdata(true, false, &[0x11; 4096]),
        8 << 20,
        64 << 10,
    );
    assert!(is_abort(&a), "endless command: {a:?}");
    // The SCP stops at 64 KiB; what this side had written into socket buffers by the time
    // it saw the abort comes on top.
    assert!(sent <= 1 << 20, "aborted only after {sent} bytes");

    let mut s = associate(rig.port);
    s.write_all(&pdata(false, false, &[0; 1024])).unwrap();
    let a = next_pdu(&mut s);
    assert!(is_abort(&a), "data without a command: {a:?}");

    // A request trickled one byte a second: closed when the ACSE timeout (5 s) runs out.
    let mut s = connect(rig.port);
    let started = Instant::now();
    let outcome = trickle(&mut s, &request("BEDSIDE", 1));
    assert!(
        outcome == Err("closed") || is_abort(&outcome),
        "trickled request: {outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "a trickle held the connection {:?}",
        started.elapsed()
    );

    // An association that trickles a P-DATA one byte a second: aborted after timeout_s.
    let mut s = associate(rig.port);
    let started = Instant::now();
    let command = pdata(
        true,
        true,
        &bedside::dicom::dimse::store_request(1, DX, "2.25.1"),
    );
    let outcome = trickle(&mut s, &command);
    assert!(is_abort(&outcome), "trickled P-DATA: {outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(12));

    let log = rig.served_throughout(modality, base, 5, "hostile PDUs");
    for needle in [
        "DICOM connection aborted: an A-ASSOCIATE-RQ of 4294967280 bytes",
        "DICOM connection aborted: a PDU of type 0x04 before any association",
        "DICOM connection aborted: no DICOM PDU",
        "DICOM association request unreadable",
        "a DIMSE command longer than 65536 bytes",
        "DICOM data without a C-STORE command",
        "DICOM peer silent for 5s",
    ] {
        assert!(
            log.contains(needle),
            "the log does not say {needle:?}:\n{log}"
        );
    }
}

#[test]
fn lying_lengths_and_endless_refused_data_lose_nothing_and_keep_the_scp_serving() {
    let rig = rig("consumer-hostile-2", "timeout_s = 5\nmax_object_mib = 1");
    let (modality, base) = rig.serving(Duration::from_secs(20));

    // Data sets whose element lengths lie: stored as sent (the SCP does not parse them; its
    // success means "kept"), then set aside by the image worker with the reason.
    let mut s = associate(rig.port);
    assert_eq!(
        c_store(&mut s, "2.25.901", &lying_data_set("2.25.901", true)),
        0
    );
    assert_eq!(
        c_store(&mut s, "2.25.902", &lying_data_set("2.25.902", false)),
        0
    );
    s.write_all(&[5, 0, 0, 0, 0, 4, 0, 0, 0, 0]).unwrap();
    assert!(matches!(next_pdu(&mut s), Ok(Pdu::ReleaseRP)));
    let failed = rig.tmp.path().join("state/failed");
    assert!(
        wait_count(&failed, 4, Duration::from_secs(30)),
        "the lying objects are not set aside:\n{}",
        rig.daemon.log()
    );
    let reasons = failed_reasons(&failed);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    eprintln!("lying lengths set aside: {reasons:?}");

    // An object over max_object_mib whose data goes on and on: refused, then aborted once
    // another max_object_mib has been read and thrown away.
    let mut s = associate(rig.port);
    let command = bedside::dicom::dimse::store_request(1, DX, "2.25.903");
    s.write_all(&pdata(true, true, &command)).unwrap();
    let chunk = pdata(false, false, &vec![0x22; 16 * 1024 - 12]);
    let (outcome, sent) = flood(&mut s, &chunk, 16 << 20, 256 << 10);
    assert!(is_abort(&outcome), "endless object: {outcome:?}");
    // 1 MiB kept, 1 MiB thrown away, and what this side had buffered.
    assert!(sent <= 4 << 20, "aborted only after {sent} bytes");
    let spool = rig.tmp.path().join("state/spool");
    let leftovers: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains("2.25.903")),
        "{leftovers:?}"
    );

    let log = rig.served_throughout(modality, base, 3, "lying lengths");
    assert!(
        log.contains("a refused data set goes on past 1048576 bytes"),
        "{log}"
    );
}

#[test]
fn fifty_idle_connections_and_fifty_idle_associations_do_not_keep_a_modality_out() {
    // A long timeout_s, so that what frees the slots is the eviction of idle associations,
    // not their timeout.
    let rig = rig("consumer-hostile-3", "timeout_s = 60\nmax_associations = 4");
    let (modality, base) = rig.serving(Duration::from_secs(15));

    // Fifty connections that never say a word: closed when the ACSE timeout (10 s) runs out.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..50).map(|_| connect(rig.port)).collect();
    std::thread::sleep(Duration::from_secs(3));
    let mut closed = 0;
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        if next_pdu(s) == Err("closed") {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "silent connections still open");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(silent);

    // Fifty associations that are accepted and then say nothing: each is aborted (its slot
    // given to a newcomer) or rejected after waiting 30 s for one.
    let idle: Vec<std::thread::JoinHandle<Result<Pdu, &'static str>>> = (0..50)
        .map(|_| {
            let port = rig.port;
            std::thread::spawn(move || {
                let mut s = connect(port);
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(&request("BEDSIDE", 1)).unwrap();
                match next_pdu(&mut s) {
                    Ok(Pdu::AssociationAC(_)) => next_pdu(&mut s),
                    other => other,
                }
            })
        })
        .collect();
    let (mut aborted, mut rejected) = (0, 0);
    for t in idle {
        match t.join().unwrap() {
            a if is_abort(&a) => aborted += 1,
            Ok(Pdu::AssociationRJ(_)) => rejected += 1,
            other => panic!("an idle association ended with {other:?}"),
        }
    }
    eprintln!("fifty idle associations: {aborted} aborted, {rejected} rejected");

    let log = rig.served_throughout(modality, base, 10, "idle peers");
    assert!(log.contains("its slot went to a newcomer"), "{log}");
}
