//! Shared test harness: paths into the repository, a real Mosquitto broker on 127.0.0.1, an
//! MQTT subscriber, the finding schema, and DCMTK to make inputs.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `bedside ARGS…`, asserts it succeeded, and returns its stdout.
pub fn bedside_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = bedside().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "bedside failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The board profiles shipped in `board/`, sorted.
pub fn board_profiles() -> Vec<PathBuf> {
    let mut boards: Vec<_> = std::fs::read_dir(repo().join("board"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    boards.sort();
    boards
}

/// Puts a copy of `src` into the watched `inbox` as `name` the way a modality's export does:
/// written under another name, then renamed in whole.
pub fn drop_into(inbox: &Path, src: &Path, name: &str) {
    std::fs::create_dir_all(inbox).unwrap();
    let tmp = inbox.join(format!("{name}.part"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Copies the files of the model folder `src` into `dst` (made if missing), so that a test can
/// edit the copy's manifest.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

pub fn sample(name: &str) -> PathBuf {
    repo().join("tests/data").join(name)
}

pub fn model_dir() -> PathBuf {
    repo().join("models/cxr-tiny-cls")
}

pub fn bedside() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bedside"))
}

/// Patient identifiers planted in the sample files; they must never appear in any output.
pub const PLANTED_IDENTIFIERS: [&str; 4] = ["DOE", "JANE", "PID-0042-SYNTH", "19700101"];

pub fn assert_no_identifiers(text: &str, what: &str) {
    for id in PLANTED_IDENTIFIERS {
        assert!(
            !text.contains(id),
            "{what} leaks the patient identifier {id:?}:\n{text}"
        );
    }
}

/// Validates a finding against `docs/finding.schema.json`, panicking with every violation.
pub fn assert_valid_finding(finding: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/finding.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema itself is valid");
    let errors: Vec<String> = validator
        .iter_errors(finding)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "finding does not match the schema: {errors:#?}\n{finding:#}"
    );
}

/// The manifest's sha256 for the shipped model.
pub fn manifest_sha256() -> String {
    let text = std::fs::read_to_string(model_dir().join("model.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["model"]["sha256"].as_str().unwrap().to_owned()
}

/// Runs a DCMTK tool, failing the test with its output if it fails.
pub fn dcmtk(tool: &str, args: &[&Path]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (is DCMTK installed?): {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Mosquitto on 127.0.0.1, stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    pub dir: PathBuf,
}

impl Mosquitto {
    /// Starts a broker on `port`; with `persist`, its sessions and queued messages survive a
    /// restart in `dir`.
    pub fn start_on(port: u16, dir: &Path, persist: bool) -> Mosquitto {
        Self::start_with(port, dir, persist, "")
    }

    /// As [`Mosquitto::start_on`], with `extra` configuration lines for the listener (TLS,
    /// ACL, passwords, queue limits). Anonymous clients are allowed unless `extra` says.
    pub fn start_with(port: u16, dir: &Path, persist: bool, extra: &str) -> Mosquitto {
        let mut text = format!("listener {port} 127.0.0.1\n");
        if !extra.contains("allow_anonymous") {
            text.push_str("allow_anonymous true\n");
        }
        text.push_str(extra);
        text.push('\n');
        if persist {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        Self::start_conf(port, dir, &text)
    }

    /// Starts a broker with exactly this configuration (which must listen on `port`).
    pub fn start_conf(port: u16, dir: &Path, conf_text: &str) -> Mosquitto {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let mut text = conf_text.to_owned();
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write the
        // test's private temporary folder: stay the user who runs the test.
        if running_as_root() {
            text.push_str("\nuser root\n");
        }
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::options()
            .append(true)
            .create(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto (is it installed?)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            port,
            child,
            dir: dir.to_owned(),
        }
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGKILL: the broker dies without saving anything it has not saved already.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A subscriber on the test broker.
pub struct Subscriber {
    pub client: Client,
    conn: Connection,
    /// Messages that arrived while waiting for something else (a persistent session's queue
    /// can be delivered before the SUBACK).
    early: std::collections::VecDeque<Packet>,
}

impl Subscriber {
    /// Connects and subscribes at QoS 1, returning once the broker has confirmed the
    /// subscription. `session`: a persistent session under that client id.
    pub fn connect(port: u16, topic: &str, session: Option<&str>) -> Subscriber {
        // Unique per subscriber: two clients with one id make the broker drop the older one
        // (a port number from free_port() could repeat and did).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = session.map(str::to_owned).unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("test-sub-{}-{n}", std::process::id())
        });
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(session.is_none());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, conn) = Client::new(opts, 64);
        client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        let mut s = Subscriber {
            client,
            conn,
            early: Default::default(),
        };
        s.wait_for(Duration::from_secs(10), |p| matches!(p, Packet::SubAck(_)))
            .expect("no SUBACK from the broker");
        s
    }

    fn wait_for(&mut self, timeout: Duration, want: impl Fn(&Packet) -> bool) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.conn.recv_timeout(left) {
                Ok(Ok(Event::Incoming(p))) if want(&p) => return Some(p),
                Ok(Ok(Event::Incoming(p @ Packet::Publish(_)))) => self.early.push_back(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
                Err(_) => return None,
            }
        }
    }

    /// The next message on the subscription, as (topic, JSON), within `timeout`.
    pub fn next_json(&mut self, timeout: Duration) -> Option<(String, serde_json::Value)> {
        let packet = match self.early.pop_front() {
            Some(p) => p,
            None => self.wait_for(timeout, |p| matches!(p, Packet::Publish(_)))?,
        };
        match packet {
            Packet::Publish(p) => {
                let text = String::from_utf8(p.payload.to_vec()).expect("payload is UTF-8");
                assert_no_identifiers(&text, "an MQTT message");
                Some((
                    p.topic,
                    serde_json::from_str(&text).expect("payload is JSON"),
                ))
            }
            _ => unreachable!(),
        }
    }

    /// Disconnects cleanly (the broker keeps a persistent session).
    pub fn disconnect(mut self) {
        self.client.disconnect().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.conn.recv_timeout(left) {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => {
                    return;
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A board profile for a test: inbox and state in `dir`, broker on `port`.
pub fn write_board(dir: &Path, port: u16) -> PathBuf {
    write_board_with(dir, &format!("url = \"mqtt://127.0.0.1:{port}\""), "")
}

/// A board profile for the test in `dir`: `mqtt` is the body of its `[mqtt]` table after
/// the defaults (at least `url`), `tail` any further tables.
pub fn write_board_with(dir: &Path, mqtt: &str, tail: &str) -> PathBuf {
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

[[models]]
path = "{model}"

[mqtt]
keep_alive_s = 5
{mqtt}
{tail}
"#,
            inbox = dir.join("inbox").display(),
            state = dir.join("state").display(),
            model = model_dir().display(),
        ),
    )
    .unwrap();
    board
}

/// A running `bedside run`, stopped with SIGTERM.
pub struct Daemon {
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Daemon {
    pub fn start(board: &Path, dir: &Path) -> Daemon {
        Self::start_with_env(board, dir, &[])
    }

    pub fn start_with_env(board: &Path, dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let stderr_path = dir.join("daemon.log");
        let child = bedside()
            .arg("run")
            .arg("--board")
            .arg(board)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident set size, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL: the device vanishes without a word.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the whole log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop within 20 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `path` exists.
pub fn wait_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn run_infer(args: &[&std::ffi::OsStr]) -> Output {
    bedside()
        .arg("infer")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// Copies of a sample DICOM, each with its own SOP Instance UID (so each makes its own
/// finding id), written to `dir` as `img-0000.dcm`…; the files are made outside the inbox.
pub fn distinct_copies(src: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    use dicom_object::mem::InMemElement;
    std::fs::create_dir_all(dir).unwrap();
    let base = dicom_object::open_file(src).unwrap();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (0..n)
        .map(|i| {
            let uid = format!("2.25.{stamp}{i:05}");
            let mut obj = base.clone();
            obj.put(InMemElement::new(
                dicom_dictionary_std::tags::SOP_INSTANCE_UID,
                dicom_core::VR::UI,
                dicom_core::PrimitiveValue::from(uid.as_str()),
            ));
            obj.update_meta(|m| m.media_storage_sop_instance_uid = uid.clone());
            let path = dir.join(format!("img-{i:04}.dcm"));
            obj.write_to_file(&path).unwrap();
            path
        })
        .collect()
}

/// Moves files into the inbox one by one (rename: each arrives complete).
pub fn move_all_into(files: &[PathBuf], inbox: &Path) {
    std::fs::create_dir_all(inbox).unwrap();
    for f in files {
        std::fs::rename(f, inbox.join(f.file_name().unwrap())).unwrap();
    }
}

/// A consumer in the background with a persistent session that rides out broker restarts
/// (reconnecting, and subscribing again if the broker forgot it) and counts every finding
/// id it receives.
pub struct Collector {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    docs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    leak: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(port: u16, topic: &str, client_id: &str) -> Collector {
        use std::sync::atomic::Ordering;
        let seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
            Default::default();
        let docs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let leak: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(opts, 64);
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let thread = {
            let seen = seen.clone();
            let docs = docs.clone();
            let leak = leak.clone();
            let stop = stop.clone();
            let topic = topic.to_owned();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match conn.recv_timeout(Duration::from_millis(200)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                            if a.session_present {
                                let _ = subscribed_tx.send(());
                            } else {
                                client.try_subscribe(&topic, QoS::AtLeastOnce).unwrap();
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = subscribed_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            // Checked here, reported by the test thread (a panic in this
                            // thread would only stop the counting).
                            if PLANTED_IDENTIFIERS.iter().any(|id| text.contains(id)) {
                                *leak.lock().unwrap() = Some(text.clone());
                            }
                            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                            let id = v["id"].as_str().unwrap().to_owned();
                            *seen.lock().unwrap().entry(id).or_default() += 1;
                            docs.lock().unwrap().push(v);
                        }
                        Ok(Ok(_)) => {}
                        // The broker went away: rumqttc reconnects on the next poll.
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                        Err(_) => {}
                    }
                }
                let _ = client.try_disconnect();
            })
        };
        subscribed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the collector could not subscribe");
        Collector {
            seen,
            docs,
            leak,
            stop,
            thread: Some(thread),
        }
    }

    /// Every message received, in order.
    pub fn docs(&self) -> Vec<serde_json::Value> {
        self.docs.lock().unwrap().clone()
    }

    /// Distinct finding ids received (and a panic if any message leaked an identifier).
    pub fn unique(&self) -> usize {
        if let Some(text) = self.leak.lock().unwrap().as_ref() {
            assert_no_identifiers(text, "an MQTT message");
        }
        self.seen.lock().unwrap().len()
    }

    /// Messages received beyond the first for each id.
    pub fn duplicates(&self) -> u32 {
        self.seen.lock().unwrap().values().map(|n| n - 1).sum()
    }

    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }

    /// Waits until `n` distinct ids have arrived.
    pub fn wait_unique(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.unique() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.unique() >= n
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The finding ids a daemon log says were made.
pub fn ids_in_log(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("finding made"))
        .filter_map(|l| l.split(" id=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Waits until `dir` holds `n` files.
pub fn wait_count(dir: &Path, n: usize, timeout: Duration) -> bool {
    let count = || std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if count() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    count() >= n
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and certificates it signs (P-256 keys): `<name>.pem` and `<name>.key` in `dir`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, ca: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        Pki {
            dir: dir.to_owned(),
        }
    }

    /// A leaf certificate; `san` like `IP:127.0.0.1` for a server.
    pub fn issue(&self, name: &str, san: Option<&str>) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let ext = self.dir.join(format!("{name}.ext"));
        let mut text = String::from("basicConstraints=CA:FALSE\n");
        if let Some(san) = san {
            text.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(&ext, text).unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// A Mosquitto that saves its sessions and queues on every change (a SIGKILL still loses
/// what it acknowledged in the last moment before saving).
pub const DURABLE_BROKER: &str =
    "max_queued_messages 0\nautosave_on_changes true\nautosave_interval 1\n";

/// A small xorshift generator for tests that act at random moments: the seed is printed, and
/// `BEDSIDE_TEST_SEED` replays a run.
pub struct Rng(u64);
impl Rng {
    pub fn from_time() -> Rng {
        let seed = std::env::var("BEDSIDE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("random seed: BEDSIDE_TEST_SEED={seed}");
        Rng(seed)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `storescu` sends one file to BEDSIDE on 127.0.0.1:`port` in its own association (as
/// XRAY-1, with `-v` so that the response is printed); whether it was acknowledged with
/// success, and what storescu said.
pub fn store_one(port: u16, file: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new("storescu")
        .args(["-aet", "XRAY-1", "-aec", "BEDSIDE", "-v"])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(file)
        .output()
        .expect("cannot run storescu (is DCMTK installed?)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (text.contains("Received Store Response (Success)"), text)
}

/// A process's open files and threads, from /proc.
pub fn fds_and_threads(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/PID/status");
    (fds, threads)
}

/// A board with the SCP on `dicom_port` (AE BEDSIDE) for cxr-tiny-cls, and the ultrasound
/// clip replayed in a loop into us-fast-fluid, publishing a summary every
/// `publish_interval_s`.
pub fn scp_and_video_board(
    dir: &Path,
    mqtt_port: u16,
    dicom_port: u16,
    publish_interval_s: u32,
) -> PathBuf {
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/data/us/fast-clip.json")).unwrap(),
    )
    .unwrap();
    write_board_with(
        dir,
        &format!("url = \"mqtt://127.0.0.1:{mqtt_port}\""),
        &format!(
            "[dicom]\nae_title = \"BEDSIDE\"\nport = {dicom_port}\nbind = \"127.0.0.1\"\n\n\
             [[models]]\npath = \"{}\"\nsources = [\"video\"]\n\n\
             [video]\nsource = \"replay\"\ncrop = {}\nthreads = 1\nwindow_frames = 5\n\
             publish_interval_s = {publish_interval_s}\n[video.replay]\npath = \"{}\"\nloop = true\n",
            repo().join("models/us-fast-fluid").display(),
            facts["crop"],
            repo().join("tests/data/us/fast-clip.dcm").display()
        ),
    )
}

/// The reasons (`*.reason` files) of what was set aside in a `failed/` folder.
pub fn failed_reasons(failed: &Path) -> Vec<String> {
    std::fs::read_dir(failed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "reason"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Runs `cmd` to its end and returns its output, or kills it once `limit` has passed and
/// returns `None`: a test never waits forever on a child that should have stopped by itself.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // Read both pipes beside the wait, so that a talkative child never blocks on a full one.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}
