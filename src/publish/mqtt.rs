//! Publishing over MQTT with rumqttc: findings at QoS 1, a retained status topic that a last
//! will turns to "offline" when the device vanishes, and reconnection with capped backoff.
//!
//! While the broker is away, findings wait in rumqttc's bounded request queue (memory only
//! for now; a durable outbox is a later step) and the pipeline waits when that is full, so
//! images stay in the inbox rather than being dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::finding::Finding;
use crate::model::ModelRef;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode finding {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("the MQTT client has stopped: {0}")]
    Stopped(String),
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    /// Messages that may wait in memory for the broker.
    pub queue: usize,
    pub findings_topic: String,
    pub status_topic: String,
}

/// The retained document on the status topic.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    pub state: &'static str,
    pub device: String,
    pub site: String,
    pub board: String,
    pub version: &'static str,
    pub models: Vec<ModelRef>,
    pub since: String,
}

#[derive(Debug, Default)]
struct Counters {
    /// QoS 1 messages handed to the client (findings and status).
    requested: AtomicU64,
    /// PUBACKs received.
    acked: AtomicU64,
    connected: AtomicBool,
}

/// Handle for publishing; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    config: Arc<PublisherConfig>,
    counters: Arc<Counters>,
    offline: Arc<Vec<u8>>,
}

/// The connection task; stop it with [`Publisher::shutdown`].
pub struct Connection {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Publisher {
    /// Starts the connection task on the current tokio runtime. It connects in the
    /// background: a broker that is not there yet is reported once and retried.
    pub fn start(config: PublisherConfig, status: StatusDoc) -> (Publisher, Connection) {
        let offline = serde_json::to_vec(&StatusDoc {
            state: "offline",
            ..status.clone()
        })
        .expect("status serialises");
        let online = serde_json::to_vec(&status).expect("status serialises");
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options.set_keep_alive(config.keep_alive);
        options.set_last_will(LastWill::new(
            &config.status_topic,
            offline.clone(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, eventloop) = AsyncClient::new(options, config.queue.max(1));
        let publisher = Publisher {
            client,
            config: Arc::new(config),
            counters: Arc::default(),
            offline: Arc::new(offline),
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(drive(eventloop, publisher.clone(), online, stop_rx));
        (publisher, Connection { task, stop })
    }

    /// Queues a finding for delivery at QoS 1; waits while the in-memory queue is full.
    pub async fn publish(&self, finding: &Finding) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(finding).map_err(|source| PublishError::Encode {
            id: finding.id.clone(),
            source,
        })?;
        self.counters.requested.fetch_add(1, Ordering::SeqCst);
        self.client
            .publish(
                &self.config.findings_topic,
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| PublishError::Stopped(e.to_string()))
    }

    pub fn is_connected(&self) -> bool {
        self.counters.connected.load(Ordering::SeqCst)
    }

    /// Messages handed over but not yet acknowledged by the broker.
    pub fn unacknowledged(&self) -> u64 {
        let r = self.counters.requested.load(Ordering::SeqCst);
        r.saturating_sub(self.counters.acked.load(Ordering::SeqCst))
    }

    /// Waits up to `grace` for outstanding messages, then marks the device offline (retained)
    /// and disconnects. Returns how many messages were never acknowledged.
    pub async fn shutdown(&self, conn: Connection, grace: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + grace;
        while self.unacknowledged() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lost = self.unacknowledged();
        if self.is_connected() {
            self.counters.requested.fetch_add(1, Ordering::SeqCst);
            let status = self.client.try_publish(
                &self.config.status_topic,
                QoS::AtLeastOnce,
                true,
                self.offline.as_ref().clone(),
            );
            if status.is_ok() {
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while self.unacknowledged() > lost && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let _ = self.client.try_disconnect();
        }
        let _ = conn.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.task).await;
        lost
    }
}

async fn drive(
    mut eventloop: EventLoop,
    publisher: Publisher,
    online: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) {
    let broker = format!("{}:{}", publisher.config.host, publisher.config.port);
    let mut backoff = Duration::from_millis(250);
    let mut reported_down = false;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.changed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %broker, "connected to MQTT broker");
                publisher.counters.connected.store(true, Ordering::SeqCst);
                reported_down = false;
                backoff = Duration::from_millis(250);
                // Retained, so that anyone subscribing later sees the device online.
                publisher.counters.requested.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = publisher.client.try_publish(
                    &publisher.config.status_topic,
                    QoS::AtLeastOnce,
                    true,
                    online.clone(),
                ) {
                    publisher.counters.requested.fetch_sub(1, Ordering::SeqCst);
                    warn!("could not queue the online status: {e}");
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                publisher.counters.acked.fetch_add(1, Ordering::SeqCst);
                debug!(pkid = ack.pkid, "broker acknowledged a message");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                publisher.counters.connected.store(false, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => {
                publisher.counters.connected.store(false, Ordering::SeqCst);
                if !reported_down {
                    warn!(
                        broker = %broker,
                        "MQTT broker unreachable ({e}); findings are kept in memory and sent when it is back; retrying"
                    );
                    reported_down = true;
                } else {
                    debug!(broker = %broker, "still unreachable: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
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
