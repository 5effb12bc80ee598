//! `bedside bench-dicom`: an X-ray image from file to finding, whole process, against DCMTK's
//! decoder for the file's transfer syntax (`dcmdjpeg`, `dcmdjpls`, `dcmdrle`) decoding and
//! writing the same file, in the same run. Rounds are interleaved (the reference first in
//! each) so that a change in the machine's load affects both alike.
//!
//! Both are child processes measured the same way: wall time from spawn to exit, and peak
//! RSS from the kernel's accounting of that child (`wait4`). bedside's run is `bedside infer`
//! (read, decode, prepare, each model, the finding printed); its own decode / prepare /
//! infer times come from the finding it prints.
//!
//! With `--python`, the Python pipeline a clinic engineer would write
//! (`benches/python/pipeline.py`: pydicom + pylibjpeg + numpy + Pillow + onnxruntime) is a
//! third child in each round, and a second reference afterwards: per image in a warm
//! process, against bedside's per-image time (the finding's own total, as in the daemon).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

/// One child's wall time (ms) and peak RSS (KiB).
#[derive(Debug, Clone, Copy)]
struct Run {
    ms: f64,
    rss_kib: f64,
}

pub fn bench_dicom(
    files: &[PathBuf],
    models: &[PathBuf],
    rounds: usize,
    scratch: &Path,
    bedside: Option<&Path>,
    python: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!files.is_empty(), "no files to measure");
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let me = match bedside {
        Some(b) => b.to_owned(),
        None => std::env::current_exe()?,
    };
    let out = Scratch(scratch.join(format!("bench-dicom-{}", std::process::id())));
    std::fs::create_dir_all(&out.0)?;
    println!(
        "{} file(s), {rounds} rounds each, the DCMTK decoder first in each round; wall time from spawn to exit, peak RSS by wait4",
        files.len()
    );
    let script = Path::new("benches/python/pipeline.py");
    if python.is_some() {
        anyhow::ensure!(
            script.is_file(),
            "--python needs {} (run bench-dicom from the repository root)",
            script.display()
        );
    }
    let pipeline = |rounds: usize, file: &Path| {
        // The Python pipeline runs the first model (the one a single-model bench names).
        let model = models
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("models/cxr-tiny-cls"));
        let mut c = Command::new(python.expect("checked"));
        c.arg(script).arg("--rounds").arg(rounds.to_string());
        c.arg("--model").arg(model).arg(file);
        c
    };
    let mut worst = 0.0f64;
    for file in files {
        let obj = bedside::dicom::decode::open_file(file)?;
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_owned();
        drop(obj);
        let Some(tool) = reference_tool(&ts) else {
            println!(
                "{}: transfer syntax {ts} has no DCMTK decoder to compare with; skipped",
                file.display()
            );
            continue;
        };
        let mut infer = Command::new(&me);
        infer.arg("infer");
        for m in models {
            infer.arg("--model").arg(m);
        }
        infer.arg(file);
        let mut reference = Command::new(tool);
        reference.arg(file).arg(out.0.join("decoded.dcm"));
        let mut py = python.map(|_| pipeline(1, file));
        let (mut ours, mut theirs, mut stages) = (Vec::new(), Vec::new(), Vec::new());
        let mut pys = Vec::new();
        // One unmeasured run of each: page cache and dynamic loader warm for all.
        let log = out.0.join("stderr.txt");
        measure(&mut reference, &log)?;
        measure(&mut infer, &log)?;
        if let Some(p) = &mut py {
            measure(p, &log)?;
        }
        for _ in 0..rounds {
            theirs.push(measure(&mut reference, &log)?.0);
            let (run, stdout) = measure(&mut infer, &log)?;
            stages.push(timings(&stdout)?);
            ours.push(run);
            if let Some(p) = &mut py {
                pys.push(measure(p, &log)?.0);
            }
        }
        let ms = |v: &[Run]| stats(&v.iter().map(|r| r.ms).collect::<Vec<_>>());
        let rss = |v: &[Run]| stats(&v.iter().map(|r| r.rss_kib / 1024.0).collect::<Vec<_>>());
        let (om, tm) = (ms(&ours), ms(&theirs));
        let (or, tr) = (rss(&ours), rss(&theirs));
        let stage = |i: usize| stats(&stages.iter().map(|s| s[i]).collect::<Vec<_>>());
        println!("{} ({ts})", file.display());
        println!(
            "  {tool:<14} median {:7.1} ms (min {:.1}, max {:.1})  peak RSS {:.1} MiB",
            tm.0, tm.1, tm.2, tr.0
        );
        println!(
            "  bedside infer  median {:7.1} ms (min {:.1}, max {:.1})  peak RSS {:.1} MiB (min {:.1}, max {:.1})",
            om.0, om.1, om.2, or.0, or.1, or.2
        );
        println!(
            "  ratio bedside/{tool}: time {:.2}x, peak RSS {:.2}x",
            om.0 / tm.0,
            or.0 / tr.0
        );
        let (d, p, i, t) = (stage(0), stage(1), stage(2), stage(3));
        println!(
            "  bedside stages (median, min-max ms): decode {:.1} ({:.1}-{:.1}), prepare {:.1} ({:.1}-{:.1}), models {:.1} ({:.1}-{:.1}); per image {:.1}",
            d.0, d.1, d.2, p.0, p.1, p.2, i.0, i.1, i.2, t.0
        );
        if python.is_some() {
            let (pm, pr) = (ms(&pys), rss(&pys));
            println!(
                "  Python one-shot median {:7.1} ms (min {:.1}, max {:.1})  peak RSS {:.1} MiB; bedside infer / Python: time {:.2}x, peak RSS {:.2}x",
                pm.0,
                pm.1,
                pm.2,
                pr.0,
                om.0 / pm.0,
                or.0 / pr.0
            );
            // Per image in a warm process: the first round warms the session and caches.
            let (_, stdout) = measure(&mut pipeline(rounds + 1, file), &log)?;
            let warm = python_stages(&stdout)?;
            let stage = |i: usize| stats(&warm.iter().map(|s| s[i]).collect::<Vec<_>>());
            let (d, p, i, pt) = (stage(0), stage(1), stage(2), stage(3));
            println!(
                "  Python warm, per image (median ms): decode {:.1}, prepare {:.1}, model {:.1}, total {:.1} (min {:.1}, max {:.1}); bedside / Python per image: {:.2}x (issue 17's goal: at most 0.33x)",
                d.0,
                p.0,
                i.0,
                pt.0,
                pt.1,
                pt.2,
                t.0 / pt.0
            );
        }
        worst = worst.max(om.0 / tm.0);
    }
    println!("worst time ratio: {worst:.2}x (issue 17's goal: at most 1.0x)");
    Ok(ExitCode::SUCCESS)
}

