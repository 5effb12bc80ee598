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
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write the
        // test's private temporary folder: stay the user who runs the test.
        if running_as_root() {
            text.push_str("user root\n");
        }
        if persist {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
