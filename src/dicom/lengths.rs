//! Every declared length checked against the bytes there are, before dicom-rs reads them.
//!
//! Why: dicom-parser sizes — and zero-fills — a value's buffer from the length in its header
//! before it reads the value. A 2 KB file whose Pixel Data claims 2 GiB made `bedside infer`
//! touch 2.1 GB (max RSS) before it failed with "could not read 2147483646 value bytes"; a
//! 100-byte DIMSE command can do the same. On a board with `MemoryMax=` that is an OOM kill
//! from one file or one peer. The fuzz target `dicom_decode_prepare` found it (its input is
//! `fuzz/regressions/dicom_decode_prepare/`).
//!
//! The walk reads only element headers: tag, VR (explicit syntaxes; the standard dictionary's
//! for implicit ones), length — exactly as dicom-rs reads them, so that both stand on the same
//! header each time. A numeric value whose length is no multiple of its size is refused too:
//! dicom-parser would read whole numbers only and take the next header from inside the value
//! (a 60-byte P-DATA made it allocate 170 MB that way; found by `scp_pdus`). Sequences and items are
//! walked into, so nested lengths are checked too; encapsulated Pixel Data's fragments are
//! skipped by their lengths. A length that runs past the end of the input is refused with the
//! element named. The walk judges nothing else: structure errors are dicom-parser's to report.
//! Deflated data sets are inflated first, at most [`MAX_INFLATED`] bytes.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// A deflated data set may grow to this much and no more (a deflate bomb is refused): what a
/// board reads whole by default (`memory.max_file_mib`), so a deflated object is never more
/// than an uncompressed one could be.
pub const MAX_INFLATED: u64 = 64 << 20;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

/// A length the input cannot hold, or a deflated data set too large to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    #[error(
        "element {tag} at byte {offset} declares {declared} bytes but only {available} follow (a length that lies)"
    )]
    PastEnd {
        tag: Tag,
        offset: usize,
        declared: u32,
        available: usize,
    },
    #[error(
        "element {tag} at byte {offset} ({vr}) declares {declared} bytes, not a multiple of its {size}-byte values"
    )]
    NotMultiple {
        tag: Tag,
        offset: usize,
        vr: String,
        declared: u32,
        size: usize,
    },
    #[error("the deflated data set inflates past {} MiB", MAX_INFLATED >> 20)]
    Inflated,
    #[error("the deflated data set cannot be inflated: {0}")]
    Deflate(String),
}

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
}

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// Checks a Part 10 file held in memory: the file meta group, then the data set in the
/// transfer syntax the meta group names. Input without the "DICM" magic is left to dicom-rs
/// (it reads nothing before refusing it).
pub fn check_file(bytes: &[u8]) -> Result<(), LengthError> {
    let start = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.get(..4) == Some(b"DICM") {
        4
    } else {
        return Ok(());
    };
    let mut syntax = None;
    let meta_end = walk(bytes, start, Encoding::EXPLICIT_LE, Some(&mut syntax))?;
    let syntax = syntax.unwrap_or_default();
    let syntax = syntax.trim_end_matches(['\0', ' ']);
    let rest = &bytes[meta_end..];
    match syntax {
        "1.2.840.10008.1.2" => check_data_set(rest, Encoding::IMPLICIT_LE),
        "1.2.840.10008.1.2.2" => check_data_set(
            rest,
            Encoding {
                explicit_vr: true,
                big_endian: true,
            },
        ),
        DEFLATED => {
            // Reserved at once (untouched pages cost nothing) so that growing never doubles
            // past the cap.
            let mut inflated = Vec::with_capacity(MAX_INFLATED as usize + 1);
            flate2::read::DeflateDecoder::new(rest)
                .take(MAX_INFLATED + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| LengthError::Deflate(e.to_string()))?;
            if inflated.len() as u64 > MAX_INFLATED {
                return Err(LengthError::Inflated);
            }
            check_data_set(&inflated, Encoding::EXPLICIT_LE)
        }
        // Every other syntax (encapsulated ones included) is explicit VR little endian; an
        // unknown one is dicom-rs's to refuse.
        _ => check_data_set(rest, Encoding::EXPLICIT_LE),
    }
}

/// VRs whose explicit header has a 2-byte length (PS3.5 7.1.2), as dicom-rs reads them.
fn short_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::AT
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::FL
            | VR::FD
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::SL
            | VR::SS
            | VR::ST
            | VR::TM
            | VR::UI
            | VR::UL
            | VR::US
    )
}

