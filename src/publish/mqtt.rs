//! MQTT with rumqttc, fed from the durable outbox: the worker records a finding (written and
//! synced) and returns; this module sends what the outbox holds at QoS 1, at most
//! `inflight` at a time, and marks each delivered only when the broker's PUBACK for it
//! arrives. Persistent session, MQTT 5 (or 3.1.1), reconnection with capped exponential
//! backoff and jitter, a retained status with a last will, and a periodic metrics topic.
//!
//! # Matching acknowledgements to records
//! rumqttc picks packet ids itself and reports each first transmission as
//! `Outgoing::Publish(pkid)`, in the order requests were queued; it resends unacknowledged
//! messages itself when the broker resumes the session. So every QoS 1 request we queue
//! also goes into a FIFO (under one lock, so both orders agree); a transmission whose pkid
//! is already mapped is a resend, any other takes the FIFO's head. When the broker starts
//! a new session, rumqttc drops what it held, and every record in flight goes back in line.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::outbox::{Class, Outbox, OutboxError};
use crate::board::{BrokerAddr, Protocol};
use crate::finding::Finding;
use crate::model::ModelRef;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode finding {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(
        "finding {id} is {bytes} bytes; findings are at most {max} (the memory plan counts on it)"
    )]
    TooLarge {
        id: String,
        bytes: usize,
        max: usize,
    },
}

impl PublishError {
    /// The finding was refused for lack of room: keep its source and try again later.
    pub fn is_full(&self) -> bool {
        matches!(self, PublishError::Outbox(e) if e.is_full())
    }
}

#[derive(Clone)]
pub struct PublisherConfig {
    pub broker: BrokerAddr,
    pub client_id: String,
    pub keep_alive: Duration,
    pub protocol: Protocol,
    /// Findings sent and not yet acknowledged, at most.
    pub inflight: u16,
    pub metrics_interval: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub topics: Topics,
    /// The largest payload sent (the outbox's largest record).
    pub max_payload: usize,
    pub identity: DeviceStatus,
}

#[derive(Debug, Clone)]
pub struct Topics {
    pub findings: String,
    pub status: String,
    pub metrics: String,
}

/// Who this device is, for the status topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub device: String,
    pub site: String,
    pub board: String,
    pub version: &'static str,
    pub models: Vec<ModelRef>,
    /// When this process started, RFC 3339.
    pub since: String,
}

/// The retained document on the status topic ("birth" when online, last will when offline).
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc<'a> {
    pub state: &'static str,
    #[serde(flatten)]
    pub device: &'a DeviceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStatus>,
    /// The live video camera's state, when the device has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<&'a serde_json::Value>,
    /// The last model update this process tried: taken, or refused and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_update: Option<&'a serde_json::Value>,
    /// The DICOM results' outbox: bytes on disk, and per destination what waits, what went to
    /// the dead-letter folder, what was sent, whether it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom_outbox: Option<&'a serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutboxStatus {
    /// Findings waiting for the broker.
    pub depth: usize,
    pub bytes: u64,
    pub max_records: usize,
    pub max_bytes: u64,
    /// New findings are being refused (see `publish::outbox`).
    pub full: bool,
}

/// Makes the `video` part of a metrics document.
pub type VideoMetrics = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Counters the daemon keeps for the metrics topic.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Images (files, objects, frames) processed into findings.
    pub inputs_processed: AtomicU64,
    /// Inputs that could not be read or processed.
    pub inputs_failed: AtomicU64,
    /// Inputs left for later because the outbox was full.
    pub inputs_deferred: AtomicU64,
    pub reconnects: AtomicU64,
    /// Messages rumqttc sent again on a resumed session.
    pub resent: AtomicU64,
    /// Findings the broker refused (MQTT 5 reason code), kept and retried.
    pub rejected: AtomicU64,
}

