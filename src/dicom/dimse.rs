//! The few DIMSE messages bedside speaks. As a storage SCP: C-ECHO and C-STORE requests in,
//! their responses out. As a storage SCU (results to PACS, [`crate::dicom::send`]): the
//! C-STORE request out, its response in, and what its status means. Command sets are always Implicit VR Little Endian (PS3.7 §6.3.1), built
//! and read with dicom-object so that group lengths and padding come out right.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// Verification SOP Class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// DIMSE status codes bedside answers with.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (the spool is full, the disk is full, the object too large).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: cannot understand (a request bedside cannot parse).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// The command is not one this SCP performs.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// What a C-STORE response's status means for the object sent (PS3.4 Annex B.2.3, PS3.7
/// Annex C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// 0000: stored.
    Success,
    /// Bxxx (coercion of data elements, elements discarded, data set does not match the SOP
    /// class): stored, with a remark worth a log line.
    Warning,
    /// Anything else (A7xx out of resources, A9xx data set does not match, Cxxx cannot
    /// understand, 01xx/02xx general failures): not stored.
    Failure,
}

impl StoreOutcome {
    pub fn of(status: u16) -> Self {
        match status {
            status::SUCCESS => StoreOutcome::Success,
            0xB000..=0xBFFF | 0x0107 | 0x0116 => StoreOutcome::Warning,
            _ => StoreOutcome::Failure,
        }
    }
}

/// A C-STORE response, as the SCU reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreResponse {
    pub message_id: u16,
    pub status: u16,
    /// Error Comment (0000,0902), when the peer gave one.
    pub comment: Option<String>,
}

const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
const NO_DATA_SET: u16 = 0x0101;

#[derive(Debug, thiserror::Error)]
#[error("malformed DIMSE command: {0}")]
pub struct DimseError(String);

/// A request received on an association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Echo {
        message_id: u16,
    },
    Store {
        message_id: u16,
        sop_class: String,
        sop_instance: String,
    },
    /// Anything else (C-FIND, C-MOVE …): answered as unrecognised.
    Other {
        command_field: u16,
        message_id: u16,
        /// Whether a data set follows the command.
        has_data_set: bool,
    },
}

fn implicit_vr_le() -> &'static dicom_encoding::TransferSyntax {
    TransferSyntaxRegistry
        .get(IMPLICIT_VR_LE)
        .expect("Implicit VR Little Endian is always registered")
}

fn uid(obj: &InMemDicomObject, tag: Tag) -> Result<String, DimseError> {
    let value = obj
        .element(tag)
        .map_err(|_| DimseError(format!("no {tag}")))?
        .to_str()
        .map_err(|e| DimseError(format!("{tag}: {e}")))?;
    Ok(value.trim_end_matches(['\0', ' ']).to_owned())
}

fn u16_of(obj: &InMemDicomObject, tag: Tag) -> Result<u16, DimseError> {
    obj.element(tag)
        .map_err(|_| DimseError(format!("no {tag}")))?
        .to_int::<u16>()
        .map_err(|e| DimseError(format!("{tag}: {e}")))
}

/// A command set, its lengths checked first: a peer's 100-byte command can claim a 2 GiB
/// element, and dicom-parser would zero-fill a buffer that size before reading it.
fn read_command(bytes: &[u8]) -> Result<InMemDicomObject, DimseError> {
    super::lengths::check_data_set(bytes, super::lengths::Encoding::IMPLICIT_LE)
        .map_err(|e| DimseError(e.to_string()))?;
    InMemDicomObject::read_dataset_with_ts(bytes, implicit_vr_le())
        .map_err(|e| DimseError(e.to_string()))
}

/// Reads a whole command set.
pub fn parse_request(bytes: &[u8]) -> Result<Request, DimseError> {
    let obj = read_command(bytes)?;
    let command_field = u16_of(&obj, tags::COMMAND_FIELD)?;
    let message_id = u16_of(&obj, tags::MESSAGE_ID)?;
    Ok(match command_field {
        C_ECHO_RQ => Request::Echo { message_id },
        C_STORE_RQ => Request::Store {
            message_id,
            sop_class: uid(&obj, tags::AFFECTED_SOP_CLASS_UID)?,
            sop_instance: uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID)?,
        },
        other => Request::Other {
            command_field: other,
            message_id,
            has_data_set: u16_of(&obj, tags::COMMAND_DATA_SET_TYPE)
                .map(|t| t != NO_DATA_SET)
                .unwrap_or(false),
        },
    })
}

/// The C-STORE-RQ command set for one object (a data set follows it), medium priority.
pub fn store_request(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    encode(vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(C_STORE_RQ),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0000u16),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ),
    ])
}

