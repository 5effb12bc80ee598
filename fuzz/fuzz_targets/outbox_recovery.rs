//! The outbox opened over a segment (and its marks file) of arbitrary bytes, as a power cut
//! or a failing card can leave them: recovery gives an outbox or an error, never a panic;
//! what it recovered can be taken, settled and appended to.
#![no_main]

use bedside::publish::{Class, Outbox, OutboxConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary folder");
    // The first byte splits the input: segment bytes, then marks bytes.
    let (split, body) = match data.split_first() {
        Some((s, b)) => (*s as usize * body_len_unit(b.len()), b),
        None => return,
    };
    let (segment, marks) = body.split_at(split.min(body.len()));
    std::fs::write(dir.path().join("00000000000000000001.seg"), segment).unwrap();
    std::fs::write(dir.path().join("00000000000000000001.ack"), marks).unwrap();
    let config = OutboxConfig {
        max_bytes: 1 << 20,
        max_records: 1000,
        segment_bytes: 64 << 10,
    };
    let Ok((mut outbox, _recovery)) = Outbox::open(dir.path(), config) else {
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
});

/// So that one byte can place the split anywhere in inputs up to ~64 KiB.
fn body_len_unit(len: usize) -> usize {
    len / 255 + 1
}
