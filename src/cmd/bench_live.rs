//! `bedside bench-live`: the live pipeline on a replayed recording against the bare model.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use bedside::finding::UidHasher;
use bedside::infer::Engine;
use bedside::pipeline::Identity;
use bedside::prepare::Preparer;
use bedside::source::SourceKind;

pub fn bench_live(
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
        bedside::task::LabelValues::new(),
        bedside::task::LabelValues::new(),
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
        bedside::task::score_into(
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
