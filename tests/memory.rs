//! The memory plan held to account: processing after warm-up allocates a documented
//! constant and returns every byte, the heap peak stays under the plan, RSS stays flat,
//! inputs beyond the plan are refused before anything large is allocated, and a budget
//! that is too small stops the daemon at start with the plan and the line that does not fit.
//!
//! This test binary runs under bedside's counting allocator.

mod common;

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bedside::board::BoardProfile;
use bedside::pipeline::{Identity, Processor};
use bedside::source::SourceKind;
use common::*;

#[global_allocator]
static ALLOC: bedside::alloc::Counting = bedside::alloc::Counting;

/// One test at a time: they read process-wide counters.
static ONE: Mutex<()> = Mutex::new(());

fn rss() -> u64 {
    bedside::plan::rss_bytes()
}

/// As the daemon does at start (`bedside::alloc::hold_memory`).
fn hold() -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE.lock().unwrap_or_else(|p| p.into_inner());
    bedside::alloc::hold_memory();
    guard
}

/// The test board (`common::write_board_with`) with input limits the tests exercise, and
/// `video` appended (further models and a `[video]` table).
fn profile(dir: &std::path::Path, video: &str) -> BoardProfile {
    let board = write_board_with(
        dir,
        "url = \"mqtt://127.0.0.1:1\"",
        &format!(
            "[memory]\nmax_image_rows = 2048\nmax_image_cols = 2048\nmax_frames = 300\nmax_file_mib = 32\n{video}"
        ),
    );
    BoardProfile::load(&board).unwrap()
}

#[test]
fn dicom_images_allocate_the_same_every_time_and_return_every_byte() {
    let _one = hold();
    let dir = tempfile::tempdir().unwrap();
    let profile = profile(dir.path(), "");
    let planned = bedside::plan::plan_for(&profile).unwrap();
    let identity = Identity::for_board(&profile).unwrap();
    let mut processor =
        Processor::from_engines(identity, planned.dicom).with_limits(profile.memory.image_limits());
    let files: Vec<_> = [
        "cxr-ptx-mono2.dcm",
        "cxr-ptx-mono1.dcm",
        "cxr-normal-mono2.dcm",
        "cxr-ptx-rescaled.dcm",
        "cxr-other-8bit.dcm",
    ]
    .iter()
    .map(|f| sample(f))
    .collect();
    let mut run = |f: &std::path::Path| {
        let (findings, n, bytes) =
            bedside::alloc::count(|| processor.process_file(f, SourceKind::File).unwrap());
        assert_eq!(findings.len(), 1);
        drop(findings);
        (n, bytes)
    };
    // Warm-up: every file twice (buffers grow to the largest image once).
    for f in files.iter().chain(&files) {
        run(f);
    }
    let mut per_file = vec![None; files.len()];
    let rss0 = rss();
    let mut rss_max = rss0;
    let live0 = bedside::alloc::live_bytes();
    bedside::alloc::reset_peak();
    for i in 0..500 {
        let k = i % files.len();
        let (n, bytes) = run(&files[k]);
        match per_file[k] {
            None => per_file[k] = Some((n, bytes)),
            Some(first) => assert_eq!(
                (n, bytes),
                first,
                "image {i} ({}) allocated differently from its first time",
                files[k].display()
            ),
        }
        // Every byte of the image is returned before the next one.
        let now = bedside::alloc::live_bytes();
        assert_eq!(
            now,
            live0,
            "heap grew by {} B after image {i}",
            now as i64 - live0 as i64
        );
        if i % 25 == 0 {
            rss_max = rss_max.max(rss());
        }
    }
    let peak = bedside::alloc::peak_bytes() as u64;
    eprintln!(
        "500 DICOM images: allocations per image {per_file:?}; heap {live0} B live, peak {peak} B, plan heap {} B; RSS {rss0} -> max {rss_max}",
        planned.plan.heap()
    );
    assert!(
        peak <= planned.plan.heap(),
        "heap peak {peak} B over the plan's {} B",
        planned.plan.heap()
    );
    assert!(
        rss_max - rss0 <= 1 << 20,
        "RSS grew by {} KiB",
        (rss_max - rss0) >> 10
    );

    // The largest image the profile accepts (2048 x 2048, 16 bits), JPEG lossless (the
    // libjpeg-turbo path, the hungriest): its peak stays under the plan too.
    let big = dir.path().join("big.dcm");
    let mut obj = dicom_object::open_file(sample("cxr-ptx-mono2.dcm")).unwrap();
    use dicom_dictionary_std::tags;
    let px: Vec<u8> = (0..2048u32 * 2048)
        .flat_map(|i| (((i % 2048) * 2 + (i / 2048)) as u16 & 0x0fff).to_le_bytes())
        .collect();
    for (tag, v) in [
        (tags::ROWS, 2048u16),
        (tags::COLUMNS, 2048),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 12),
        (tags::HIGH_BIT, 11),
    ] {
        obj.put(dicom_object::mem::InMemElement::new(
            tag,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(v),
        ));
    }
    obj.put(dicom_object::mem::InMemElement::new(
        tags::PIXEL_DATA,
        dicom_core::VR::OW,
        dicom_core::PrimitiveValue::from(px),
    ));
    obj.write_to_file(&big).unwrap();
    let jpeg = dir.path().join("big-jpeg-lossless.dcm");
    dcmtk("dcmcjpeg", &[std::path::Path::new("+e1"), &big, &jpeg]);
    for f in [&big, &jpeg] {
        run(f);
        let live = bedside::alloc::live_bytes();
        bedside::alloc::reset_peak();
        run(f);
        let peak = (bedside::alloc::peak_bytes() - live) as u64;
        eprintln!(
            "{}: peak heap over live {peak} B ({:.1} B/pixel); plan heap {} B",
            f.display(),
            peak as f64 / (2048.0 * 2048.0),
            planned.plan.heap()
        );
        assert!(bedside::alloc::peak_bytes() as u64 <= planned.plan.heap());
    }
}

