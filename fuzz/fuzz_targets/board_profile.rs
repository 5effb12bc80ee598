//! Board profile parsing and validation: any text gives a profile or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bedside::board::BoardProfile::from_toml(text, std::path::Path::new("/fuzz/board.toml"));
    }
});
