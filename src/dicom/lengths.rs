//! Every declared length checked against the bytes there are, before dicom-rs reads them.
//!
//! Why: dicom-parser sizes — and zero-fills — a value's buffer from the length in its header
//! before it reads the value. A 2 KB file whose Pixel Data claims 2 GiB made `bedside infer`
//! touch 2.1 GB (max RSS) before it failed with "could not read 2147483646 value bytes"; a
//! 100-byte DIMSE command can do the same. On a board with `MemoryMax=` that is an OOM kill
//! from one file or one peer. The fuzz target `dicom_decode_prepare` found it (its input is
//! `fuzz/regressions/dicom_decode_prepare/`).
//!
//! The file meta group is walked by hand, as dicom-rs's meta reader walks it (its group
//! length decides where the data set starts);
//! the data set by dicom-rs's own `DataSetReader` over a decoder that skips values instead
//! of reading them ([`check_data_set`]), so that the check stands on exactly the headers the
//! real read will (a hand-written walk that did not was led astray twice by the fuzzer: a UL
//! of length 2, read as no number at all, and an element of group FFFE where an element was
//! expected, each leaving dicom-parser reading a 170 MB length from inside a value; and a
//! third time by a value it skipped that dicom-parser's decoder learns from — see
//! [`STATEFUL`]). Every declared length that runs past the end of the input is refused,
//! naming the element. Deflated data sets are inflated first, to no more than a file may be
//! (the board's `memory.max_file_mib`): a deflate bomb is refused.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::header::{DataElementHeader, SequenceItemHeader};
use dicom_core::{PrimitiveValue, Tag, VR};
use dicom_encoding::TransferSyntaxIndex;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntax};
use dicom_parser::dataset::read::DataSetReaderOptions;
use dicom_parser::dataset::{DataSetReader, DataToken};
use dicom_parser::stateful::decode::Result as ParseResult;
use dicom_parser::{DynStatefulDecoder, StatefulDecode};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);

/// A length the input cannot hold, or a deflated data set too large to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LengthError {
    #[error(
        "element {tag} declares {declared} bytes from byte {offset} but only {available} follow (a length that lies)"
    )]
    PastEnd {
        tag: Tag,
        /// Where its value starts: in the file for [`check_file`] (in the inflated data set
        /// for a deflated one), in the data set for [`check_data_set`].
        offset: usize,
        declared: u32,
        available: usize,
    },
    #[error("the deflated data set inflates past {} MiB (memory.max_file_mib)", max_bytes >> 20)]
    Inflated { max_bytes: u64 },
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

/// Where a Part 10 file's "DICM" magic code is: after the 128-byte preamble, or at the start
/// of a file written without one; `None` for neither (dicom-rs refuses it unread).
pub fn magic_code_at(bytes: &[u8]) -> Option<usize> {
    if bytes.get(128..132) == Some(b"DICM") {
        Some(128)
    } else if bytes.get(..4) == Some(b"DICM") {
        Some(0)
    } else {
        None
    }
}