/// DCMTK's decoder for a compressed transfer syntax.
fn reference_tool(ts: &str) -> Option<&'static str> {
    match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => Some("dcmdjpeg"),
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("dcmdjpls"),
        "1.2.840.10008.1.2.5" => Some("dcmdrle"),
        _ => None,
    }
}

/// The bench's scratch folder, removed when done.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a child to its end: its wall time and peak RSS, and its standard output. Its
/// standard error goes to `log` (a pipe could fill and stall it while stdout is read).
fn measure(cmd: &mut Command, log: &Path) -> anyhow::Result<(Run, Vec<u8>)> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", cmd.get_program()))?;
    let mut stdout = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut stdout)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, whose pid we hold and have not reaped; both out
    // pointers are valid for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{:?} failed ({status:#x}): {}",
        cmd.get_program(),
        std::fs::read_to_string(log).unwrap_or_default().trim()
    );
    Ok((
        Run {
            ms,
            // ru_maxrss is in KiB on Linux.
            rss_kib: usage.ru_maxrss as f64,
        },
        stdout,
    ))
}

/// The slowest finding's decode, prepare, model and total times from `bedside infer`'s
/// output.
fn timings(stdout: &[u8]) -> anyhow::Result<[f64; 4]> {
    let mut out = [0.0f64; 4];
    let mut any = false;
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        let t = &v["timings_ms"];
        for (o, k) in out.iter_mut().zip(["decode", "prepare", "infer", "total"]) {
            *o = o.max(t[k].as_f64().unwrap_or(0.0));
        }
        any = true;
    }
    anyhow::ensure!(any, "bedside infer printed no finding");
    Ok(out)
}

/// Each image's decode, prepare, model and total times from `pipeline.py`, its first
/// round (the warm-up) left out.
fn python_stages(stdout: &[u8]) -> anyhow::Result<Vec<[f64; 4]>> {
    let mut out = Vec::new();
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        if v["round"].as_u64() == Some(0) {
            continue;
        }
        let mut s = [0.0f64; 4];
        for (o, k) in s
            .iter_mut()
            .zip(["decode_ms", "prepare_ms", "infer_ms", "total_ms"])
        {
            *o = v[k].as_f64().unwrap_or(0.0);
        }
        out.push(s);
    }
    anyhow::ensure!(!out.is_empty(), "the Python pipeline printed no timings");
    Ok(out)
}

/// (median, min, max)
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}
