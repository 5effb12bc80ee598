//! Results to PACS: a C-STORE SCU (dicom-ul's client association, optionally over TLS) and
//! one sender thread per `[[dicom.destinations]]` draining that destination's queue in the
//! DICOM outbox ([`super::outbox`]).
//!
//! What an answer means for an object:
//! - success, or a warning (logged): stored; it leaves the queue.
//! - a failure status (A7xx out of resources, A9xx, Cxxx, 01xx…), or its SOP class refused
//!   in association negotiation: a refusal of that object. It is tried again after a pause
//!   that doubles, and after `max_attempts` refusals moves to the dead-letter folder with
//!   the reason, so that one object PACS will never take does not hold the queue.
//! - no connection, association rejected or aborted, a broken connection: the destination
//!   is unreachable, not the object at fault. Nothing is counted against the objects; the
//!   sender waits (1 s, doubling to `reconnect_max_s`, 60 s by default) and tries again, for
//!   as long as it takes.
//!
//! Blocking I/O on threads of its own: a slow PACS never stalls the image worker or the
//! MQTT connection.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::ClientAssociation;
use dicom_ul::association::{ClientAssociationOptions, CloseSocket};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tracing::{debug, info, warn};

use super::dimse::{self, StoreOutcome};
use super::outbox::{DicomOutbox, Pending};
use crate::tls::{self, Tls, TlsError};

/// The transfer syntaxes offered for every result: bedside writes Explicit VR Little Endian
/// and sends it as it is; Implicit VR Little Endian, which every SCP must accept, is the
/// fallback (the data set is then re-encoded).
const OFFERED: [&str; 2] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
];
/// Objects sent per association.
const BATCH: usize = 8;

/// Where results go (`[dicom]` and `[[dicom.destinations]]` of the board profile).
#[derive(Debug, Clone)]
pub struct ResultsConfig {
    pub outbox_dir: PathBuf,
    pub outbox_max_bytes: u64,
    /// Longer side of a Secondary Capture picture.
    pub max_side: u32,
    pub destinations: Vec<Destination>,
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub calling_ae_title: String,
    pub called_ae_title: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsSettings>,
    pub max_attempts: u32,
    pub timeout: Duration,
    /// The longest pause between two tries while the destination is unreachable.
    pub reconnect_max: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub files: Tls,
    /// The name the destination's certificate must carry.
    pub server_name: String,
}

/// Why an association could not do its work: the destination's fault or the network's,
/// never the objects'.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

/// How one object fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Stored,
    /// Stored, with a warning status.
    Warning(String),
    Refused(String),
}

/// The sender threads, one per destination.
pub struct Senders {
    stop: Arc<AtomicBool>,
    outbox: Arc<DicomOutbox>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts a sender for every destination. TLS settings are read now, so that a missing CA
/// file stops the daemon at start rather than leaving results unsent.
pub fn start(outbox: Arc<DicomOutbox>, destinations: &[Destination]) -> Result<Senders, TlsError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut prepared = Vec::new();
    for d in destinations {
        let tls = match &d.tls {
            Some(t) => Some(tls::client_config(&t.files)?),
            None => None,
        };
        prepared.push((d.clone(), tls));
    }
    let mut threads = Vec::new();
    for (dest, tls) in prepared {
        let (stop, outbox) = (stop.clone(), outbox.clone());
        let name = format!("bedside-send-{}", dest.name);
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .stack_size(crate::alloc::THREAD_STACK)
            .spawn(move || sender(&dest, tls, &outbox, &stop))
            .expect("a thread can be started at start-up");
        threads.push(handle);
    }
    Ok(Senders {
        stop,
        outbox,
        threads,
    })
}