#[derive(Clone)]
enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    fn try_publish(&self, topic: &str, qos1: bool, retain: bool, payload: Vec<u8>) -> bool {
        let r = match self {
            Client::V311(c) => {
                let qos = if qos1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload).is_ok()
            }
            Client::V5(c) => {
                let qos = if qos1 {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload).is_ok()
            }
        };
        if !r {
            debug!(topic, "the MQTT request channel is full");
        }
        r
    }

    fn try_disconnect(&self) {
        match self {
            Client::V311(c) => {
                let _ = c.try_disconnect();
            }
            Client::V5(c) => {
                let _ = c.try_disconnect();
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Client::V311(_) => "3.1.1",
            Client::V5(_) => "5",
        }
    }
}

enum Events {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the connection task reacts to, the same for both protocol versions.
enum Ev {
    ConnAck {
        session_present: bool,
    },
    /// A QoS 1 message went out (first time or again).
    Sent(u16),
    /// `refused`: the broker's reason when it did not accept the message (MQTT 5).
    PubAck {
        pkid: u16,
        refused: Option<String>,
    },
    Other,
}

enum LinkError {
    /// The broker answered in a way that suggests it does not speak this protocol version.
    Protocol(String),
    Other(String),
}

impl Events {
    async fn poll(&mut self) -> Result<Ev, LinkError> {
        match self {
            Events::V311(e) => {
                use rumqttc::{ConnectionError as E, Event, Outgoing, Packet};
                match e.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(Ev::ConnAck {
                        session_present: a.session_present,
                    }),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ok(Ev::PubAck {
                        pkid: a.pkid,
                        refused: None,
                    }),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                    Ok(_) => Ok(Ev::Other),
                    Err(e @ E::ConnectionRefused(_)) => Err(LinkError::Other(refusal(&e))),
                    Err(e) => Err(LinkError::Other(describe(&e))),
                }
            }
            Events::V5(e) => {
                use rumqttc::Outgoing;
                use rumqttc::v5::mqttbytes::Error as M;
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C, Packet, PubAckReason};
                use rumqttc::v5::{ConnectionError as E, Event, StateError};
                match e.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(Ev::ConnAck {
                        session_present: a.session_present,
                    }),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ok(Ev::PubAck {
                        pkid: a.pkid,
                        refused: match a.reason {
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                            other => Some(format!(
                                "{other:?}{}",
                                a.properties
                                    .and_then(|p| p.reason_string)
                                    .map(|s| format!(": {s}"))
                                    .unwrap_or_default()
                            )),
                        },
                    }),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                    Ok(_) => Ok(Ev::Other),
                    Err(
                        e @ E::ConnectionRefused(
                            C::RefusedProtocolVersion | C::UnsupportedProtocolVersion,
                        ),
                    ) => Err(LinkError::Protocol(refusal(&e))),
                    // What a 3.1.1-only broker's answer looks like to an MQTT 5 client.
                    Err(
                        e @ (E::NotConnAck(_)
                        | E::MqttState(StateError::Deserialization(
                            M::InvalidConnectReturnCode(_)
                            | M::InvalidProtocol
                            | M::InvalidProtocolLevel(_)
                            | M::MalformedPacket,
                        ))),
                    ) => Err(LinkError::Protocol(describe(&e))),
                    Err(e @ E::ConnectionRefused(_)) => Err(LinkError::Other(refusal(&e))),
                    Err(e) => Err(LinkError::Other(describe(&e))),
                }
            }
        }
    }
}

fn refusal(e: &dyn std::fmt::Display) -> String {
    format!("the broker refused the connection ({e})")
}

/// The error with its causes, and a hint where the cause is a certificate.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    if text.contains("invalid peer certificate") {
        text.push_str(
            " — the broker's certificate does not verify against mqtt.tls.ca_file (or does not name this host); refusing to talk to it",
        );
    } else if text.contains("CertificateRequired") {
        text.push_str(
            " — the broker wants a client certificate: set mqtt.tls.client_cert_file and client_key_file",
        );
    }
    text
}

