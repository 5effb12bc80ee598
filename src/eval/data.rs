//! A labelled evaluation folder, in the plain formats datasets ship in (docs/eval.md):
//!
//! - classification: `labels.csv` with the columns `file` and `label` — a label name, several
//!   separated by `;` for multi-label models, empty for "none of them";
//! - segmentation: `images/<name>.<ext>` beside `masks/<name>.png`, `.nii` or `.nii.gz`
//!   (0 background; for a one-label model any other value is the label, otherwise value k is
//!   the k-th label, counting from 1);
//! - detection: `annotations.json`, COCO style, categories matched to labels by name.
//!
//! Images are PNG (8-bit luma as the live path reads it), DICOM (decoded as a viewer shows it,
//! first frame) or NIfTI (first slice, voxel i across, j down).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::metrics::LabelledBox;
use crate::source::{Image, Photometric, Provenance};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {reason}")]
    Folder { path: PathBuf, reason: String },
}

fn folder_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Folder {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What the data says about one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    /// Per label: is it present?
    Classes(Vec<bool>),
    /// The mask file, read when the image is evaluated.
    Mask(PathBuf),
    /// The image's boxes (their `image` field is this item's index).
    Boxes(Vec<LabelledBox>),
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// As the data names it (relative to the folder): the report's key.
    pub name: String,
    pub path: PathBuf,
    pub truth: Truth,
}

/// Reads the folder for a model with `labels` and the model's `task`.
pub fn load(
    dir: &Path,
    task: crate::model::manifest::Task,
    labels: &[String],
) -> Result<Vec<Item>, DataError> {
    use crate::model::manifest::Task;
    let items = match task {
        Task::Classification => classes(dir, labels)?,
        Task::Segmentation => masks(dir)?,
        Task::Detection => coco(dir, labels)?,
    };
    if items.is_empty() {
        return Err(folder_err(dir, "no labelled images"));
    }
    Ok(items)
}

fn classes(dir: &Path, labels: &[String]) -> Result<Vec<Item>, DataError> {
    let path = dir.join("labels.csv");
    let mut reader = csv::Reader::from_path(&path).map_err(|e| folder_err(&path, e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| folder_err(&path, e.to_string()))?
        .clone();
    let column = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
    let (Some(file_col), Some(label_col)) = (column(&["file"]), column(&["label", "labels"]))
    else {
        return Err(folder_err(
            &path,
            format!("needs the columns `file` and `label`, has {headers:?}"),
        ));
    };
    let mut items = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| folder_err(&path, e.to_string()))?;
        let line = row + 2;
        let file = record.get(file_col).unwrap_or("").trim();
        if file.is_empty() {
            return Err(folder_err(&path, format!("line {line}: no file")));
        }
        let mut present = vec![false; labels.len()];
        for name in record.get(label_col).unwrap_or("").split(';') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let k = labels.iter().position(|l| l == name).ok_or_else(|| {
                folder_err(
                    &path,
                    format!("line {line}: `{name}` is not one of the model's labels {labels:?}"),
                )
            })?;
            present[k] = true;
        }
        items.push(Item {
            name: file.to_string(),
            path: dir.join(file),
            truth: Truth::Classes(present),
        });
    }
    Ok(items)
}

fn stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let name = name.strip_suffix(".gz").unwrap_or(name);
    Some(match name.rfind('.') {
        Some(dot) => name[..dot].to_string(),
        None => name.to_string(),
    })
}

fn masks(dir: &Path) -> Result<Vec<Item>, DataError> {
    let (images, masks) = (dir.join("images"), dir.join("masks"));
    let list = |d: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| folder_err(d, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Hidden files (.DS_Store, editors' backups) are not part of the data.
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let by_stem: HashMap<String, PathBuf> = list(&masks)?
        .into_iter()
        .filter_map(|p| Some((stem(&p)?, p)))
        .collect();
    let mut items = Vec::new();
    for image in list(&images)? {
        let Some(s) = stem(&image) else { continue };
        let name = format!(
            "images/{}",
            image.file_name().unwrap_or_default().to_string_lossy()
        );
        let mask = by_stem
            .get(&s)
            .cloned()
            // Kept, so that the report lists the image as not evaluated and why.
            .unwrap_or_else(|| masks.join(format!("{s}.png")));
        items.push(Item {
            name,
            path: image,
            truth: Truth::Mask(mask),
        });
    }
    Ok(items)
}

#[derive(Deserialize)]
struct Coco {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

fn coco(dir: &Path, labels: &[String]) -> Result<Vec<Item>, DataError> {
    let path = dir.join("annotations.json");
    let text = std::fs::read_to_string(&path).map_err(|e| folder_err(&path, e.to_string()))?;
    let coco: Coco = serde_json::from_str(&text).map_err(|e| folder_err(&path, e.to_string()))?;
    let mut category = HashMap::new();
    for c in &coco.categories {
        let k = labels.iter().position(|l| *l == c.name).ok_or_else(|| {
            folder_err(
                &path,
                format!(
                    "category `{}` is not one of the model's labels {labels:?}",
                    c.name
                ),
            )
        })?;
        category.insert(c.id, k);
    }
    let mut images: Vec<&CocoImage> = coco.images.iter().collect();
    // pycocotools evaluates images in the order of their ids.
    images.sort_by_key(|i| i.id);
    let index: HashMap<u64, usize> = images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.id, i))
        .collect();
    let mut boxes: Vec<Vec<LabelledBox>> = vec![Vec::new(); images.len()];
    for a in &coco.annotations {
        let (Some(&image), Some(&label)) = (index.get(&a.image_id), category.get(&a.category_id))
        else {
            return Err(folder_err(
                &path,
                format!(
                    "an annotation names image {} or category {} that is not listed",
                    a.image_id, a.category_id
                ),
            ));
        };
        if a.iscrowd != 0 {
            return Err(folder_err(&path, "crowd annotations are not supported"));
        }
        let [x, y, w, h] = a.bbox;
        boxes[image].push(LabelledBox {
            image,
            label,
            bbox: [x, y, x + w, y + h],
        });
    }
    Ok(images
        .iter()
        .zip(boxes)
        .map(|(im, b)| Item {
            name: im.file_name.clone(),
            path: dir.join(&im.file_name),
            truth: Truth::Boxes(b),
        })
        .collect())
}

/// A 2-D array of values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

fn lower_ext(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii.gz") {
        return "nii".into();
    }
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Reads a PNG as 8-bit values: grey as stored (16-bit: the high byte), colour as BT.601 luma.
pub fn read_png(path: &Path) -> Result<Plane, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader.output_buffer_size().ok_or("too large")?;
    let mut raw = vec![0; size];
    let info = reader.next_frame(&mut raw).map_err(|e| e.to_string())?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let mut values = Vec::with_capacity(w * h);
    for r in 0..h {
        let row = &raw[r * info.line_size..r * info.line_size + w * channels];
        values.extend(row.chunks_exact(channels).map(|px| match channels {
            1 | 2 => px[0] as f32,
            _ => (0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32).round(),
        }));
    }
    Ok(Plane {
        rows: h,
        cols: w,
        values,
    })
}

