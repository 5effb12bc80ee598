//! A recording that behaves like a camera: frames come at the recording's (or the
//! configured) rate with real timestamps, whatever the pipeline does with them, so that
//! demos, tests and benchmarks exercise the same live path as a V4L2 device.
//!
//! Recordings: a DICOM multi-frame object (an ultrasound cine), a Y4M clip (8-bit; its luma
//! plane), or a folder of PNG frames played in name order.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use dicom_object::DefaultDicomObject;

use super::camera::{Camera, CameraError, Captured};
use super::convert::{Converter, Layout, PixelFormat, Range, Rect};
use super::{Image, Photometric};
use crate::dicom;
use crate::model::manifest::{NamedWindow, WindowChoice};

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub path: PathBuf,
    /// Frames per second; `None`: the recording's own rate (DICOM Frame Time / Cine Rate, Y4M
    /// header), else 30.
    pub fps: Option<f64>,
    /// Start again from the first frame at the end.
    pub looping: bool,
    /// The region of each frame to hand on; `None`: the whole frame.
    pub crop: Option<Rect>,
    /// Overrides the recording's pixel spacing.
    pub pixel_spacing_mm: Option<[f64; 2]>,
}

enum Reader {
    Dicom {
        obj: Box<DefaultDicomObject>,
        frames: u32,
        next: u32,
    },
    Y4m {
        decoder: Box<y4m::Decoder<BufReader<File>>>,
    },
    Png {
        files: Vec<PathBuf>,
        next: usize,
        raw: Vec<u8>,
    },
}

/// The replay camera.
pub struct Replay {
    config: ReplayConfig,
    name: String,
    reader: Reader,
    width: u32,
    height: u32,
    /// The whole decoded frame, before cropping.
    full: Vec<u8>,
    converter: Converter,
    period: Duration,
    next_due: Option<Instant>,
    seq: u64,
    spacing: Option<[f64; 2]>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Replay {
    pub fn open(config: ReplayConfig) -> Result<Self, CameraError> {
        let name = config.path.display().to_string();
        let gone = |reason: String| CameraError::Gone {
            device: name.clone(),
            reason,
        };
        let (reader, width, height, own_fps, spacing, range) = if config.path.is_dir() {
            open_png_dir(&config.path).map_err(gone)?
        } else if has_ext(&config.path, "y4m") {
            open_y4m(&config.path).map_err(gone)?
        } else {
            open_dicom(&config.path).map_err(gone)?
        };
        let crop = config.crop.unwrap_or(Rect::full(width, height));
        let layout = Layout {
            format: PixelFormat::Grey,
            width,
            height,
            stride: width as usize,
            range,
        };
        let converter = Converter::new(layout, crop).map_err(|e| CameraError::Config {
            device: name.clone(),
            reason: e.to_string(),
        })?;
        let fps = config.fps.or(own_fps).unwrap_or(30.0);
        if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
            return Err(CameraError::Config {
                device: name,
                reason: format!("frame rate {fps} is not in (0, 1000]"),
            });
        }
        let spacing = config.pixel_spacing_mm.or(spacing);
        Ok(Replay {
            name,
            reader,
            width,
            height,
            full: vec![0; width as usize * height as usize],
            converter,
            period: Duration::from_secs_f64(1.0 / fps),
            next_due: None,
            seq: 0,
            spacing,
            config,
        })
    }

    /// Frames per second it plays at.
    pub fn fps(&self) -> f64 {
        1.0 / self.period.as_secs_f64()
    }

