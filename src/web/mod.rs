//! The findings page: a small read-only web page for a tablet on the clinic's network, served
//! by the daemon (`[web]` in the board profile) with axum on the daemon's tokio runtime —
//! the HTTP server the tokio ecosystem maintains, rather than HTTP written by hand.
//!
//! What it shows comes from two places: every finding the publisher records ([`Hub::finding`],
//! called on the recording thread: a short lock and a broadcast send that never waits) and
//! the device's status, looked at once a second. A page opens `/events` (server-sent events):
//! first the whole state (the status, each finding kept, "ready"), then each finding and each
//! change of status as it happens. Each
//! client reads from one shared, bounded ring of events; a client that falls that far behind
//! is dropped (its browser reconnects and gets the state again), so a slow tablet costs the
//! pipeline nothing and memory stays what the plan says.
//!
//! Read-only: every route is a GET and none changes anything. What it serves carries no
//! patient data: findings are the MQTT findings (UID hashes at most), the overlays are drawn
//! from the pixels. Every asset is embedded in the binary; the page makes no other request.

mod auth;
mod guard;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Semaphore, broadcast, watch};
use tracing::{info, warn};

use crate::board::Web;
use crate::finding::Finding;

pub use auth::{AuthError, Credentials};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// Events a client may be behind before it is dropped.
pub const EVENT_RING: usize = 64;
/// Overlays read, and states written out, at once (each whole: one picture's PNG, or every
/// finding kept).
const READS: usize = 2;
/// What one connected page can hold: hyper's write buffer (its default limit, 8 KiB + 100 x
/// 4 KiB) and one event being formatted. The state is sent as one event per finding, so a
/// page that reads slowly holds no more than this.
const CLIENT_BYTES: u64 = 8192 + 100 * 4096 + crate::finding::MAX_FINDING_BYTES as u64;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("web.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One event for the pages: its name and its JSON.
#[derive(Debug, Clone)]
struct Pushed {
    kind: &'static str,
    data: Arc<str>,
}

/// What the pages show, and the events that change it.
pub struct Hub {
    max_findings: usize,
    state: Mutex<Shown>,
    events: broadcast::Sender<Pushed>,
}

#[derive(Default)]
struct Shown {
    /// The latest findings, oldest first: (id, JSON).
    findings: std::collections::VecDeque<(String, Arc<str>)>,
    status: Arc<str>,
}

impl Hub {
    pub fn new(max_findings: usize) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_RING);
        Arc::new(Hub {
            max_findings: max_findings.max(1),
            state: Mutex::new(Shown {
                status: Arc::from("{}"),
                ..Shown::default()
            }),
            events,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A finding was recorded: kept (the oldest beyond `max_findings` forgotten) and pushed
    /// to every page. Never waits on a page.
    pub fn finding(&self, finding: &Finding, json: &[u8]) {
        if let Ok(text) = std::str::from_utf8(json) {
            self.push_finding(finding.id.clone(), text);
        }
    }

    fn push_finding(&self, id: String, text: &str) {
        let data: Arc<str> = Arc::from(text);
        {
            let mut s = self.lock();
            s.findings.push_back((id, data.clone()));
            while s.findings.len() > self.max_findings {
                s.findings.pop_front();
            }
        }
        // No page connected is not an error.
        let _ = self.events.send(Pushed {
            kind: "finding",
            data,
        });
    }

    /// The device's status (JSON): pushed when it changed.
    pub fn status(&self, json: String) {
        let mut s = self.lock();
        if *s.status == *json {
            return;
        }
        let data: Arc<str> = Arc::from(json);
        s.status = data.clone();
        drop(s);
        let _ = self.events.send(Pushed {
            kind: "status",
            data,
        });
    }

    /// Everything shown: `{"status": …, "findings": [oldest … newest]}`.
    pub fn snapshot(&self) -> String {
        let s = self.lock();
        let mut out = String::with_capacity(
            64 + s.status.len() + s.findings.iter().map(|f| f.1.len() + 1).sum::<usize>(),
        );
        out.push_str("{\"status\":");
        out.push_str(&s.status);
        out.push_str(",\"findings\":[");
        for (i, (_, f)) in s.findings.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(f);
        }
        out.push_str("]}");
        out
    }

    /// The status and the findings kept, oldest first: shared, not copied.
    fn kept(&self) -> (Arc<str>, Vec<Arc<str>>) {
        let s = self.lock();
        (
            s.status.clone(),
            s.findings.iter().map(|(_, f)| f.clone()).collect(),
        )
    }

    fn find(&self, id: &str) -> Option<Arc<str>> {
        self.lock()
            .findings
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, f)| f.clone())
    }
}

