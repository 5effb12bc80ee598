//! What the live pipeline asks of a camera, whether a V4L2 device or a replayed recording:
//! block until the next frame, write its luma (already cropped) into a buffer the pipeline
//! owns, and say plainly when the device is gone.

use std::time::{Duration, Instant, SystemTime};

/// One captured frame's facts.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// Capture sequence number, counting every frame the camera delivered (dropped ones
    /// too), from 0 when the stream opened.
    pub seq: u64,
    /// When the frame was captured, on the monotonic clock (latency is measured from here).
    pub at: Instant,
    /// The same moment on the wall clock, for findings.
    pub wall: SystemTime,
}

/// Why a camera gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The device is not there or stopped working (cable pulled, driver reset): close it and
    /// open it again later.
    #[error("{device}: {reason}")]
    Gone { device: String, reason: String },
    /// The device is open but delivered nothing for this long.
    #[error("{device}: no frame for {waited:?}")]
    Stalled { device: String, waited: Duration },
    /// One frame was unusable (a corrupt JPEG); the next may be fine.
    #[error("{device}: bad frame: {reason}")]
    BadFrame { device: String, reason: String },
    /// A recording played to its end and does not loop.
    #[error("{device}: end of recording")]
    Ended { device: String },
    /// The configuration cannot work (format not offered, crop outside the frame): retrying
    /// will not help until someone changes it, but bedside keeps trying in case the device
    /// is swapped.
    #[error("{device}: {reason}")]
    Config { device: String, reason: String },
}

/// A source of frames of a fixed size.
pub trait Camera: Send {
    /// For logs and status: the device path or recording, format, size, rate.
    fn describe(&self) -> String;

    /// Width and height of the frames [`Camera::capture`] writes (the crop).
    fn frame_size(&self) -> (u32, u32);

    /// Row and column spacing of the output in mm, when known.
    fn pixel_spacing_mm(&self) -> Option<[f64; 2]>;

    /// Waits for the next frame and writes its luma, row-major, into `out`
    /// (`width * height` bytes).
    fn capture(&mut self, out: &mut [u8]) -> Result<Captured, CameraError>;
}
