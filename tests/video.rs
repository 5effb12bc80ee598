//! Live video: camera buffers to luma against references made by other software, and the
//! replay camera's timing.

mod common;

use bedside::source::convert::{Converter, Layout, PixelFormat, Range, Rect};
use common::*;

/// Every recorded buffer in tests/fixtures/video (made by `make_refs.py` with ffmpeg and
/// Pillow) converts to exactly the reference luma: bit-exact, tolerance 0.
#[test]
fn camera_formats_match_ffmpeg_and_pillow_bit_exact() {
    let dir = repo().join("tests/fixtures/video");
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("refs.json")).unwrap()).unwrap();
    let (w, h) = (
        refs["width"].as_u64().unwrap() as u32,
        refs["height"].as_u64().unwrap() as u32,
    );
    let c: Vec<u32> = refs["crop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let crop = Rect::try_from([c[0], c[1], c[2], c[3]]).unwrap();
    let mut formats = Vec::new();
    for case in refs["cases"].as_array().unwrap() {
        let fourcc = case["format"].as_str().unwrap();
        let format = PixelFormat::from_fourcc(fourcc.as_bytes().try_into().unwrap()).unwrap();
        let range = match case["range"].as_str().unwrap() {
            "limited" => Range::Limited,
            _ => Range::Full,
        };
        assert_eq!(
            range,
            format.default_range(),
            "{fourcc}: V4L2's default range"
        );
        let buf = std::fs::read(dir.join(case["buffer"].as_str().unwrap())).unwrap();
        let want = std::fs::read(dir.join(case["reference"].as_str().unwrap())).unwrap();
        let layout = Layout {
            format,
            width: w,
            height: h,
            stride: format.min_stride(w),
            range,
        };
        let mut conv = Converter::new(layout, crop).unwrap();
        let mut got = vec![0u8; crop.pixels()];
        conv.to_luma(&buf, &mut got).unwrap();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "{fourcc}: {differ} of {} pixels differ from {}'s luma",
            want.len(),
            case["made_by"]
        );
        // The reference is not flat: a conversion that ignored its input would fail.
        let distinct: std::collections::HashSet<u8> = want.iter().copied().collect();
        assert!(
            distinct.len() > 30,
            "{fourcc}: reference has {} levels",
            distinct.len()
        );
        // A buffer cut short is an error, not a panic or a half frame.
        if format != PixelFormat::Mjpeg {
            let e = conv.to_luma(&buf[..buf.len() / 2], &mut got).unwrap_err();
            assert!(e.to_string().contains("bytes"), "{e}");
        } else {
            let mut broken = buf.clone();
            broken.truncate(20);
            assert!(conv.to_luma(&broken, &mut got).is_err());
        }
        formats.push(format);
    }
    for f in [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Grey,
        PixelFormat::Mjpeg,
    ] {
        assert!(formats.contains(&f), "no reference for {f}");
    }
}