/// Checks a Part 10 file held in memory: the file meta group, then the data set in the
/// transfer syntax the meta group names. Input without the "DICM" magic is left to dicom-rs
/// (it reads nothing before refusing it).
///
/// A deflated data set may inflate to `max_bytes` and no more: the most a board reads whole
/// (`memory.max_file_mib`), so that a deflated object never costs more than an uncompressed
/// one may — the memory plan counts that, and a 1 MiB file inflating to 64 MiB on a board that
/// planned 48 would not be counted.
///
/// Returns the bytes dicom-rs will read: the file's, or for a deflated data set the file's
/// up to it and the data set inflated.
pub fn check_file(bytes: &[u8], max_bytes: u64) -> Result<usize, LengthError> {
    let Some(magic) = magic_code_at(bytes) else {
        return Ok(bytes.len());
    };
    let start = magic + 4;
    let mut syntax = None;
    let meta_end = walk_meta(bytes, start, &mut syntax)?;
    let syntax = syntax.unwrap_or_default();
    // Trimmed as dicom-rs trims it (`FileMetaTable::transfer_syntax`): any whitespace, not
    // just spaces. A UID ending in "\0\0\0\n" is implicit VR to dicom-rs; trimmed of NULs
    // and spaces only, it named no syntax here, the walk went explicit, and dicom-rs, reading
    // implicit, sized a 4 GiB buffer for an 860-byte file (the fuzzer, stop 17).
    let syntax = syntax.trim_end_matches(|c: char| c.is_whitespace() || c == '\0');
    let rest = &bytes[meta_end..];
    // Offsets in the file, not in the data set, so that a hex editor finds the element.
    let in_file = |e: LengthError| match e {
        LengthError::PastEnd {
            tag,
            offset,
            declared,
            available,
        } => LengthError::PastEnd {
            tag,
            offset: offset + meta_end,
            declared,
            available,
        },
        other => other,
    };
    // The syntax as dicom-object takes it: by the registry, and by its codec. A syntax the
    // registry does not know, or a deflated one this build cannot inflate, is refused unread.
    let Some(ts) = TransferSyntaxRegistry.get(syntax) else {
        return Ok(bytes.len());
    };
    match ts.codec() {
        // Deflated Explicit VR Little Endian, and the two JPIP Referenced Deflate syntaxes
        // (until stop 17 only the first was inflated; the others' compressed bytes were
        // walked as if they were elements, and their real data set not at all).
        Codec::Dataset(Some(_)) => {
            // Reserved at once (untouched pages cost nothing) so that growing never doubles
            // past the cap.
            let mut inflated = Vec::with_capacity(max_bytes as usize + 1);
            flate2::read::DeflateDecoder::new(rest)
                .take(max_bytes + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| LengthError::Deflate(e.to_string()))?;
            if inflated.len() as u64 > max_bytes {
                return Err(LengthError::Inflated { max_bytes });
            }
            walk(&inflated, ts).map(|()| meta_end + inflated.len())
        }
        Codec::Dataset(None) => Ok(bytes.len()),
        _ => walk(rest, ts).map(|()| bytes.len()).map_err(in_file),
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

/// Elements whose values dicom-parser's decoder keeps and decodes later headers by, so the
/// walk reads them for real instead of skipping them (their lengths are checked first):
/// - (0028,0103) Pixel Representation: once it is read as non-zero, every later element whose
///   dictionary VR is "US or SS" (Smallest Image Pixel Value, Pixel Padding Value, LUT
///   Descriptor…) is read as SS, whatever VR its header says. A skipping walk that missed it
///   saw an OV of length 2 read as no number (nothing consumed) where dicom-parser read one
///   SS (2 bytes consumed); the two stood on different headers from there, and dicom-rs
///   zero-filled 273,678,376 bytes for a 77 KB file the check had passed (the fuzzer found
///   it: `fuzz/regressions/dicom_decode_prepare/ov-length-2-…`).
/// - (0008,0005) Specific Character Set: it changes how text is decoded, not how much is
///   read, but a walk that does not share the decoder's state is a walk that can drift.
///
/// From dicom-parser 0.10.1's `stateful/decode.rs` (`signed_pixeldata`, `set_character_set`);
/// `the_walk_reads_what_the_decoder_learns_from` pins the first.
pub const STATEFUL: [Tag; 2] = [Tag(0x0028, 0x0103), Tag(0x0008, 0x0005)];

/// Checks a data set (a DIMSE command set, or a file's data set after its meta group).
///
/// Walked by dicom-rs's own reader (`DataSetReader`), over a decoder that passes headers
/// through and skips the values the reader would read whole: the walk stands on exactly the
/// header dicom-rs will stand on, whatever the input does — an element of group FFFE where
/// an element is expected, a numeric value whose length is no multiple of its size (read as
/// whole numbers, leaving the next header inside the value), an item outside a sequence, a
/// header whose VR the decoder replaces ([`STATEFUL`]). Each declared length is checked
/// against the bytes after where the reader really is (bytes consumed, not dicom-parser's
/// count, which runs ahead of them after such a numeric value) before the reader would read
/// that value.
pub fn check_data_set(bytes: &[u8], encoding: Encoding) -> Result<(), LengthError> {
    let uid = match encoding {
        Encoding {
            explicit_vr: false, ..
        } => "1.2.840.10008.1.2",
        Encoding {
            big_endian: true, ..
        } => "1.2.840.10008.1.2.2",
        _ => "1.2.840.10008.1.2.1",
    };
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => walk(bytes, ts),
        None => Ok(()),
    }
}

/// [`check_data_set`] in a transfer syntax from the registry (its decoder: the adapter of a
/// deflated one is the caller's to undo).
fn walk(bytes: &[u8], ts: &TransferSyntax) -> Result<(), LengthError> {
    let position = Rc::new(Cell::new(0u64));
    let source = Counting {
        bytes,
        consumed: position.clone(),
    };
    let Ok(decoder) = DynStatefulDecoder::new_with_override(
        source,
        ts,
        SpecificCharacterSet::default(),
        Default::default(),
        0,
    ) else {
        return Ok(()); // dicom-rs refuses it the same way, before reading anything
    };
    let skipping = Skipping { inner: decoder };
    let total = bytes.len() as u64;
    for token in DataSetReader::new(skipping, DataSetReaderOptions::default()) {
        let (tag, len) = match token {
            Ok(DataToken::ElementHeader(h)) => (h.tag, h.len),
            Ok(DataToken::SequenceStart { tag, len }) => (tag, len),
            Ok(DataToken::ItemStart { len }) => (ITEM, len),
            Ok(_) => continue,
            // dicom-rs stops at the same place, having read nothing more.
            Err(_) => return Ok(()),
        };
        let at = position.get();
        let available = total.saturating_sub(at);
        if let Some(declared) = len.get()
            && u64::from(declared) > available
        {
            return Err(LengthError::PastEnd {
                tag,
                offset: at as usize,
                declared,
                available: available as usize,
            });
        }
    }
    Ok(())
}

/// The input, counting the bytes read from it: where the walk really is.
struct Counting<'a> {
    bytes: &'a [u8],
    consumed: Rc<Cell<u64>>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

/// A decoder that reads headers as dicom-rs's does and skips the values it would read whole
/// and learn nothing from, moving on exactly as far as the real read would.
struct Skipping<D> {
    inner: D,
}

impl<D: StatefulDecode> Skipping<D> {
    /// A value: skipped when the real read consumes exactly its length (bytes, text, whole
    /// numbers) and the decoder keeps nothing of it; read for real otherwise (its length was
    /// checked before this is called).
    fn value(
        &mut self,
        header: &DataElementHeader,
        read: impl FnOnce(&mut D) -> ParseResult<PrimitiveValue>,
    ) -> ParseResult<PrimitiveValue> {
        match header.len.get() {
            Some(len)
                if !STATEFUL.contains(&header.tag)
                    && numeric_size(header.vr).is_none_or(|s| (len as usize).is_multiple_of(s)) =>
            {
                self.inner.skip_bytes(len).map(|()| PrimitiveValue::Empty)
            }
            _ => read(&mut self.inner),
        }
    }
}

impl<D: StatefulDecode> StatefulDecode for Skipping<D> {
    type Reader = D::Reader;

    fn decode_header(&mut self) -> ParseResult<DataElementHeader> {
        self.inner.decode_header()
    }

    fn decode_item_header(&mut self) -> ParseResult<SequenceItemHeader> {
        self.inner.decode_item_header()
    }

    fn read_value(&mut self, header: &DataElementHeader) -> ParseResult<PrimitiveValue> {
        self.value(header, |d| d.read_value(header))
    }

    fn read_value_preserved(&mut self, header: &DataElementHeader) -> ParseResult<PrimitiveValue> {
        self.value(header, |d| d.read_value_preserved(header))
    }

    fn read_value_bytes(&mut self, header: &DataElementHeader) -> ParseResult<PrimitiveValue> {
        self.value(header, |d| d.read_value_bytes(header))
    }

    fn read_to_vec(&mut self, length: u32, _vec: &mut Vec<u8>) -> ParseResult<()> {
        self.inner.skip_bytes(length)
    }

    fn read_u32_to_vec(&mut self, length: u32, vec: &mut Vec<u32>) -> ParseResult<()> {
        // The offset table: read for real (its item's length was checked).
        self.inner.read_u32_to_vec(length, vec)
    }

    fn read_to<W>(&mut self, length: u32, _out: W) -> ParseResult<()>
    where
        Self: Sized,
        W: std::io::Write,
    {
        self.inner.skip_bytes(length)
    }

    fn skip_bytes(&mut self, length: u32) -> ParseResult<()> {
        self.inner.skip_bytes(length)
    }

    fn seek(&mut self, position: u64) -> ParseResult<()>
    where
        Self::Reader: std::io::Seek,
    {
        self.inner.seek(position)
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }
}

/// An explicit VR little endian header at `pos` as dicom-rs's file header decoder reads it:
/// its tag, declared length and size. Group FFFE has no VR (8 bytes: tag, 4-byte length); an
/// unknown VR is UN, with the 4-byte length. `None` where the bytes end first.
fn meta_header(bytes: &[u8], pos: usize) -> Option<(Tag, u32, usize)> {
    let u16_at = |p: usize| u16::from_le_bytes([bytes[p], bytes[p + 1]]);
    let u32_at = |p: usize| {
        bytes
            .get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if pos + 8 > bytes.len() {
        return None;
    }
    let tag = Tag(u16_at(pos), u16_at(pos + 2));
    if tag.0 == 0xFFFE {
        return Some((tag, u32_at(pos + 4)?, 8));
    }
    let vr = VR::from_binary([bytes[pos + 4], bytes[pos + 5]]).unwrap_or(VR::UN);
    if short_length(vr) {
        Some((tag, u32::from(u16_at(pos + 6)), 8))
    } else {
        Some((tag, u32_at(pos + 8)?, 12))
    }
}

/// Walks the file meta group from `pos` exactly as dicom-rs's meta reader does: (0002,0000)
/// of length 4 first, whatever its VR, then elements of any group while the bytes read stay
/// under the length it gives, each header read by [`meta_header`]. Returns where the data set
/// starts (where dicom-rs will start it, whatever the group length says) and stores the
/// Transfer Syntax UID.
fn walk_meta(
    bytes: &[u8],
    mut pos: usize,
    syntax: &mut Option<String>,
) -> Result<usize, LengthError> {
    // dicom-rs refuses anything but (0002,0000) of length 4 first, having read nothing more:
    // the data set is never read.
    let group_length = match meta_header(bytes, pos) {
        Some((Tag(0x0002, 0x0000), 4, header)) if pos + header + 4 <= bytes.len() => {
            let v = pos + header;
            pos = v + 4;
            u32::from_le_bytes([bytes[v], bytes[v + 1], bytes[v + 2], bytes[v + 3]]) as usize
        }
        _ => return Ok(bytes.len()),
    };
    let mut read = 0;
    while read < group_length {
        let Some((tag, len, header)) = meta_header(bytes, pos) else {
            return Ok(bytes.len()); // dicom-rs fails at the end of the bytes
        };
        if len == UNDEFINED {
            return Ok(bytes.len()); // refused by dicom-rs
        }
        pos += header;
        let available = bytes.len() - pos;
        if len as usize > available {
            return Err(LengthError::PastEnd {
                tag,
                offset: pos,
                declared: len,
                available,
            });
        }
        if tag == Tag(0x0002, 0x0010) {
            *syntax = Some(String::from_utf8_lossy(&bytes[pos..pos + len as usize]).into_owned());
        }
        pos += len as usize;
        read += header + len as usize;
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
            matches!(err, LengthError::PastEnd { tag, declared: 0x7FFF_FFFE, available: 16, .. } if tag == Tag(0x7FE0, 0x0010)),
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
    fn the_walk_stands_where_dicom_parser_stands_after_a_numeric_value_of_odd_size() {
        // (0000,0000) UL of length 2: dicom-parser reads no number and stays put, so its next
        // header starts inside the value and claims 170 MB; a walk that skipped the declared
        // 2 bytes would have seen an honest header instead.
        let mut ds = vec![0x00, 0x00, 0x00, 0x00, 2, 0, 0, 0];
        ds.extend([0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x24, 0x0A]);
        ds.extend([0; 6]);
        let err = check_data_set(&ds, Encoding::IMPLICIT_LE).unwrap_err();
        assert!(
            matches!(
                err,
                LengthError::PastEnd {
                    declared: 0x0A24_0000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_walk_reads_what_the_decoder_learns_from() {
        // Pixel Representation 1, then (0028,0106) — "US or SS" in the dictionary — written
        // as OV of length 2. dicom-parser reads it as SS (2 bytes consumed); a walk that
        // skipped Pixel Representation reads it as OV, no number, nothing consumed, and from
        // there sees honest elements where dicom-parser reads (0107,5353) UN claiming the next
        // element's tag bytes as a length: 0x10500028 bytes (the fuzzer's input, shrunk).
        let mut ds = explicit((0x0028, 0x0103), b"US", &[1, 0]);
        ds.extend([0x28, 0x00, 0x06, 0x01, b'O', b'V', b'S', b'S', 2, 0, 0, 0]);
        ds.extend(explicit((0x0028, 0x0107), b"SS", &[0xA0, 0x0F]));
        ds.extend(explicit((0x0028, 0x1050), b"DS", b"600 "));
        let err = check_data_set(&ds, Encoding::EXPLICIT_LE).unwrap_err();
        assert!(
            matches!(err, LengthError::PastEnd { tag, declared: 0x1050_0028, .. } if tag == Tag(0x0107, 0x5353)),
            "{err}"
        );
        // Unsigned pixels: the OV stays an OV, nothing consumed, and every header after it is
        // honest — to dicom-parser too.
        ds[8] = 0;
        assert_eq!(check_data_set(&ds, Encoding::EXPLICIT_LE), Ok(()));
    }

    #[test]
    fn an_element_of_group_fffe_outside_a_sequence_is_a_plain_element() {
        // (FFFE,FFFF) of length 3 where an element is expected: dicom-parser reads its 3
        // bytes as a value and takes the next header after them.
        let mut ds = vec![0xFE, 0xFF, 0xFF, 0xFF, 3, 0, 0, 0, 0, 0, 0];
        ds.extend([0x00, 0x00, 0x00, 0x00, 0x00, 0xFE, 0xFF, 0xFF]);
        ds.extend([0; 4]);
        assert!(matches!(
            check_data_set(&ds, Encoding::IMPLICIT_LE),
            Err(LengthError::PastEnd {
                declared: 0xFFFF_FE00,
                ..
            })
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
    fn the_data_set_starts_where_dicom_rs_meta_reader_stops() {
        // dicom-rs reads whole meta elements while the bytes read are under the group length:
        // with a group length of 10, it stops after the first 14-byte element, whatever group
        // the next one has — and so does the walk.
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        f.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 10, 0, 0, 0]);
        f.extend(explicit((0x0002, 0x0001), b"OB", &[0, 1]));
        f.extend(explicit((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2\0"));
        let mut syntax = None;
        assert_eq!(walk_meta(&f, 132, &mut syntax), Ok(132 + 12 + 14));
        assert_eq!(syntax, None, "the syntax element is already the data set's");
        // The group length honest: both elements are meta.
        f[140] = 14 + 8 + 18;
        assert_eq!(walk_meta(&f, 132, &mut syntax), Ok(f.len()));
        assert_eq!(syntax.as_deref(), Some("1.2.840.10008.1.2\0"));
    }

    #[test]
    fn a_deflated_data_set_may_inflate_to_what_a_file_may_be_and_no_more() {
        // 1 MiB of honest data set, deflated to about a kilobyte, under each syntax whose
        // data set dicom-rs inflates (Deflated Explicit VR LE, JPIP Referenced Deflate).
        let ds = explicit((0x0009, 0x1010), b"OB", &vec![0; 1 << 20]);
        let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
        std::io::Write::write_all(&mut deflated, &ds).unwrap();
        let deflated = deflated.finish().unwrap();
        for uid in [&b"1.2.840.10008.1.2.1.99"[..], b"1.2.840.10008.1.2.4.95\0"] {
            let syntax = explicit((0x0002, 0x0010), b"UI", uid);
            let mut f = vec![0u8; 128];
            f.extend(b"DICM");
            f.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
            f.extend((syntax.len() as u32).to_le_bytes());
            f.extend(&syntax);
            f.extend(&deflated);
            assert!(f.len() < 8 << 10, "{} bytes", f.len());
            assert_eq!(
                check_file(&f, 2 << 20),
                Ok(f.len() - deflated.len() + ds.len())
            );
            assert_eq!(
                check_file(&f, 512 << 10),
                Err(LengthError::Inflated {
                    max_bytes: 512 << 10
                })
            );
        }
    }

    #[test]
    fn the_syntax_is_trimmed_as_dicom_rs_trims_it() {
        // Implicit VR little endian, its UID padded with NULs and a newline; then an implicit
        // element (0009,0010) claiming 0xFF000000 bytes. Read as explicit VR, the same bytes
        // are a harmless element; dicom-rs reads them implicit.
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        let syntax = explicit((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2\0\0\0\n");
        f.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        f.extend((syntax.len() as u32).to_le_bytes());
        f.extend(&syntax);
        f.extend([0x09, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0xFF]);
        f.extend([0; 16]);
        assert!(matches!(
            check_file(&f, 64 << 20),
            Err(LengthError::PastEnd {
                declared: 0xFF00_0000,
                ..
            })
        ));
    }

    #[test]
    fn the_meta_group_is_walked_header_by_header_as_dicom_rs_reads_it() {
        // (0002,0000) written with a 4-byte-length VR (OB): dicom-rs takes it (length 4) and
        // its value after the 12-byte header; then a group FFFE element, which has no VR
        // (8-byte header), of 6 bytes; then the syntax. The data set after it starts where
        // dicom-rs starts it: its (0009,0010) claims 1 GiB and is refused.
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        let mut meta = vec![0xFE, 0xFF, 0x00, 0x00, 6, 0, 0, 0, b'O', b'B', 0, 0, 0, 0];
        meta.extend(explicit((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0"));
        f.extend(explicit(
            (0x0002, 0x0000),
            b"OB",
            &(meta.len() as u32).to_le_bytes(),
        ));
        f.extend(&meta);
        let data_set = f.len();
        f.extend(explicit((0x0009, 0x0010), b"OB", &[0; 8]));
        let mut syntax = None;
        assert_eq!(walk_meta(&f, 132, &mut syntax), Ok(data_set));
        assert_eq!(syntax.as_deref(), Some("1.2.840.10008.1.2.1\0"));
        assert_eq!(check_file(&f, 64 << 20), Ok(f.len()));
        // And dicom-rs reads it so: the private element is in its object, whole.
        let obj = dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Never)
            .from_reader(&f[128..])
            .unwrap();
        assert_eq!(
            obj.element(Tag(0x0009, 0x0010))
                .unwrap()
                .to_bytes()
                .unwrap()
                .len(),
            8
        );
        set_len(&mut f, data_set + 8, 1 << 30);
        assert!(matches!(
            check_file(&f, 64 << 20),
            Err(LengthError::PastEnd { declared: 0x4000_0000, offset, .. }) if offset == data_set + 12
        ));
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
                        assert!(check_file(&bytes, 64 << 20).is_ok(), "{}", p.display());
                        n += 1;
                    }
                }
            }
        }
        assert!(n > 30, "{n} files checked");
    }
}
