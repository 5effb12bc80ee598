//! `bedside run`: the daemon. Image workers decode and run models on inbox and spooled
//! files ([`images`]; never the async reactor, which only carries MQTT, the SCP, the page
//! and signals); findings go to the publisher.

mod images;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::board::ModelSource;
use crate::board::{BoardError, BoardProfile, Video, VideoSource};
use crate::dicom::outbox::{DicomOutbox, DicomOutboxError};
use crate::dicom::results::ResultKind;
use crate::dicom::send;
use crate::live::{CameraState, FindingContext, Live, Opener};
use crate::model::ModelError;
use crate::pipeline::{Identity, Processor, ResultsSpec};
use crate::publish::mqtt::{DeviceStatus, Topics};
use crate::publish::{Class, Outbox, OutboxError, Publisher, PublisherConfig};
use crate::service;
use crate::source::SourceKind;
use crate::source::scp::{BindError, Scp};
use crate::source::spool::Spool;
use crate::source::watch::Inbox;
use crate::tls::{self, TlsError};

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
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("mqtt.tls: {0}")]
    Tls(#[from] TlsError),
    #[error("dicom.destinations.tls: {0}")]
    DestinationTls(TlsError),
    #[error(transparent)]
    DicomOutbox(#[from] DicomOutboxError),
    #[error("cannot read the MQTT password file {path}: {source}")]
    Password {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    #[error(transparent)]
    OverBudget(#[from] crate::plan::OverBudget),
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

/// Runs until SIGTERM or SIGINT.
pub fn run(profile: BoardProfile) -> Result<(), DaemonError> {
    // Every model is loaded and dry-run under the counting allocator: the plan's measured
    // lines. Nothing else of size is allocated before the plan is checked.
    // Models staged by `bedside models install` serve in place of the profile's, when they
    // pass the checks; otherwise the profile's models serve and the status says why.
    let (staged, mut refused) = crate::update::resolve(&profile);
    for r in &refused {
        warn!("{r}");
    }
    let planned = match crate::plan::plan_for(&staged) {
        Ok(p) => p,
        Err(e)
            if staged
                .models
                .iter()
                .zip(&profile.models)
                .any(|(a, b)| a.path != b.path) =>
        {
            let reason = format!(
                "staged model updates could not be loaded ({e}); starting with the installed models"
            );
            warn!("{reason}");
            refused.push(reason);
            crate::plan::plan_for(&profile)?
        }
        Err(e) => return Err(e.into()),
    };
    planned.plan.check()?;
    let updater = crate::update::Updater::new(profile.clone(), &planned);
    info!("memory plan\n{}", planned.plan.table());
    let processor = Processor::from_engines(Identity::for_board(&profile)?, planned.dicom)
        .with_limits(profile.memory.image_limits());
    let mut processor = if profile.overlays.keep_last {
        processor.with_overlays(
            profile.paths.state.join("overlays"),
            profile.overlays.max_side,
        )
    } else {
        processor
    };
    // DICOM results: what each model asks for (by the id of the model in its place), the
    // outbox they wait in, and a sender per destination.
    let results = profile.results_config();
    let mut dicom_out = None;
    let mut senders = None;
    if let Some(r) = &results {
        let wanted: Vec<(String, Vec<ResultKind>)> = profile
            .models
            .iter()
            .filter(|m| m.sources.contains(&ModelSource::Dicom))
            .zip(processor.engines())
            .filter(|(m, _)| !m.dicom_results.is_empty())
            .map(|(m, e)| (e.model_ref().id.clone(), m.dicom_results.clone()))
            .collect();
        processor = processor.with_results(ResultsSpec {
            wanted,
            max_side: Some(r.max_side),
            frame: None,
        });
        let names: Vec<String> = r.destinations.iter().map(|d| d.name.clone()).collect();
        let (outbox, recovery) = DicomOutbox::open(&r.outbox_dir, &names, r.outbox_max_bytes)?;
        send::log_recovery(&recovery);
        let outbox = Arc::new(outbox);
        senders = Some(
            send::start(outbox.clone(), &r.destinations).map_err(DaemonError::DestinationTls)?,
        );
        for d in &r.destinations {
            info!(destination = %d.name, ae_title = %d.called_ae_title, host = %d.host, port = d.port, tls = d.tls.is_some(), "DICOM results go here");
        }
        dicom_out = Some(outbox);
    }
    let video_engines = planned.video;
    let plan = planned.plan;
    let planned_workers = planned.workers;
    let mut models: Vec<_> = processor.engines().map(|e| e.model_ref().clone()).collect();
    for e in &video_engines {
        if !models.contains(e.model_ref()) {
            models.push(e.model_ref().clone());
        }
    }
    for m in &models {
        info!(model = %m.id, version = %m.version, sha256 = %m.sha256, "model loaded and verified");
    }
    let inbox = Inbox::open(&profile.paths.inbox, &profile.paths.state).map_err(|source| {
        DaemonError::Io {
            what: "cannot create the inbox and state folders".into(),
            source,
        }
    })?;
    let mut inboxes = vec![inbox.clone()];
    let spool = match profile.spool_config() {
        Some((dir, max, max_object)) => {
            let spool = Spool::open(&dir, max, max_object).map_err(|source| DaemonError::Io {
                what: format!("cannot open the DICOM spool {}", dir.display()),
                source,
            })?;
            // Spooled objects are processed like inbox files, and removed once their
            // findings are recorded.
            let spooled = Inbox::open_as(&dir, &profile.paths.state, SourceKind::DicomScp, false)
                .map_err(|source| DaemonError::Io {
                what: format!("cannot open the DICOM spool {}", dir.display()),
                source,
            })?;
            inboxes.insert(0, spooled);
            Some(Arc::new(spool))
        }
        None => None,
    };
    let (outbox_dir, outbox_config) = profile.outbox_config();
    let (outbox, recovery) = Outbox::open(&outbox_dir, outbox_config)?;
    if recovery.pending > 0 {
        info!(
            findings = recovery.pending,
            "findings from an earlier run wait in the outbox; they are sent first"
        );
    }
    let audit = match profile.audit_config() {
        Some(config) => {
            let (trail, recovered) = crate::audit::AuditTrail::open(config)?;
            info!(
                dir = %trail.dir().display(),
                files = recovered.files,
                cut_bytes = recovered.cut_bytes,
                removed = recovered.removed,
                "audit trail open"
            );
            Some(Arc::new(trail))
        }
        None => None,
    };
    let video_models: Vec<_> = video_engines
        .iter()
        .map(|e| e.model_ref().clone())
        .collect();
    let config = publisher_config(&profile, models, outbox_config.max_payload())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(crate::alloc::THREAD_STACK)
        .thread_name("bedside-io")
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    rt.block_on(async move {
        let (publisher, connection) = Publisher::start(config, outbox);
        if let Some(trail) = &audit {
            publisher.audit_to(trail.clone());
        }
        publisher.set_memory_plan(plan.total(), plan.heap(), plan.budget);
        let (web_stop, web_stop_rx) = tokio::sync::watch::channel(false);
        let web = if profile.web.enabled {
            Some(start_web(&profile, &publisher, (plan.total(), plan.budget), web_stop_rx).await?)
        } else {
            None
        };
        if let Some(last) = refused.last() {
            let models = current_models(&processor, &video_models);
            // The first line: a memory plan's table stays in the log.
            let reason = last.lines().next().unwrap_or_default();
            publisher.set_models(models, serde_json::json!({ "state": "refused", "reason": reason }));
        }
        // SIGHUP (`systemctl reload bedside`): take staged model updates between two images.
        let reload = Arc::new(AtomicBool::new(false));
        {
            let reload = reload.clone();
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            info!("SIGHUP: taking staged model updates after the current image");
                            reload.store(true, Ordering::SeqCst);
                        }
                    });
                }
                Err(e) => warn!("cannot listen for SIGHUP ({e}); model updates are taken at restart only"),
            }
        }
        let (tx, rx) = sync_channel(64);
        // Watch before the worker scans, so that no file slips between scan and watch.
        let mut watchers = Vec::new();
        for i in &inboxes {
            watchers.push(i.watch(tx.clone()).map_err(|source| DaemonError::Watch {
                path: i.dir.clone(),
                source,
            })?);
        }
        drop(tx);
        let (scp_stop, scp_stop_rx) = tokio::sync::watch::channel(false);
        let scp = match (profile.scp_config(), &spool) {
            (Some(config), Some(spool)) => {
                let scp = Scp::bind(config.clone(), spool.clone()).await?;
                info!(
                    ae_title = %config.ae_title,
                    listen = %scp.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    max_associations = config.max_associations,
                    transfer_syntaxes = crate::source::scp::decodable_transfer_syntaxes().len(),
                    "DICOM C-STORE SCP listening"
                );
                Some(tokio::spawn(scp.serve(scp_stop_rx)))
            }
            _ => None,
        };
        // Set once the live pipeline runs: the image worker takes updates of its models too.
        let live_updater: Arc<std::sync::OnceLock<crate::live::LiveUpdater>> = Arc::default();
        let (ended, mut worker_ended) = tokio::sync::mpsc::unbounded_channel::<String>();
        info!("{}", planned_workers);
        let images = images::ImageWork {
            processor,
            workers: planned_workers.count,
            inboxes,
            publisher: publisher.clone(),
            dicom_out: dicom_out.clone(),
            reload,
            updater,
            video_models,
            live: live_updater.clone(),
            audit: audit.clone(),
        }
        .start(rx, ended)
        .map_err(|source| DaemonError::Io {
            what: "cannot start the image workers".into(),
            source,
        })?;
        // The DICOM outbox's depth per destination, in the retained status when it changed
        // (looked at every 2 s, so that a burst of objects is one status, not hundreds).
        let dicom_status = dicom_out.clone().map(|outbox| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let mut seen = u64::MAX;
                loop {
                    let v = outbox.version();
                    if v != seen {
                        seen = v;
                        publisher.set_dicom_outbox(serde_json::json!({
                            "bytes": outbox.disk_bytes(),
                            "destinations": outbox.status(),
                        }));
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            })
        });
        let live = match &profile.video {
            Some(video) => Some(start_live(&profile, video, video_engines, &publisher)?),
            None => None,
        };
        if let Some(live) = &live {
            let _ = live_updater.set(live.updater());
        }
        info!(inbox = %inbox.dir.display(), findings = %profile.topic("findings"), "bedside running");
        service::ready(&format!("watching {}", inbox.dir.display()));
        let watchdog = service::watchdog_period().map(|period| {
            info!(?period, "feeding the service manager's watchdog while the image worker is alive");
            let mut beats = images.heartbeats();
            if let Some(live) = &live {
                beats.push(("live video pipeline".into(), live.stats().heartbeat().clone()));
            }
            tokio::spawn(service::feed_watchdog(period, beats))
        });
        let worker_failed = tokio::select! {
            biased;
            _ = wait_for_signal() => false,
            name = worker_ended.recv() => {
                error!("the {} stopped unexpectedly; shutting down so that the service manager restarts bedside", name.unwrap_or_default());
                true
            }
        };
        if !worker_failed {
            info!("stopping: finishing the current images");
        }
        service::stopping();
        if let Some(w) = watchdog {
            w.abort();
        }
        // No new associations; those in progress get a moment to finish (what they stored
        // is in the spool and is processed at the next start).
        let _ = scp_stop.send(true);
        if let Some(scp) = scp
            && tokio::time::timeout(Duration::from_secs(10), scp).await.is_err()
        {
            warn!("DICOM associations still open after 10 s; closing them (objects not yet acknowledged are not kept)");
        }
        drop(watchers);
        if let Some(live) = live {
            // Capture stops; what is still present is closed with an end finding.
            let _ = tokio::task::spawn_blocking(move || live.stop()).await;
        }
        let _ = tokio::task::spawn_blocking(move || images.stop()).await;
        if let Some(t) = dicom_status {
            t.abort();
        }
        if let Some(senders) = senders {
            // The object being sent is finished; the rest wait for the next start.
            let _ = tokio::task::spawn_blocking(move || senders.stop(Duration::from_secs(5))).await;
            if let Some(o) = &dicom_out
                && o.depth() > 0
            {
                info!("{} DICOM results wait in the outbox; they are sent after the next start", o.depth());
            }
        }
        if let Some((server, status)) = web {
            // Open event streams never end by themselves: a moment, then closed.
            let _ = web_stop.send(true);
            status.abort();
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
                abort.abort();
            }
        }
        let left = publisher.shutdown(connection, SHUTDOWN_GRACE).await;
        if left > 0 {
            info!("{left} findings wait in the outbox for the broker; they are sent after the next start");
        }
        if worker_failed {
            return Err(DaemonError::WorkerFailed);
        }
        info!("stopped");
        Ok(())
    })
}

