//! `bedside prepare`: the model's input tensors for a set of images, made by the daemon's
//! own preparation, so that Python (calibration, reference runs in onnxruntime) feeds a
//! model exactly what bedside will — no second implementation of windowing and resizing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bedside::eval::data::read_image;
use bedside::model::Manifest;
use bedside::prepare::Preparer;

/// Exit status when some images could not be prepared (the others were).
const EXIT_SOME_FAILED: u8 = 2;

/// Files an image folder may hold beside its images, which are not images.
fn is_image(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    !(name.starts_with('.')
        || [".csv", ".json", ".txt", ".md", ".f32"]
            .iter()
            .any(|e| name.ends_with(e)))
}

/// The images named, folders walked recursively in sorted order; each with the name its
/// tensor gets (its path below the folder given, `/` → `__`).
fn collect(inputs: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, base, out)?;
            } else if is_image(&p) {
                let rel = p.strip_prefix(base).unwrap_or(&p);
                let name = rel.to_string_lossy().replace(['/', '\\'], "__");
                out.push((p, name));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, input, &mut out)?;
        } else {
            let name = input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((input.clone(), name));
        }
    }
    Ok(out)
}

/// Writes `<out>/<name>.f32` (the NCHW tensor, little-endian f32) per image and
/// `<out>/index.json` listing each image's tensor, or why it has none.
pub fn prepare(model: &Path, out: &Path, inputs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(model)?;
    let (h, w) = manifest.input_hw();
    let mut preparer = Preparer::new(manifest.preprocess.clone(), h, w);
    std::fs::create_dir_all(out)?;
    let mut index = Vec::new();
    let mut failed = 0;
    for (path, name) in collect(inputs)? {
        let tensor = read_image(&path).and_then(|input| {
            input
                .prepare(&mut preparer)
                .map(|t| t.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
                .map_err(|e| e.to_string())
        });
        match tensor {
            Ok(bytes) => {
                let file = format!("{name}.f32");
                std::fs::write(out.join(&file), bytes)?;
                index.push(serde_json::json!({
                    "image": path.display().to_string(),
                    "tensor": file,
                    "shape": manifest.input.shape,
                }));
            }
            Err(reason) => {
                eprintln!("bedside: {}: {reason}", path.display());
                failed += 1;
                index.push(serde_json::json!({
                    "image": path.display().to_string(),
                    "error": reason,
                }));
            }
        }
    }
    let doc = serde_json::json!({
        "model": { "id": manifest.model.id, "version": manifest.model.version },
        "input": manifest.input.name,
        "tensors": index,
    });
    std::fs::write(
        out.join("index.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    println!(
        "{} tensors of shape {:?} in {} ({failed} images could not be prepared)",
        index.len() - failed,
        manifest.input.shape,
        out.display()
    );
    Ok(if failed > 0 {
        ExitCode::from(EXIT_SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