#[test]
fn a_header_of_60000_by_60000_by_16_bits_is_refused_before_allocating() {
    let _one = hold();
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.dcm");
    let mut obj = dicom_object::open_file(sample("cxr-ptx-mono2.dcm")).unwrap();
    for (tag, v) in [
        (tags::ROWS, 60000u16),
        (tags::COLUMNS, 60000),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
    ] {
        obj.put(dicom_object::mem::InMemElement::new(
            tag,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(v),
        ));
    }
    obj.write_to_file(&huge).unwrap();
    let profile = profile(dir.path(), "");
    let identity = Identity::for_board(&profile).unwrap();
    let mut processor = Processor::new(identity, &[model_dir()])
        .unwrap()
        .with_limits(profile.memory.image_limits());
    let live = bedside::alloc::live_bytes();
    bedside::alloc::reset_peak();
    let err = processor.process_file(&huge, SourceKind::File).unwrap_err();
    let grew = bedside::alloc::peak_bytes() - live;
    let text = err.to_string();
    eprintln!(
        "{text}\npeak heap during the attempt: {grew} B (the file is {} B)",
        std::fs::metadata(&huge).unwrap().len()
    );
    assert!(
        text.contains("60000x60000") && text.contains("refused before decoding"),
        "{text}"
    );
    assert!(err.is_bad_input());
    // 60000 x 60000 x 2 B is 6.7 GiB; the attempt cost about the file itself.
    assert!(grew < 4 << 20, "{grew} B allocated for a refused header");
    // A file larger than memory.max_file_mib is refused before it is read.
    let big = dir.path().join("big.dcm");
    std::fs::write(&big, vec![0u8; 33 << 20]).unwrap();
    bedside::alloc::reset_peak();
    let live = bedside::alloc::live_bytes();
    let err = processor.process_file(&big, SourceKind::File).unwrap_err();
    assert!(err.to_string().contains("memory.max_file_mib"), "{err}");
    assert!(bedside::alloc::peak_bytes() - live < 1 << 20);
}

