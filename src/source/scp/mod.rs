//! The DICOM C-STORE SCP: how a portable X-ray unit or an ultrasound cart pushes images to
//! bedside. Built on dicom-ul's async associations, on the daemon's tokio runtime.
//!
//! - Before the association ([`gate`]): a connection has the ACSE timeout (10 s, or
//!   `timeout_s` if shorter) to send an A-ASSOCIATE-RQ header; another PDU type or an
//!   oversized request is answered with an A-ABORT at once. At most `max_associations + 64`
//!   connections are open at once; a further one is closed on arrival.
//! - Association: the called AE title must be ours; optional allow-lists of calling AE
//!   titles and source addresses; anyone else is rejected at association time and the log
//!   says who and why. At most `max_associations` at once ([`slots`]) — a further caller
//!   takes the slot of an association idle for 5 s or more (which is aborted), or waits for a
//!   free one (up to 30 s) before it is rejected.
//! - Inside an association: a peer silent for `timeout_s` is aborted; so is one whose PDUs
//!   cannot be read. What each PDU means is [`session`]'s, without I/O (the fuzz target
//!   `scp_pdus` drives it): a command growing past 64 KiB, data without a command, more than
//!   `max_object_mib` of a refused object or a command whose lengths lie end the association.
//! - Presentation contexts: Verification and the storage SOP classes of X-ray and
//!   ultrasound (plus the profile's), in every transfer syntax this build can decode.
//! - C-STORE: the data set streams into the [`Spool`]; success is answered only after the
//!   object is synced under its final name; a spool that cannot take it answers "out of
//!   resources" (A700). Nothing is acknowledged that is not kept.
//! - C-ECHO answers success; any other command is answered "unrecognized operation".

pub mod disk;
mod gate;
pub mod session;
mod slots;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::Association as _;
use dicom_ul::association::server::{
    AcceptAny, AccessControl, DefaultNegotiation, ServerAssociationOptions,
};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use self::disk::DiskThreads;
use self::gate::{AbortReason, Refused};
use self::session::{Next, Session};
use self::slots::{Slot, Slots};
use super::spool::Spool;
use crate::dicom::dimse;

/// An association that has received no PDU for this long gives its slot to a newcomer when
/// all are taken.
const EVICT_IDLE: Duration = Duration::from_secs(5);
/// How long a caller waits for a slot before it is rejected.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// Connections beyond `max_associations` (at the door or waiting for a slot) kept open.
const EXTRA_CONNECTIONS: usize = 64;

/// Storage SOP classes accepted by default.
pub const STORAGE_SOP_CLASSES: [(&str, &str); 9] = [
    ("1.2.840.10008.5.1.4.1.1.1", "CR Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.1.1",
        "Digital X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "Digital X-Ray Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.2",
        "Digital Mammography X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "Digital Mammography X-Ray Image Storage - For Processing",
    ),
    ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.3.1",
        "Ultrasound Multi-frame Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7",
        "Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    ),
];

/// Transfer syntaxes proposed by modalities, in bedside's order of preference. Only those
/// this build can decode are accepted (JPEG-LS and JPEG 2000 depend on cargo features).
pub const TRANSFER_SYNTAXES: [&str; 14] = [
    "1.2.840.10008.1.2.1",     // Explicit VR Little Endian
    "1.2.840.10008.1.2",       // Implicit VR Little Endian
    "1.2.840.10008.1.2.2",     // Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",  // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",     // RLE Lossless
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless, First-Order Prediction (SV1)
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless
    "1.2.840.10008.1.2.4.50",  // JPEG Baseline
    "1.2.840.10008.1.2.4.51",  // JPEG Extended
    "1.2.840.10008.1.2.4.80",  // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.201", // HTJ2K Lossless (accepted when the decoder has it)
];

