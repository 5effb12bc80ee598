//! What `bedside eval` leaves behind in its output folder: `report.md` for a reader,
//! `per_image.csv` for a spreadsheet, `summary.json` for a script (the model tool and the
//! tests read it), and the plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Detail, EvalError, Run, Summary};

/// A figure, or "n/a" where it is undefined (a zero denominator).
fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

/// A rate with its 95 % interval: "0.875 [0.640, 0.965]".
fn rate(v: Option<f64>, ci: Option<[f64; 2]>) -> String {
    match (v, ci) {
        (Some(v), Some([lo, hi])) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
        _ => f(v),
    }
}

fn report_err(path: &Path, reason: impl ToString) -> EvalError {
    EvalError::Report {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes every output for `runs` (the model first, then what it is compared with) into
/// `out`, created if needed. Returns the files written.
pub fn write(out: &Path, data: &Path, runs: &[Run]) -> Result<Vec<PathBuf>, EvalError> {
    std::fs::create_dir_all(out).map_err(|e| report_err(out, e))?;
    let summaries: Vec<Summary> = runs.iter().map(Run::summary).collect();
    let mut written = Vec::new();

    let path = out.join("summary.json");
    let json = serde_json::json!({
        "data": data.display().to_string(),
        "runs": summaries,
    });
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).expect("plain data") + "\n",
    )
    .map_err(|e| report_err(&path, e))?;
    written.push(path);

    let path = out.join("per_image.csv");
    write_csv(&path, runs).map_err(|e| report_err(&path, e))?;
    written.push(path);

    let mut plots = vec![("roc.png", "Image-level ROC curves")];
    plots.push(("scores.png", "Image-level scores by truth"));
    super::plot::roc(&out.join("roc.png"), runs)
        .map_err(|e| report_err(&out.join("roc.png"), e))?;
    super::plot::scores(&out.join("scores.png"), &runs[0])
        .map_err(|e| report_err(&out.join("scores.png"), e))?;
    if runs[0].task == crate::model::manifest::Task::Segmentation {
        super::plot::dice(&out.join("dice.png"), runs)
            .map_err(|e| report_err(&out.join("dice.png"), e))?;
        plots.push(("dice.png", "Dice per image"));
    }
    written.extend(plots.iter().map(|(p, _)| out.join(p)));

    let path = out.join("report.md");
    std::fs::write(&path, markdown(data, runs, &summaries, &plots))
        .map_err(|e| report_err(&path, e))?;
    written.push(path);
    Ok(written)
}

fn write_csv(path: &Path, runs: &[Run]) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_path(path)?;
    let labels = &runs[0].labels;
    let mut header = vec![
        "image".to_string(),
        "model_file".into(),
        "prepare_ms".into(),
        "infer_ms".into(),
    ];
    for l in labels {
        match runs[0].task {
            crate::model::manifest::Task::Classification => {
                header.extend([format!("truth_{l}"), format!("score_{l}")])
            }
            crate::model::manifest::Task::Segmentation => header.extend([
                format!("truth_pixels_{l}"),
                format!("predicted_pixels_{l}"),
                format!("dice_{l}"),
                format!("iou_{l}"),
                format!("hd95_px_{l}"),
                format!("fraction_{l}"),
                format!("called_{l}"),
            ]),
            crate::model::manifest::Task::Detection => header.extend([
                format!("truth_boxes_{l}"),
                format!("boxes_over_threshold_{l}"),
                format!("best_score_{l}"),
            ]),
        }
    }
    header.push("error".into());
    w.write_record(&header)?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for run in runs {
        for r in &run.images {
            let mut row = vec![
                r.name.clone(),
                run.file.clone(),
                format!("{:.3}", r.prepare_ms),
                format!("{:.3}", r.infer_ms),
            ];
            for k in 0..labels.len() {
                match &r.detail {
                    Detail::Classification { truth, scores } => {
                        row.extend([(truth[k] as u8).to_string(), format!("{:.6}", scores[k])])
                    }
                    Detail::Segmentation {
                        overlaps,
                        hd95,
                        fractions,
                        called,
                    } => row.extend([
                        overlaps[k].truth.to_string(),
                        overlaps[k].predicted.to_string(),
                        opt(overlaps[k].dice()),
                        opt(overlaps[k].iou()),
                        opt(hd95[k]),
                        format!("{:.6}", fractions[k]),
                        (called[k] as u8).to_string(),
                    ]),
                    Detail::Detection { truth, boxes } => {
                        let of = boxes.iter().filter(|b| b.b.label == k);
                        row.extend([
                            truth.iter().filter(|b| b.label == k).count().to_string(),
                            of.clone()
                                .filter(|b| b.score >= run.thresholds[k])
                                .count()
                                .to_string(),
                            format!("{:.6}", of.map(|b| b.score).fold(0.0, f64::max)),
                        ])
                    }
                }
            }
            row.push(String::new());
            w.write_record(&row)?;
        }
        // The images that could not be evaluated stay in the table, with the reason.
        for (name, reason) in &run.skipped {
            let mut row = vec![name.clone(), run.file.clone()];
            row.resize(header.len() - 1, String::new());
            row.push(reason.clone());
            w.write_record(&row)?;
        }
    }
    w.flush()?;
    Ok(())
}

