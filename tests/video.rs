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

mod replay {
    use super::*;
    use bedside::source::camera::{Camera, CameraError};
    use bedside::source::replay::{Replay, ReplayConfig};
    use std::time::Instant;

    /// Frame `i` of a tiny synthetic clip: a gradient shifted by `i`.
    fn frame(i: usize, w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .map(|p| ((p % w + p / w + 7 * i) % 256) as u8)
            .collect()
    }

    fn config(path: std::path::PathBuf, fps: f64, looping: bool) -> ReplayConfig {
        ReplayConfig {
            path,
            fps: Some(fps),
            looping,
            crop: Some(Rect::try_from([2, 1, 8, 4]).unwrap()),
            pixel_spacing_mm: Some([0.2, 0.2]),
        }
    }

    fn crop_of(full: &[u8], w: usize) -> Vec<u8> {
        (1..5)
            .flat_map(|r| full[r * w + 2..r * w + 10].to_vec())
            .collect()
    }

    /// Plays `n` frames and checks content, sequence numbers and pacing.
    fn play(cam: &mut Replay, frames: &[Vec<u8>], n: usize, fps: f64, w: usize) {
        let mut out = vec![0u8; 32];
        let t0 = Instant::now();
        for k in 0..n {
            let c = cam.capture(&mut out).unwrap();
            assert_eq!(c.seq, k as u64);
            assert_eq!(out, crop_of(&frames[k % frames.len()], w), "frame {k}");
        }
        let took = t0.elapsed().as_secs_f64();
        let want = (n - 1) as f64 / fps;
        assert!(
            took >= want * 0.97 && took <= want + 0.25,
            "{n} frames at {fps} fps took {took:.3} s, {want:.3} expected"
        );
    }

    #[test]
    fn y4m_clip_plays_at_its_rate_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (12usize, 6usize);
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(i, w, h)).collect();
        let path = dir.path().join("clip.y4m");
        {
            let file = std::fs::File::create(&path).unwrap();
            let mut enc = y4m::encode(w, h, y4m::Ratio::new(25, 1))
                .with_colorspace(y4m::Colorspace::Cmono)
                .append_vendor_extension(
                    y4m::VendorExtensionString::new(b"XCOLORRANGE=FULL".to_vec()).unwrap(),
                )
                .write_header(file)
                .unwrap();
            for f in &frames {
                enc.write_frame(&y4m::Frame::new([f, &[], &[]], None))
                    .unwrap();
            }
        }
        let mut cam = Replay::open(config(path.clone(), 50.0, true)).unwrap();
        assert_eq!(cam.frame_size(), (8, 4));
        assert_eq!(cam.pixel_spacing_mm(), Some([0.2, 0.2]));
        play(&mut cam, &frames, 10, 50.0, w);
        // Without looping, the end is reported as such.
        let mut once = Replay::open(config(path, 1000.0, false)).unwrap();
        let mut out = vec![0u8; 32];
        for _ in 0..4 {
            once.capture(&mut out).unwrap();
        }
        assert!(matches!(
            once.capture(&mut out),
            Err(CameraError::Ended { .. })
        ));
    }

    #[test]
    fn png_folder_plays_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (12usize, 6usize);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(i, w, h)).collect();
        for (i, f) in frames.iter().enumerate() {
            let file = std::fs::File::create(dir.path().join(format!("f{i:03}.png"))).unwrap();
            let mut enc = png::Encoder::new(file, w as u32, h as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(f).unwrap();
        }
        let mut cam = Replay::open(config(dir.path().to_owned(), 40.0, true)).unwrap();
        play(&mut cam, &frames, 7, 40.0, w);
        assert!(cam.describe().contains("40.0 fps"));
    }

    #[test]
    fn a_missing_or_bad_recording_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Replay::open(config(dir.path().join("nope.dcm"), 30.0, false)).unwrap_err();
        assert!(matches!(e, CameraError::Gone { .. }), "{e}");
        assert!(e.to_string().contains("nope.dcm"), "{e}");
        let crop = ReplayConfig {
            crop: Some(Rect::try_from([0, 0, 4000, 10]).unwrap()),
            ..config(sample("cxr-ptx-mono2.dcm"), 30.0, false)
        };
        let e = Replay::open(crop).unwrap_err();
        assert!(matches!(e, CameraError::Config { .. }), "{e}");
    }
}