/// The transfer syntaxes of [`TRANSFER_SYNTAXES`] this build can decode to pixels.
pub fn decodable_transfer_syntaxes() -> Vec<&'static str> {
    TRANSFER_SYNTAXES
        .into_iter()
        .filter(|uid| {
            TransferSyntaxRegistry
                .get(uid)
                .is_some_and(|ts| ts.can_decode_all())
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct ScpConfig {
    pub ae_title: String,
    pub bind: SocketAddr,
    pub max_associations: usize,
    /// Empty: any calling AE title.
    pub allowed_callers: Vec<String>,
    /// Empty: any address. Entries are addresses or `address/prefix` networks.
    pub allowed_networks: Vec<Network>,
    /// Storage SOP classes beyond [`STORAGE_SOP_CLASSES`].
    pub extra_sop_classes: Vec<String>,
    /// A peer silent this long is dropped.
    pub timeout: Duration,
}

impl ScpConfig {
    /// Whether `allowed_addresses` (empty: any) lets this source in.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        self.allowed_networks.is_empty() || self.allowed_networks.iter().any(|n| n.contains(ip))
    }
}

/// An IP network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DICOM on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A bound SCP, ready to serve.
pub struct Scp {
    listener: TcpListener,
    config: Arc<ScpConfig>,
    spool: Arc<Spool>,
    disk: Arc<DiskThreads>,
    options: ServerAssociationOptions<'static, AcceptAny, DefaultNegotiation>,
}

impl Scp {
    /// Binds the port now, so that a port in use stops the daemon at start with a clear error.
    pub async fn bind(config: ScpConfig, spool: Arc<Spool>) -> Result<Scp, BindError> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| BindError {
                addr: config.bind,
                source,
            })?;
        let mut options = ServerAssociationOptions::new()
            .ae_title(config.ae_title.clone())
            .with_abstract_syntax(dimse::VERIFICATION)
            .max_pdu_length(64 * 1024)
            .read_timeout(config.timeout)
            .write_timeout(config.timeout);
        for (uid, _) in STORAGE_SOP_CLASSES {
            options = options.with_abstract_syntax(uid);
        }
        for uid in &config.extra_sop_classes {
            options = options.with_abstract_syntax(uid.clone());
        }
        for ts in decodable_transfer_syntaxes() {
            options = options.with_transfer_syntax(ts);
        }
        let disk = DiskThreads::start(disk::threads_for(config.max_associations))
            .expect("a thread can be started at start-up");
        Ok(Scp {
            listener,
            config: Arc::new(config),
            spool,
            disk: Arc::new(disk),
            options,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts associations until `stop` turns true; associations in progress finish.
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let slots = Slots::new(self.config.max_associations, EVICT_IDLE);
        let acse = gate::acse_timeout(self.config.timeout);
        let max_connections = self.config.max_associations + EXTRA_CONNECTIONS;
        let mut turned_away: (u64, Option<Instant>) = (0, None);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.changed() => break,
            };
            let (mut socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("DICOM listener: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while tasks.try_join_next().is_some() {}
            if tasks.len() >= max_connections {
                // A flood: close at once, and say so at most every 10 s.
                turned_away.0 += 1;
                if turned_away
                    .1
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                {
                    warn!(%peer, open = tasks.len(), closed = turned_away.0, "DICOM connection closed on arrival: {max_connections} connections already open");
                    turned_away = (0, Some(Instant::now()));
                }
                continue;
            }
            let job = Association {
                config: self.config.clone(),
                spool: self.spool.clone(),
                disk: self.disk.clone(),
                options: self.options.clone(),
                peer,
            };
            let slots = slots.clone();
            tasks.spawn(async move {
                match gate::first_pdu(&mut socket, acse).await {
                    Ok(()) => {}
                    Err(Refused::Silent) => {
                        debug!(%peer, "DICOM connection closed: no A-ASSOCIATE-RQ within {acse:?}");
                        return;
                    }
                    Err(Refused::Aborted(_, why)) => {
                        warn!(%peer, "DICOM connection aborted: {why}");
                        return;
                    }
                }
                // Wait for a slot rather than turn a modality away at once: it would only
                // retry. A source outside `allowed_addresses` takes none: it is rejected at
                // once, so a flood from elsewhere cannot crowd out the modalities.
                let slot = if job.config.address_allowed(peer.ip()) {
                    slots.take(SLOT_WAIT).await
                } else {
                    None
                };
                job.run(socket, slot).await;
            });
        }
        // Let associations in progress finish (bounded by their timeouts).
        while tasks.join_next().await.is_some() {}
    }
}

/// Who may associate; logs every refusal with the caller and the reason.
struct Gate {
    config: Arc<ScpConfig>,
    peer: SocketAddr,
    busy: bool,
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let refuse = |why: String, reason| {
            warn!(calling_ae = calling_ae_title, called_ae = called_ae_title, peer = %self.peer, "DICOM association rejected: {why}");
            Err(reason)
        };
        if called_ae_title.trim() != this_ae_title.trim() {
            return refuse(
                format!("called AE title is not ours ({this_ae_title})"),
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            );
        }
        let c = &self.config;
        if !c.allowed_callers.is_empty()
            && !c
                .allowed_callers
                .iter()
                .any(|a| a.trim() == calling_ae_title.trim())
        {
            return refuse(
                "calling AE title is not in dicom.allowed_callers".into(),
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            );
        }
        if !c.address_allowed(self.peer.ip()) {
            return refuse(
                "source address is not in dicom.allowed_addresses".into(),
                AssociationRJServiceUserReason::NoReasonGiven,
            );
        }
        if self.busy {
            return refuse(
                format!(
                    "{} associations already open (dicom.max_associations) for 30 s",
                    c.max_associations
                ),
                AssociationRJServiceUserReason::NoReasonGiven,
            );
        }
        Ok(())
    }
}

