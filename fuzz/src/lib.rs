//! The fuzz targets' bodies: one function per target, taking the fuzzer's bytes. They live in
//! a library so that the same code runs under libFuzzer (`fuzz_targets/*.rs`, through
//! cargo-fuzz) and in bedside's own test suite (`tests/fuzz_inputs.rs`), which replays every
//! committed regression input and a burst of mutations on each `cargo test` — a crash found
//! once stays a test, and a body that stops compiling fails CI even where no fuzzer runs.
//!
//! Each body's contract: any input gives a result or an error, never a panic, a hang, an
//! out-of-bounds access or an allocation past the fuzzer's `-malloc_limit_mb`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bedside::dicom::decode::{self, ImageLimits};
use bedside::model::manifest::Manifest;
use bedside::prepare::Preparer;
use bedside::publish::{Class, Outbox, OutboxConfig};
use bedside::source::convert::{Converter, Layout, PixelFormat, Range, Rect};
use bedside::source::scp::session::{Next, Session};
use bedside::source::spool::Spool;
use dicom_ul::pdu::{Pdu, read_pdu};

/// A target's body: the fuzzer's bytes in, nothing out (a panic or a sanitizer report is the
/// finding).
pub type Body = fn(&[u8]);

/// The targets, by name, as `fuzz/Cargo.toml` and `fuzz/run.sh` know them.
pub const TARGETS: [(&str, Body); 7] = [
    ("dicom_decode_prepare", dicom_decode_prepare),
    ("dicom_parse", dicom_parse),
    ("scp_pdus", scp_pdus),
    ("outbox_recovery", outbox_recovery),
    ("model_manifest", model_manifest),
    ("board_profile", board_profile),
    ("camera_convert", camera_convert),
];

/// The repository's root: `BEDSIDE_REPO` when set (a fuzz binary run on another machine),
/// else where either crate that compiles this file was built.
fn repo() -> PathBuf {
    if let Some(root) = std::env::var_os("BEDSIDE_REPO") {
        return PathBuf::from(root);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if here.join("models").is_dir() {
        here
    } else {
        here.join("..")
    }
}

/// A scratch folder for this process (the daemon's inputs are files, so are the fuzzer's): in
/// memory where the machine has /dev/shm, so that the spool's and the outbox's fsyncs cost
/// nothing and a run takes microseconds, not a disk's milliseconds.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("bedside-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        Manifest::load(&repo().join("models/cxr-tiny-cls")).expect("the shipped model's manifest")
    })
}

/// The daemon's image limits, smaller: the same checks, and runs short enough to fuzz.
const LIMITS: ImageLimits = ImageLimits {
    max_rows: 1024,
    max_cols: 1024,
    max_frames: 4,
    max_file_bytes: 4 << 20,
};

/// A DICOM file from bytes opened as the image worker opens one, up to its pixels: size
/// limit, every declared length checked (`dicom::lengths`), parsed by dicom-rs, header
/// limits. The first half of [`dicom_decode_prepare`] alone, so that it runs a hundred
/// times as often: the allocation bombs live here (a length believed), and the whole
/// pipeline's ~24 executions a second under ASan reach them too rarely.
pub fn dicom_parse(data: &[u8]) {
    let _ = open(data);
}

fn open(data: &[u8]) -> Option<dicom_object::DefaultDicomObject> {
    let path = scratch().join("input.dcm");
    std::fs::write(&path, data).expect("scratch file");
    let obj = decode::open_file_within(&path, LIMITS.max_file_bytes).ok()?;
    decode::check_limits(&obj, &LIMITS).ok()?;
    Some(obj)
}

/// A DICOM file from bytes, as the inbox or the SCP would hand it over: size and header
/// limits, parse ([`dicom_parse`]), decode (every transfer syntax this build has: native,
/// deflate, RLE, JPEG, JPEG-LS, JPEG 2000) and prepare for the shipped radiograph model.
pub fn dicom_decode_prepare(data: &[u8]) {
    // A decoder's panic that bedside contains is a decode error, not a crash (the daemon
    // says so in one line); libFuzzer's hook must not abort on it.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(decode::skip_contained_panics_in_hook);
    let Some(obj) = open(data) else {
        return;
    };
    let m = manifest();
    let (h, w) = m.input_hw();
    let mut preparer = Preparer::new(m.preprocess.clone(), h, w);
    for frame in 0..decode::frame_count(&obj).min(2) {
        if let Ok(image) = decode::decode_frame(&obj, frame) {
            let _ = preparer.prepare(&image);
        }
    }
}