/// Starts the findings page: every finding recorded goes to its hub, and the device's status
/// (with resident memory against the plan) is looked at once a second. Returns the server's
/// task and the status task.
async fn start_web(
    profile: &BoardProfile,
    publisher: &Publisher,
    (plan_total, budget): (u64, Option<u64>),
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>), DaemonError> {
    let hub = crate::web::Hub::new(profile.web.max_findings);
    {
        let hub = hub.clone();
        publisher.observe(Arc::new(move |f, json| hub.finding(f, json)));
    }
    let overlays = profile
        .overlays
        .keep_last
        .then(|| profile.paths.state.join("overlays"));
    let server = crate::web::serve(&profile.web, hub.clone(), overlays, stop).await?;
    let publisher = publisher.clone();
    let status = tokio::spawn(async move {
        loop {
            let mut doc: serde_json::Value =
                serde_json::from_slice(&publisher.status_json()).unwrap_or_default();
            doc["memory"] = serde_json::json!({
                "rss": crate::plan::rss_bytes(),
                "plan": plan_total,
                "budget": budget,
            });
            hub.status(doc.to_string());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok((server, status))
}

/// Starts the live video pipeline: its camera (V4L2 or replay), its models, its findings
/// into the outbox, its camera state into the status topic and its counters into metrics.
fn start_live(
    profile: &BoardProfile,
    video: &Video,
    engines: Vec<crate::infer::Engine>,
    publisher: &Publisher,
) -> Result<Live, DaemonError> {
    let opener = camera_opener(video);
    let source = match video.source {
        VideoSource::V4l2 => SourceKind::V4l2,
        VideoSource::Replay => SourceKind::Replay,
    };
    let context = FindingContext {
        identity: Identity::for_board(profile)?,
        source,
    };
    let recorder = publisher.clone();
    let sink =
        Box::new(
            move |f: crate::finding::Finding| match recorder.record(Class::Summary, &f) {
                Ok(()) => info!(
                    id = %f.id,
                    model = %f.model.id,
                    event = ?f.video.as_ref().map(|v| v.event),
                    present = ?f.over_threshold,
                    first_frame = f.video.as_ref().map(|v| v.first_frame),
                    last_frame = f.video.as_ref().map(|v| v.last_frame),
                    "video finding made"
                ),
                Err(e) => {
                    recorder
                        .metrics()
                        .inputs_deferred
                        .fetch_add(1, Ordering::Relaxed);
                    error!(id = %f.id, "cannot record a video finding: {e}");
                }
            },
        );
    let status = publisher.clone();
    let on_state = Box::new(move |s: &CameraState| {
        status.set_video_status(serde_json::to_value(s).unwrap_or_default());
    });
    publisher.set_video_status(serde_json::to_value(CameraState::Starting).unwrap_or_default());
    let live = Live::start(
        video.live_config(),
        opener,
        engines,
        context,
        sink,
        on_state,
    );
    let stats = live.stats().clone();
    publisher.set_video_metrics(Box::new(move || stats.to_json()));
    info!(
        source = ?video.source,
        threads = video.threads,
        cores = ?video.cores,
        window_frames = video.window_frames,
        publish_interval_s = video.publish_interval_s,
        "live video pipeline started"
    );
    Ok(live)
}

/// Opens the profile's camera; called again after the camera is lost.
pub fn camera_opener(video: &Video) -> Opener {
    let video = video.clone();
    Box::new(move || -> Result<Box<dyn crate::source::camera::Camera>, crate::source::camera::CameraError> {
        match video.source {
            VideoSource::V4l2 => {
                let config = video.v4l2.as_ref().expect("validated: v4l2 has its table");
                Ok(Box::new(crate::source::v4l2::V4l2Camera::open(
                    config,
                    video.crop,
                    video.pixel_spacing_mm,
                )?))
            }
            VideoSource::Replay => {
                let r = video.replay.as_ref().expect("validated: replay has its table");
                Ok(Box::new(crate::source::replay::Replay::open(
                    crate::source::replay::ReplayConfig {
                        path: r.path.clone(),
                        fps: r.fps,
                        looping: r.looping,
                        crop: video.crop,
                        pixel_spacing_mm: video.pixel_spacing_mm,
                    },
                )?))
            }
        }
    })
}

/// The publisher's settings from the profile: broker, TLS, credentials, topics, identity.
fn publisher_config(
    profile: &BoardProfile,
    models: Vec<crate::model::ModelRef>,
    max_payload: usize,
) -> Result<PublisherConfig, DaemonError> {
    let broker = profile
        .broker()
        .expect("validated when the profile was loaded");
    let tls = profile
        .mqtt
        .tls
        .as_ref()
        .map(tls::client_config)
        .transpose()?;
    let credentials = match (&profile.mqtt.username, &profile.mqtt.password_file) {
        (Some(user), Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| DaemonError::Password {
                path: path.clone(),
                source,
            })?;
            // The first line is the password; a trailing newline is not part of it.
            let password = text.lines().next().unwrap_or_default().to_owned();
            Some((user.clone(), password))
        }
        (Some(user), None) => Some((user.clone(), String::new())),
        _ => None,
    };
    Ok(PublisherConfig {
        broker,
        client_id: profile.client_id(),
        keep_alive: Duration::from_secs(profile.mqtt.keep_alive_s),
        protocol: profile.mqtt.protocol,
        inflight: profile.mqtt.inflight,
        metrics_interval: Duration::from_secs(profile.mqtt.metrics_interval_s),
        credentials,
        tls,
        topics: Topics {
            findings: profile.topic("findings"),
            status: profile.topic("status"),
            metrics: profile.topic("metrics"),
        },
        max_payload,
        identity: DeviceStatus {
            device: profile.device.id.clone(),
            site: profile.device.site.clone(),
            board: profile.device.board.clone(),
            version: env!("CARGO_PKG_VERSION"),
            models,
            since: crate::finding::now_rfc3339(),
        },
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

/// The models serving now: the image worker's, then the live pipeline's others.
fn current_models(
    processor: &Processor,
    video: &[crate::model::ModelRef],
) -> Vec<crate::model::ModelRef> {
    let mut models: Vec<_> = processor.engines().map(|e| e.model_ref().clone()).collect();
    for m in video {
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    models
}
