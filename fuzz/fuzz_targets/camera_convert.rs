//! Camera buffers to luma with any layout the driver could negotiate: format, size, stride,
//! range and crop from the first bytes, the buffer (broken MJPEG included) from the rest.
//! A conversion or an error, never a panic or a write out of bounds.
#![no_main]

use bedside::source::convert::{Converter, Layout, PixelFormat, Range, Rect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (h, buf) = data.split_at(12);
    let format = PixelFormat::ALL[h[0] as usize % PixelFormat::ALL.len()];
    let width = u32::from(u16::from_le_bytes([h[1], h[2]]) % 2048) + 1;
    let height = u32::from(u16::from_le_bytes([h[3], h[4]]) % 2048) + 1;
    let stride = format.min_stride(width) + usize::from(h[5]);
    let range = if h[6] & 1 == 0 { Range::Limited } else { Range::Full };
    let crop = Rect {
        x: u32::from(h[7]) * width / 256,
        y: u32::from(h[8]) * height / 256,
        width: (u32::from(h[9]) * width / 256).max(1),
        height: (u32::from(h[10]) * height / 256).max(1),
    };
    let layout = Layout {
        format,
        width,
        height,
        stride,
        range,
    };
    let Ok(mut converter) = Converter::new(layout, crop) else {
        return;
    };
    let mut out = vec![0u8; crop.pixels()];
    let _ = converter.to_luma(buf, &mut out);
    // A wrong output size is refused, not written past.
    let mut short = vec![0u8; crop.pixels().saturating_sub(1)];
    let _ = converter.to_luma(buf, &mut short);
});