/// What a DICOM peer sends once its association is accepted, as the SCP takes it: PDUs read
/// from the bytes by dicom-ul's reader (strict, the SCP's 64 KiB maximum), each handed to the
/// association's state machine ([`Session`]) with a real spool behind it, until the session
/// ends the association. The first byte picks the accepted contexts' transfer syntaxes.
pub fn scp_pdus(data: &[u8]) {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let syntaxes = bedside::source::scp::decodable_transfer_syntaxes();
    let contexts = (0..4u8)
        .map(|i| {
            let ts = syntaxes[(usize::from(pick) + usize::from(i)) % syntaxes.len()];
            (2 * i + 1, ts.to_owned())
        })
        .collect();
    let dir = scratch().join("spool");
    let _ = std::fs::remove_dir_all(&dir);
    let spool = Spool::open(&dir, 4 << 20, 1 << 20).expect("spool");
    let mut session = Session::new(std::sync::Arc::new(spool), contexts);
    for _ in 0..256 {
        let mut cursor = std::io::Cursor::new(rest);
        let pdu: Pdu = match read_pdu(&mut cursor, 64 * 1024, true) {
            Ok(Some(pdu)) => pdu,
            // Not enough bytes for a PDU (the SCP would wait), or unreadable (it aborts).
            _ => return,
        };
        rest = &rest[cursor.position() as usize..];
        if session.on_pdu(pdu).next != Next::Read {
            return;
        }
    }
}

/// The outbox opened over a segment (and its marks file) of arbitrary bytes, as a power cut
/// or a failing card can leave them: recovery gives an outbox or an error; what it recovered
/// can be taken, settled and appended to.
pub fn outbox_recovery(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    // The first byte places the split between segment and marks anywhere in ~64 KiB.
    let split = (usize::from(split) * (body.len() / 255 + 1)).min(body.len());
    let (segment, marks) = body.split_at(split);
    let dir = scratch().join("outbox");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("outbox folder");
    std::fs::write(dir.join("00000000000000000001.seg"), segment).expect("segment");
    std::fs::write(dir.join("00000000000000000001.ack"), marks).expect("marks");
    let config = OutboxConfig {
        max_bytes: 1 << 20,
        max_records: 1000,
        segment_bytes: 64 << 10,
    };
    let Ok((mut outbox, _recovery)) = Outbox::open(&dir, config) else {
        return;
    };
    let mut buf = Vec::new();
    for _ in 0..16 {
        match outbox.take_next(&mut buf) {
            Ok(Some(seq)) => {
                let _ = outbox.settle(seq);
            }
            _ => break,
        }
    }
    let _ = outbox.append(Class::Image, b"{\"id\":\"after recovery\"}");
}

/// A model manifest (`model.toml`) of any text.
pub fn model_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch().join("model");
    std::fs::create_dir_all(&dir).expect("model folder");
    std::fs::write(dir.join("model.toml"), text).expect("manifest");
    let _ = Manifest::load(&dir);
}

/// A board profile of any text: parsing and validation.
pub fn board_profile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bedside::board::BoardProfile::from_toml(text, Path::new("/fuzz/board.toml"));
    }
}

/// Camera buffers to luma with any layout a driver could negotiate: format, size, stride,
/// range and crop from the first 12 bytes, the buffer (broken MJPEG included) from the rest.
pub fn camera_convert(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let (h, buf) = data.split_at(12);
    let format = PixelFormat::ALL[h[0] as usize % PixelFormat::ALL.len()];
    let width = u32::from(u16::from_le_bytes([h[1], h[2]]) % 2048) + 1;
    let height = u32::from(u16::from_le_bytes([h[3], h[4]]) % 2048) + 1;
    let stride = format.min_stride(width) + usize::from(h[5]);
    let range = if h[6] & 1 == 0 {
        Range::Limited
    } else {
        Range::Full
    };
    let crop = Rect {
        x: u32::from(h[7]) * width / 256,
        y: u32::from(h[8]) * height / 256,
        width: (u32::from(h[9]) * width / 256).max(1),
        height: (u32::from(h[10]) * height / 256).max(1),
    };
    let layout = Layout {
        format,
        width,
        height,
        stride,
        range,
    };
    let Ok(mut converter) = Converter::new(layout, crop) else {
        return;
    };
    let mut out = vec![0u8; crop.pixels()];
    let _ = converter.to_luma(buf, &mut out);
    // A wrong output size is refused, not written past.
    let mut short = vec![0u8; crop.pixels().saturating_sub(1)];
    let _ = converter.to_luma(buf, &mut short);
}
