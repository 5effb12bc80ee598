//! One association's traffic once it is established, without I/O: a PDU in, the PDUs to send
//! and what to do next out (the rumqttc pattern: the state machine here, the socket in
//! [`super::Association::run`]). Kept apart so that the fuzz target `scp_pdus` drives exactly
//! this code with a peer's bytes, and so that every rule about what a peer may send lives in
//! one place:
//!
//! - command fragments gather into one command, at most [`MAX_COMMAND`] bytes;
//! - C-ECHO is answered, C-STORE's data set streams into the [`Spool`] and is answered once
//!   it is durable (or refused with the right status), any other command is "unrecognized";
//! - data without a command, an unreadable command, more than `max_object` bytes of a refused
//!   data set, or a PDU that has no place in an association end it with an A-ABORT.
//!
//! Spool writes block (file I/O and fsync): the caller runs [`Session::on_pdu`] where blocking
//! is allowed — the SCP on its spool threads ([`super::disk`]), to which a session moves
//! whole (it owns everything it holds).

use std::sync::Arc;

use dicom_ul::pdu::{AbortRQSource, PDataValue, PDataValueType, Pdu};
use tracing::{error, info, warn};

use super::super::spool::{Incoming, Spool};
use crate::dicom::dimse::{self, Request, status};

/// A DIMSE command is a few hundred bytes; one larger than this is not a command.
pub const MAX_COMMAND: usize = 64 * 1024;

/// The state of one established association.
pub struct Session {
    spool: Arc<Spool>,
    /// Accepted presentation contexts: id and transfer syntax.
    contexts: Vec<(u8, String)>,
    command: Vec<u8>,
    state: Receiving,
    /// C-STOREs answered with success / with another status.
    pub stored: u32,
    pub refused: u32,
}

/// What a PDU led to.
#[derive(Debug)]
pub struct Step {
    /// To send now, in order (before an abort, too).
    pub send: Vec<Pdu>,
    pub next: Next,
}

/// What the association does after sending [`Step::send`].
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Read the next PDU.
    Read,
    /// The peer asked for a release; the reply is in `send`. Close.
    Released,
    /// The peer aborted; an object in progress was not kept. Close.
    PeerAborted(AbortRQSource),
    /// The peer broke the protocol: send an A-ABORT and close. Why, for the log.
    Abort(String),
}

/// What happens to the data set of the C-STORE in progress.
enum Receiving {
    Nothing,
    Object {
        reply: Reply,
        into: Box<Incoming>,
    },
    /// Read and thrown away; answered with `status`.
    Refused {
        reply: Reply,
        status: u16,
        /// Set for a command other than C-STORE that came with a data set.
        command_field: Option<u16>,
        /// Bytes of the data set read and thrown away so far.
        drained: u64,
    },
}

/// What the answer to a C-STORE must name.
struct Reply {
    message_id: u16,
    sop_class: String,
    sop_instance: String,
    context: u8,
}

impl Session {
    /// `contexts`: the accepted presentation contexts (id, transfer syntax).
    pub fn new(spool: Arc<Spool>, contexts: Vec<(u8, String)>) -> Self {
        Session {
            spool,
            contexts,
            command: Vec::new(),
            state: Receiving::Nothing,
            stored: 0,
            refused: 0,
        }
    }

    /// Takes one PDU from the peer.
    pub fn on_pdu(&mut self, pdu: Pdu) -> Step {
        let mut send = Vec::new();
        let next = match pdu {
            Pdu::PData { data } => self.on_values(data, &mut send),
            Pdu::ReleaseRQ => {
                send.push(Pdu::ReleaseRP);
                Next::Released
            }
            Pdu::AbortRQ { source } => Next::PeerAborted(source),
            // Its short form: the Debug form of a PDU can carry a whole data set.
            other => Next::Abort(format!(
                "unexpected PDU on a DICOM association: {}",
                other.short_description()
            )),
        };
        Step { send, next }
    }