/// Builds a client and its event loop for one protocol version.
fn link(config: &PublisherConfig, v5: bool, will: Vec<u8>) -> (Client, Events) {
    let b = &config.broker;
    let channel = config.inflight as usize + 8;
    let transport = match &config.tls {
        Some(tls) => {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone()))
        }
        None => rumqttc::Transport::tcp(),
    };
    if v5 {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::LastWill;
        let mut o = rumqttc::v5::MqttOptions::new(&config.client_id, &b.host, b.port);
        o.set_keep_alive(config.keep_alive)
            .set_clean_start(false)
            // The broker keeps our session (and its unacknowledged messages) for a week.
            .set_session_expiry_interval(Some(7 * 24 * 3600))
            .set_outgoing_inflight_upper_limit(config.inflight + 4)
            .set_max_packet_size(Some(64 * 1024))
            .set_last_will(LastWill::new(
                &config.topics.status,
                will,
                QoS::AtLeastOnce,
                true,
                None,
            ))
            .set_transport(transport);
        if let Some((u, p)) = &config.credentials {
            o.set_credentials(u, p);
        }
        let (c, e) = rumqttc::v5::AsyncClient::new(o, channel);
        (Client::V5(c), Events::V5(Box::new(e)))
    } else {
        let mut o = rumqttc::MqttOptions::new(&config.client_id, &b.host, b.port);
        o.set_keep_alive(config.keep_alive)
            .set_clean_session(false)
            .set_inflight(config.inflight + 4)
            .set_max_packet_size(64 * 1024, config.max_payload + 1024)
            .set_last_will(rumqttc::LastWill::new(
                &config.topics.status,
                will,
                rumqttc::QoS::AtLeastOnce,
                true,
            ))
            .set_transport(transport);
        if let Some((u, p)) = &config.credentials {
            o.set_credentials(u, p);
        }
        let (c, e) = rumqttc::AsyncClient::new(o, channel);
        (Client::V311(c), Events::V311(Box::new(e)))
    }
}

/// Everything the two tasks and the worker share, under one lock.
struct Flight {
    outbox: Outbox,
    client: Client,
    connected: bool,
    /// Requests queued in rumqttc, in order, not yet transmitted: a record, or `None` for a
    /// status message.
    queued: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, Option<u64>>,
    findings_in_flight: usize,
    statuses_in_flight: usize,
    status_dirty: bool,
    full_reported: bool,
    /// After the broker refused a finding, wait before sending findings again.
    hold_until: Option<Instant>,
    buf: Vec<u8>,
    video: Option<serde_json::Value>,
    /// Who this device is, with the models serving now (updates change them).
    identity: DeviceStatus,
    model_update: Option<serde_json::Value>,
    dicom_outbox: Option<serde_json::Value>,
}