    /// Decodes the next frame of the recording into `self.full`; `Ok(false)` at the end.
    fn read_next(&mut self) -> Result<bool, String> {
        match &mut self.reader {
            Reader::Dicom { obj, frames, next } => {
                if *next >= *frames {
                    return Ok(false);
                }
                let image = dicom::decode::decode_frame(obj, *next).map_err(|e| e.to_string())?;
                *next += 1;
                if image.rows != self.height || image.cols != self.width {
                    return Err(format!(
                        "frame is {}x{}, the first was {}x{}",
                        image.cols, image.rows, self.width, self.height
                    ));
                }
                image_to_luma(&image, &mut self.full);
                Ok(true)
            }
            Reader::Y4m { decoder } => match decoder.read_frame() {
                Ok(frame) => {
                    let y = frame.get_y_plane();
                    let n = self.full.len();
                    if y.len() < n {
                        return Err(format!("luma plane of {} bytes, {n} expected", y.len()));
                    }
                    self.full.copy_from_slice(&y[..n]);
                    Ok(true)
                }
                Err(y4m::Error::EOF) => Ok(false),
                Err(e) => Err(format!("Y4M: {e:?}")),
            },
            Reader::Png { files, next, raw } => {
                let Some(path) = files.get(*next) else {
                    return Ok(false);
                };
                *next += 1;
                read_png(path, raw, &mut self.full, self.width, self.height)?;
                Ok(true)
            }
        }
    }

    fn bad(&self, reason: String) -> CameraError {
        CameraError::BadFrame {
            device: self.name.clone(),
            reason,
        }
    }

    fn rewind(&mut self) -> Result<(), String> {
        match &mut self.reader {
            Reader::Dicom { next, .. } => *next = 0,
            Reader::Png { next, .. } => *next = 0,
            Reader::Y4m { decoder } => {
                let file = File::open(&self.config.path).map_err(|e| e.to_string())?;
                **decoder = y4m::decode(BufReader::new(file)).map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok(())
    }
}

impl Camera for Replay {
    fn describe(&self) -> String {
        let c = self.converter.crop();
        format!(
            "replay {} ({}x{}, crop {}x{}+{}+{}, {:.1} fps{})",
            self.name,
            self.width,
            self.height,
            c.width,
            c.height,
            c.x,
            c.y,
            self.fps(),
            if self.config.looping { ", looping" } else { "" }
        )
    }

    fn frame_size(&self) -> (u32, u32) {
        let c = self.converter.crop();
        (c.width, c.height)
    }

    fn pixel_spacing_mm(&self) -> Option<[f64; 2]> {
        self.spacing
    }

    fn capture(&mut self, out: &mut [u8]) -> Result<Captured, CameraError> {
        // Decode first, then wait for the frame's moment: like a camera, the frame is there
        // when its time comes, however long decoding took.
        let read = self.read_next();
        let mut have = read.map_err(|r| self.bad(r))?;
        if !have && self.config.looping {
            let read = self.rewind().and_then(|()| self.read_next());
            have = read.map_err(|r| self.bad(r))?;
        }
        if !have {
            return Err(CameraError::Ended {
                device: self.name.clone(),
            });
        }
        let now = Instant::now();
        let due = match self.next_due {
            // A camera does not deliver a backlog: when the reader fell behind by more than
            // a frame, the schedule starts again from now.
            Some(due) if due + self.period >= now => due,
            _ => now,
        };
        if due > now {
            std::thread::sleep(due - now);
        }
        self.next_due = Some(due + self.period);
        // The frame "arrives" now, as a capture card's buffer would: cropping it is the
        // pipeline's work and counts in its latency.
        let (at, wall) = (Instant::now(), SystemTime::now());
        let converted = self.converter.to_luma(&self.full, out);
        converted.map_err(|e| self.bad(e.to_string()))?;
        let seq = self.seq;
        self.seq += 1;
        Ok(Captured { seq, at, wall })
    }
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

type Opened = (Reader, u32, u32, Option<f64>, Option<[f64; 2]>, Range);

fn open_dicom(path: &Path) -> Result<Opened, String> {
    let obj = dicom::decode::open_file(path).map_err(|e| e.to_string())?;
    let frames = dicom::decode::frame_count(&obj);
    let first = dicom::decode::decode_frame(&obj, 0).map_err(|e| e.to_string())?;
    let float = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_float64().ok())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    use dicom_dictionary_std::tags;
    let fps = float(tags::FRAME_TIME)
        .map(|ms| 1000.0 / ms)
        .or_else(|| float(tags::CINE_RATE));
    Ok((
        Reader::Dicom {
            obj: Box::new(obj),
            frames,
            next: 0,
        },
        first.cols,
        first.rows,
        fps,
        first.pixel_spacing_mm,
        Range::Full,
    ))
}

fn open_y4m(path: &Path) -> Result<Opened, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let decoder = y4m::decode(BufReader::new(file)).map_err(|e| format!("Y4M header: {e:?}"))?;
    if decoder.get_bit_depth() != 8 {
        return Err(format!(
            "Y4M of {} bits: only 8-bit clips are replayed",
            decoder.get_bit_depth()
        ));
    }
    let rate = decoder.get_framerate();
    let fps = (rate.den > 0).then(|| rate.num as f64 / rate.den as f64);
    // Y4M says its range in an extension (ffmpeg: XCOLORRANGE=FULL); without it, video range.
    let params = String::from_utf8_lossy(decoder.get_raw_params()).into_owned();
    let range = if params.contains("XCOLORRANGE=FULL") {
        Range::Full
    } else {
        Range::Limited
    };
    let (w, h) = (decoder.get_width() as u32, decoder.get_height() as u32);
    Ok((
        Reader::Y4m {
            decoder: Box::new(decoder),
        },
        w,
        h,
        fps,
        None,
        range,
    ))
}

fn open_png_dir(dir: &Path) -> Result<Opened, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| has_ext(p, "png"))
        .collect();
    files.sort();
    let first = files.first().ok_or("no .png files in the folder")?;
    let decoder = png::Decoder::new(BufReader::new(
        File::open(first).map_err(|e| e.to_string())?,
    ));
    let reader = decoder
        .read_info()
        .map_err(|e| format!("{}: {e}", first.display()))?;
    let (w, h) = (reader.info().width, reader.info().height);
    Ok((
        Reader::Png {
            files,
            next: 0,
            raw: Vec::new(),
        },
        w,
        h,
        None,
        None,
        Range::Full,
    ))
}

