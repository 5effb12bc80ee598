//! DICOM in: reading Part-10 objects and turning their pixel data into an [`Image`] in
//! modality units, the way a radiologist's viewer starts from them.
//!
//! [`Image`]: crate::source::Image

pub mod decode;

pub use decode::{DecodeError, decode_object, install_panic_hook, read_file};
