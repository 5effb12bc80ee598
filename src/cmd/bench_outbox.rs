//! `bedside bench-outbox`: findings per second through the durable outbox against a bare
//! append + fdatasync of the same bytes.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

pub fn bench_outbox(dir: &Path, records: usize, bytes: usize) -> anyhow::Result<ExitCode> {
    use bedside::publish::{Class, Outbox, OutboxConfig};
    use std::io::Write;
    anyhow::ensure!(records >= 10, "--records must be at least 10");
    let scratch = dir.join(format!(".bedside-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let payload: Vec<u8> = (0..bytes).map(|i| b"0123456789abcdef"[i % 16]).collect();
    let config = OutboxConfig {
        max_bytes: (records as u64 + 16) * (bytes as u64 + 64) * 2,
        max_records: records,
        segment_bytes: 1 << 20,
    };
    // Reference: the least any durable log can do — one write and one fdatasync per record.
    let raw_path = scratch.join("raw.log");
    let mut raw = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&raw_path)?;
    let mut frame = vec![0u8; bytes + 17];
    frame[17..].copy_from_slice(&payload);
    let (mut t_raw, mut t_outbox) = (Vec::new(), Vec::new());
    let (mut outbox, _) = Outbox::open(&scratch.join("outbox"), config)?;
    // Interleaved in blocks, so that a change in disk load affects both alike.
    let block = 50.min(records);
    let mut done = 0;
    while done < records {
        let n = block.min(records - done);
        let t = Instant::now();
        for _ in 0..n {
            raw.write_all(&frame)?;
            raw.sync_data()?;
        }
        t_raw.push(t.elapsed().as_secs_f64() / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            outbox.append(Class::Image, &payload)?;
        }
        t_outbox.push(t.elapsed().as_secs_f64() / n as f64);
        done += n;
    }
    let memory_full = outbox.memory_bytes();
    let t = Instant::now();
    let mut buf = Vec::new();
    let mut drained = 0;
    while let Some(seq) = outbox.take_next(&mut buf)? {
        outbox.settle(seq)?;
        drained += 1;
        if drained % 100 == 0 {
            outbox.sync_marks()?;
        }
    }
    outbox.sync_marks()?;
    let drain_s = t.elapsed().as_secs_f64();
    drop(outbox);
    std::fs::remove_dir_all(&scratch)?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw_s, outbox_s) = (median(&mut t_raw), median(&mut t_outbox));
    println!(
        "{records} records of {bytes} bytes in {}, fsync'd one by one, interleaved in blocks of {block}",
        dir.display()
    );
    println!(
        "bare write+fdatasync: {:>9.0} records/s ({:.3} ms each, median of blocks)",
        1.0 / raw_s,
        raw_s * 1e3
    );
    println!(
        "outbox append:        {:>9.0} findings/s ({:.3} ms each) = {:.2}x the bare rate",
        1.0 / outbox_s,
        outbox_s * 1e3,
        raw_s / outbox_s
    );
    println!(
        "outbox delivery (read back, CRC check, mark delivered, marks synced every 100): {:.0} findings/s",
        drained as f64 / drain_s
    );
    println!(
        "outbox memory with {records} waiting: {memory_full} bytes ({:.1} bytes per finding); at the default limits (50000 records, 64 MiB): {} bytes",
        memory_full as f64 / records as f64,
        Outbox::memory_limit(&OutboxConfig {
            max_bytes: 64 << 20,
            max_records: 50_000,
            segment_bytes: 1 << 20,
        })
    );
    Ok(ExitCode::SUCCESS)
}
