//! A V4L2 capture device (an HDMI/USB grabber on an ultrasound cart's video out), through the
//! `v4l` crate: negotiate format, size and rate, stream with mmap buffers, and convert each
//! buffer with [`super::convert`]. Deliberately thin: everything that can be tested without
//! a kernel device lives in `convert` and in the live pipeline.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::camera::{Camera, CameraError, Captured};
use super::convert::{Converter, Layout, PixelFormat, Range, Rect};

/// The board profile's `[video.v4l2]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// e.g. `/dev/video0`, or a stable `/dev/v4l/by-id/...` link.
    pub device: PathBuf,
    /// Formats to ask for, best first; the first the device accepts is used.
    #[serde(default = "default_formats")]
    pub formats: Vec<PixelFormat>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Luma range, when the device's own report (V4L2 quantization) is wrong or missing.
    #[serde(default)]
    pub range: Option<Range>,
    /// mmap buffers the driver fills in turn.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// No frame for this long = the device stalled: close it and open it again.
    #[serde(default = "default_stall_ms")]
    pub stall_ms: u64,
}

fn default_formats() -> Vec<PixelFormat> {
    vec![
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Grey,
        PixelFormat::Mjpeg,
    ]
}

fn default_buffers() -> u32 {
    4
}

fn default_stall_ms() -> u64 {
    2000
}

/// An open, streaming V4L2 device.
pub struct V4l2Camera {
    name: String,
    describe: String,
    // Declared before `_device` so that streaming stops before the device closes.
    stream: Stream<'static>,
    _device: Device,
    converter: Converter,
    spacing: Option<[f64; 2]>,
    first_sequence: Option<u32>,
    stall: Duration,
}

impl V4l2Camera {
    /// Opens the device and starts streaming. `crop`: the region to keep (the ultrasound
    /// sector); `None` keeps the whole frame.
    pub fn open(
        config: &V4l2Config,
        crop: Option<Rect>,
        pixel_spacing_mm: Option<[f64; 2]>,
    ) -> Result<Self, CameraError> {
        let name = config.device.display().to_string();
        let gone = |what: &str, e: std::io::Error| CameraError::Gone {
            device: name.clone(),
            reason: format!("{what}: {e}"),
        };
        let misfit = |reason: String| CameraError::Config {
            device: name.clone(),
            reason,
        };
        let device = Device::with_path(&config.device).map_err(|e| gone("open", e))?;
        let caps = device
            .query_caps()
            .map_err(|e| gone("query capabilities", e))?;
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            return Err(misfit(format!(
                "{} ({}) is not a video capture device",
                caps.card, caps.driver
            )));
        }
        let offered: Vec<[u8; 4]> = device
            .enum_formats()
            .map_err(|e| gone("list formats", e))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let format = config
            .formats
            .iter()
            .copied()
            .find(|f| offered.contains(&f.fourcc()))
            .ok_or_else(|| {
                misfit(format!(
                    "offers {} but the profile asks for {}",
                    list(
                        offered
                            .iter()
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                    ),
                    list(config.formats.iter().map(|f| f.to_string())),
                ))
            })?;
        let mut want = device.format().map_err(|e| gone("get format", e))?;
        want.width = config.width;
        want.height = config.height;
        want.fourcc = FourCC::new(&format.fourcc());
        let got = device
            .set_format(&want)
            .map_err(|e| gone("set format", e))?;
        if got.fourcc.repr != format.fourcc()
            || got.width != config.width
            || got.height != config.height
        {
            return Err(misfit(format!(
                "asked for {format} {}x{}, the driver gives {} {}x{}",
                config.width,
                config.height,
                String::from_utf8_lossy(&got.fourcc.repr),
                got.width,
                got.height
            )));
        }
        let params = device
            .set_params(&v4l::video::capture::Parameters::with_fps(config.fps))
            .map_err(|e| gone("set frame rate", e))?;
        let fps = params.interval.denominator as f64 / params.interval.numerator.max(1) as f64;
        let range = config.range.unwrap_or(match got.quantization {
            v4l::format::Quantization::FullRange => Range::Full,
            v4l::format::Quantization::LimitedRange => Range::Limited,
            _ => format.default_range(),
        });
        let layout = Layout {
            format,
            width: got.width,
            height: got.height,
            stride: got.stride as usize,
            range,
        };
        let crop = crop.unwrap_or(Rect::full(got.width, got.height));
        let converter = Converter::new(layout, crop).map_err(|e| misfit(e.to_string()))?;
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, config.buffers.max(2))
            .map_err(|e| gone("start streaming", e))?;
        let stall = Duration::from_millis(config.stall_ms.max(100));
        stream.set_timeout(stall);
        let describe = format!(
            "{name} ({} {}, {format} {}x{} {range:?} range, {fps:.1} fps, crop {}x{}+{}+{})",
            caps.card, caps.driver, got.width, got.height, crop.width, crop.height, crop.x, crop.y
        );
        Ok(V4l2Camera {
            name,
            describe,
            stream,
            _device: device,
            converter,
            spacing: pixel_spacing_mm,
            first_sequence: None,
            stall,
        })
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

impl Camera for V4l2Camera {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn frame_size(&self) -> (u32, u32) {
        let c = self.converter.crop();
        (c.width, c.height)
    }

    fn pixel_spacing_mm(&self) -> Option<[f64; 2]> {
        self.spacing
    }

    fn capture(&mut self, out: &mut [u8]) -> Result<Captured, CameraError> {
        let (buf, meta) = match self.stream.next() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(CameraError::Stalled {
                    device: self.name.clone(),
                    waited: self.stall,
                });
            }
            Err(e) => {
                return Err(CameraError::Gone {
                    device: self.name.clone(),
                    reason: format!("dequeue: {e}"),
                });
            }
        };
        let at = driver_instant(meta.timestamp);
        let wall = SystemTime::now() - at.elapsed();
        let used = (meta.bytesused as usize).min(buf.len());
        let first = *self.first_sequence.get_or_insert(meta.sequence);
        let seq = meta.sequence.wrapping_sub(first) as u64;
        self.converter
            .to_luma(&buf[..used], out)
            .map_err(|e| CameraError::BadFrame {
                device: self.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Captured { seq, at, wall })
    }
}

/// The driver's buffer timestamp (CLOCK_MONOTONIC, as `Instant` is on Linux) as an
/// `Instant`, so that latency counts the time the frame waited in the driver's queue.
fn driver_instant(ts: v4l::timestamp::Timestamp) -> Instant {
    let now = Instant::now();
    let mut mono = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) } != 0 {
        return now;
    }
    let now_us = mono.tv_sec as i128 * 1_000_000 + mono.tv_nsec as i128 / 1000;
    let ts_us = ts.sec as i128 * 1_000_000 + ts.usec as i128;
    let age = now_us - ts_us;
    // A driver with another clock (or none) gives nonsense: trust it only within 10 s.
    if (0..10_000_000).contains(&age) {
        now.checked_sub(Duration::from_micros(age as u64))
            .unwrap_or(now)
    } else {
        now
    }
}
