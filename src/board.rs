//! Board profiles (`board/<board>.toml`): the facts of one kind of device — who it is, where
//! its files live, which broker it talks to, which models it runs. Relative paths in a
//! profile are relative to the profile's own folder, so a profile means the same thing from
//! whatever directory the daemon is started.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dicom::decode::ImageLimits;

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("cannot read board profile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("board profile {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("board profile {path}: {field}: {reason}")]
    Field {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    pub device: Device,
    pub paths: Paths,
    pub mqtt: Mqtt,
    #[serde(default)]
    pub outbox: OutboxLimits,
    /// The DICOM C-STORE SCP; absent: no DICOM listener (watch folder only).
    #[serde(default)]
    pub dicom: Option<Dicom>,
    #[serde(default)]
    pub privacy: Privacy,
    /// Live ultrasound video (a V4L2 capture device, or a replayed recording); absent: none.
    #[serde(default)]
    pub video: Option<Video>,
    /// The memory budget and the largest inputs it is planned for.
    #[serde(default)]
    pub memory: Memory,
    pub models: Vec<ModelSlot>,
    /// Who may update the models of a running device (`bedside models install`).
    #[serde(default)]
    pub updates: Updates,
    /// How many DICOM images are decoded, prepared and run at once.
    #[serde(default)]
    pub images: Images,
    /// Pictures of the last findings per source, for the findings page.
    #[serde(default)]
    pub overlays: Overlays,
    /// The read-only findings page (`crate::web`); off unless `enabled`.
    #[serde(default)]
    pub web: Web,
    /// The local audit trail (`crate::audit`) under `paths.state`/audit.
    #[serde(default)]
    pub audit: Audit,
    /// The file this profile was read from.
    #[serde(skip)]
    pub origin: PathBuf,
}

/// `[audit]`: every input processed, with the exact model and the delivery, kept on the
/// device for the quality officer (`bedside audit --since …`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    pub enabled: bool,
    /// Files whose newest line is older than this many days are removed (1..=3650).
    pub keep_days: u32,
    /// Disk budget of the whole trail in MiB (1..=65536); over it, the oldest files go.
    pub max_mib: u64,
}

impl Default for Audit {
    fn default() -> Self {
        // A line is ~400 bytes: 128 MiB holds ~330,000 inputs — a year of a busy X-ray room,
        // or ~4 months of live ultrasound summaries every 10 s around the clock.
        Audit {
            enabled: true,
            keep_days: 365,
            max_mib: 128,
        }
    }
}

/// `[updates]`: model updates staged under `paths.state`/models.d.
/// `[web]`: the findings page for a tablet on the clinic's network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    pub enabled: bool,
    /// Address to listen on: 127.0.0.1 (this device only) unless the clinic's network should
    /// reach it (0.0.0.0).
    pub bind: String,
    pub port: u16,
    /// Findings the page keeps (the latest, all sources together).
    pub max_findings: usize,
    /// Pages connected at once; one more is answered 503. The page holds at most this many
    /// connections plus 8 (a page load's parallel requests); the next waits to be accepted.
    pub max_clients: usize,
    /// A connection on which no byte moves either way for this long is closed: a client that
    /// connected and said nothing, a page that stopped reading its event stream. Live pages
    /// get a keep-alive every third of it (at most 15 s), so they never reach it.
    pub idle_timeout_s: u64,
    /// HTTP basic authentication: a file whose first line is `user:password`, readable by
    /// bedside only (refused when group- or world-readable). Absent: no authentication.
    pub password_file: Option<PathBuf>,
    /// HTTPS with this certificate and key (`[web.tls]`); absent: plain HTTP.
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: "127.0.0.1".into(),
            port: 8080,
            max_findings: 50,
            max_clients: 32,
            idle_timeout_s: 45,
            password_file: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Updates {
    /// An ed25519 public key (64 hex digits). When set, an update is taken only with a valid
    /// signature of its `model.toml` (`model.toml.sig`): the manifest names the sha256 of
    /// every model file, so the signature covers the weights too.
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// This device's name, unique within its site; part of every topic.
    pub id: String,
    pub site: String,
    /// The kind of board (e.g. `x86-dev`, `jetson-orin-nano`), reported in the status.
    pub board: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Watch folder: complete DICOM files dropped here are processed.
    pub inbox: PathBuf,
    /// Daemon state: processed files go to `done/` and `failed/` below it.
    pub state: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// `mqtt://host[:port]` (1883), or `mqtts://host[:port]` (8883) with `[mqtt.tls]`.
    pub url: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// `"auto"` (MQTT 5, or 3.1.1 when the broker refuses 5), `"5"` or `"3.1.1"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Findings sent and not yet acknowledged, at most (the in-flight window).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// How often the metrics topic is published.
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_s: u64,
    /// User name for the broker; its password is read from `password_file`, never given on
    /// the command line or in this profile.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

/// TLS to the broker (rustls): the broker's certificate must verify against `ca_file` and
/// name the host in `mqtt.url`; a client certificate and key make it mutual TLS.
pub use crate::tls::Tls;

/// The DICOM C-STORE SCP (`source::scp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dicom {
    /// Our AE title: callers must call it (at most 16 characters).
    pub ae_title: String,
    #[serde(default = "default_dicom_port")]
    pub port: u16,
    /// Address to listen on.
    #[serde(default = "default_dicom_bind")]
    pub bind: String,
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Calling AE titles allowed to associate; empty: any.
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    /// Source addresses or networks (`10.0.0.0/8`) allowed; empty: any.
    #[serde(default)]
    pub allowed_addresses: Vec<String>,
    /// Storage SOP class UIDs accepted beyond the X-ray, ultrasound and secondary capture ones.
    #[serde(default)]
    pub extra_sop_classes: Vec<String>,
    /// The spool (under `paths.state`/spool) holds at most this much.
    #[serde(default = "default_spool_mib")]
    pub spool_max_mib: u64,
    /// One object at most.
    #[serde(default = "default_max_object_mib")]
    pub max_object_mib: u64,
    /// A peer silent this long is dropped.
    #[serde(default = "default_dicom_timeout")]
    pub timeout_s: u64,
    /// Run the C-STORE SCP. `false`: a watch-folder device that only sends results.
    #[serde(default = "default_true")]
    pub listen: bool,
    /// Where the results the models ask for (`dicom_results`) are sent by C-STORE.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// The DICOM outbox (under `paths.state`/dicom-out) holds at most this much, all
    /// destinations together; when it is full, new images wait in the inbox or spool.
    #[serde(default = "default_dicom_outbox_mib")]
    pub outbox_max_mib: u64,
    /// Longer side of the Secondary Capture picture (64..=4096): larger images are shrunk.
    #[serde(default = "default_result_side")]
    pub results_max_side: u32,
}