struct Shared {
    config: PublisherConfig,
    flight: Mutex<Flight>,
    wake: Notify,
    metrics: Metrics,
    /// The live pipeline's part of the metrics document, when there is one.
    video_metrics: std::sync::OnceLock<VideoMetrics>,
    memory_plan: std::sync::OnceLock<(u64, u64, Option<u64>)>,
    /// Told of every finding recorded (the findings page), on the recording thread.
    observer: std::sync::OnceLock<Observer>,
    /// Where each recorded finding and each delivery is noted, when the trail is on.
    audit: std::sync::OnceLock<Arc<crate::audit::AuditTrail>>,
    started: Instant,
    /// Set when this process disconnects at shutdown: the connection closing then is ours,
    /// not an outage to report.
    disconnecting: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Flight> {
        // A panic while holding the lock leaves counters at worst; the outbox on disk is
        // the truth, so carry on rather than poison every later call.
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status_payload(&self, f: &Flight, online: bool) -> Vec<u8> {
        let doc = StatusDoc {
            state: if online { "online" } else { "offline" },
            device: &f.identity,
            protocol: Some(f.client.name()),
            outbox: Some(outbox_status(&f.outbox)),
            video: f.video.as_ref(),
            model_update: f.model_update.as_ref(),
            dicom_outbox: f.dicom_outbox.as_ref(),
        };
        serde_json::to_vec(&doc).expect("status serialises")
    }

    /// Sends what can be sent: a changed status, then findings while the window allows.
    fn pump(&self) {
        let mut guard = self.lock();
        let f = &mut *guard;
        if !f.connected {
            return;
        }
        if f.status_dirty {
            let payload = self.status_payload(f, true);
            f.queued.push_back(None);
            if f.client
                .try_publish(&self.config.topics.status, true, true, payload)
            {
                f.statuses_in_flight += 1;
                f.status_dirty = false;
            } else {
                f.queued.pop_back();
            }
        }
        if f.hold_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        while f.findings_in_flight < self.config.inflight as usize {
            let seq = match f.outbox.take_next(&mut f.buf) {
                Ok(Some(seq)) => seq,
                Ok(None) => break,
                Err(e) => {
                    error!("{e}; that record is skipped");
                    continue;
                }
            };
            f.queued.push_back(Some(seq));
            let payload = f.buf.clone();
            if !f
                .client
                .try_publish(&self.config.topics.findings, true, false, payload)
            {
                f.queued.pop_back();
                f.outbox.requeue(seq);
                break;
            }
            f.findings_in_flight += 1;
        }
    }

    fn on_connack(&self, session_present: bool) {
        let mut f = self.lock();
        if !session_present {
            // rumqttc dropped whatever it held for the old session: send those records again.
            f.outbox.requeue_all();
            f.queued.clear();
            f.by_pkid.clear();
            f.findings_in_flight = 0;
            f.statuses_in_flight = 0;
        }
        f.connected = true;
        f.status_dirty = true;
        drop(f);
        self.wake.notify_one();
    }

    fn on_sent(&self, pkid: u16) {
        if pkid == 0 {
            return; // QoS 0 (metrics)
        }
        let mut f = self.lock();
        if f.by_pkid.contains_key(&pkid) {
            self.metrics.resent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match f.queued.pop_front() {
            Some(what) => {
                f.by_pkid.insert(pkid, what);
            }
            None => warn!(pkid, "a QoS 1 message went out that bedside did not queue"),
        }
    }

    fn on_puback(&self, pkid: u16, refused: Option<String>) {
        let mut f = self.lock();
        match f.by_pkid.remove(&pkid) {
            Some(Some(seq)) => {
                f.findings_in_flight = f.findings_in_flight.saturating_sub(1);
                match refused {
                    None => {
                        if let Err(e) = f.outbox.settle(seq) {
                            error!(
                                "delivered, but cannot record it in the outbox ({e}); it may be sent again"
                            );
                        }
                        if let Some(audit) = self.audit.get() {
                            audit.delivered(seq);
                        }
                    }
                    Some(reason) => {
                        let n = self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        if n == 0 || n.is_power_of_two() {
                            warn!(
                                "the broker refused a finding ({reason}); it stays in the outbox and is retried ({} refusals so far)",
                                n + 1
                            );
                        }
                        f.outbox.requeue(seq);
                        f.hold_until = Some(Instant::now() + Duration::from_secs(5));
                    }
                }
                if f.full_reported && !f.outbox.is_full() {
                    f.full_reported = false;
                    f.status_dirty = true;
                    info!("the outbox has room again");
                }
            }
            Some(None) => f.statuses_in_flight = f.statuses_in_flight.saturating_sub(1),
            None => debug!(pkid, "acknowledgement for an unknown packet"),
        }
        drop(f);
        self.wake.notify_one();
    }

    fn publish_metrics(&self) {
        let f = self.lock();
        if !f.connected {
            return;
        }
        let m = &self.metrics;
        let stats = f.outbox.stats();
        let (rss, peak) = memory();
        let doc = serde_json::json!({
            "schema": "bedside.metrics.v1",
            "device": self.config.identity.device,
            "site": self.config.identity.site,
            "at": crate::finding::now_rfc3339(),
            "uptime_s": self.started.elapsed().as_secs(),
            "inputs": {
                "processed": m.inputs_processed.load(Ordering::Relaxed),
                "failed": m.inputs_failed.load(Ordering::Relaxed),
                "deferred": m.inputs_deferred.load(Ordering::Relaxed),
            },
            "findings": {
                "recorded": stats.appended,
                "delivered": stats.delivered,
                "refused": stats.refused,
            },
            "outbox": {
                "depth": f.outbox.depth(),
                "bytes": f.outbox.disk_bytes(),
                "memory_bytes": f.outbox.memory_bytes(),
                "full": f.outbox.is_full(),
            },
            "mqtt": {
                "protocol": f.client.name(),
                "in_flight": f.findings_in_flight,
                "reconnects": m.reconnects.load(Ordering::Relaxed),
                "resent": m.resent.load(Ordering::Relaxed),
                "rejected": m.rejected.load(Ordering::Relaxed),
            },
            "memory": {
                "rss_bytes": rss,
                "peak_rss_bytes": peak,
                "heap_bytes": crate::alloc::live_bytes(),
                "peak_heap_bytes": crate::alloc::peak_bytes(),
                "plan_bytes": self.memory_plan.get().map(|p| p.0),
                "plan_heap_bytes": self.memory_plan.get().map(|p| p.1),
                "budget_bytes": self.memory_plan.get().and_then(|p| p.2),
            },
        });
        let mut doc = doc;
        if let Some(video) = self.video_metrics.get() {
            doc["video"] = video();
        }
        // QoS 0: a lost sample is replaced by the next one, and never waits in the outbox.
        f.client.try_publish(
            &self.config.topics.metrics,
            false,
            false,
            doc.to_string().into_bytes(),
        );
    }
}

fn outbox_status(o: &Outbox) -> OutboxStatus {
    OutboxStatus {
        depth: o.depth(),
        bytes: o.disk_bytes(),
        max_records: o.config().max_records,
        max_bytes: o.config().max_bytes,
        full: o.is_full(),
    }
}

/// Resident and peak resident memory of this process, from /proc (0 where unavailable).
fn memory() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Called with every finding recorded and its JSON. It runs on the thread that records (the
/// image worker, the live pipeline), so it must not block.
pub type Observer = Arc<dyn Fn(&Finding, &[u8]) + Send + Sync>;

/// Handle for recording findings; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// The connection's tasks; stop them with [`Publisher::shutdown`].
pub struct Connection {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Publisher {
    /// Starts publishing what `outbox` holds, on the current tokio runtime. It connects in
    /// the background: a broker that is not there yet is reported once and retried.
    pub fn start(config: PublisherConfig, outbox: Outbox) -> (Publisher, Connection) {
        let v5 = config.protocol != Protocol::V311;
        let (client, events) = link(&config, v5, will(&config));
        let shared = Arc::new(Shared {
            flight: Mutex::new(Flight {
                outbox,
                client,
                connected: false,
                queued: VecDeque::new(),
                by_pkid: HashMap::new(),
                findings_in_flight: 0,
                statuses_in_flight: 0,
                status_dirty: true,
                full_reported: false,
                hold_until: None,
                buf: Vec::new(),
                video: None,
                identity: config.identity.clone(),
                model_update: None,
                dicom_outbox: None,
            }),
            config,
            wake: Notify::new(),
            metrics: Metrics::default(),
            video_metrics: std::sync::OnceLock::new(),
            memory_plan: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            audit: std::sync::OnceLock::new(),
            started: Instant::now(),
            disconnecting: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(drive(shared.clone(), events, stop_rx.clone())),
            tokio::spawn(send(shared.clone(), stop_rx)),
        ];
        (Publisher { shared }, Connection { tasks, stop })
    }

    /// Records a finding in the outbox (synced to disk when this returns `Ok`) for delivery.
    /// When the outbox is full the finding is refused ([`PublishError::is_full`]).
    pub fn record(&self, class: Class, finding: &Finding) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(finding).map_err(|source| PublishError::Encode {
            id: finding.id.clone(),
            source,
        })?;
        if payload.len() > crate::finding::MAX_FINDING_BYTES {
            return Err(PublishError::TooLarge {
                id: finding.id.clone(),
                bytes: payload.len(),
                max: crate::finding::MAX_FINDING_BYTES,
            });
        }
        let mut f = self.shared.lock();
        let result = f.outbox.append(class, &payload);
        let audit = self.shared.audit.get();
        if let (Ok(seq), Some(audit)) = (&result, audit) {
            // Under the lock: its "delivered" line cannot come first.
            audit.finding(finding, *seq);
        }
        if f.outbox.is_full() && !f.full_reported {
            f.full_reported = true;
            f.status_dirty = true;
            warn!(
                depth = f.outbox.depth(),
                bytes = f.outbox.disk_bytes(),
                "the outbox is full: new findings are refused (their images wait in the inbox) until the broker takes what it holds"
            );
        }
        drop(f);
        self.shared.wake.notify_one();
        result.map_err(PublishError::from)?;
        if let Some(audit) = audit {
            audit.sync();
        }
        if let Some(observe) = self.shared.observer.get() {
            observe(finding, &payload);
        }
        Ok(())
    }

    /// Notes every finding recorded from now on, and its delivery, in `trail` (once; a
    /// second is ignored).
    pub fn audit_to(&self, trail: Arc<crate::audit::AuditTrail>) {
        let _ = self.shared.audit.set(trail);
    }

    /// Tells `observer` of every finding recorded from now on (once; a second is ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.shared.observer.set(observer);
    }

    /// The status document as the broker would get it now, `state` online while connected.
    pub fn status_json(&self) -> Vec<u8> {
        let f = self.shared.lock();
        self.shared.status_payload(&f, f.connected)
    }

    pub fn is_connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// True when the outbox refuses new findings.
    pub fn is_full(&self) -> bool {
        self.shared.lock().outbox.is_full()
    }

    /// Findings recorded and not yet acknowledged by the broker.
    pub fn depth(&self) -> usize {
        self.shared.lock().outbox.depth()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Sets the DICOM outbox's part of the retained status document (republished at once).
    pub fn set_dicom_outbox(&self, state: serde_json::Value) {
        let mut f = self.shared.lock();
        f.dicom_outbox = Some(state);
        f.status_dirty = true;
        drop(f);
        self.shared.wake.notify_one();
    }

    /// Sets the camera's state in the retained status document (republished at once).
    pub fn set_video_status(&self, state: serde_json::Value) {
        let mut f = self.shared.lock();
        f.video = Some(state);
        f.status_dirty = true;
        drop(f);
        self.shared.wake.notify_one();
    }

    /// The models now serving, and what the last update did, in the retained status
    /// (republished at once).
    pub fn set_models(&self, models: Vec<ModelRef>, update: serde_json::Value) {
        let mut f = self.shared.lock();
        f.identity.models = models;
        f.model_update = Some(update);
        f.status_dirty = true;
        drop(f);
        self.shared.wake.notify_one();
    }

    /// The memory plan's totals, reported in every metrics document beside the measured heap
    /// and RSS.
    pub fn set_memory_plan(&self, total: u64, heap: u64, budget: Option<u64>) {
        let _ = self.shared.memory_plan.set((total, heap, budget));
    }

    /// Adds the live pipeline's counters to every metrics document.
    pub fn set_video_metrics(&self, make: VideoMetrics) {
        let _ = self.shared.video_metrics.set(make);
    }

    /// Waits up to `grace` for the broker to take what the outbox holds, then marks the
    /// device offline (retained) and disconnects. Returns how many findings stay in the
    /// outbox for the next start.
    pub async fn shutdown(&self, conn: Connection, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            let waiting = {
                let f = self.shared.lock();
                f.outbox.depth() > 0 && f.connected
            };
            if !waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent_offline = {
            let mut f = self.shared.lock();
            let payload = self.shared.status_payload(&f, false);
            if f.connected {
                f.queued.push_back(None);
                let ok =
                    f.client
                        .try_publish(&self.shared.config.topics.status, true, true, payload);
                if ok {
                    f.statuses_in_flight += 1;
                } else {
                    f.queued.pop_back();
                }
                ok
            } else {
                false
            }
        };
        if sent_offline {
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.shared.lock().statuses_in_flight > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.shared
                .disconnecting
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.shared.lock().client.try_disconnect();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.stop.send(true);
        for t in conn.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let mut f = self.shared.lock();
        if let Err(e) = f.outbox.sync_marks() {
            warn!("cannot sync the outbox's delivery marks ({e}); some findings may be sent again");
        }
        f.outbox.depth()
    }
}

/// The last will: the status the broker publishes for us if we vanish.
fn will(config: &PublisherConfig) -> Vec<u8> {
    serde_json::to_vec(&StatusDoc {
        state: "offline",
        device: &config.identity,
        protocol: None,
        outbox: None,
        video: None,
        model_update: None,
        dicom_outbox: None,
    })
    .expect("status serialises")
}

/// The connection task: drives rumqttc's event loop and turns its events into state.
async fn drive(shared: Arc<Shared>, mut events: Events, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let broker = format!(
        "{}://{}:{}",
        if config.broker.tls { "mqtts" } else { "mqtt" },
        config.broker.host,
        config.broker.port
    );
    let mut backoff = Duration::from_millis(250);
    let mut down_since: Option<Instant> = None;
    let mut last_error = String::new();
    let mut ever_connected = false;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.changed() => return,
        };
        match event {
            Ok(Ev::ConnAck { session_present }) => {
                let protocol = shared.lock().client.name();
                info!(
                    broker = %broker,
                    protocol,
                    session = if session_present { "resumed" } else { "new" },
                    "connected to MQTT broker"
                );
                if ever_connected {
                    shared.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(t) = down_since.take() {
                    info!(after = ?t.elapsed(), "the broker is back");
                }
                ever_connected = true;
                backoff = Duration::from_millis(250);
                last_error.clear();
                shared.on_connack(session_present);
            }
            Ok(Ev::Sent(pkid)) => shared.on_sent(pkid),
            Ok(Ev::PubAck { pkid, refused }) => shared.on_puback(pkid, refused),
            Ok(Ev::Other) => {}
            Err(e) => {
                shared.lock().connected = false;
                if shared
                    .disconnecting
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    debug!(broker = %broker, "connection closed after our disconnect");
                    return;
                }
                let (text, protocol_trouble) = match e {
                    LinkError::Protocol(t) => (t, true),
                    LinkError::Other(t) => (t, false),
                };
                let on_v5 = matches!(events, Events::V5(_));
                if protocol_trouble && on_v5 && !ever_connected && config.protocol == Protocol::Auto
                {
                    info!(broker = %broker, "the broker does not take MQTT 5 ({text}); using MQTT 3.1.1");
                    let (client, new_events) = link(config, false, will(config));
                    events = new_events;
                    let mut f = shared.lock();
                    f.client = client;
                    f.outbox.requeue_all();
                    f.queued.clear();
                    f.by_pkid.clear();
                    f.findings_in_flight = 0;
                    f.statuses_in_flight = 0;
                    continue;
                }
                if down_since.is_none() || text != last_error {
                    let depth = shared.lock().outbox.depth();
                    let tls = text.contains("certificate") || text.contains("TLS");
                    if tls {
                        error!(broker = %broker, "MQTT: {text}");
                    } else {
                        warn!(
                            broker = %broker,
                            outbox = depth,
                            "MQTT broker unreachable ({text}); findings wait in the outbox on disk and are sent when it is back; retrying"
                        );
                    }
                    last_error = text;
                } else {
                    debug!(broker = %broker, "still unreachable: {text}");
                }
                down_since.get_or_insert_with(Instant::now);
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The sending task: wakes when there is something to send (a new record, a free slot in
/// the window, a new connection) and on its timers (delivery marks, metrics).
async fn send(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sync = tokio::time::interval(Duration::from_secs(1));
    let mut metrics = tokio::time::interval(shared.config.metrics_interval);
    metrics.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        shared.pump();
        tokio::select! {
            _ = woken => {}
            _ = sync.tick() => {
                if let Err(e) = shared.lock().outbox.sync_marks() {
                    warn!("cannot sync the outbox's delivery marks ({e}); some findings may be sent again after a restart");
                }
            }
            _ = metrics.tick() => shared.publish_metrics(),
            _ = stop.changed() => return,
        }
    }
}

/// Spreads reconnections of a fleet of devices: 75–100 % of the nominal delay.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.75 + 0.25 * (nanos % 1000) as f64 / 1000.0)
}
