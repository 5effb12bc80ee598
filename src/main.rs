//! The `bedside` command: a thin edge over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

use bedside::board::BoardProfile;
use bedside::finding::UidHasher;

use bedside::dicom::results::ResultKind;
use bedside::pipeline::{Identity, Processor, ResultsSpec};
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
        /// Also draw the image with what the models found (outlines, boxes, banners) into
        /// this PNG, at the image's size.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Which frame of a multi-frame object to draw (0-based); default: the first with a
        /// label over threshold, else the first.
        #[arg(long)]
        overlay_frame: Option<u32>,
        /// Also write the overlay as a DICOM Secondary Capture (burned-in annotation) in the
        /// source's study: for PACS. It carries the source's patient and study modules.
        #[arg(long)]
        secondary_capture: Option<PathBuf>,
        /// Also write the findings as a DICOM Comprehensive 3D SR (TID 1500 Measurement
        /// Report) in the source's study; it carries the source's patient and study modules.
        #[arg(long)]
        structured_report: Option<PathBuf>,
        /// Also write each segmentation model's masks as a DICOM Segmentation (binary, at the
        /// source's size) in the source's study; with several segmentation models, one file
        /// each, named with the model's id. It carries the source's patient and study modules.
        #[arg(long)]
        segmentation: Option<PathBuf>,
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
    /// Run bedside's int8 ops on their onnxruntime fixtures (one single-node model per case)
    /// and compare byte for byte, within each op's stated tolerance.
    ParityOps {
        /// Folder of case folders (tests/fixtures/ops).
        #[arg(long, default_value = "tests/fixtures/ops")]
        fixtures: PathBuf,
    },
    /// The models a device serves, and new ones put on it without downtime.
    Models {
        #[command(subcommand)]
        action: ModelsCommand,
    },
    /// Write the model's input tensors for images (PNG, DICOM, NIfTI; folders walked), made
    /// by the daemon's own preparation: what calibration and reference runs in Python feed
    /// the model. One `<name>.f32` per image (NCHW, little-endian) and `index.json`.
    Prepare {
        /// Model folder (its manifest's input and preprocessing).
        #[arg(long)]
        model: PathBuf,
        /// Output folder.
        #[arg(long)]
        dump: PathBuf,
        /// Images or folders of images.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Judge a model on a labelled folder with the runtime that serves: the field's metrics
    /// (sensitivity, specificity, AUC; Dice, IoU; COCO mAP), per-image timings, a Markdown
    /// report, a CSV and PNG plots (docs/eval.md).
    Eval {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        /// Labelled folder: labels.csv, images/ + masks/, or annotations.json.
        #[arg(long)]
        data: PathBuf,
        /// Which form of the model folder to judge.
        #[arg(long, value_enum, default_value = "shipped")]
        form: Form,
        /// Put beside it: `parent` or `pruned` (forms of the same folder) or another model
        /// folder.
        #[arg(long)]
        compare: Option<String>,
        /// Output folder for report.md, per_image.csv, summary.json and the plots.
        #[arg(long, default_value = "eval-report")]
        out: PathBuf,
        /// Exit with status 3 when the model's main metric falls more than this below the
        /// compared one's (e.g. 0.02).
        #[arg(long, requires = "compare")]
        max_drop: Option<f64>,
    },
    /// Print the audit trail as CSV: every input processed (time, source, UID hash, model id,
    /// version and sha256, result, timings, delivery), never a patient identifier.
    Audit {
        #[arg(long)]
        board: PathBuf,
        /// From when: an RFC 3339 time, a date (2026-12-01, UTC), or an age (30m, 12h, 7d);
        /// absent: everything kept.
        #[arg(long)]
        since: Option<String>,
    },
    /// Print the systemd drop-in a board needs (MemoryMax= from its memory budget, access to
    /// its capture device); install as /etc/systemd/system/bedside.service.d/board.conf.
    SystemdDropin {
        #[arg(long)]
        board: PathBuf,
    },
    /// Time a model's shipped (int8) file against its fp32 parent in tract — or, with
    /// --onnx, any ONNX file (and a second with --vs), before it has a manifest.
    Bench {
        #[arg(long, default_value = DEFAULT_MODEL, conflicts_with = "onnx")]
        model: PathBuf,
        /// An ONNX file to time through bedside's engine.
        #[arg(long)]
        onnx: Option<PathBuf>,
        /// A second ONNX file timed interleaved with the first (e.g. its fp32 form).
        #[arg(long, requires = "onnx")]
        vs: Option<PathBuf>,
        /// Input shape, e.g. 1,3,224,224 (default: the file's own, if fixed).
        #[arg(long, value_delimiter = ',', requires = "onnx")]
        shape: Option<Vec<usize>>,
        /// Timed runs per form (after warm-up runs).
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// DICOM file to prepare as the input; default: an all-zero tensor.
        #[arg(long, conflicts_with = "onnx")]
        image: Option<PathBuf>,
        /// Threads one int8 convolution may split its output over (bedside's ops only).
        #[arg(long, default_value_t = 1, requires = "onnx")]
        threads: usize,
        /// Keep quantized convolutions on tract's own path (for comparison).
        #[arg(long, requires = "onnx")]
        tract_only: bool,
        /// One JSON object per form on standard output.
        #[arg(long, requires = "onnx")]
        json: bool,
        /// Also print the time per op kind.
        #[arg(long, requires = "onnx")]
        profile: bool,
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
    /// An X-ray image from file to finding (`bedside infer`, whole process) against DCMTK's
    /// decoder for its transfer syntax (dcmdjpeg, dcmdjpls, dcmdrle) on the same file, rounds
    /// interleaved: wall time and peak RSS, their ratios, and bedside's stage times.
    BenchDicom {
        /// Compressed Part-10 files (JPEG, JPEG-LS, RLE).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Model folder (repeatable); default: models/cxr-tiny-cls.
        #[arg(long)]
        model: Vec<PathBuf>,
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Folder for DCMTK's decoded copies; a scratch folder is made inside and removed.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The bedside binary to measure (an older build, to compare); default: this one.
        #[arg(long)]
        bedside: Option<PathBuf>,
        /// A Python with benches/python/requirements.txt (benches/python/setup.sh makes
        /// one): its pipeline is timed beside, one-shot and per image in a warm process.
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Results per second from the durable DICOM outbox to a C-STORE SCP, against DCMTK's
    /// storescu sending the same files to the same SCP in the same run (benches/pacs.sh).
    BenchDicomSend {
        /// Part-10 files to send (results `bedside infer` wrote).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
        /// The SCP's AE title.
        #[arg(long, default_value = "ANY-SCP")]
        ae_title: String,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Folder for the outbox (the board's state disk); removed after each round.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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

#[derive(Subcommand)]
enum ModelsCommand {
    /// Check a model folder as the running daemon will (signature when the board names a
    /// key, sha256, load and dry run, memory plan) and stage it under the state folder; the
    /// daemon takes it on SIGHUP (`systemctl reload bedside`).
    Install {
        dir: PathBuf,
        #[arg(long)]
        board: PathBuf,
    },
    /// The models the board profile names and the staged updates, with versions and hashes.
    List {
        #[arg(long)]
        board: PathBuf,
    },
    /// Load and dry-run a model folder and print its measured memory (`[memory]
    /// tract_working_bytes` of its manifest).
    Measure { dir: PathBuf },
    /// Make an ed25519 key pair: PREFIX.key (secret) and PREFIX.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a model folder's model.toml (writes model.toml.sig).
    Sign {
        #[arg(long)]
        key: PathBuf,
        dir: PathBuf,
    },
}

/// A model folder's forms, as `--form` names them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Form {
    Shipped,
    Parent,
    Pruned,
}

impl From<Form> for bedside::infer::Variant {
    fn from(f: Form) -> Self {
        match f {
            Form::Shipped => Self::Shipped,
            Form::Parent => Self::Parent,
            Form::Pruned => Self::Pruned,
        }
    }
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
            overlay,
            overlay_frame,
            secondary_capture,
            structured_report,
            segmentation,
        } => infer(
            &file,
            model,
            board.as_deref(),
            pretty,
            Pictures {
                png: overlay,
                dicom: secondary_capture,
                report: structured_report,
                segmentation,
                frame: overlay_frame,
            },
        ),
        Command::Run { board } => run(&board),
        Command::Check { board } => check(&board),
        Command::Parity { model, fixtures } => parity(&model, &fixtures),
        Command::ParityOps { fixtures } => parity_ops(&fixtures),
        Command::Models { action } => match action {
            ModelsCommand::Install { dir, board } => cmd::models::install(&board, &dir),
            ModelsCommand::List { board } => cmd::models::list(&board),
            ModelsCommand::Keygen { out } => cmd::models::keygen(&out),
            ModelsCommand::Measure { dir } => cmd::models::measure(&dir),
            ModelsCommand::Sign { key, dir } => cmd::models::sign(&key, &dir),
        },
        Command::Prepare {
            model,
            dump,
            inputs,
        } => cmd::prepare::prepare(&model, &dump, &inputs),
        Command::Eval {
            model,
            data,
            form,
            compare,
            out,
            max_drop,
        } => cmd::eval::eval(cmd::eval::EvalArgs {
            model,
            variant: form.into(),
            data,
            compare,
            out,
            max_drop,
        }),
        Command::Audit { board, since } => cmd::audit::print(&board, since.as_deref()),
        Command::SystemdDropin { board } => BoardProfile::load(&board)
            .map(|p| {
                print!("{}", bedside::service::dropin(&p, &board));
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::Bench {
            model,
            onnx: Some(onnx),
            vs,
            shape,
            runs,
            threads,
            tract_only,
            json,
            profile,
            ..
        } => {
            let _ = model;
            cmd::bench::onnx(cmd::bench::OnnxBench {
                files: std::iter::once(onnx).chain(vs).collect(),
                shape,
                runs,
                threads,
                tract_only,
                json,
                profile,
            })
        }
        Command::Bench {
            model, runs, image, ..
        } => cmd::bench::model(&model, runs, image.as_deref()),
        Command::BenchOutbox {
            dir,
            records,
            bytes,
        } => cmd::bench_outbox::bench_outbox(&dir, records, bytes),
        Command::BenchDicom {
            files,
            model,
            rounds,
            dir,
            bedside,
            python,
        } => cmd::bench_dicom::bench_dicom(
            &files,
            &model,
            rounds,
            &dir,
            bedside.as_deref(),
            python.as_deref(),
        ),
        Command::BenchDicomSend {
            files,
            host,
            port,
            ae_title,
            rounds,
            dir,
        } => cmd::bench_pacs::bench_dicom_send(
            &files,
            &cmd::bench_pacs::Target {
                host,
                port,
                called_ae: ae_title,
            },
            rounds,
            &dir,
        ),
        Command::BenchLive {
            model,
            clip,
            fps,
            seconds,
            crop,
            threads,
        } => cmd::bench_live::bench_live(&model, &clip, fps, seconds, crop.as_deref(), threads),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bedside: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `bedside infer` draws besides the findings.
struct Pictures {
    png: Option<PathBuf>,
    dicom: Option<PathBuf>,
    report: Option<PathBuf>,
    segmentation: Option<PathBuf>,
    frame: Option<u32>,
}

fn infer(
    file: &Path,
    models: Vec<PathBuf>,
    board: Option<&Path>,
    pretty: bool,
    pictures: Pictures,
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
    let mut kinds = Vec::new();
    if pictures.report.is_some() {
        kinds.push(ResultKind::Sr);
    }
    if pictures.dicom.is_some() {
        kinds.push(ResultKind::Sc);
    }
    if pictures.segmentation.is_some() {
        kinds.push(ResultKind::Seg);
    }
    if !kinds.is_empty() {
        let wanted = processor
            .engines()
            .map(|e| (e.model_ref().id.clone(), kinds.clone()))
            .collect();
        processor = processor.with_results(ResultsSpec {
            wanted,
            max_side: None,
            frame: pictures.frame,
        });
    }
    match processor.process(file, SourceKind::File) {
        Ok(processed) => {
            let findings = &processed.findings;
            for f in findings {
                let json = if pretty {
                    serde_json::to_string_pretty(f)?
                } else {
                    serde_json::to_string(f)?
                };
                println!("{json}");
            }
            if let Some(out) = &pictures.png {
                let (picture, frame) =
                    bedside::overlay::for_file(file, findings, pictures.frame, None)?;
                picture
                    .write_png(out)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                eprintln!(
                    "overlay of frame {frame} ({} x {}) written to {}",
                    picture.width,
                    picture.height,
                    out.display()
                );
            }
            if let Some(e) = processed.results_error {
                return Err(e.into());
            }
            let frame = processed.frame.unwrap_or_default();
            let segs = processed
                .results
                .iter()
                .filter(|m| m.kind == ResultKind::Seg)
                .count();
            for made in &processed.results {
                let (out, what) = match made.kind {
                    ResultKind::Sr => (pictures.report.clone(), "structured report"),
                    ResultKind::Sc => (pictures.dicom.clone(), "secondary capture"),
                    ResultKind::Seg if segs > 1 => (
                        pictures
                            .segmentation
                            .as_ref()
                            .map(|p| p.with_extension(format!("{}.dcm", made.models[0].id))),
                        "segmentation",
                    ),
                    ResultKind::Seg => (pictures.segmentation.clone(), "segmentation"),
                };
                if let Some(out) = &out {
                    made.object
                        .write_to_file(out)
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
                    eprintln!("{what} of frame {frame} written to {}", out.display());
                }
            }
            for (asked, kind) in [
                (&pictures.report, ResultKind::Sr),
                (&pictures.dicom, ResultKind::Sc),
            ] {
                if asked.is_some() && !processed.results.iter().any(|m| m.kind == kind) {
                    anyhow::bail!("no {} made: no finding is about frame {frame}", kind.name());
                }
            }
            if pictures.segmentation.is_some() && segs == 0 {
                anyhow::bail!(
                    "no seg made: no segmentation model's label covers any pixel of frame {frame}"
                );
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
    if let Some(r) = profile.results_config() {
        for d in &r.destinations {
            println!(
                "  DICOM results to {}: {}@{}:{}{} as {}, dead letter after {} refusals",
                d.name,
                d.called_ae_title,
                d.host,
                d.port,
                if d.tls.is_some() { " over TLS" } else { "" },
                d.calling_ae_title,
                d.max_attempts
            );
        }
        for m in profile
            .models
            .iter()
            .filter(|m| !m.dicom_results.is_empty())
        {
            let kinds: Vec<_> = m.dicom_results.iter().map(|k| k.name()).collect();
            println!("    {}: {}", m.path.display(), kinds.join(", "));
        }
        println!(
            "  DICOM outbox {}: at most {} MiB",
            r.outbox_dir.display(),
            r.outbox_max_bytes >> 20
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
        for line in e.coverage().to_string().lines() {
            println!("    {line}");
        }
    }
    println!("  {}", planned.workers);
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

fn parity_ops(fixtures: &Path) -> anyhow::Result<ExitCode> {
    let runs = bedside::int8::parity::check_dir_every_kernel(fixtures)?;
    let mut failed = 0;
    for (kernel, reports) in &runs {
        anyhow::ensure!(!reports.is_empty(), "no cases in {}", fixtures.display());
        let bad: Vec<_> = reports.iter().filter(|r| !r.ok()).collect();
        for r in &bad {
            println!("[{kernel}] {r}");
        }
        failed += bad.len();
        println!(
            "int8 kernel {kernel}: {} of {} cases as onnxruntime (byte for byte; f32 within each op's stated ulp)",
            reports.len() - bad.len(),
            reports.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