/// `[[dicom.destinations]]`: a PACS (or any storage SCP) that receives the results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A short name: the outbox folder and the status key (`[a-z0-9_-]`, 1 to 32).
    pub name: String,
    /// The destination's AE title (we call it).
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// DICOM over TLS (PS3.15 B.1): the destination's certificate must chain to `ca_file`
    /// and name `server_name` (default: `host`).
    #[serde(default)]
    pub tls: Option<DestinationTls>,
    /// Refusals of one object (a failure status, its SOP class not accepted) before it goes
    /// to the dead-letter folder with the reason. A destination that cannot be reached is
    /// not a refusal: its objects wait, however long.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Connect, read and write timeout.
    #[serde(default = "default_destination_timeout")]
    pub timeout_s: u64,
    /// The longest pause between two tries to reach a destination that is down (the pause
    /// starts at 1 s and doubles up to this).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTls {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_dicom_outbox_mib() -> u64 {
    1024
}
fn default_result_side() -> u32 {
    1024
}
fn default_max_attempts() -> u32 {
    5
}
fn default_destination_timeout() -> u64 {
    30
}
fn default_reconnect_max() -> u64 {
    60
}

fn default_dicom_port() -> u16 {
    11112
}
fn default_dicom_bind() -> String {
    "0.0.0.0".into()
}
fn default_max_associations() -> usize {
    8
}
fn default_spool_mib() -> u64 {
    2048
}
fn default_max_object_mib() -> u64 {
    256
}
fn default_dicom_timeout() -> u64 {
    60
}

/// Limits of the durable outbox under `paths.state`/outbox (see `publish::outbox`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxLimits {
    #[serde(default = "default_outbox_mib")]
    pub max_mib: u64,
    /// Undelivered findings kept at most; each costs 32 bytes of memory while it waits.
    #[serde(default = "default_outbox_records")]
    pub max_records: usize,
    #[serde(default = "default_segment_kib")]
    pub segment_kib: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_mib: default_outbox_mib(),
            max_records: default_outbox_records(),
            segment_kib: default_segment_kib(),
        }
    }
}

fn default_prefix() -> String {
    "bedside".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_inflight() -> u16 {
    16
}
fn default_metrics_interval() -> u64 {
    60
}
fn default_outbox_mib() -> u64 {
    64
}
fn default_outbox_records() -> usize {
    50_000
}
fn default_segment_kib() -> u64 {
    1024
}

/// `[overlays]`: the daemon keeps, per source (watch folder, C-STORE), a picture of the last
/// image with what the models found on it (`crate::overlay`), in `paths.state`/overlays. They
/// stay on the device: never published. They show the image's pixels, which may carry text a
/// modality burned in.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overlays {
    /// Keep the last overlay per source.
    pub keep_last: bool,
    /// Longer side of the picture in pixels; larger images are shrunk to it (64..=4096).
    pub max_side: u32,
}

impl Default for Overlays {
    fn default() -> Self {
        Self {
            keep_last: false,
            max_side: 1024,
        }
    }
}

