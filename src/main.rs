//! The `bedside` command: a thin edge over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use bedside::board::BoardProfile;
use bedside::finding::UidHasher;
use bedside::infer::{Engine, Variant};
use bedside::pipeline::{Identity, Processor};
use bedside::prepare::Preparer;
use bedside::source::SourceKind;

/// Counts every allocation, so that the daemon can report its heap and tests can prove the
/// hot path allocates nothing new (see `bedside::alloc`).
#[global_allocator]
static ALLOC: bedside::alloc::Counting = bedside::alloc::Counting;

/// Exit status for an input that cannot be read or decoded.
const EXIT_BAD_INPUT: u8 = 2;
const DEFAULT_MODEL: &str = "models/cxr-tiny-cls";

#[derive(Parser)]
#[command(
    name = "bedside",
    version,
    about = "Findings from bedside imaging devices: DICOM in, int8 models in tract, MQTT out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the models on one DICOM file and print each finding as one JSON line.
    Infer {
        file: PathBuf,
        /// Model folder (repeatable); default: the board's models, else models/cxr-tiny-cls.
        #[arg(long)]
        model: Vec<PathBuf>,
        /// Board profile giving device, site and UID-hash key.
        #[arg(long)]
        board: Option<PathBuf>,
        /// Indented JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Run the daemon: watch the inbox, publish findings over MQTT.
    Run {
        #[arg(long)]
        board: PathBuf,
    },
    /// Validate a board profile and load (and verify) its models.
    Check {
        #[arg(long)]
        board: PathBuf,
    },
    /// Run a model folder's forms on its parity fixtures and compare with the onnxruntime
    /// outputs committed beside them (the check tests/aarch64.sh runs under qemu).
    Parity {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        /// Fixture folder holding parity.json and the inputs.
        #[arg(long)]
        fixtures: PathBuf,
    },
    /// Print the systemd drop-in a board needs (MemoryMax= from its memory budget, access to
    /// its capture device); install as /etc/systemd/system/bedside.service.d/board.conf.
    SystemdDropin {
        #[arg(long)]
        board: PathBuf,
    },
    /// Time a model's shipped (int8) file against its fp32 parent in tract.
    Bench {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// Timed runs per variant (after 5 warm-up runs).
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// DICOM file to prepare as the input; default: an all-zero tensor.
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// The live pipeline on a replayed recording: sustained frame rate, capture-to-result
    /// latency, drops, and the pipeline's overhead over the bare model time measured in the
    /// same run.
    BenchLive {
        /// Model folder (its shipped model runs).
        #[arg(long)]
        model: PathBuf,
        /// DICOM cine, .y4m clip or folder of PNGs, played in a loop.
        #[arg(long)]
        clip: PathBuf,
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Region given to the model: x,y,width,height.
        #[arg(long)]
        crop: Option<String>,
        /// Inference threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Findings per second through the durable outbox (fsync per record) against a bare
    /// append+fdatasync of the same bytes in the same folder, measured in the same run.
    BenchOutbox {
        /// Folder on the disk to measure (the board's state disk); a scratch folder is
        /// made inside it and removed.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        records: usize,
        /// Bytes per record (a finding is about 1 KB of JSON).
        #[arg(long, default_value_t = 1024)]
        bytes: usize,
    },
}

fn main() -> ExitCode {
    bedside::alloc::hold_memory();
    let cli = Cli::parse();
    bedside::dicom::install_panic_hook();
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    // Colours only on a terminal: a journal or a log file gets plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let result = match cli.command {
        Command::Infer {
            file,
            model,
            board,
            pretty,
        } => infer(&file, model, board.as_deref(), pretty),
        Command::Run { board } => run(&board),
        Command::Check { board } => check(&board),
        Command::Parity { model, fixtures } => parity(&model, &fixtures),
        Command::SystemdDropin { board } => BoardProfile::load(&board)
            .map(|p| {
                print!("{}", bedside::service::dropin(&p, &board));
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::Bench { model, runs, image } => bench(&model, runs, image.as_deref()),
        Command::BenchOutbox {
            dir,
            records,
            bytes,
        } => bench_outbox(&dir, records, bytes),
        Command::BenchLive {
            model,
            clip,
            fps,
            seconds,
            crop,
            threads,
        } => bench_live(&model, &clip, fps, seconds, crop.as_deref(), threads),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bedside: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn infer(
    file: &Path,
    models: Vec<PathBuf>,
    board: Option<&Path>,
    pretty: bool,
) -> anyhow::Result<ExitCode> {
    let (identity, board_models) = match board {
        Some(b) => {
            let profile = BoardProfile::load(b)?;
            let identity = Identity::for_board(&profile)?;
            let dicom = profile.models_for(bedside::board::ModelSource::Dicom);
            (identity, dicom.into_iter().map(PathBuf::from).collect())
        }
        None => (
            Identity {
                device: "cli".into(),
                site: "local".into(),
                uid_hasher: UidHasher::new("bedside:local"),
            },
            vec![PathBuf::from(DEFAULT_MODEL)],
        ),
    };
    let models = if models.is_empty() {
        board_models
    } else {
        models
    };
    let mut processor = Processor::new(identity, &models)?;
    match processor.process_file(file, SourceKind::File) {
        Ok(findings) => {
            for f in findings {
                let json = if pretty {
                    serde_json::to_string_pretty(&f)?
                } else {
                    serde_json::to_string(&f)?
                };
                println!("{json}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_bad_input() => {
            eprintln!("bedside: {e}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(e) => Err(e.into()),
    }
}

fn run(board: &Path) -> anyhow::Result<ExitCode> {
    let profile = BoardProfile::load(board)?;
    bedside::daemon::run(profile)?;
    Ok(ExitCode::SUCCESS)
}

fn check(board: &Path) -> anyhow::Result<ExitCode> {
    let profile = BoardProfile::load(board)?;
    println!("board profile {}: valid", board.display());
    println!(
        "  device {} at site {} ({}), broker {}, inbox {}",
        profile.device.id,
        profile.device.site,
        profile.device.board,
        profile.mqtt.url,
        profile.paths.inbox.display()
    );
    let (outbox, limits) = profile.outbox_config();
    println!(
        "  outbox {}: at most {} findings, {} MiB",
        outbox.display(),
        limits.max_records,
        limits.max_bytes >> 20
    );
    if let Some(scp) = profile.scp_config() {
        println!(
            "  DICOM C-STORE SCP {} on {}, {} associations at once, {} transfer syntaxes decodable",
            scp.ae_title,
            scp.bind,
            scp.max_associations,
            bedside::source::scp::decodable_transfer_syntaxes().len()
        );
    }
    if let Some(v) = &profile.video {
        let what = match (&v.v4l2, &v.replay) {
            (Some(c), _) if v.source == bedside::board::VideoSource::V4l2 => format!(
                "V4L2 {} {}x{} at {} fps, formats {}",
                c.device.display(),
                c.width,
                c.height,
                c.fps,
                c.formats
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            (_, Some(r)) => format!(
                "replay {}{}",
                r.path.display(),
                if r.looping { ", looping" } else { "" }
            ),
            _ => "?".into(),
        };
        println!(
            "  video: {what}; crop {:?}; {} inference thread(s) on cores {:?}; vote over {} frames, publish every {} s",
            v.crop, v.threads, v.cores, v.window_frames, v.publish_interval_s
        );
    }
    let planned = bedside::plan::plan_for(&profile)?;
    for (e, source) in planned
        .dicom
        .iter()
        .map(|e| (e, "DICOM"))
        .chain(planned.video.iter().map(|e| (e, "video")))
    {
        let m = e.model_ref();
        println!(
            "  model {} {} sha256 {}: verified, runs in tract ({source})",
            m.id, m.version, m.sha256
        );
    }
    println!();
    print!("{}", planned.plan.table());
    if let Err(e) = planned.plan.check() {
        eprintln!("bedside: the plan does not fit: {}", e.line);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn parity(model: &Path, fixtures: &Path) -> anyhow::Result<ExitCode> {
    let reports = bedside::model::parity::check(model, fixtures)?;
    anyhow::ensure!(
        !reports.is_empty(),
        "no form of the model has reference outputs"
    );
    for r in &reports {
        println!("{r}");
    }
    Ok(if reports.iter().all(|r| r.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench(model: &Path, runs: usize, image: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(runs >= 5, "--runs must be at least 5");
    let mut int8 = Engine::load_variant(model, Variant::Shipped)?;
    let mut fp32 = Engine::load_variant(model, Variant::Parent)?;
    let manifest = int8.manifest().clone();
    let (h, w) = manifest.input_hw();
    let input: Vec<f32> = match image {
        Some(path) => {
            let img = bedside::dicom::read_file(path)?;
            Preparer::new(manifest.preprocess.clone(), h, w)
                .prepare(&img)?
                .to_vec()
        }
        None => vec![0.0; h * w],
    };
    for _ in 0..5 {
        int8.run(&input)?;
        fp32.run(&input)?;
    }
    // Interleaved, so that a change in machine load affects both variants alike.
    let (mut t_int8, mut t_fp32) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let (mut out_int8, mut out_fp32) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        out_int8 = int8.run(&input)?;
        t_int8.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        out_fp32 = fp32.run(&input)?;
        t_fp32.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let max_abs = out_int8
        .iter()
        .zip(&out_fp32)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "model {} {}: tract, one thread, input {:?}, {runs} timed runs each after 5 warm-up, interleaved",
        manifest.model.id, manifest.model.version, manifest.input.shape
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10}",
        "", "median ms", "p10 ms", "p90 ms", "min ms"
    );
    let parent_file = manifest
        .model
        .parent
        .as_ref()
        .map(|p| p.file.display().to_string())
        .unwrap_or_default();
    for (name, times) in [("fp32", &mut t_fp32), ("int8", &mut t_int8)] {
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!(
            "{name:<6} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            q(0.5),
            q(0.1),
            q(0.9),
            times[0]
        );
    }
    let ratio = t_fp32[runs / 2] / t_int8[runs / 2];
    println!(
        "int8 ({}) vs fp32 ({parent_file}): {ratio:.2}x the speed of fp32 (median)",
        manifest.model.file.display()
    );
    println!("max |int8 - fp32| on the outputs for this input: {max_abs:.4}");
    Ok(ExitCode::SUCCESS)
}

fn bench_live(
    model: &Path,
    clip: &Path,
    fps: f64,
    seconds: u64,
    crop: Option<&str>,
    threads: usize,
) -> anyhow::Result<ExitCode> {
    use bedside::live::{FindingContext, Live, LiveConfig};
    use bedside::source::camera::Camera;
    use bedside::source::replay::{Replay, ReplayConfig};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let crop = crop
        .map(|c| -> anyhow::Result<bedside::source::convert::Rect> {
            let v: Vec<u32> = c
                .split(',')
                .map(|x| x.trim().parse())
                .collect::<Result<_, _>>()?;
            anyhow::ensure!(v.len() == 4, "--crop x,y,width,height");
            bedside::source::convert::Rect::try_from([v[0], v[1], v[2], v[3]])
                .map_err(anyhow::Error::msg)
        })
        .transpose()?;
    let config = ReplayConfig {
        path: clip.to_owned(),
        fps: Some(fps),
        looping: true,
        crop,
        pixel_spacing_mm: None,
    };
    let engine = Engine::load(model)?;
    let manifest = engine.manifest().clone();
    // The bare model: the same frames, prepared beforehand, through engine.run alone.
    let mut probe = Replay::open(ReplayConfig {
        fps: Some(1000.0),
        ..config.clone()
    })?;
    let (w, h) = probe.frame_size();
    let (mh, mw) = manifest.input_hw();
    let mut preparer = Preparer::new(manifest.preprocess.clone(), mh, mw);
    let mut luma = vec![0u8; w as usize * h as usize];
    let mut tensors = Vec::new();
    for _ in 0..32 {
        probe.capture(&mut luma)?;
        tensors.push(preparer.prepare_luma(&luma, w, h)?.to_vec());
    }
    let mut bare = engine.fork();
    for t in tensors.iter().take(5) {
        bare.run(t)?;
    }
    let mut bare_times = Vec::new();
    let bare_until = Instant::now() + Duration::from_secs(seconds.clamp(3, 10));
    while Instant::now() < bare_until {
        for t in &tensors {
            let s = Instant::now();
            bare.run(t)?;
            bare_times.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    bare_times.sort_by(f64::total_cmp);
    let bare_median = bare_times[bare_times.len() / 2];
    // Where a frame's time goes outside the model, stage by stage on one thread.
    let full = (
        w + crop.map_or(0, |c| c.x) + 8,
        h + crop.map_or(0, |c| c.y) + 8,
    );
    let mut converter = bedside::source::convert::Converter::new(
        bedside::source::convert::Layout {
            format: bedside::source::convert::PixelFormat::Yuyv,
            width: full.0,
            height: full.1,
            stride: full.0 as usize * 2,
            range: bedside::source::convert::Range::Limited,
        },
        bedside::source::convert::Rect::try_from([
            crop.map_or(0, |c| c.x),
            crop.map_or(0, |c| c.y),
            w,
            h,
        ])
        .map_err(anyhow::Error::msg)?,
    )?;
    let yuyv = vec![128u8; full.0 as usize * full.1 as usize * 2];
    let (mut scores, mut peaks) = (
        bedside::finding::LabelValues::new(),
        bedside::finding::LabelValues::new(),
    );
    let out_len = bare.run(&tensors[0])?.len();
    let logits = vec![0.0f32; out_len];
    let stage = |f: &mut dyn FnMut()| {
        let mut t: Vec<f64> = (0..200)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let convert_ms = stage(&mut || {
        converter.to_luma(&yuyv, &mut luma).expect("converts");
    });
    let prepare_ms = stage(&mut || {
        preparer.prepare_luma(&luma, w, h).expect("prepares");
    });
    let score_ms = stage(&mut || {
        bedside::finding::score_into(
            manifest.model.task,
            &logits,
            &manifest.labels,
            manifest.output.activation,
            &mut scores,
            &mut peaks,
        )
    });

    let identity = Identity {
        device: "bench".into(),
        site: "local".into(),
        uid_hasher: UidHasher::new("bench"),
    };
    let findings = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = findings.clone();
    let live = Live::start(
        LiveConfig {
            threads,
            ..LiveConfig::default()
        },
        Box::new(move || Ok(Box::new(Replay::open(config.clone())?) as Box<dyn Camera>)),
        vec![engine],
        FindingContext {
            identity,
            source: SourceKind::Replay,
        },
        Box::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
        Box::new(|_| {}),
    );
    // Warm-up second, then the measured span from counters read at its edges.
    std::thread::sleep(Duration::from_secs(1));
    let stats = live.stats().clone();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (c0, p0, d0) = (
        get(&stats.captured),
        get(&stats.processed),
        get(&stats.dropped),
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let span = t0.elapsed().as_secs_f64();
    let (c1, p1, d1) = (
        get(&stats.captured),
        get(&stats.processed),
        get(&stats.dropped),
    );
    let (p50, p99) = (
        stats.latency_percentile(50.0).unwrap_or(f64::NAN),
        stats.latency_percentile(99.0).unwrap_or(f64::NAN),
    );
    live.stop();
    println!(
        "live pipeline: {} at {fps} fps for {seconds} s, model {} {} ({:?} input), {threads} inference thread(s), frames {w}x{h}",
        clip.display(),
        manifest.model.id,
        manifest.model.version,
        manifest.input.shape
    );
    println!(
        "captured {:.1} fps, processed {:.1} fps, dropped {} of {} ({:.1}%)",
        (c1 - c0) as f64 / span,
        (p1 - p0) as f64 / span,
        d1 - d0,
        c1 - c0,
        100.0 * (d1 - d0) as f64 / (c1 - c0).max(1) as f64
    );
    println!(
        "capture-to-result latency: p50 {p50:.1} ms, p99 {p99:.1} ms (middle of 0.1 ms buckets, all frames incl. warm-up)"
    );
    println!(
        "bare model (engine.run on prepared tensors, same frames, same run): median {bare_median:.2} ms over {} runs",
        bare_times.len()
    );
    println!(
        "pipeline overhead over the bare model: {:.1}% (p50 latency / bare median - 1) = {:.3} ms a frame",
        100.0 * (p50 / bare_median - 1.0),
        p50 - bare_median
    );
    println!(
        "  of which (medians, one thread): YUYV {}x{} to cropped luma {convert_ms:.3} ms, prepare (window, resize to {mw}x{mh}, normalise) {prepare_ms:.3} ms, scoring {score_ms:.3} ms; hand-off, wake-up and the rest {:.3} ms",
        full.0,
        full.1,
        p50 - bare_median - convert_ms - prepare_ms - score_ms
    );
    println!("findings published: {}", findings.load(Ordering::Relaxed));
    Ok(ExitCode::SUCCESS)
}

fn bench_outbox(dir: &Path, records: usize, bytes: usize) -> anyhow::Result<ExitCode> {
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
