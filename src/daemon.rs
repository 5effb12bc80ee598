//! `bedside run`: the daemon. One thread decodes and runs models on inbox files (never the
//! async reactor, which only carries MQTT and signals); findings go to the publisher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::board::{BoardError, BoardProfile};
use crate::finding::Finding;
use crate::model::ModelError;
use crate::pipeline::{Identity, Processor};
use crate::publish::{Publisher, PublisherConfig, StatusDoc};
use crate::service::{self, Heartbeat};
use crate::source::SourceKind;
use crate::source::watch::Inbox;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the image worker thread stopped unexpectedly")]
    WorkerFailed,
    #[error("cannot watch the inbox {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// How long the daemon waits at shutdown for the broker to acknowledge what it has.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Builds the processor for a board: identity from the profile, every listed model loaded.
pub fn processor_for(profile: &BoardProfile) -> Result<Processor, DaemonError> {
    let identity = Identity::for_board(profile)?;
    let dirs: Vec<&Path> = profile.models.iter().map(|m| m.path.as_path()).collect();
    Ok(Processor::new(identity, &dirs)?)
}

/// Runs until SIGTERM or SIGINT.
pub fn run(profile: BoardProfile) -> Result<(), DaemonError> {
    let processor = processor_for(&profile)?;
    let models: Vec<_> = processor.engines().map(|e| e.model_ref().clone()).collect();
    for m in &models {
        info!(model = %m.id, version = %m.version, sha256 = %m.sha256, "model loaded and verified");
    }
    let inbox = Inbox::open(&profile.paths.inbox, &profile.paths.state).map_err(|source| {
        DaemonError::Io {
            what: "cannot create the inbox and state folders".into(),
            source,
        }
    })?;
    let broker = profile
        .broker()
        .expect("validated when the profile was loaded");
    let config = PublisherConfig {
        host: broker.host,
        port: broker.port,
        client_id: profile.client_id(),
        keep_alive: Duration::from_secs(profile.mqtt.keep_alive_s),
        queue: profile.mqtt.queue,
        findings_topic: profile.topic("findings"),
        status_topic: profile.topic("status"),
    };
    let status = StatusDoc {
        state: "online",
        device: profile.device.id.clone(),
        site: profile.device.site.clone(),
        board: profile.device.board.clone(),
        version: env!("CARGO_PKG_VERSION"),
        models,
        since: crate::finding::now_rfc3339(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bedside-io")
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let (publisher, connection) = Publisher::start(config, status);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel(64);
        // Watch before the worker scans, so that no file slips between scan and watch.
        let watcher = inbox.watch(tx).map_err(|source| DaemonError::Watch {
            path: inbox.dir.clone(),
            source,
        })?;
        let (alive, worker_ended) = tokio::sync::oneshot::channel::<()>();
        let heartbeat = Heartbeat::new();
        let worker = {
            let worker = Worker {
                processor,
                inbox: inbox.clone(),
                publisher: publisher.clone(),
                rt: Handle::current(),
                stop: stop.clone(),
                heartbeat: heartbeat.clone(),
                made: 0,
                failed: 0,
            };
            std::thread::Builder::new()
                .name("bedside-dicom".into())
                .spawn(move || {
                    // Dropped when the thread ends, however it ends.
                    let _alive = alive;
                    worker.run(rx)
                })
                .map_err(|source| DaemonError::Io {
                    what: "cannot start the worker thread".into(),
                    source,
                })?
        };
        info!(inbox = %inbox.dir.display(), findings = %profile.topic("findings"), "bedside running");
        service::ready(&format!("watching {}", inbox.dir.display()));
        let watchdog = service::watchdog_period().map(|period| {
            info!(?period, "feeding the service manager's watchdog while the image worker is alive");
            tokio::spawn(service::feed_watchdog(period, heartbeat))
        });
        let worker_failed = tokio::select! {
            _ = wait_for_signal() => false,
            _ = worker_ended => true,
        };
        if worker_failed {
            error!("the image worker stopped unexpectedly; shutting down so that the service manager restarts bedside");
        } else {
            info!("stopping: finishing the current image");
        }
        service::stopping();
        if let Some(w) = watchdog {
            w.abort();
        }
        drop(watcher);
        stop.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        let lost = publisher.shutdown(connection, SHUTDOWN_GRACE).await;
        if lost > 0 {
            warn!("{lost} messages were never acknowledged by the broker and are lost (findings are held in memory only)");
        }
        if worker_failed {
            return Err(DaemonError::WorkerFailed);
        }
        info!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            warn!("cannot listen for SIGTERM ({e}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The image worker: owns the models, runs on its own thread.
struct Worker {
    processor: Processor,
    inbox: Inbox,
    publisher: Publisher,
    rt: Handle,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    made: u64,
    failed: u64,
}

impl Worker {
    /// Files already waiting first, then files as they complete.
    fn run(mut self, rx: Receiver<PathBuf>) {
        let waiting = self.inbox.scan().unwrap_or_else(|e| {
            error!("cannot list the inbox {}: {e}", self.inbox.dir.display());
            Vec::new()
        });
        if !waiting.is_empty() {
            info!(files = waiting.len(), "processing files left in the inbox");
        }
        for file in waiting {
            if self.stopping() {
                return;
            }
            self.handle_file(&file);
        }
        while !self.stopping() {
            self.heartbeat.beat();
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(file) => self.handle_file(&file),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn handle_file(&mut self, file: &Path) {
        self.heartbeat.beat();
        if !file.exists() {
            return; // seen twice (scan and event): already handled
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self.processor.process_file(file, SourceKind::WatchFolder) {
            Ok(findings) => {
                for f in &findings {
                    info!(
                        file = %name,
                        id = %f.id,
                        model = %f.model.id,
                        over_threshold = ?f.over_threshold,
                        total_ms = f.timings_ms.total,
                        "finding made"
                    );
                    self.publish(f);
                    self.made += 1;
                }
                if let Err(e) = self.inbox.mark_done(file) {
                    error!(file = %name, "processed, but cannot move it to {}: {e}", self.inbox.done.display());
                }
            }
            Err(e) => {
                self.failed += 1;
                warn!(file = %name, "no finding: {e}");
                if let Err(m) = self.inbox.mark_failed(file, &e.to_string()) {
                    error!(file = %name, "cannot move it to {}: {m}", self.inbox.failed.display());
                }
            }
        }
        self.heartbeat.beat();
        service::status(&format!(
            "{} findings made, {} files failed; broker {}",
            self.made,
            self.failed,
            if self.publisher.is_connected() {
                "connected"
            } else {
                "unreachable"
            }
        ));
    }

    /// Hands a finding to the publisher, waiting while its queue is full unless the daemon
    /// stops. Waiting is not a stall: the heartbeat goes on.
    fn publish(&self, finding: &Finding) {
        loop {
            self.heartbeat.beat();
            let attempt = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(500), self.publisher.publish(finding))
                    .await
            });
            match attempt {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    error!(id = %finding.id, "cannot publish: {e}");
                    return;
                }
                Err(_) if self.stopping() => {
                    warn!(id = %finding.id, "stopping with the publish queue full: finding not sent");
                    return;
                }
                Err(_) => {}
            }
        }
    }
}