impl Overlays {
    /// Bytes the daemon may hold for one overlay: the RGB picture and its PNG encoding
    /// (at worst about as large), plus the drawing's own small buffers.
    pub fn working_bytes(&self) -> u64 {
        let side = self.max_side as u64;
        2 * side * side * 3 + (256 << 10)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// File holding the secret key for hashing instance UIDs. Without it, the key is derived
    /// from the site name, which hides UIDs from casual readers but not from a guesser.
    #[serde(default)]
    pub uid_hash_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSlot {
    /// A model folder holding `model.toml`.
    pub path: PathBuf,
    /// Which inputs the model runs on: `"dicom"` (watch folder and C-STORE SCP) and/or
    /// `"video"` (the live pipeline). Default: DICOM only.
    #[serde(default = "default_model_sources")]
    pub sources: Vec<ModelSource>,
    /// DICOM objects made from this model's findings on DICOM sources and sent to every
    /// `[[dicom.destinations]]`: `"sr"` (TID 1500 report), `"sc"` (the overlay as a
    /// Secondary Capture), `"seg"` (segmentation models: the mask as a DICOM SEG).
    #[serde(default)]
    pub dicom_results: Vec<crate::dicom::results::ResultKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    Dicom,
    Video,
}

fn default_model_sources() -> Vec<ModelSource> {
    vec![ModelSource::Dicom]
}

/// `[images]`: the image workers. Each holds its own preparation buffers, decode buffers
/// and tract working memory (the weights are shared), so each costs its lines in the memory
/// plan; a burst of radiographs from a ward round is what they are for.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Image workers (1..=64). Absent: one per core the live video does not take (its
    /// pinned `cores`, or as many cores as it has `threads` when not pinned), lowered to
    /// what the memory budget holds. Set: exactly this many, refused when it does not fit.
    pub workers: Option<usize>,
}

impl Images {
    /// The workers to plan for when `workers` is absent: the cores left beside the live
    /// video on this machine, at least one.
    pub fn default_workers(video: Option<&Video>) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taken = video.map_or(0, |v| {
            if v.cores.is_empty() {
                v.threads
            } else {
                v.cores.len()
            }
        });
        cores.saturating_sub(taken).max(1)
    }
}

/// `[memory]`: what the daemon may use, and the largest inputs it plans for. Inputs beyond
/// these limits are refused before anything large is allocated (see `crate::plan` and
/// [`ImageLimits`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// The daemon's whole budget (resident memory), MiB. `bedside run` refuses to start when
    /// its plan does not fit; the systemd unit's `MemoryMax=` is set from it. Absent: the
    /// plan is printed but not enforced.
    #[serde(default)]
    pub budget_mib: Option<u64>,
    #[serde(default = "default_max_rows")]
    pub max_image_rows: u32,
    #[serde(default = "default_max_cols")]
    pub max_image_cols: u32,
    /// Frames per DICOM object (a cine).
    #[serde(default = "default_max_frames")]
    pub max_frames: u32,
    /// Largest DICOM file read whole into memory (watch folder and spooled objects alike).
    #[serde(default = "default_max_file_mib")]
    pub max_file_mib: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            budget_mib: None,
            max_image_rows: default_max_rows(),
            max_image_cols: default_max_cols(),
            max_frames: default_max_frames(),
            max_file_mib: default_max_file_mib(),
        }
    }
}

fn default_max_rows() -> u32 {
    ImageLimits::default().max_rows
}
fn default_max_cols() -> u32 {
    ImageLimits::default().max_cols
}
fn default_max_frames() -> u32 {
    ImageLimits::default().max_frames
}
fn default_max_file_mib() -> u64 {
    ImageLimits::default().max_file_bytes >> 20
}

impl Memory {
    /// The limits DICOM inputs are checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_rows: self.max_image_rows,
            max_cols: self.max_image_cols,
            max_frames: self.max_frames,
            max_file_bytes: self.max_file_mib << 20,
        }
    }
}

/// `[video]`: where live frames come from and how the live pipeline runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Video {
    /// `"v4l2"` (the `[video.v4l2]` device) or `"replay"` (the `[video.replay]` recording).
    pub source: VideoSource,
    /// The region of each frame the models see (the ultrasound sector's bounding box, without
    /// the cart's menus): `[x, y, width, height]` in pixels; absent: the whole frame.
    #[serde(default)]
    pub crop: Option<crate::source::convert::Rect>,
    /// Row and column spacing of the frames in mm (the cart's depth setting), so that
    /// segmentation findings can give areas; a recording's own spacing is used otherwise.
    #[serde(default)]
    pub pixel_spacing_mm: Option<[f64; 2]>,
    #[serde(default)]
    pub v4l2: Option<crate::source::v4l2::V4l2Config>,
    #[serde(default)]
    pub replay: Option<Replay>,
    /// Inference threads for video.
    #[serde(default = "default_video_threads")]
    pub threads: usize,
    /// Cores the inference threads are pinned to, in order; empty: not pinned.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// Core for the capture thread; absent: not pinned.
    #[serde(default)]
    pub capture_core: Option<usize>,
    /// Frames voted over before a label counts as present or gone.
    #[serde(default = "default_window_frames")]
    pub window_frames: usize,
    /// While nothing changes, one finding per model this often.
    #[serde(default = "default_publish_interval")]
    pub publish_interval_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoSource {
    V4l2,
    Replay,
}

