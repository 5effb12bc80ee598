//! Every target in one binary, chosen by `BEDSIDE_FUZZ_TARGET=<name>`: one file to copy to a
//! machine with more cores than this one (the seven binaries are ~100 MB each with ASan).
#![no_main]

use std::sync::OnceLock;

fn body() -> fn(&[u8]) {
    static BODY: OnceLock<fn(&[u8])> = OnceLock::new();
    *BODY.get_or_init(|| {
        let name = std::env::var("BEDSIDE_FUZZ_TARGET").unwrap_or_default();
        bedside_fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("BEDSIDE_FUZZ_TARGET={name:?} names no target"))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| body()(data));