/// Reads the first slice of a NIfTI-1 file: voxel (i, j) is column i, row j.
pub fn read_nifti(path: &Path) -> Result<Plane, String> {
    use nifti::{NiftiObject, NiftiVolume, RandomAccessNiftiVolume, ReaderOptions};
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| e.to_string())?;
    let volume = obj.volume();
    let dim = volume.dim();
    if dim.len() < 2 || dim[2..].contains(&0) {
        return Err(format!(
            "a {}-D volume of {dim:?} is not an image",
            dim.len()
        ));
    }
    let (cols, rows) = (dim[0] as usize, dim[1] as usize);
    let mut coords = vec![0u16; dim.len()];
    let mut values = Vec::with_capacity(rows * cols);
    for j in 0..rows {
        for i in 0..cols {
            coords[0] = i as u16;
            coords[1] = j as u16;
            values.push(volume.get_f32(&coords).map_err(|e| e.to_string())?);
        }
    }
    Ok(Plane { rows, cols, values })
}

/// A mask file as a plane of label values.
pub fn read_mask(path: &Path) -> Result<Plane, String> {
    match lower_ext(path).as_str() {
        "png" => read_png(path),
        "nii" => read_nifti(path),
        other => Err(format!("masks are PNG or NIfTI, not `.{other}`")),
    }
}

/// An input image, in the form the preparer takes.
pub enum Input {
    /// 8-bit luma, prepared as a video frame is.
    Luma {
        width: u32,
        height: u32,
        values: Vec<u8>,
    },
    /// Modality values with the viewer's rendering (DICOM, NIfTI).
    Image(Box<Image>),
}

impl Input {
    /// The model's input tensor for this image, through the daemon's own preparation: a
    /// PNG as a video frame, DICOM and NIfTI as an image with its rendering.
    pub fn prepare<'a>(
        &self,
        preparer: &'a mut crate::prepare::Preparer,
    ) -> Result<&'a [f32], crate::prepare::PrepareError> {
        match self {
            Input::Luma {
                width,
                height,
                values,
            } => preparer.prepare_luma(values, *width, *height),
            Input::Image(image) => preparer.prepare(image),
        }
    }

    pub fn size(&self) -> (usize, usize) {
        match self {
            Input::Luma { width, height, .. } => (*height as usize, *width as usize),
            Input::Image(i) => (i.rows as usize, i.cols as usize),
        }
    }
}

/// Reads an image by its extension: PNG, NIfTI, anything else as DICOM.
pub fn read_image(path: &Path) -> Result<Input, String> {
    match lower_ext(path).as_str() {
        "png" => {
            let p = read_png(path)?;
            Ok(Input::Luma {
                width: p.cols as u32,
                height: p.rows as u32,
                values: p.values.iter().map(|&v| v as u8).collect(),
            })
        }
        "nii" => {
            let p = read_nifti(path)?;
            // No VOI in a NIfTI file: the preparer's "dicom" window falls back to the
            // image's own min..max, a fixed window applies as for DICOM.
            Ok(Input::Image(Box::new(Image {
                rows: p.rows as u32,
                cols: p.cols as u32,
                pixels: crate::source::Pixels::Values(p.values),
                photometric: Photometric::Monochrome2,
                voi: None,
                frame: 0,
                pixel_spacing_mm: None,
                provenance: Provenance {
                    modality: None,
                    sop_instance_uid: None,
                    frames: 1,
                },
            })))
        }
        _ => crate::dicom::decode::read_file(path)
            .map(|i| Input::Image(Box::new(i)))
            .map_err(|e| e.to_string()),
    }
}
