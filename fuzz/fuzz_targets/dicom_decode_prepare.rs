//! A DICOM file from bytes, as the inbox or the SCP would hand it over: size and header
//! limits, parse, decode (every transfer syntax this build has: native, deflate, RLE, JPEG,
//! JPEG-LS, JPEG 2000) and prepare for the shipped radiograph model. Any input gives an image
//! or an error; a panic, a hang or an allocation past -rss_limit_mb is a finding.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bedside::dicom::decode::{self, ImageLimits};
use bedside::model::manifest::Manifest;
use bedside::prepare::Preparer;
use libfuzzer_sys::fuzz_target;

fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    M.get_or_init(|| {
        Manifest::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/cxr-tiny-cls"))
            .expect("the shipped model's manifest")
    })
}

fuzz_target!(|data: &[u8]| {
    // The daemon reads files; so does this (one per fuzzing process, rewritten each run).
    let path = std::env::temp_dir().join(format!("bedside-fuzz-{}.dcm", std::process::id()));
    std::fs::write(&path, data).expect("temporary file");
    // The daemon's limits, smaller: the same checks, and runs short enough to fuzz.
    let limits = ImageLimits {
        max_rows: 1024,
        max_cols: 1024,
        max_frames: 4,
        max_file_bytes: 4 << 20,
    };
    if decode::check_file_size(&path, limits.max_file_bytes).is_err() {
        return;
    }
    let Ok(obj) = decode::open_file(&path) else {
        return;
    };
    if decode::check_limits(&obj, &limits).is_err() {
        return;
    }
    let m = manifest();
    let (h, w) = m.input_hw();
    let mut preparer = Preparer::new(m.preprocess.clone(), h, w);
    for frame in 0..decode::frame_count(&obj).min(2) {
        if let Ok(image) = decode::decode_frame(&obj, frame) {
            let _ = preparer.prepare(&image);
        }
    }
});
