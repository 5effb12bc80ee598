//! DICOM in: reading Part-10 objects and turning their pixel data into an [`Image`] in
//! modality units, the way a radiologist's viewer starts from them; and the DIMSE messages
//! the C-STORE SCP ([`crate::source::scp`]) speaks. DICOM out: the objects bedside makes for
//! the patient's study ([`derived`], [`sr`], [`seg`], chosen per model by [`results`]), kept in a
//! durable outbox ([`outbox`]) and sent to PACS by C-STORE ([`send`]).
//!
//! [`Image`]: crate::source::Image

pub mod decode;
pub mod derived;
pub mod dimse;
mod encapsulated;
mod jpegls;
pub mod lengths;
pub mod outbox;
pub mod results;
mod rle;
pub mod seg;
pub mod send;
pub mod sr;
pub(crate) mod turbo;

pub use decode::{DecodeError, decode_object, install_panic_hook, read_file};

/// bedside's Implementation Class UID (a UUID-derived UID under 2.25), written in the file
/// meta of every object it spools and sent in association negotiation.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.11886481401379533916320419109945094436";
/// At most 16 characters.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("BEDSIDE_", env!("CARGO_PKG_VERSION"));