impl Senders {
    /// Stops every sender after the object it is sending (at most `grace`); what is not sent
    /// waits in the outbox for the next start.
    pub fn stop(self, grace: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.outbox.wake_all();
        let deadline = std::time::Instant::now() + grace;
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn sender(
    dest: &Destination,
    tls: Option<Arc<rustls::ClientConfig>>,
    outbox: &DicomOutbox,
    stop: &AtomicBool,
) {
    let mut pause = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let batch = outbox.take(&dest.name, BATCH, Duration::from_secs(1));
        if batch.is_empty() {
            continue;
        }
        let result = send_batch(dest, tls.clone(), &batch, |p, sent| match sent {
            Sent::Stored => outbox.delivered(&dest.name, &p.name),
            Sent::Warning(w) => {
                warn!(destination = %dest.name, object = %p.name, "stored with a warning: {w}");
                outbox.delivered(&dest.name, &p.name);
            }
            Sent::Refused(reason) => {
                outbox.refused(&dest.name, &p.name, &reason, dest.max_attempts);
            }
        });
        match result {
            Ok(()) => pause = Duration::from_secs(1),
            Err(Unreachable(e)) => {
                // Whatever was not answered goes back, first in line.
                let names: Vec<String> = batch.iter().map(|p| p.name.clone()).collect();
                outbox.unreachable(&dest.name, &names, &e);
                debug!(destination = %dest.name, retry_in_s = pause.as_secs(), "{e}");
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                pause = (pause * 2).min(dest.reconnect_max);
            }
        }
    }
}

/// Sends `batch` on one association, telling `answered` how each object fared as its answer
/// comes. An error means the destination could not be reached or broke off: the objects not
/// yet answered were not sent.
pub fn send_batch(
    dest: &Destination,
    tls: Option<Arc<rustls::ClientConfig>>,
    batch: &[Pending],
    mut answered: impl FnMut(&Pending, Sent),
) -> Result<(), Unreachable> {
    let mut classes: Vec<&str> = batch.iter().map(|p| p.sop_class_uid.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(dest.calling_ae_title.as_str())
        .called_ae_title(dest.called_ae_title.as_str())
        .read_timeout(dest.timeout)
        .write_timeout(dest.timeout)
        .connection_timeout(dest.timeout);
    for class in &classes {
        options = options.with_presentation_context(*class, OFFERED.to_vec());
    }
    let address = format!("{}:{}", dest.host, dest.port);
    let refuse_all = |answered: &mut dyn FnMut(&Pending, Sent), why: &str| {
        for p in batch {
            answered(p, Sent::Refused(why.to_owned()));
        }
    };
    match (tls, &dest.tls) {
        (Some(config), Some(settings)) => {
            let options = options
                .tls_config(config)
                .server_name(&settings.server_name);
            match options.establish_tls(address.as_str()) {
                Ok(mut assoc) => {
                    no_delay(&assoc.inner_stream().sock);
                    store_all(assoc, batch, &mut answered)
                }
                Err(e) => establish_failed(e, &mut |why| refuse_all(&mut answered, why)),
            }
        }
        _ => match options.establish(address.as_str()) {
            Ok(mut assoc) => {
                no_delay(assoc.inner_stream());
                store_all(assoc, batch, &mut answered)
            }
            Err(e) => establish_failed(e, &mut |why| refuse_all(&mut answered, why)),
        },
    }
}

/// Turns Nagle's algorithm off: a C-STORE is a command PDU and a data PDU, then a wait for
/// the answer, and with Nagle on the second write waits for the peer's delayed ACK of the
/// first (~40 ms an object; measured with benches/pacs.sh: 35 results/s with it on).
fn no_delay(socket: &std::net::TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

fn establish_failed(
    e: dicom_ul::association::Error,
    refuse: &mut dyn FnMut(&str),
) -> Result<(), Unreachable> {
    match e {
        // The destination is up but takes none of these SOP classes: the objects' fault.
        dicom_ul::association::Error::NoAcceptedPresentationContexts { .. } => {
            refuse("the destination accepts none of these SOP classes");
            Ok(())
        }
        e => Err(Unreachable(format!(
            "cannot associate: {}",
            error_chain(&e)
        ))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn store_all<S>(
    mut assoc: ClientAssociation<S>,
    batch: &[Pending],
    answered: &mut impl FnMut(&Pending, Sent),
) -> Result<(), Unreachable>
where
    S: CloseSocket + std::io::Read + std::io::Write,
{
    let contexts = assoc.presentation_contexts().to_vec();
    for (i, p) in batch.iter().enumerate() {
        let Some(pc) = contexts.iter().find(|pc| {
            pc.abstract_syntax.trim_end_matches('\0') == p.sop_class_uid
                && pc.reason == PresentationContextResultReason::Acceptance
        }) else {
            answered(
                p,
                Sent::Refused(format!(
                    "the destination does not accept SOP class {}",
                    p.sop_class_uid
                )),
            );
            continue;
        };
        let message_id = (i + 1) as u16;
        let data = match data_set(p, pc.transfer_syntax.trim_end_matches('\0')) {
            Ok(d) => d,
            Err(e) => {
                // Unreadable on our own disk: nothing the destination can change. Counted as
                // a refusal so that it ends in the dead-letter folder with the reason.
                answered(p, Sent::Refused(e));
                continue;
            }
        };
        let command = dimse::store_request(message_id, &p.sop_class_uid, &p.sop_instance_uid);
        let sent = assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc.id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: command,
                }],
            })
            .map_err(|e| Unreachable(format!("sending a C-STORE: {}", error_chain(&e))))
            .and_then(|()| {
                let mut writer = assoc.send_pdata(pc.id);
                writer
                    .write_all(&data)
                    .and_then(|()| writer.finish())
                    .map_err(|e| Unreachable(format!("sending a data set: {e}")))
            });
        if let Err(e) = sent {
            let _ = assoc.abort();
            return Err(e);
        }
        drop(data);
        let response = match read_response(&mut assoc) {
            Ok(r) => r,
            Err(e) => {
                let _ = assoc.abort();
                return Err(e);
            }
        };
        let status = format!(
            "status {:04X}H{}",
            response.status,
            response
                .comment
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        );
        answered(
            p,
            match StoreOutcome::of(response.status) {
                StoreOutcome::Success => Sent::Stored,
                StoreOutcome::Warning => Sent::Warning(status),
                StoreOutcome::Failure => Sent::Refused(status),
            },
        );
    }
    if let Err(e) = assoc.release() {
        // Every object was answered: a release that goes wrong loses nothing.
        debug!("association release: {}", error_chain(&e));
    }
    Ok(())
}

/// The command set of the C-STORE-RSP, gathered from its fragments.
fn read_response<S>(assoc: &mut ClientAssociation<S>) -> Result<dimse::StoreResponse, Unreachable>
where
    S: CloseSocket + std::io::Read + std::io::Write,
{
    let mut command = Vec::new();
    loop {
        match assoc.receive() {
            Ok(Pdu::PData { data }) => {
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        command.extend_from_slice(&v.data);
                        if v.is_last {
                            return dimse::parse_store_response(&command)
                                .map_err(|e| Unreachable(e.to_string()));
                        }
                    }
                }
            }
            Ok(Pdu::AbortRQ { source }) => {
                return Err(Unreachable(format!("the destination aborted: {source:?}")));
            }
            Ok(other) => {
                return Err(Unreachable(format!(
                    "unexpected answer from the destination: {}",
                    other.short_description()
                )));
            }
            Err(e) => {
                return Err(Unreachable(format!(
                    "waiting for the C-STORE response: {}",
                    error_chain(&e)
                )));
            }
        }
    }
}

