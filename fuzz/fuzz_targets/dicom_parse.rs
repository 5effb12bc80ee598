//! libFuzzer's entry for `bedside_fuzz::dicom_parse` (the body and its contract are there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bedside_fuzz::dicom_parse(data));