#[test]
fn ten_thousand_live_frames_allocate_a_constant_and_nothing_grows() {
    let _one = hold();
    use bedside::live::{FindingContext, Live};
    use bedside::source::camera::Camera;
    use bedside::source::replay::{Replay, ReplayConfig};
    let dir = tempfile::tempdir().unwrap();
    // A grey Y4M clip, 480x360, 48 frames of moving texture.
    let clip = dir.path().join("clip.y4m");
    {
        let (w, h) = (480usize, 360usize);
        let file = std::fs::File::create(&clip).unwrap();
        let mut enc = y4m::encode(w, h, y4m::Ratio::new(30, 1))
            .with_colorspace(y4m::Colorspace::Cmono)
            .write_header(file)
            .unwrap();
        for i in 0..48usize {
            let f: Vec<u8> = (0..w * h)
                .map(|p| (((p % w) * 3 + (p / w) * 5 + i * 11) % 220 + 16) as u8)
                .collect();
            enc.write_frame(&y4m::Frame::new([&f, &[], &[]], None))
                .unwrap();
        }
    }
    let us = repo().join("models/us-fast-fluid");
    let profile = profile(
        dir.path(),
        &format!(
            "[[models]]\npath = \"{}\"\nsources = [\"video\"]\n[video]\nsource = \"replay\"\ncrop = [40, 20, 400, 320]\nthreads = 1\npublish_interval_s = 1\n[video.replay]\npath = \"{}\"\nfps = 1000\nloop = true\n",
            us.display(),
            clip.display()
        ),
    );
    let planned = bedside::plan::plan_for(&profile).unwrap();
    let video = profile.video.clone().unwrap();
    let config = ReplayConfig {
        path: clip.clone(),
        fps: Some(1000.0),
        looping: true,
        crop: video.crop,
        pixel_spacing_mm: Some([0.3, 0.3]),
    };
    let findings = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = findings.clone();
    let live = Live::start(
        video.live_config(),
        Box::new(move || Ok(Box::new(Replay::open(config.clone())?) as Box<dyn Camera>)),
        planned.video,
        FindingContext {
            identity: Identity::for_board(&profile).unwrap(),
            source: SourceKind::Replay,
        },
        Box::new(move |f| {
            assert!(f.video.is_some());
            counted.fetch_add(1, Ordering::Relaxed);
        }),
        Box::new(|_| {}),
    );
    let stats = live.stats().clone();
    let processed = || stats.processed.load(Ordering::Relaxed);
    let wait_until = |n: u64, limit: Duration| {
        let until = Instant::now() + limit;
        while processed() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_until(200, Duration::from_secs(60));
    // After warm-up: reset the extremes and the heap peak, then 10,000 frames.
    stats.frame_allocations_max.store(0, Ordering::Relaxed);
    stats
        .frame_allocations_min
        .store(u64::MAX, Ordering::Relaxed);
    bedside::alloc::reset_peak();
    let start = processed();
    let rss0 = rss();
    let mut rss_samples = vec![rss0];
    // The live heap, sampled every 100 ms: a sample can land while a frame's temporaries
    // (tract's intermediate tensors) are alive, so growth is judged on the lowest samples
    // of the first and the last 10 s, which land between them.
    let mut heap_samples: Vec<(Instant, usize)> = Vec::with_capacity(8192);
    let until = Instant::now() + Duration::from_secs(600);
    while processed() < start + 10_000 && Instant::now() < until {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            heap_samples.push((Instant::now(), bedside::alloc::live_bytes()));
        }
        rss_samples.push(rss());
    }
    let done = processed() - start;
    let (min, max) = (
        stats.frame_allocations_min.load(Ordering::Relaxed),
        stats.frame_allocations_max.load(Ordering::Relaxed),
    );
    let bytes = stats.frame_allocated_bytes.load(Ordering::Relaxed);
    let (t_first, t_last) = (heap_samples[0].0, heap_samples[heap_samples.len() - 1].0);
    let lowest = |from: Instant, to: Instant| {
        heap_samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|s| s.1)
            .min()
            .unwrap()
    };
    let live0 = lowest(t_first, t_first + Duration::from_secs(10));
    let live1 = lowest(t_last - Duration::from_secs(10), t_last);
    let peak = bedside::alloc::peak_bytes() as u64;
    live.stop();
    let rss_max = *rss_samples.iter().max().unwrap();
    eprintln!(
        "{done} frames: {min}..={max} allocations per frame ({bytes} B, all returned), heap (lowest of the first and last 10 s) {live0} -> {live1} B, peak {peak} B (plan heap {}), RSS {rss0} -> max {rss_max} over {} samples, {} findings",
        planned.plan.heap(),
        rss_samples.len(),
        findings.load(Ordering::Relaxed)
    );
    assert!(done >= 10_000, "only {done} frames in 600 s");
    // The documented constant: tract's intermediate tensors for one run plus
    // fast_image_resize's coefficient tables, the same for every frame.
    assert_eq!(min, max, "allocations per frame vary: {min}..={max}");
    assert!(
        live1.abs_diff(live0) <= 256 << 10,
        "heap moved by {} B over 10,000 frames",
        live1 as i64 - live0 as i64
    );
    assert!(
        peak <= planned.plan.heap(),
        "heap peak {peak} over the plan's {}",
        planned.plan.heap()
    );
    assert!(
        rss_max - rss0 <= 2 << 20,
        "RSS grew by {} KiB",
        (rss_max - rss0) >> 10
    );
}