/// Bytes the page may hold: the findings it keeps and the event ring (each at most one
/// finding's size), each connection's buffers (at most [`max_connections`] of them), and what
/// is read or written whole (overlays, `/api/state`), two at a time.
pub fn planned_bytes(web: &Web, overlay_png_bytes: u64) -> u64 {
    let finding = crate::finding::MAX_FINDING_BYTES as u64;
    let state = web.max_findings as u64 * finding;
    (web.max_findings as u64 + EVENT_RING as u64) * finding
        + max_connections(web) as u64 * CLIENT_BYTES
        + READS as u64 * overlay_png_bytes.max(state)
}

/// The connections the page holds at most: one per page and a page load's parallel requests.
pub fn max_connections(web: &Web) -> usize {
    guard::connections(web)
}

struct App {
    hub: Arc<Hub>,
    overlays: Option<PathBuf>,
    clients: AtomicUsize,
    max_clients: usize,
    /// How often an event stream sends a keep-alive ([`guard::keep_alive`]).
    keep_alive: Duration,
    /// Whole reads and writes at once (overlays, `/api/state`).
    reads: Semaphore,
    credentials: Option<Credentials>,
}

/// Serves the page on `web.bind`:`web.port` until `stop` turns true. `overlays`: the folder
/// the processor keeps its last overlay per source in, when it does.
pub async fn serve(
    web: &Web,
    hub: Arc<Hub>,
    overlays: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, WebError> {
    let credentials = web
        .password_file
        .as_deref()
        .map(Credentials::load)
        .transpose()?;
    let tls = web
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    let addr = SocketAddr::new(
        web.bind.parse().expect("validated with the profile"),
        web.port,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let idle = Duration::from_secs(web.idle_timeout_s);
    let connections = max_connections(web);
    let app = Arc::new(App {
        hub,
        overlays,
        clients: AtomicUsize::new(0),
        max_clients: web.max_clients,
        keep_alive: guard::keep_alive(idle),
        reads: Semaphore::new(READS),
        credentials,
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .route("/api/state", get(state))
        .route("/api/findings/{id}", get(finding))
        .route("/overlays/{name}", get(overlay))
        .route("/events", get(events))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require,
        ))
        .with_state(app.clone());
    info!(
        %addr,
        authentication = app.credentials.is_some(),
        https = tls.is_some(),
        "findings page listening"
    );
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    Ok(tokio::spawn(async move {
        let served = match tls {
            Some(config) => match tls::TlsListener::new(listener, config) {
                Ok(listener) => {
                    axum::serve(guard::Guarded::new(listener, connections, idle), router)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                axum::serve(guard::Guarded::new(listener, connections, idle), router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            warn!("the findings page stopped: {e}");
        }
    }))
}

fn with_type(body: impl IntoResponse, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index() -> Response {
    with_type(INDEX, "text/html; charset=utf-8")
}

async fn script() -> Response {
    with_type(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    with_type(STYLE, "text/css; charset=utf-8")
}

async fn state(State(app): State<Arc<App>>) -> Response {
    let Ok(_permit) = app.reads.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    with_type(app.hub.snapshot(), "application/json")
}

async fn finding(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match app.hub.find(&id) {
        Some(f) => with_type(f.to_string(), "application/json"),
        None => (StatusCode::NOT_FOUND, "no such finding among those kept\n").into_response(),
    }
}

/// `<source>.png` or `<source>.json` of the overlays folder; nothing else.
async fn overlay(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let Some(dir) = &app.overlays else {
        return (StatusCode::NOT_FOUND, "this device keeps no overlays\n").into_response();
    };
    let (stem, ext) = name.rsplit_once('.').unwrap_or((&name, ""));
    let content_type = match ext {
        "png" => "image/png",
        "json" => "application/json",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    // A source's name (`watch-folder`, `dicom-scp`, `v4l2`): nothing that leaves the folder.
    if stem.is_empty()
        || !stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(_permit) = app.reads.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match tokio::fs::read(dir.join(&name)).await {
        Ok(bytes) => with_type(bytes, content_type),
        Err(_) => (StatusCode::NOT_FOUND, "no overlay yet\n").into_response(),
    }
}

/// Counts a connected page for as long as its event stream lives.
struct Client(Arc<App>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn events(State(app): State<Arc<App>>) -> Response {
    if app.clients.fetch_add(1, Ordering::SeqCst) >= app.max_clients {
        app.clients.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many pages connected\n",
        )
            .into_response();
    }
    let client = Client(app.clone());
    // Subscribed before the state is taken: nothing falls between the two. The state goes
    // as events of its own — the status, each finding kept ("kept"), then "ready" — each
    // formatted only when the connection takes it.
    let rx = app.hub.events.subscribe();
    let (status, kept) = app.hub.kept();
    let mut first = std::collections::VecDeque::with_capacity(kept.len() + 2);
    first.push_back(Pushed {
        kind: "status",
        data: status,
    });
    first.extend(kept.into_iter().map(|data| Pushed { kind: "kept", data }));
    first.push_back(Pushed {
        kind: "ready",
        data: Arc::from("{}"),
    });
    let stream = futures_util::stream::unfold(
        (first, rx, client),
        |(mut first, mut rx, client)| async move {
            let next = match first.pop_front() {
                Some(f) => f,
                None => match rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(
                            missed = n,
                            "a findings page fell behind and was dropped; it reconnects and gets the state again"
                        );
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let event = Event::default().event(next.kind).data(&*next.data);
            Some((Ok::<_, Infallible>(event), (first, rx, client)))
        },
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(app.keep_alive))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(max_clients: usize) -> Arc<App> {
        Arc::new(App {
            hub: Hub::new(3),
            overlays: None,
            clients: AtomicUsize::new(0),
            max_clients,
            keep_alive: Duration::from_secs(15),
            reads: Semaphore::new(READS),
            credentials: None,
        })
    }

    #[tokio::test]
    async fn a_page_that_falls_behind_the_ring_is_dropped_and_its_place_freed() {
        let app = app(1);
        let response = events(State(app.clone())).await;
        assert_eq!(response.status(), StatusCode::OK);
        // A second page is one too many.
        let second = events(State(app.clone())).await;
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        // The page reads nothing while more than the ring holds is pushed: the pusher never
        // waits, and the page's stream ends after the state it was sent first.
        for i in 0..EVENT_RING + 5 {
            app.hub
                .push_finding(format!("f{i}"), &format!("{{\"id\":\"f{i}\"}}"));
        }
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            axum::body::to_bytes(response.into_body(), 1 << 20),
        )
        .await
        .expect("a lagging page's stream ends")
        .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("event: status\n"), "{text}");
        assert!(text.contains("event: ready\n"), "{text}");
        assert!(!text.contains("event: finding"), "{text}");
        assert_eq!(app.clients.load(Ordering::SeqCst), 0, "its place is free");
        // The state keeps the latest `max_findings`, oldest first.
        let state: serde_json::Value = serde_json::from_str(&app.hub.snapshot()).unwrap();
        let ids: Vec<&str> = state["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["f66", "f67", "f68"]);
    }

    #[tokio::test]
    async fn a_page_that_keeps_up_gets_every_event_in_order() {
        let app = app(4);
        app.hub.status("{\"state\":\"online\"}".into());
        app.hub.push_finding("old".into(), "{\"id\":\"old\"}");
        let response = events(State(app.clone())).await;
        for i in 0..10 {
            app.hub
                .push_finding(format!("f{i}"), &format!("{{\"id\":\"f{i}\"}}"));
        }
        app.hub.status("{\"state\":\"offline\"}".into());
        app.hub.status("{\"state\":\"offline\"}".into()); // unchanged: not pushed
        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        use futures_util::StreamExt;
        while text.matches("event: ").count() < 14 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("events arrive")
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(kinds[..3], ["status", "kept", "ready"]);
        assert_eq!(kinds[3..13], ["finding"; 10]);
        assert_eq!(kinds[13], "status");
        assert!(
            text.contains("\"id\":\"old\""),
            "the findings kept come first"
        );
        assert!(
            text.contains("\"state\":\"online\""),
            "the state carries the status"
        );
    }
}
