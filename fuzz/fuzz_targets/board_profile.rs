//! libFuzzer's entry for `bedside_fuzz::board_profile` (the body and its contract are there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bedside_fuzz::board_profile(data));