/// A budget 10% under the plan: `bedside run` stops at once, printing the plan and the line
/// at which it stops fitting.
#[test]
fn a_budget_ten_percent_too_small_stops_the_daemon_at_start() {
    // Its children's output is read into this process's heap and freed when the test ends:
    // run beside another test, that free showed up there as the heap shrinking by 6,863 B.
    let _one = hold();
    let dir = tempfile::tempdir().unwrap();
    // One image worker, set: without it the daemon would lower its default worker count to
    // fit the budget instead of refusing (tests/boards.rs tests that).
    let board = write_board_with(
        dir.path(),
        "url = \"mqtt://127.0.0.1:1\"",
        "[images]\nworkers = 1\n",
    );
    let text = bedside_ok(&["check".as_ref(), "--board".as_ref(), board.as_os_str()]);
    let total_mib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("total"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total in:\n{text}"));
    let budget = (total_mib * 0.9).floor() as u64;
    let tight = dir.path().join("tight.toml");
    std::fs::write(
        &tight,
        std::fs::read_to_string(&board).unwrap() + &format!("\n[memory]\nbudget_mib = {budget}\n"),
    )
    .unwrap();
    // Refused at start, so within 30 s; a daemon that took the budget would run on, and is
    // killed then.
    let out = output_within(
        bedside().args(["run", "--board"]).arg(&tight),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|| {
        panic!(
            "still running after 30 s with a budget of {budget} MiB for a plan of {total_mib} MiB"
        )
    });
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "ran with a budget of {budget} MiB for a plan of {total_mib} MiB"
    );
    assert!(
        err.contains(&format!("does not fit the budget of {budget} MiB")),
        "{err}"
    );
    assert!(
        err.contains("<-- over budget here") && err.contains("memory plan"),
        "{err}"
    );
    // The same plan fits a budget 10% over it.
    let roomy = dir.path().join("roomy.toml");
    let budget = (total_mib * 1.1).ceil() as u64;
    std::fs::write(
        &roomy,
        std::fs::read_to_string(&board).unwrap() + &format!("\n[memory]\nbudget_mib = {budget}\n"),
    )
    .unwrap();
    let out = bedside_ok(&["check".as_ref(), "--board".as_ref(), roomy.as_os_str()]);
    assert!(out.contains("fits"), "{out}");
}

/// Every shipped model's manifest states tract's working memory (`[memory]
/// tract_working_bytes`), and the figure is what bedside measures when it loads the model
/// (within 25 %: the kernels tract picks, hence its packing buffers, vary by CPU).
#[test]
fn every_manifest_states_the_working_memory_bedside_measures() {
    let _g = hold();
    let mut checked = 0;
    let mut off = vec![];
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("model.toml").exists() {
            continue;
        }
        let (engine, measured) = bedside::plan::load_measured(&dir).unwrap();
        let stated = engine
            .manifest()
            .memory
            .as_ref()
            .and_then(|m| m.tract_working_bytes)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no [memory] tract_working_bytes (measured {} B)",
                    dir.display(),
                    measured.working
                )
            });
        eprintln!(
            "{}: tract working memory measured {} B, manifest {stated} B; resident {} B",
            dir.display(),
            measured.working,
            measured.resident
        );
        let ratio = measured.working as f64 / stated as f64;
        if !(0.75..=1.25).contains(&ratio) {
            off.push(format!(
                "{}: measured {} B, the manifest says {stated} B",
                dir.display(),
                measured.working
            ));
        }
        checked += 1;
    }
    // Every model is measured before failing, so that one run gives every figure.
    assert!(off.is_empty(), "{}", off.join("\n"));
    assert!(checked >= 3, "only {checked} models");
}