/// Reads one PNG as 8-bit luma (colour: BT.601 luma; 16-bit: high byte) into `out`.
fn read_png(path: &Path, raw: &mut Vec<u8>, out: &mut [u8], w: u32, h: u32) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| format!("{}: too large", path.display()))?;
    raw.resize(size, 0);
    let info = reader
        .next_frame(raw)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if (info.width, info.height) != (w, h) {
        return Err(format!(
            "{} is {}x{}, the first frame was {w}x{h}",
            path.display(),
            info.width,
            info.height
        ));
    }
    let channels = info.color_type.samples();
    let line = info.line_size;
    for (r, row) in out.chunks_exact_mut(w as usize).enumerate() {
        let src = &raw[r * line..r * line + w as usize * channels];
        for (o, px) in row.iter_mut().zip(src.chunks_exact(channels)) {
            *o = match channels {
                1 | 2 => px[0],
                _ => luma601(px[0], px[1], px[2]),
            };
        }
    }
    Ok(())
}

fn luma601(r: u8, g: u8, b: u8) -> u8 {
    (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32)
        .round()
        .clamp(0.0, 255.0) as u8
}

/// A decoded DICOM frame as 8-bit luma the way a viewer shows it: 8-bit grey without a VOI
/// transformation as stored, anything else through its window (or full range).
fn image_to_luma(image: &Image, out: &mut [u8]) {
    let plain = image.voi.is_none()
        && image
            .pixels
            .values()
            .all(|v| v.is_nan() || (0.0..=255.0).contains(&v));
    if plain {
        for (o, v) in out.iter_mut().zip(image.pixels.values()) {
            let v = if v.is_nan() { 0.0 } else { v };
            let v = if image.photometric == Photometric::Monochrome1 {
                255.0 - v
            } else {
                v
            };
            *o = v.round() as u8;
        }
    } else {
        let map = crate::prepare::DisplayMap::new(image, &WindowChoice::Named(NamedWindow::Dicom));
        for (i, o) in out.iter_mut().enumerate() {
            *o = (map.pixel(&image.pixels, i) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
}
