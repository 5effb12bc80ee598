//! `bedside bench-dicom-send`: results per second from the durable DICOM outbox to a C-STORE
//! SCP, against DCMTK's `storescu` sending the same files to the same SCP in the same run,
//! rounds interleaved (the reference first in each round) so that a change in load affects
//! both alike.
//!
//! bedside's figure covers what the daemon does for every result after it is made: the
//! queue's write, fsync and hard link (`put`, reported on its own) and the sender's work
//! until the last object is answered and deleted. storescu only reads and sends.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bedside::dicom::outbox::DicomOutbox;
use bedside::dicom::results::Made;
use bedside::dicom::send::{self, Destination};

pub struct Target {
    pub host: String,
    pub port: u16,
    pub called_ae: String,
}

pub fn bench_dicom_send(
    files: &[PathBuf],
    target: &Target,
    rounds: usize,
    scratch: &Path,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!files.is_empty(), "no files to send");
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let made = files
        .iter()
        .map(|f| Made::from_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    let n = made.len();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "{n} objects, {:.1} MiB, to {} at {}:{}; {rounds} rounds, storescu first in each",
        bytes as f64 / 1048576.0,
        target.called_ae,
        target.host,
        target.port
    );
    let dest = Destination {
        name: "bench".into(),
        calling_ae_title: "BEDSIDE".into(),
        called_ae_title: target.called_ae.clone(),
        host: target.host.clone(),
        port: target.port,
        tls: None,
        max_attempts: 1,
        timeout: Duration::from_secs(30),
        reconnect_max: Duration::from_secs(1),
    };
    let (mut reference, mut ours, mut puts) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Reference: one storescu, every file in one association.
        let t = Instant::now();
        // -R: propose exactly the SOP classes and transfer syntaxes of the files (its default
        // list lacks Comprehensive 3D SR).
        let status = Command::new("storescu")
            .arg("-R")
            .arg("-aet")
            .arg("STORESCU")
            .arg("-aec")
            .arg(&target.called_ae)
            .arg(&target.host)
            .arg(target.port.to_string())
            .args(files)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run DCMTK's storescu: {e}"))?;
        let elapsed = t.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "storescu failed: {status}");
        reference.push(n as f64 / elapsed);

        // bedside: queue every object durably, then send until the queue is empty.
        let dir = scratch.join(format!(
            ".bedside-bench-send-{}-{round}",
            std::process::id()
        ));
        let (outbox, _) = DicomOutbox::open(&dir, &["bench".to_string()], bytes * 2 + (1 << 20))?;
        let outbox = Arc::new(outbox);
        let t = Instant::now();
        outbox.put(&made)?;
        puts.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let senders = send::start(outbox.clone(), std::slice::from_ref(&dest))?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let sent = loop {
            let s = &outbox.status()[0];
            if s.pending == 0 || Instant::now() > deadline {
                break s.clone();
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let elapsed = t.elapsed().as_secs_f64();
        senders.stop(Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).ok();
        anyhow::ensure!(
            sent.sent == n as u64 && sent.dead == 0,
            "round {round}: {} of {n} stored, {} refused: {:?}",
            sent.sent,
            sent.dead,
            sent.last_error
        );
        ours.push(n as f64 / elapsed);
        println!(
            "round {}: storescu {:.1} objects/s, bedside {:.1} objects/s (queue {:.1} objects/s)",
            round + 1,
            reference[round],
            ours[round],
            puts[round]
        );
    }
    let (r, o, p) = (stats(&reference), stats(&ours), stats(&puts));
    println!(
        "storescu (reference)      median {:.1} objects/s  (min {:.1}, max {:.1})",
        r.0, r.1, r.2
    );
    println!(
        "bedside outbox → C-STORE  median {:.1} objects/s  (min {:.1}, max {:.1})",
        o.0, o.1, o.2
    );
    println!(
        "bedside queueing (write, fsync, link) median {:.1} objects/s  (min {:.1}, max {:.1})",
        p.0, p.1, p.2
    );
    println!("ratio bedside / storescu: {:.2}", o.0 / r.0);
    Ok(ExitCode::SUCCESS)
}

/// Median, min, max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mid, s[0], s[s.len() - 1])
}