fn markdown(data: &Path, runs: &[Run], sums: &[Summary], plots: &[(&str, &str)]) -> String {
    let mut s = String::new();
    let m = &sums[0].model;
    let _ = writeln!(
        s,
        "# Evaluation of {} {} on `{}`\n",
        m.id,
        m.version,
        data.display()
    );
    let _ = writeln!(
        s,
        "Measured by `bedside eval` {} with the runtime that serves (same preparation, tract plan, \
         int8 kernels and decoding as the daemon). The model gives decision support, not a \
         diagnosis; these figures hold for this data only.\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        s,
        "| | {} |",
        sums.iter()
            .map(|x| format!("`{}`", x.file))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|---|{}", "---|".repeat(sums.len()));
    let row = |s: &mut String, name: &str, cell: &dyn Fn(&Summary) -> String| {
        let _ = writeln!(
            s,
            "| {name} | {} |",
            sums.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    };
    row(&mut s, "model", &|x| {
        format!("{} {}", x.model.id, x.model.version)
    });
    row(&mut s, "sha256", &|x| format!("`{}`", x.model.sha256));
    row(&mut s, "images evaluated", &|x| x.images.to_string());
    row(&mut s, "images not evaluated", &|x| x.skipped.to_string());
    row(&mut s, &format!("**{}**", sums[0].primary_metric), &|x| {
        format!("**{}**", f(x.primary))
    });
    if sums[0].confusion.is_some() {
        row(&mut s, "accuracy (argmax)", &|x| f(x.accuracy));
        row(&mut s, "balanced accuracy", &|x| f(x.balanced_accuracy));
    }
    if sums[0].task == "segmentation" {
        row(&mut s, "mean IoU", &|x| f(x.mean_iou));
    }
    if sums[0].task == "detection" {
        row(&mut s, "mAP@0.5:0.95", &|x| f(x.map50_95));
    }
    row(&mut s, "median prepare (ms)", &|x| {
        format!("{:.2}", x.timing.median_prepare_ms)
    });
    row(&mut s, "median inference (ms)", &|x| {
        format!("{:.2}", x.timing.median_infer_ms)
    });
    row(&mut s, "p95 / max inference (ms)", &|x| {
        format!(
            "{:.2} / {:.2}",
            x.timing.p95_infer_ms, x.timing.max_infer_ms
        )
    });
    if sums.len() > 1 {
        let d = match (sums[0].primary, sums[1].primary) {
            (Some(a), Some(b)) => format!("{:+.3}", a - b),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "\n{} of `{}` minus `{}`: **{d}**.",
            sums[0].primary_metric, sums[0].file, sums[1].file
        );
    }
    for x in sums {
        let _ = writeln!(s, "\n## Per label: `{}`\n", x.file);
        let seg = x.task == "segmentation";
        let det = x.task == "detection";
        let call = if seg {
            "region ≥ min_fraction"
        } else if det {
            "a box ≥ threshold"
        } else {
            "probability ≥ threshold"
        };
        let _ = writeln!(
            s,
            "Image-level calls ({call}), sensitivity and specificity with their 95 % Wilson intervals; AUC and Youden's threshold over the image-level score{}.\n",
            if seg {
                " (the region's fraction); Dice and IoU per image at the mask's resolution, \
                 averaged where defined (images with neither truth nor prediction are counted \
                 as both empty and left out)"
            } else if det {
                " (the best box's score); AP as COCO (pycocotools), boxes down to score 0.001"
            } else {
                ""
            }
        );
        let mut head = "| label | threshold | with / without | TP FP TN FN | sensitivity | specificity | PPV | NPV | F1 | AUC | Youden threshold (sens / spec) |".to_string();
        if seg {
            head += " mean Dice | mean IoU | mean HD95 (px) | both empty |";
        }
        if det {
            head += " AP@0.5 | AP@0.5:0.95 |";
        }
        let _ = writeln!(s, "{head}");
        let _ = writeln!(s, "|{}", "---|".repeat(head.matches('|').count() - 1));
        for l in &x.labels {
            let _ = write!(
                s,
                "| {} | {} | {} / {} | {} {} {} {} | {} | {} | {} | {} | {} | {} | {} ({} / {}) |",
                l.label,
                l.threshold,
                l.positives,
                l.negatives,
                l.tp,
                l.fp,
                l.tn,
                l.fn_,
                rate(l.sensitivity, l.sensitivity_ci),
                rate(l.specificity, l.specificity_ci),
                f(l.ppv),
                f(l.npv),
                f(l.f1),
                f(l.auc),
                f(l.youden_threshold),
                f(l.youden_sensitivity),
                f(l.youden_specificity),
            );
            if seg {
                let _ = write!(
                    s,
                    " {} | {} | {} | {} |",
                    f(l.mean_dice),
                    f(l.mean_iou),
                    f(l.mean_hd95),
                    l.both_empty.unwrap_or(0)
                );
            }
            if det {
                let _ = write!(s, " {} | {} |", f(l.ap50), f(l.ap50_95));
            }
            s.push('\n');
        }
        if let Some(c) = &x.confusion {
            let _ = writeln!(
                s,
                "\nConfusion matrix (rows: truth, columns: argmax of the model):\n"
            );
            let _ = writeln!(s, "| truth \\ predicted | {} |", runs[0].labels.join(" | "));
            let _ = writeln!(s, "|---|{}", "---|".repeat(c.len()));
            for (k, r) in c.iter().enumerate() {
                let cells: Vec<String> = r.iter().map(usize::to_string).collect();
                let _ = writeln!(s, "| {} | {} |", runs[0].labels[k], cells.join(" | "));
            }
        }
    }
    let skipped: Vec<&(String, String)> = runs[0].skipped.iter().collect();
    if !skipped.is_empty() {
        let _ = writeln!(s, "\n## Not evaluated\n");
        for (name, reason) in skipped {
            let _ = writeln!(s, "- `{name}`: {reason}");
        }
    }
    let _ = writeln!(s, "\n## Plots\n");
    for (file, title) in plots {
        let _ = writeln!(s, "![{title}]({file})\n");
    }
    let _ = writeln!(
        s,
        "Per-image results: `per_image.csv`; every figure above: `summary.json`."
    );
    s
}