    fn on_values(&mut self, values: Vec<PDataValue>, send: &mut Vec<Pdu>) -> Next {
        for value in values {
            let reply = match value.value_type {
                PDataValueType::Command => match self.on_command_fragment(&value) {
                    Ok(reply) => reply,
                    Err(why) => return Next::Abort(why),
                },
                PDataValueType::Data => match self.on_data(&value) {
                    Ok(reply) => reply,
                    Err(why) => return Next::Abort(why),
                },
            };
            if let Some((context, bytes)) = reply {
                send.push(Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: context,
                        value_type: PDataValueType::Command,
                        is_last: true,
                        data: bytes,
                    }],
                });
            }
        }
        Next::Read
    }

    /// A command fragment; on the last one, the command is acted on.
    fn on_command_fragment(&mut self, value: &PDataValue) -> Result<Option<(u8, Vec<u8>)>, String> {
        if self.command.len() + value.data.len() > MAX_COMMAND {
            return Err(format!("a DIMSE command longer than {MAX_COMMAND} bytes"));
        }
        self.command.extend_from_slice(&value.data);
        if !value.is_last {
            return Ok(None);
        }
        let request = dimse::parse_request(&self.command);
        self.command.clear();
        match request {
            Ok(r) => Ok(self.on_command(r, value.presentation_context_id)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Acts on a complete command; returns a reply to send now, if any.
    fn on_command(&mut self, request: Request, context: u8) -> Option<(u8, Vec<u8>)> {
        match request {
            Request::Echo { message_id } => Some((context, dimse::echo_response(message_id))),
            Request::Store {
                message_id,
                sop_class,
                sop_instance,
            } => {
                let reply = Reply {
                    message_id,
                    sop_class,
                    sop_instance,
                    context,
                };
                let refused = |reply, status| Receiving::Refused {
                    reply,
                    status,
                    command_field: None,
                    drained: 0,
                };
                let Some((_, ts)) = self.contexts.iter().find(|(id, _)| *id == context) else {
                    self.state = refused(reply, status::CANNOT_UNDERSTAND);
                    return None;
                };
                self.state = match self.spool.begin(&reply.sop_class, &reply.sop_instance, ts) {
                    Ok(into) => Receiving::Object {
                        reply,
                        into: Box::new(into),
                    },
                    Err(e) => {
                        warn!("C-STORE refused (out of resources): {e}");
                        refused(reply, status::OUT_OF_RESOURCES)
                    }
                };
                None
            }
            Request::Other {
                command_field,
                message_id,
                has_data_set,
            } => {
                if has_data_set {
                    self.state = Receiving::Refused {
                        reply: Reply {
                            message_id,
                            sop_class: String::new(),
                            sop_instance: String::new(),
                            context,
                        },
                        status: status::UNRECOGNIZED_OPERATION,
                        command_field: Some(command_field),
                        drained: 0,
                    };
                    None
                } else {
                    Some((
                        context,
                        dimse::unrecognized_response(command_field, message_id),
                    ))
                }
            }
        }
    }

    /// A data fragment; on the last one, the answer to the C-STORE.
    fn on_data(&mut self, value: &PDataValue) -> Result<Option<(u8, Vec<u8>)>, String> {
        match &mut self.state {
            Receiving::Nothing => return Err("DICOM data without a C-STORE command".into()),
            Receiving::Object { into, .. } => {
                if let Err(e) = into.write(&value.data) {
                    warn!("C-STORE refused (out of resources): {e}");
                    let Receiving::Object { reply, .. } =
                        std::mem::replace(&mut self.state, Receiving::Nothing)
                    else {
                        unreachable!("matched above")
                    };
                    // Dropping the object removes its partial file.
                    self.state = Receiving::Refused {
                        reply,
                        status: status::OUT_OF_RESOURCES,
                        command_field: None,
                        drained: 0,
                    };
                }
            }
            Receiving::Refused { drained, .. } => {
                // Read and thrown away so that the answer can be given, but not without end.
                *drained += value.data.len() as u64;
                if *drained > self.spool.max_object() {
                    return Err(format!(
                        "a refused data set goes on past {} bytes (dicom.max_object_mib)",
                        self.spool.max_object()
                    ));
                }
            }
        }
        if !value.is_last {
            return Ok(None);
        }
        let (reply, status, command_field) =
            match std::mem::replace(&mut self.state, Receiving::Nothing) {
                Receiving::Nothing => return Ok(None),
                Receiving::Object { reply, into } => {
                    let bytes = into.bytes();
                    let status = match into.commit() {
                        Ok(path) => {
                            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                            info!(
                                file = name.as_deref().unwrap_or(""),
                                bytes, "DICOM object received and spooled"
                            );
                            status::SUCCESS
                        }
                        Err(e) => {
                            error!("C-STORE refused: the object could not be made durable: {e}");
                            status::OUT_OF_RESOURCES
                        }
                    };
                    (reply, status, None)
                }
                Receiving::Refused {
                    reply,
                    status,
                    command_field,
                    ..
                } => (reply, status, command_field),
            };
        if status == status::SUCCESS {
            self.stored += 1;
        } else {
            self.refused += 1;
        }
        let bytes = match command_field {
            Some(field) => dimse::unrecognized_response(field, reply.message_id),
            None => dimse::store_response(
                reply.message_id,
                &reply.sop_class,
                &reply.sop_instance,
                status,
            ),
        };
        Ok(Some((reply.context, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, Arc<Spool>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap());
        (dir, spool)
    }

    fn value(kind: PDataValueType, last: bool, data: Vec<u8>) -> Pdu {
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: 1,
                value_type: kind,
                is_last: last,
                data,
            }],
        }
    }

    fn store_command() -> Vec<u8> {
        dimse::store_request(7, "1.2.840.10008.5.1.4.1.1.1.1", "2.25.42")
    }

    fn answered_status(step: &Step) -> u16 {
        let [Pdu::PData { data }] = step.send.as_slice() else {
            panic!("one P-DATA answer, got {step:?}");
        };
        dimse::parse_store_response(&data[0].data).unwrap().status
    }

    #[test]
    fn a_store_is_answered_once_its_object_is_spooled() {
        let (dir, spool) = spool();
        let mut s = Session::new(spool.clone(), vec![(1, "1.2.840.10008.1.2.1".into())]);
        let step = s.on_pdu(value(PDataValueType::Command, true, store_command()));
        assert!(step.send.is_empty() && step.next == Next::Read);
        let step = s.on_pdu(value(PDataValueType::Data, false, vec![0; 100]));
        assert!(step.send.is_empty());
        let step = s.on_pdu(value(PDataValueType::Data, true, vec![0; 100]));
        assert_eq!(answered_status(&step), status::SUCCESS);
        assert_eq!((s.stored, s.refused), (1, 0));
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "dcm"))
            .collect();
        assert_eq!(files.len(), 1, "one spooled object");
        let step = s.on_pdu(Pdu::ReleaseRQ);
        assert_eq!(step.next, Next::Released);
        assert!(matches!(step.send.as_slice(), [Pdu::ReleaseRP]));
    }

    #[test]
    fn an_unknown_context_is_refused_and_its_data_drained_within_bounds() {
        let (_dir, spool) = spool();
        let mut s = Session::new(spool.clone(), vec![(3, "1.2.840.10008.1.2.1".into())]);
        s.on_pdu(value(PDataValueType::Command, true, store_command()));
        let step = s.on_pdu(value(PDataValueType::Data, true, vec![0; 10]));
        assert_eq!(answered_status(&step), status::CANNOT_UNDERSTAND);
        // Refused again, and this time the data set runs past max_object.
        s.on_pdu(value(PDataValueType::Command, true, store_command()));
        let step = s.on_pdu(value(PDataValueType::Data, false, vec![0; 70_000]));
        assert!(matches!(step.next, Next::Abort(ref why) if why.contains("max_object")));
    }

    #[test]
    fn protocol_violations_abort() {
        let (_dir, spool) = spool();
        let mut s = Session::new(spool.clone(), vec![(1, "1.2.840.10008.1.2.1".into())]);
        let step = s.on_pdu(value(PDataValueType::Data, true, vec![1, 2, 3]));
        assert!(matches!(step.next, Next::Abort(ref why) if why.contains("without a C-STORE")));
        let long = vec![0; MAX_COMMAND / 2 + 1];
        s.on_pdu(value(PDataValueType::Command, false, long.clone()));
        let step = s.on_pdu(value(PDataValueType::Command, false, long));
        assert!(matches!(step.next, Next::Abort(ref why) if why.contains("longer than")));
        let step = s.on_pdu(Pdu::ReleaseRP);
        assert!(matches!(step.next, Next::Abort(ref why) if why.contains("unexpected PDU")));
    }
}
