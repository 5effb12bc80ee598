//! What a DICOM peer sends, as the SCP reads it: PDUs one after another from the bytes
//! (dicom-ul's reader, strict, at the SCP's 64 KiB maximum), the presentation data values of
//! each P-DATA-TF gathered into commands as the association does (bounded at 64 KiB), and
//! each complete command parsed as a DIMSE request. Any input gives requests or errors.
#![no_main]

use dicom_ul::pdu::{PDataValueType, Pdu, read_pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut command = Vec::new();
    for _ in 0..64 {
        let mut cursor = std::io::Cursor::new(rest);
        let pdu = match read_pdu(&mut cursor, 64 * 1024, true) {
            Ok(Some(pdu)) => pdu,
            _ => return,
        };
        rest = &rest[cursor.position() as usize..];
        if let Pdu::PData { data } = pdu {
            for value in data {
                if value.value_type != PDataValueType::Command {
                    continue;
                }
                if command.len() + value.data.len() > 64 * 1024 {
                    return; // the SCP aborts here
                }
                command.extend_from_slice(&value.data);
                if value.is_last {
                    let _ = bedside::dicom::dimse::parse_request(&command);
                    let _ = bedside::dicom::dimse::parse_store_response(&command);
                    command.clear();
                }
            }
        }
    }
});
