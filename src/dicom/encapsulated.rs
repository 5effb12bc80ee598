//! Encapsulated (compressed) pixel data: the bytes of one frame, for the decoders that
//! bedside calls itself (libjpeg-turbo, CharLS, its RLE decoder).

use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

/// The compressed bytes of one frame: one fragment per frame, or every fragment of a
/// single-frame object (borrowed when there is only one).
pub fn frame_bytes(
    obj: &DefaultDicomObject,
    frame: u32,
    frames: u32,
) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let element = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| "no Pixel Data".to_string())?;
    let Value::PixelSequence(seq) = element.value() else {
        return Err("the pixel data is not encapsulated".into());
    };
    let fragments = seq.fragments();
    if frames == 1 && fragments.len() == 1 {
        return Ok(std::borrow::Cow::Borrowed(&fragments[0]));
    }
    if frames == 1 {
        return Ok(std::borrow::Cow::Owned(fragments.concat()));
    }
    if fragments.len() == frames as usize {
        return Ok(std::borrow::Cow::Borrowed(&fragments[frame as usize]));
    }
    Err(format!(
        "{} fragments for {frames} frames: only one fragment per frame is read",
        fragments.len()
    ))
}