/// `[video.replay]`: a recording played as if it were a camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// A DICOM multi-frame file, a `.y4m` clip, or a folder of PNG frames.
    pub path: PathBuf,
    /// Frames per second; absent: the recording's own.
    #[serde(default)]
    pub fps: Option<f64>,
    #[serde(default, rename = "loop")]
    pub looping: bool,
}

fn default_video_threads() -> usize {
    1
}
fn default_window_frames() -> usize {
    5
}
fn default_publish_interval() -> f64 {
    10.0
}

impl Video {
    /// The live pipeline's settings.
    pub fn live_config(&self) -> crate::live::LiveConfig {
        crate::live::LiveConfig {
            threads: self.threads,
            cores: self.cores.clone(),
            capture_core: self.capture_core,
            window_frames: self.window_frames,
            publish_interval: std::time::Duration::from_secs_f64(self.publish_interval_s),
            ..Default::default()
        }
    }
}

/// Broker address parsed from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BoardProfile {
    pub fn load(path: &Path) -> Result<Self, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses a profile as if it had been read from `origin`.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, BoardError> {
        let mut p: BoardProfile = toml::from_str(text).map_err(|e| BoardError::Parse {
            path: origin.to_owned(),
            reason: e.to_string(),
        })?;
        p.origin = origin.to_owned();
        let base = origin.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut p.paths.inbox);
        resolve(&mut p.paths.state);
        if let Some(k) = p.privacy.uid_hash_key_file.as_mut() {
            resolve(k);
        }
        if let Some(f) = p.mqtt.password_file.as_mut() {
            resolve(f);
        }
        if let Some(f) = p.web.password_file.as_mut() {
            resolve(f);
        }
        if let Some(t) = p.web.tls.as_mut() {
            resolve(&mut t.cert_file);
            resolve(&mut t.key_file);
        }
        if let Some(tls) = p.mqtt.tls.as_mut() {
            resolve(&mut tls.ca_file);
            for f in [&mut tls.client_cert_file, &mut tls.client_key_file]
                .into_iter()
                .flatten()
            {
                resolve(f);
            }
        }
        for m in &mut p.models {
            resolve(&mut m.path);
        }
        if let Some(r) = p.video.as_mut().and_then(|v| v.replay.as_mut()) {
            resolve(&mut r.path);
        }
        for t in p
            .dicom
            .iter_mut()
            .flat_map(|d| d.destinations.iter_mut())
            .filter_map(|d| d.tls.as_mut())
        {
            resolve(&mut t.ca_file);
            for f in [&mut t.client_cert_file, &mut t.client_key_file]
                .into_iter()
                .flatten()
            {
                resolve(f);
            }
        }
        p.validate()?;
        Ok(p)
    }

    fn field(&self, field: &'static str, reason: impl Into<String>) -> BoardError {
        BoardError::Field {
            path: self.origin.clone(),
            field,
            reason: reason.into(),
        }
    }

    fn validate_destinations(&self, d: &Dicom) -> Result<(), BoardError> {
        if !(64..=4096).contains(&d.results_max_side) {
            return Err(self.field(
                "dicom.results_max_side",
                format!("{} must be in 64..=4096", d.results_max_side),
            ));
        }
        if !d.destinations.is_empty() && d.outbox_max_mib == 0 {
            return Err(self.field("dicom.outbox_max_mib", "must be more than 0"));
        }
        let mut names = std::collections::HashSet::new();
        for dest in &d.destinations {
            let n = &dest.name;
            if n.is_empty()
                || n.len() > 32
                || !n
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
            {
                return Err(self.field(
                    "dicom.destinations.name",
                    format!("{n:?} must be 1 to 32 of a-z, 0-9, '_' and '-'"),
                ));
            }
            if !names.insert(n) {
                return Err(self.field(
                    "dicom.destinations.name",
                    format!("{n:?} names two destinations"),
                ));
            }
            let ae = dest.ae_title.trim();
            if ae.is_empty() || ae.len() > 16 || !ae.is_ascii() || ae.contains('\\') {
                return Err(self.field(
                    "dicom.destinations.ae_title",
                    format!(
                        "{n}: {:?} must be 1 to 16 ASCII characters without a backslash",
                        dest.ae_title
                    ),
                ));
            }
            if dest.host.is_empty() || dest.port == 0 {
                return Err(self.field(
                    "dicom.destinations.host",
                    format!("{n}: needs a host and a port other than 0"),
                ));
            }
            if !(1..=100).contains(&dest.max_attempts) {
                return Err(self.field(
                    "dicom.destinations.max_attempts",
                    format!("{n}: {} is not in 1..=100", dest.max_attempts),
                ));
            }
            if !(1..=600).contains(&dest.timeout_s) {
                return Err(self.field(
                    "dicom.destinations.timeout_s",
                    format!("{n}: {} is not in 1..=600", dest.timeout_s),
                ));
            }
            if !(1..=3600).contains(&dest.reconnect_max_s) {
                return Err(self.field(
                    "dicom.destinations.reconnect_max_s",
                    format!("{n}: {} is not in 1..=3600", dest.reconnect_max_s),
                ));
            }
            if let Some(t) = &dest.tls
                && t.client_cert_file.is_some() != t.client_key_file.is_some()
            {
                return Err(self.field(
                    "dicom.destinations.tls.client_key_file",
                    format!("{n}: client_cert_file and client_key_file go together (mutual TLS) or not at all"),
                ));
            }
        }
        Ok(())
    }

    fn validate_video(&self, v: &Video, models: usize) -> Result<(), BoardError> {
        if models == 0 {
            return Err(self.field(
                "video",
                "no [[models]] with sources = [\"video\"]: the frames would go nowhere",
            ));
        }
        match v.source {
            VideoSource::V4l2 => {
                let Some(c) = &v.v4l2 else {
                    return Err(
                        self.field("video.v4l2", "source = \"v4l2\" needs a [video.v4l2] table")
                    );
                };
                if c.width == 0 || c.height == 0 || c.width > 8192 || c.height > 8192 {
                    return Err(self.field(
                        "video.v4l2.width",
                        format!(
                            "{}x{} is not a frame size (1..=8192 each)",
                            c.width, c.height
                        ),
                    ));
                }
                if !(1..=240).contains(&c.fps) {
                    return Err(
                        self.field("video.v4l2.fps", format!("{} is not in 1..=240", c.fps))
                    );
                }
                if c.formats.is_empty() {
                    return Err(self.field("video.v4l2.formats", "name at least one pixel format"));
                }
                if !(2..=32).contains(&c.buffers) {
                    return Err(self.field(
                        "video.v4l2.buffers",
                        format!("{} is not in 2..=32", c.buffers),
                    ));
                }
                if let Some(crop) = v.crop
                    && !crop.fits(c.width, c.height)
                {
                    return Err(self.field(
                        "video.crop",
                        format!("{crop:?} does not fit the {}x{} frame", c.width, c.height),
                    ));
                }
            }
            VideoSource::Replay => {
                let Some(r) = &v.replay else {
                    return Err(self.field(
                        "video.replay",
                        "source = \"replay\" needs a [video.replay] table",
                    ));
                };
                if let Some(fps) = r.fps
                    && !(fps > 0.0 && fps <= 1000.0)
                {
                    return Err(
                        self.field("video.replay.fps", format!("{fps} is not in (0, 1000]"))
                    );
                }
            }
        }
        if let Some([r, c]) = v.pixel_spacing_mm
            && !(r > 0.0 && c > 0.0 && r.is_finite() && c.is_finite())
        {
            return Err(self.field("video.pixel_spacing_mm", "both spacings must be > 0"));
        }
        if !(1..=64).contains(&v.threads) {
            return Err(self.field("video.threads", format!("{} is not in 1..=64", v.threads)));
        }
        if !(1..=crate::live::smooth::MAX_WINDOW).contains(&v.window_frames) {
            return Err(self.field(
                "video.window_frames",
                format!(
                    "{} is not in 1..={}",
                    v.window_frames,
                    crate::live::smooth::MAX_WINDOW
                ),
            ));
        }
        if !(v.publish_interval_s >= 0.5 && v.publish_interval_s <= 86_400.0) {
            return Err(self.field(
                "video.publish_interval_s",
                format!("{} is not in 0.5..=86400", v.publish_interval_s),
            ));
        }
        Ok(())
    }

    /// Model folders that run on `source`.
    pub fn models_for(&self, source: ModelSource) -> Vec<&Path> {
        self.models
            .iter()
            .filter(|m| m.sources.contains(&source))
            .map(|m| m.path.as_path())
            .collect()
    }

    fn validate(&self) -> Result<(), BoardError> {
        for (field, value) in [
            ("device.id", &self.device.id),
            ("device.site", &self.device.site),
            ("mqtt.topic_prefix", &self.mqtt.topic_prefix),
        ] {
            if value.is_empty() || value.contains(['/', '+', '#', '\0']) || value.trim() != value {
                return Err(self.field(field, format!("{value:?} must be a non-empty MQTT topic level without '/', '+', '#' or outer spaces")));
            }
        }
        if !(1..=3650).contains(&self.audit.keep_days) {
            return Err(self.field(
                "audit.keep_days",
                format!("{} is not in 1..=3650", self.audit.keep_days),
            ));
        }
        if !(1..=65536).contains(&self.audit.max_mib) {
            return Err(self.field(
                "audit.max_mib",
                format!("{} is not in 1..=65536", self.audit.max_mib),
            ));
        }
        if let Some(n) = self.images.workers
            && !(1..=64).contains(&n)
        {
            return Err(self.field("images.workers", format!("{n} is not in 1..=64")));
        }
        if !(64..=4096).contains(&self.overlays.max_side) {
            return Err(self.field(
                "overlays.max_side",
                format!("{} must be in 64..=4096", self.overlays.max_side),
            ));
        }
        if let Some(key) = &self.updates.public_key
            && (key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(self.field(
                "updates.public_key",
                "must be an ed25519 public key: 64 hex digits (`bedside models keygen` makes one)",
            ));
        }
        let broker = self
            .broker()
            .map_err(|reason| self.field("mqtt.url", reason))?;
        match (&self.mqtt.tls, broker.tls) {
            (None, true) => {
                return Err(
                    self.field("mqtt.tls", "mqtts:// needs a [mqtt.tls] table with ca_file")
                );
            }
            (Some(_), false) => {
                return Err(self.field(
                    "mqtt.url",
                    "[mqtt.tls] is set but the url is mqtt://: use mqtts:// so that nothing goes in clear",
                ));
            }
            (Some(tls), true) => {
                if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                    return Err(self.field(
                        "mqtt.tls.client_key_file",
                        "client_cert_file and client_key_file go together (mutual TLS) or not at all",
                    ));
                }
            }
            (None, false) => {}
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return Err(self.field("mqtt.password_file", "needs mqtt.username"));
        }
        if !(1..=1024).contains(&self.mqtt.inflight) {
            return Err(self.field(
                "mqtt.inflight",
                format!("{} is not in 1..=1024", self.mqtt.inflight),
            ));
        }
        if !(1..=86_400).contains(&self.mqtt.metrics_interval_s) {
            return Err(self.field(
                "mqtt.metrics_interval_s",
                format!("{} is not in 1..=86400", self.mqtt.metrics_interval_s),
            ));
        }
        let o = &self.outbox;
        if !(64..=65_536).contains(&o.segment_kib) {
            return Err(self.field(
                "outbox.segment_kib",
                format!("{} is not in 64..=65536", o.segment_kib),
            ));
        }
        if o.max_mib * 1024 < 2 * o.segment_kib {
            return Err(self.field(
                "outbox.max_mib",
                format!(
                    "{} MiB must hold at least two segments of {} KiB",
                    o.max_mib, o.segment_kib
                ),
            ));
        }
        if let Some(d) = &self.dicom {
            let ae = d.ae_title.trim();
            if ae.is_empty() || ae.len() > 16 || !ae.is_ascii() || ae.contains('\\') {
                return Err(self.field(
                    "dicom.ae_title",
                    format!(
                        "{:?} must be 1 to 16 ASCII characters without a backslash",
                        d.ae_title
                    ),
                ));
            }
            if d.bind.parse::<std::net::IpAddr>().is_err() {
                return Err(self.field("dicom.bind", format!("{:?} is not an IP address", d.bind)));
            }
            if !(1..=256).contains(&d.max_associations) {
                return Err(self.field(
                    "dicom.max_associations",
                    format!("{} is not in 1..=256", d.max_associations),
                ));
            }
            for a in &d.allowed_addresses {
                a.parse::<crate::source::scp::Network>()
                    .map_err(|reason| self.field("dicom.allowed_addresses", reason))?;
            }
            if d.max_object_mib == 0 || d.spool_max_mib < d.max_object_mib {
                return Err(self.field(
                    "dicom.spool_max_mib",
                    format!(
                        "{} MiB must hold at least one object of dicom.max_object_mib ({} MiB, > 0)",
                        d.spool_max_mib, d.max_object_mib
                    ),
                ));
            }
            if !(5..=3600).contains(&d.timeout_s) {
                return Err(self.field(
                    "dicom.timeout_s",
                    format!("{} is not in 5..=3600", d.timeout_s),
                ));
            }
            self.validate_destinations(d)?;
        }
        if self
            .dicom
            .as_ref()
            .is_none_or(|d| d.destinations.is_empty())
            && let Some(m) = self.models.iter().find(|m| !m.dicom_results.is_empty())
        {
            return Err(self.field(
                "models.dicom_results",
                format!(
                    "{} asks for DICOM results but the profile has no [[dicom.destinations]] to send them to",
                    m.path.display()
                ),
            ));
        }
        if o.max_records == 0 || o.max_records > 10_000_000 {
            return Err(self.field(
                "outbox.max_records",
                format!("{} is not in 1..=10000000", o.max_records),
            ));
        }
        if !(5..=3600).contains(&self.mqtt.keep_alive_s) {
            return Err(self.field(
                "mqtt.keep_alive_s",
                format!("{} is not in 5..=3600", self.mqtt.keep_alive_s),
            ));
        }
        if self.web.enabled {
            let w = &self.web;
            if w.bind.parse::<std::net::IpAddr>().is_err() {
                return Err(self.field("web.bind", format!("{:?} is not an IP address", w.bind)));
            }
            if w.port == 0 {
                return Err(self.field("web.port", "0 is not a port"));
            }
            if !(1..=1000).contains(&w.max_findings) {
                return Err(self.field(
                    "web.max_findings",
                    format!("{} is not in 1..=1000", w.max_findings),
                ));
            }
            if !(1..=256).contains(&w.max_clients) {
                return Err(self.field(
                    "web.max_clients",
                    format!("{} is not in 1..=256", w.max_clients),
                ));
            }
            if !(1..=3600).contains(&w.idle_timeout_s) {
                return Err(self.field(
                    "web.idle_timeout_s",
                    format!("{} is not in 1..=3600", w.idle_timeout_s),
                ));
            }
        }
        if self.models.is_empty() {
            return Err(self.field(
                "models",
                "no [[models]]: the daemon would have nothing to run",
            ));
        }
        for m in &self.models {
            if m.sources.is_empty() {
                return Err(self.field(
                    "models.sources",
                    format!(
                        "{}: name at least one of \"dicom\", \"video\"",
                        m.path.display()
                    ),
                ));
            }
        }
        let video_models = self
            .models
            .iter()
            .filter(|m| m.sources.contains(&ModelSource::Video))
            .count();
        match &self.video {
            None if video_models > 0 => {
                return Err(self.field(
                    "models.sources",
                    "a model runs on \"video\" but the profile has no [video] table",
                ));
            }
            None => {}
            Some(v) => self.validate_video(v, video_models)?,
        }
        let m = &self.memory;
        if let Some(b) = m.budget_mib
            && !(16..=1 << 20).contains(&b)
        {
            return Err(self.field("memory.budget_mib", format!("{b} is not in 16..=1048576")));
        }
        if !(1..=65_535).contains(&m.max_image_rows) || !(1..=65_535).contains(&m.max_image_cols) {
            return Err(self.field(
                "memory.max_image_rows",
                format!(
                    "{}x{}: rows and columns are 1..=65535 in DICOM",
                    m.max_image_rows, m.max_image_cols
                ),
            ));
        }
        if m.max_frames == 0 || m.max_file_mib == 0 {
            return Err(self.field(
                "memory.max_frames",
                "max_frames and max_file_mib must be > 0",
            ));
        }
        if let Some(d) = &self.dicom
            && d.max_object_mib > m.max_file_mib
        {
            return Err(self.field(
                "dicom.max_object_mib",
                format!(
                    "{} MiB is more than memory.max_file_mib ({} MiB): such an object would be received and then refused",
                    d.max_object_mib, m.max_file_mib
                ),
            ));
        }
        if self.paths.inbox == self.paths.state {
            return Err(self.field("paths.inbox", "must differ from paths.state"));
        }
        Ok(())
    }

    /// The broker's host and port from `mqtt.url`.
    pub fn broker(&self) -> Result<BrokerAddr, String> {
        let url = &self.mqtt.url;
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "{url:?}: must be mqtt://host[:port] or mqtts://host[:port]"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{url:?}: missing host or port"));
        }
        Ok(BrokerAddr {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The SCP's settings, if the profile has a `[dicom]` table.
    pub fn scp_config(&self) -> Option<crate::source::scp::ScpConfig> {
        let d = self.dicom.as_ref().filter(|d| d.listen)?;
        Some(crate::source::scp::ScpConfig {
            ae_title: d.ae_title.trim().to_owned(),
            bind: std::net::SocketAddr::new(d.bind.parse().expect("validated"), d.port),
            max_associations: d.max_associations,
            allowed_callers: d.allowed_callers.clone(),
            allowed_networks: d
                .allowed_addresses
                .iter()
                .map(|a| a.parse().expect("validated"))
                .collect(),
            extra_sop_classes: d.extra_sop_classes.clone(),
            timeout: std::time::Duration::from_secs(d.timeout_s),
        })
    }

    /// Where results go: the DICOM outbox's folder and limit, and each destination's
    /// settings; `None` when the profile names no destination.
    pub fn results_config(&self) -> Option<crate::dicom::send::ResultsConfig> {
        let d = self.dicom.as_ref().filter(|d| !d.destinations.is_empty())?;
        Some(crate::dicom::send::ResultsConfig {
            outbox_dir: self.paths.state.join("dicom-out"),
            outbox_max_bytes: d.outbox_max_mib << 20,
            max_side: d.results_max_side,
            destinations: d
                .destinations
                .iter()
                .map(|dest| crate::dicom::send::Destination {
                    name: dest.name.clone(),
                    calling_ae_title: d.ae_title.trim().to_owned(),
                    called_ae_title: dest.ae_title.trim().to_owned(),
                    host: dest.host.clone(),
                    port: dest.port,
                    tls: dest.tls.as_ref().map(|t| crate::dicom::send::TlsSettings {
                        files: Tls {
                            ca_file: t.ca_file.clone(),
                            client_cert_file: t.client_cert_file.clone(),
                            client_key_file: t.client_key_file.clone(),
                        },
                        server_name: t.server_name.clone().unwrap_or_else(|| dest.host.clone()),
                    }),
                    max_attempts: dest.max_attempts,
                    timeout: std::time::Duration::from_secs(dest.timeout_s),
                    reconnect_max: std::time::Duration::from_secs(dest.reconnect_max_s),
                })
                .collect(),
        })
    }

    /// The spool's folder and its limits in bytes (folder, one object).
    /// The audit trail's settings, when it is enabled.
    pub fn audit_config(&self) -> Option<crate::audit::AuditConfig> {
        self.audit.enabled.then(|| crate::audit::AuditConfig {
            dir: self.paths.state.join("audit"),
            keep_days: self.audit.keep_days,
            max_bytes: self.audit.max_mib << 20,
        })
    }

    pub fn spool_config(&self) -> Option<(PathBuf, u64, u64)> {
        let d = self.dicom.as_ref().filter(|d| d.listen)?;
        Some((
            self.paths.state.join("spool"),
            d.spool_max_mib << 20,
            d.max_object_mib << 20,
        ))
    }

    /// The outbox's folder and limits.
    pub fn outbox_config(&self) -> (PathBuf, crate::publish::OutboxConfig) {
        let o = &self.outbox;
        (
            self.paths.state.join("outbox"),
            crate::publish::OutboxConfig {
                max_bytes: o.max_mib * 1024 * 1024,
                max_records: o.max_records,
                segment_bytes: o.segment_kib * 1024,
            },
        )
    }

    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("bedside-{}-{}", self.device.site, self.device.id))
    }

    /// `<prefix>/<site>/<device>/<leaf>`.
    pub fn topic(&self, leaf: &str) -> String {
        format!(
            "{}/{}/{}/{leaf}",
            self.mqtt.topic_prefix, self.device.site, self.device.id
        )
    }

    /// The key for hashing instance UIDs (see [`Privacy`]).
    pub fn uid_hash_key(&self) -> Result<Vec<u8>, BoardError> {
        match &self.privacy.uid_hash_key_file {
            Some(path) => {
                let key = std::fs::read(path).map_err(|source| BoardError::Io {
                    path: path.clone(),
                    source,
                })?;
                if key.trim_ascii().len() < 16 {
                    return Err(self.field(
                        "privacy.uid_hash_key_file",
                        "the key must be at least 16 bytes",
                    ));
                }
                Ok(key.trim_ascii().to_vec())
            }
            None => Ok(format!("bedside:{}", self.device.site).into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = r#"
[device]
id = "cart-1"
site = "clinic-a"
board = "x86-dev"
[paths]
inbox = "var/inbox"
state = "/var/lib/bedside"
[mqtt]
url = "mqtt://127.0.0.1:1884"
[[models]]
path = "../models/m"
"#;

    #[test]
    fn resolves_paths_against_the_profile_and_defaults() {
        let p = BoardProfile::from_toml(DEV, Path::new("/etc/bedside/board.toml")).unwrap();
        assert_eq!(p.paths.inbox, Path::new("/etc/bedside/var/inbox"));
        assert_eq!(p.paths.state, Path::new("/var/lib/bedside"));
        assert_eq!(p.models[0].path, Path::new("/etc/bedside/../models/m"));
        assert_eq!(
            p.broker().unwrap(),
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false,
            }
        );
        assert_eq!(p.topic("status"), "bedside/clinic-a/cart-1/status");
        assert_eq!(p.mqtt.inflight, 16);
        assert_eq!(p.mqtt.protocol, Protocol::Auto);
        assert_eq!(p.outbox_config().1.max_bytes, 64 << 20);
    }

    #[test]
    fn names_the_bad_field() {
        let origin = Path::new("b.toml");
        let e = BoardProfile::from_toml(&DEV.replace("cart-1", "cart/1"), origin).unwrap_err();
        assert!(e.to_string().contains("device.id"), "{e}");
        let e = BoardProfile::from_toml(&DEV.replace("mqtt://127.0.0.1:1884", "http://x"), origin)
            .unwrap_err();
        assert!(e.to_string().contains("mqtt.url"), "{e}");
        let e = BoardProfile::from_toml(&DEV.replace("[device]", "[device]\nbogus = 1"), origin)
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = BoardProfile::from_toml(&DEV.replace("mqtt://", "mqtts://"), origin).unwrap_err();
        assert!(e.to_string().contains("mqtt.tls"), "{e}");
        let tls = DEV.replace(
            "[[models]]",
            "[mqtt.tls]\nca_file = \"ca.pem\"\nclient_cert_file = \"c.pem\"\n[[models]]",
        );
        let e = BoardProfile::from_toml(&tls.replace("mqtt://", "mqtts://"), origin).unwrap_err();
        assert!(e.to_string().contains("client_key_file"), "{e}");
        let e = BoardProfile::from_toml(&tls, origin).unwrap_err();
        assert!(e.to_string().contains("mqtt.url"), "{e}");
        let e = BoardProfile::from_toml(
            &DEV.replace(
                "[[models]]",
                "[dicom]\nae_title = \"BEDSIDE\"\nallowed_addresses = [\"10.0.0.0/40\"]\n[[models]]",
            ),
            origin,
        )
        .unwrap_err();
        assert!(e.to_string().contains("dicom.allowed_addresses"), "{e}");
        let e = BoardProfile::from_toml(
            &DEV.replace("[[models]]", "[outbox]\nmax_mib = 0\n[[models]]"),
            origin,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outbox.max_mib"), "{e}");
    }
}