/// The object's data set in transfer syntax `ts`: the file's own bytes after its file meta
/// when that is the syntax, else read and re-encoded.
fn data_set(p: &Pending, ts: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(&p.path).map_err(|e| format!("cannot read {}: {e}", p.path.display()))?;
    let unreadable =
        |why: String| format!("{} is not a readable DICOM file: {why}", p.path.display());
    // Preamble, then the file meta group from "DICM" on.
    let meta = bytes
        .get(128..)
        .ok_or_else(|| unreadable("shorter than a preamble".into()))
        .and_then(|b| FileMetaTable::from_reader(b).map_err(|e| unreadable(e.to_string())))?;
    if meta.transfer_syntax().trim_end_matches('\0') == ts {
        // The file meta group: "DICM", (0002,0000) UL of 12 bytes, then the length it gives.
        let start = 128 + 4 + 12 + meta.information_group_length as usize;
        if let Some(data) = bytes.get(start..) {
            return Ok(data.to_vec());
        }
    }
    let obj = OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .map_err(|e| unreadable(e.to_string()))?;
    let syntax = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| unreadable(format!("transfer syntax {ts} is not known")))?;
    let mut out = Vec::with_capacity(bytes.len());
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| unreadable(e.to_string()))?;
    Ok(out)
}

/// Logs what the outbox holds at start.
pub fn log_recovery(recovery: &super::outbox::Recovery) {
    if recovery.pending > 0 || recovery.dead > 0 || recovery.torn > 0 {
        info!(
            pending = recovery.pending,
            dead_letters = recovery.dead,
            torn = recovery.torn,
            "DICOM results from an earlier run: the pending ones are sent first"
        );
    }
}