struct Association {
    config: Arc<ScpConfig>,
    spool: Arc<Spool>,
    disk: Arc<DiskThreads>,
    options: ServerAssociationOptions<'static, AcceptAny, DefaultNegotiation>,
    peer: SocketAddr,
}

impl Association {
    async fn run(self, socket: TcpStream, slot: Option<Slot>) {
        let gate = Gate {
            config: self.config.clone(),
            peer: self.peer,
            busy: slot.is_none(),
        };
        // A second handle on the connection, to answer a request dicom-ul could not read
        // (it drops the socket on that error without a word).
        let (socket, spare) = match spare_handle(socket) {
            Ok(pair) => pair,
            Err(e) => {
                warn!(peer = %self.peer, "DICOM connection dropped: {e}");
                return;
            }
        };
        let options = self.options.clone().ae_access_control(gate);
        let established = match &slot {
            Some(slot) => tokio::select! {
                a = options.establish_async(socket) => Some(a),
                _ = slot.evicted() => None,
            },
            None => Some(options.establish_async(socket).await),
        };
        let mut assoc = match established {
            Some(Ok(a)) => a,
            Some(Err(dicom_ul::association::Error::ReceivePdu { source, .. })) => {
                warn!(peer = %self.peer, "DICOM association request unreadable ({source}); aborting");
                write_abort(spare, AbortReason::InvalidParameter);
                return;
            }
            Some(Err(e)) => {
                debug!(peer = %self.peer, "DICOM association not established: {e}");
                return;
            }
            None => {
                warn!(peer = %self.peer, "DICOM connection closed before its association: its slot went to a newcomer");
                return;
            }
        };
        drop(spare);
        let Some(slot) = slot else {
            // Not reached: the gate rejects every caller without a slot.
            let _ = assoc.abort().await;
            return;
        };
        slot.touch();
        let caller = assoc.peer_ae_title().to_owned();
        let contexts: Vec<(u8, String)> = assoc
            .presentation_contexts()
            .iter()
            .map(|pc| (pc.id, pc.transfer_syntax.clone()))
            .collect();
        info!(calling_ae = %caller, peer = %self.peer, contexts = contexts.len(), "DICOM association accepted");
        let mut session = Session::new(self.spool.clone(), contexts);
        loop {
            let received = tokio::select! {
                r = tokio::time::timeout(self.config.timeout, assoc.receive()) => r,
                _ = slot.evicted() => {
                    warn!(calling_ae = %caller, peer = %self.peer, stored = session.stored, "DICOM association idle for {EVICT_IDLE:?} or more aborted: its slot went to a newcomer");
                    let _ = assoc.abort().await;
                    return;
                }
            };
            let pdu = match received {
                Ok(Ok(pdu)) => pdu,
                Ok(Err(dicom_ul::association::Error::ConnectionClosed { .. })) => {
                    warn!(calling_ae = %caller, peer = %self.peer, stored = session.stored, "DICOM connection closed by the peer without a release");
                    return;
                }
                Ok(Err(e)) if !matches!(e, dicom_ul::association::Error::Timeout { .. }) => {
                    warn!(calling_ae = %caller, peer = %self.peer, "DICOM association broken ({}); aborting", chain(&e));
                    let _ = assoc.abort().await;
                    return;
                }
                // dicom-ul's own read timeout (the same `timeout_s`) or ours.
                Ok(Err(_)) | Err(_) => {
                    warn!(calling_ae = %caller, peer = %self.peer, "DICOM peer silent for {:?}; aborting the association", self.config.timeout);
                    let _ = assoc.abort().await;
                    return;
                }
            };
            slot.touch();
            // Spool writes and the fsync before an answer block: the session moves to a
            // spool thread for its PDU and comes back with what to send.
            let handled = self
                .disk
                .run(move || {
                    let step = session.on_pdu(pdu);
                    (session, step)
                })
                .await;
            let step = match handled {
                Ok((back, step)) => {
                    session = back;
                    step
                }
                Err(disk::Panicked) => {
                    error!(calling_ae = %caller, peer = %self.peer, "DICOM association's spool work panicked; aborting the association (an object in progress was not kept)");
                    let _ = assoc.abort().await;
                    return;
                }
            };
            for pdu in &step.send {
                if let Err(e) = assoc.send(pdu).await {
                    warn!(calling_ae = %caller, "cannot answer on the DICOM association: {e}");
                    return;
                }
            }
            let (stored, refused) = (session.stored, session.refused);
            match step.next {
                Next::Read => {}
                Next::Released => {
                    info!(calling_ae = %caller, peer = %self.peer, stored, refused, "DICOM association released");
                    return;
                }
                Next::PeerAborted(source) => {
                    warn!(calling_ae = %caller, peer = %self.peer, stored, "DICOM association aborted by the peer ({source:?}); an object in progress was not kept");
                    return;
                }
                Next::Abort(why) => {
                    warn!(calling_ae = %caller, peer = %self.peer, stored, "{why}; aborting the association");
                    let _ = assoc.abort().await;
                    return;
                }
            }
        }
    }
}

/// An error with its causes, "outer: inner: innermost" (dicom-ul's errors say only their own
/// level, e.g. "failed to receive pdu").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Splits a connection into the tokio stream dicom-ul takes and a second (blocking) handle
/// on the same socket.
fn spare_handle(socket: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = socket.into_std()?;
    let spare = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, spare))
}

/// Writes an A-ABORT on the spare handle. The socket is non-blocking, so a peer that reads
/// nothing cannot hold this up: ten bytes fit any empty send buffer, and a full one drops them.
fn write_abort(mut spare: std::net::TcpStream, reason: AbortReason) {
    use std::io::Write as _;
    let _ = spare.write_all(&gate::abort_pdu(reason));
    let _ = spare.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_addresses() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Network = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let any: Network = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.168.1.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("host.example".parse::<Network>().is_err());
    }

    #[test]
    fn the_uncompressed_and_native_syntaxes_are_always_decodable() {
        let ts = decodable_transfer_syntaxes();
        for uid in [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.70",
        ] {
            assert!(ts.contains(&uid), "{uid} missing from {ts:?}");
        }
    }
}