/// Reads a C-STORE-RSP command set.
pub fn parse_store_response(bytes: &[u8]) -> Result<StoreResponse, DimseError> {
    let obj = read_command(bytes)?;
    let field = u16_of(&obj, tags::COMMAND_FIELD)?;
    if field != C_STORE_RSP {
        return Err(DimseError(format!(
            "expected a C-STORE-RSP (8001H), got command {field:04X}H"
        )));
    }
    Ok(StoreResponse {
        message_id: u16_of(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO)?,
        status: u16_of(&obj, tags::STATUS)?,
        comment: obj
            .element_opt(tags::ERROR_COMMENT)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|s| !s.is_empty()),
    })
}

fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut out = Vec::with_capacity(160);
    obj.write_dataset_with_ts(&mut out, implicit_vr_le())
        .expect("a command set always encodes");
    out
}

/// The C-ECHO-RSP to a C-ECHO-RQ.
pub fn echo_response(message_id: u16) -> Vec<u8> {
    response(C_ECHO_RSP, message_id, VERIFICATION, "", status::SUCCESS)
}

/// The C-STORE-RSP (also used for any other command, with its own command field).
pub fn store_response(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    status: u16,
) -> Vec<u8> {
    response(C_STORE_RSP, message_id, sop_class, sop_instance, status)
}

/// A response to a command this SCP does not perform.
pub fn unrecognized_response(command_field: u16, message_id: u16) -> Vec<u8> {
    response(
        command_field | 0x8000,
        message_id,
        "",
        "",
        status::UNRECOGNIZED_OPERATION,
    )
}

fn response(
    field: u16,
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    status: u16,
) -> Vec<u8> {
    let mut elements = Vec::with_capacity(7);
    if !sop_class.is_empty() {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ));
    }
    elements.extend([
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(NO_DATA_SET),
        ),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ]);
    if !sop_instance.is_empty() {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ));
    }
    encode(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(field: u16, with_uids: bool) -> Vec<u8> {
        let mut e = vec![
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(7u16)),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(0x0001u16),
            ),
        ];
        if with_uids {
            e.push(DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.1.1"),
            ));
            e.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2.3.4"),
            ));
        }
        encode(e)
    }

    #[test]
    fn requests_and_responses_round_trip() {
        assert_eq!(
            parse_request(&request(C_STORE_RQ, true)).unwrap(),
            Request::Store {
                message_id: 7,
                sop_class: "1.2.840.10008.5.1.4.1.1.1.1".into(),
                sop_instance: "1.2.3.4".into()
            }
        );
        assert_eq!(
            parse_request(&request(0x0020, false)).unwrap(),
            Request::Other {
                command_field: 0x0020,
                message_id: 7,
                has_data_set: true
            }
        );
        assert!(parse_request(&request(C_STORE_RQ, false)).is_err());
        assert!(parse_request(b"not a command").is_err());

        let rsp = store_response(7, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", 0xA700);
        let obj = InMemDicomObject::read_dataset_with_ts(&rsp[..], implicit_vr_le()).unwrap();
        assert_eq!(u16_of(&obj, tags::STATUS).unwrap(), 0xA700);
        assert_eq!(u16_of(&obj, tags::COMMAND_FIELD).unwrap(), C_STORE_RSP);
        assert_eq!(
            u16_of(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(),
            7
        );
        // The group length counts every byte after it.
        let len = obj
            .element(tags::COMMAND_GROUP_LENGTH)
            .unwrap()
            .to_int::<u32>()
            .unwrap();
        assert_eq!(len as usize, rsp.len() - 12);
        let sent = parse_store_response(&rsp).unwrap();
        assert_eq!(
            (sent.message_id, sent.status, sent.comment),
            (7, 0xA700, None)
        );
        assert!(parse_store_response(&echo_response(9)).is_err());
        match parse_request(&store_request(3, "1.2.3", "4.5.6")).unwrap() {
            Request::Store {
                message_id: 3,
                sop_class,
                sop_instance,
            } => assert_eq!(
                (sop_class.as_str(), sop_instance.as_str()),
                ("1.2.3", "4.5.6")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(StoreOutcome::of(0), StoreOutcome::Success);
        assert_eq!(StoreOutcome::of(0xB007), StoreOutcome::Warning);
        for refused in [0xA700, 0xA900, 0xC000, 0x0122, 0x0110] {
            assert_eq!(
                StoreOutcome::of(refused),
                StoreOutcome::Failure,
                "{refused:04X}"
            );
        }
        let echo = echo_response(9);
        let obj = InMemDicomObject::read_dataset_with_ts(&echo[..], implicit_vr_le()).unwrap();
        assert_eq!(u16_of(&obj, tags::COMMAND_FIELD).unwrap(), C_ECHO_RSP);
    }
}
