//! `bedside eval`: the binary's edge over [`bedside::eval`] — choosing what to compare,
//! showing progress, and turning a drop beyond the allowed margin into an exit status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bedside::eval::{self, Run};
use bedside::infer::Variant;

/// Exit status when the model falls more than `--max-drop` below what it is compared with.
const EXIT_DROP: u8 = 3;

pub struct EvalArgs {
    pub model: PathBuf,
    pub variant: Variant,
    pub data: PathBuf,
    pub compare: Option<String>,
    pub out: PathBuf,
    pub max_drop: Option<f64>,
}

/// `parent` / `pruned`: that form of the same folder; anything else: another model folder's
/// shipped model.
fn compared(model: &Path, compare: &str) -> (PathBuf, Variant) {
    match compare {
        "parent" => (model.to_path_buf(), Variant::Parent),
        "pruned" => (model.to_path_buf(), Variant::Pruned),
        "shipped" => (model.to_path_buf(), Variant::Shipped),
        dir => (PathBuf::from(dir), Variant::Shipped),
    }
}

fn one(dir: &Path, variant: Variant, data: &Path) -> anyhow::Result<Run> {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} images, {eta} left",
            )
            .expect("a fixed template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("eval {}", dir.display()));
        bar
    });
    let mut last_line = 0;
    let run = eval::run(dir, variant, data, |done, total| match &bar {
        Some(bar) => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        // Piped: a plain line at every tenth of the way.
        None => {
            if done == total || done * 10 / total.max(1) > last_line {
                last_line = done * 10 / total.max(1);
                eprintln!("eval {}: {done}/{total} images", dir.display());
            }
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(run)
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut runs = vec![one(&args.model, args.variant, &args.data)?];
    if let Some(c) = &args.compare {
        let (dir, variant) = compared(&args.model, c);
        // Side by side only makes sense label by label: checked before anything runs.
        let other = bedside::model::Manifest::load(&dir)?;
        let labels: Vec<String> = other.labels.iter().map(|l| l.name.clone()).collect();
        if other.model.task != runs[0].task || labels != runs[0].labels {
            anyhow::bail!(
                "{} ({:?}, labels {:?}) cannot be compared with {} ({:?}, labels {:?})",
                dir.display(),
                other.model.task,
                labels,
                args.model.display(),
                runs[0].task,
                runs[0].labels
            );
        }
        let other = one(&dir, variant, &args.data)?;
        runs.push(other);
    }
    let files = eval::report::write(&args.out, &args.data, &runs)?;
    let summaries: Vec<eval::Summary> = runs.iter().map(Run::summary).collect();
    for s in &summaries {
        println!(
            "{} {} `{}`: {} = {}, {} images ({} not evaluated), median inference {:.2} ms",
            s.model.id,
            s.model.version,
            s.file,
            s.primary_metric,
            s.primary.map_or("n/a".into(), |v| format!("{v:.4}")),
            s.images,
            s.skipped,
            s.timing.median_infer_ms
        );
    }
    println!("report: {}", files.last().expect("report.md").display());
    if let (Some(margin), [model, other]) = (args.max_drop, summaries.as_slice()) {
        let (Some(a), Some(b)) = (model.primary, other.primary) else {
            eprintln!(
                "bedside: {} is undefined on this data; cannot judge the drop",
                model.primary_metric
            );
            return Ok(ExitCode::from(EXIT_DROP));
        };
        if b - a > margin {
            eprintln!(
                "bedside: `{}` is {:.4} below `{}` in {} (allowed: {margin})",
                model.file,
                b - a,
                other.file,
                model.primary_metric
            );
            return Ok(ExitCode::from(EXIT_DROP));
        }
    }
    Ok(ExitCode::SUCCESS)
}