/// The size of one value of a numeric VR.
fn numeric_size(vr: VR) -> Option<usize> {
    match vr {
        VR::OW | VR::SS | VR::US => Some(2),
        VR::AT | VR::FL | VR::OF | VR::OL | VR::SL | VR::UL => Some(4),
        VR::FD | VR::OD | VR::OV | VR::SV | VR::UV => Some(8),
        _ => None,
    }
}

/// Checks a data set (a DIMSE command set, or a file's data set after its meta group).
pub fn check_data_set(bytes: &[u8], encoding: Encoding) -> Result<(), LengthError> {
    walk(bytes, 0, encoding, None).map(|_| ())
}

/// Walks element headers from `pos`; returns where it stopped: the end of the input, or —
/// when `meta` is given — the first element past group 0002, whose Transfer Syntax UID it
/// stores there.
fn walk(
    bytes: &[u8],
    mut pos: usize,
    enc: Encoding,
    mut meta: Option<&mut Option<String>>,
) -> Result<usize, LengthError> {
    let u16_at = |p: usize| {
        let b = [bytes[p], bytes[p + 1]];
        if enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |p: usize| {
        let b = [bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]];
        if enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    // Inside encapsulated Pixel Data, items are fragments of bytes, not data sets.
    let mut fragments = false;
    while pos + 8 <= bytes.len() {
        let offset = pos;
        let tag = Tag(u16_at(pos), u16_at(pos + 2));
        if meta.is_some() && tag.0 != 0x0002 {
            return Ok(pos);
        }
        let past_end = |declared: u32, from: usize| {
            let available = bytes.len().saturating_sub(from);
            if declared != UNDEFINED && declared as usize > available {
                Err(LengthError::PastEnd {
                    tag,
                    offset,
                    declared,
                    available,
                })
            } else {
                Ok(())
            }
        };
        if tag.0 == 0xFFFE {
            // Items and delimiters: tag and a 4-byte length, in every syntax.
            let len = u32_at(pos + 4);
            pos += 8;
            past_end(len, pos)?;
            if tag == ITEM && fragments && len != UNDEFINED {
                pos += len as usize;
            } else if tag == SEQUENCE_END {
                fragments = false;
            }
            // An item of a sequence: its elements follow, walked in turn.
            continue;
        }
        let (vr, len, header) = if enc.explicit_vr {
            // As dicom-rs reads it: an unknown VR is UN, with the 4-byte length.
            let vr = VR::from_binary([bytes[pos + 4], bytes[pos + 5]]).unwrap_or(VR::UN);
            if short_length(vr) {
                (vr, u32::from(u16_at(pos + 6)), 8)
            } else {
                if pos + 12 > bytes.len() {
                    break;
                }
                (vr, u32_at(pos + 8), 12)
            }
        } else {
            let vr = match StandardDataDictionary.by_tag(tag).map(|e| e.vr) {
                Some(VirtualVr::Exact(vr)) => vr,
                // US or SS; OB or OW (even lengths either way).
                Some(VirtualVr::Xs | VirtualVr::Lt) => VR::US,
                Some(VirtualVr::Px | VirtualVr::Ox) => VR::OW,
                _ => VR::UN,
            };
            (vr, u32_at(pos + 4), 8)
        };
        // dicom-parser reads a numeric value as length / size numbers and moves on by that
        // many: a length that is no multiple of the size would leave it reading the next
        // header from inside this value, where no length was checked.
        if len != UNDEFINED
            && let Some(size) = numeric_size(vr)
            && len as usize % size != 0
        {
            return Err(LengthError::NotMultiple {
                tag,
                offset,
                vr: vr.to_string().to_owned(),
                declared: len,
                size,
            });
        }
        pos += header;
        past_end(len, pos)?;
        if let Some(syntax) = meta.as_deref_mut()
            && tag == Tag(0x0002, 0x0010)
            && len != UNDEFINED
        {
            *syntax = Some(String::from_utf8_lossy(&bytes[pos..pos + len as usize]).into_owned());
        }
        if len == UNDEFINED {
            // A sequence (or UN holding one), or encapsulated Pixel Data: what follows is
            // items, walked in turn.
            fragments = tag == PIXEL_DATA;
        } else if vr != VR::SQ {
            pos += len as usize;
        }
        // A sequence of defined length: its items follow, walked in turn.
    }
    Ok(pos.min(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(tag.0.to_le_bytes());
        out.extend(tag.1.to_le_bytes());
        out.extend(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            out.extend([0, 0]);
            out.extend((value.len() as u32).to_le_bytes());
        } else {
            out.extend((value.len() as u16).to_le_bytes());
        }
        out.extend(value);
        out
    }

    fn set_len(bytes: &mut [u8], at: usize, len: u32) {
        bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    #[test]
    fn honest_lengths_pass_and_a_lie_is_named() {
        let mut ds = explicit((0x0010, 0x0010), b"PN", b"ANON^A");
        ds.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 16]));
        assert_eq!(check_data_set(&ds, Encoding::EXPLICIT_LE), Ok(()));
        let at = ds.len() - 16 - 4;
        set_len(&mut ds, at, 0x7FFF_FFFE);
        let err = check_data_set(&ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert!(
            matches!(err, LengthError::PastEnd { tag, declared: 0x7FFF_FFFE, available: 16, .. } if tag == PIXEL_DATA),
            "{err}"
        );
    }

    #[test]
    fn a_lie_inside_a_sequence_item_is_found() {
        // (0008,1140) SQ of defined length, one item of undefined length holding an OB
        // that claims 1 GiB.
        let inner = explicit((0x0009, 0x1001), b"OB", &[1, 2, 3, 4]);
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF];
        item.extend(&inner);
        item.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        let mut ds = explicit((0x0008, 0x1140), b"SQ", &item);
        assert_eq!(check_data_set(&ds, Encoding::EXPLICIT_LE), Ok(()));
        let at = 12 + 8 + 8;
        set_len(&mut ds, at, 1 << 30);
        assert!(check_data_set(&ds, Encoding::EXPLICIT_LE).is_err());
    }

    #[test]
    fn fragments_are_skipped_not_read_as_elements() {
        // Encapsulated Pixel Data: an empty offset table, one fragment whose bytes would
        // read as a lying element header, then the sequence delimiter.
        let mut ds = vec![
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        ds.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        ds.extend([0xFE, 0xFF, 0x00, 0xE0, 12, 0, 0, 0]);
        ds.extend([
            0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        ds.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(check_data_set(&ds, Encoding::EXPLICIT_LE), Ok(()));
    }

    #[test]
    fn a_numeric_value_of_a_length_no_multiple_of_its_size_is_refused() {
        // (0000,0000) UL of length 2: dicom-parser would read no number, stay put, and take
        // the next header from the value's bytes.
        let mut ds = vec![0x00, 0x00, 0x00, 0x00, 2, 0, 0, 0, 0xAB, 0xCD];
        ds.extend([0, 0, 0, 0, 0, 0, 0x24, 0x0A]);
        let err = check_data_set(&ds, Encoding::IMPLICIT_LE).unwrap_err();
        assert!(
            matches!(
                err,
                LengthError::NotMultiple {
                    size: 4,
                    declared: 2,
                    ..
                }
            ),
            "{err}"
        );
        // The same in explicit VR, OW of odd length.
        let ow = explicit((0x0009, 0x1010), b"OW", &[1, 2, 3]);
        assert!(matches!(
            check_data_set(&ow, Encoding::EXPLICIT_LE),
            Err(LengthError::NotMultiple { size: 2, .. })
        ));
    }

    #[test]
    fn implicit_sequences_are_walked_by_the_dictionary() {
        // (0008,1140) is an SQ in the dictionary: its contents are checked in implicit VR.
        let mut inner = Vec::new();
        inner.extend([0x08, 0x00, 0x50, 0x11, 0xFF, 0xFF, 0xFF, 0x70]); // (0008,1150) 1.8 GB
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend((inner.len() as u32).to_le_bytes());
        item.extend(&inner);
        let mut ds = vec![0x08, 0x00, 0x40, 0x11];
        ds.extend((item.len() as u32).to_le_bytes());
        ds.extend(&item);
        assert!(check_data_set(&ds, Encoding::IMPLICIT_LE).is_err());
    }

    #[test]
    fn every_test_file_passes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut n = 0;
        for dir in [root.clone(), root.join("pydicom"), root.join("us")] {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "dcm") {
                    let bytes = std::fs::read(&p).unwrap();
                    // pydicom's deliberately broken files are dicom-rs's to refuse.
                    let readable = dicom_object::OpenFileOptions::new()
                        .from_reader(&bytes[128.min(bytes.len())..])
                        .is_ok();
                    if readable {
                        assert_eq!(check_file(&bytes), Ok(()), "{}", p.display());
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 30, "{n} files checked");
    }
}
