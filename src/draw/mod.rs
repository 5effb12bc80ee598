//! Drawing into RGB buffers and writing them as PNG: what the eval report's plots and the
//! findings overlays share. plotters draws (its bitmap backend over a plain buffer), the `png`
//! crate bedside already has writes (plotters' own encoder would pull in the `image` crate).
//! Text uses a subset of the Go font (BSD licence, `go-font-LICENSE`): printable ASCII plus
//! ± ² µ · × – — −, 8 KB in the binary, because a board has no font directory to rely on.
//! Made with fontTools: `pyftsubset Go-Regular.ttf --unicodes=U+0020-007E,U+00B1,U+00B2,
//! U+00B5,U+00B7,U+00D7,U+2013,U+2014,U+2212 --no-hinting --layout-features=''`.

use std::io::Write;
use std::path::Path;
use std::sync::Once;

/// The family name text is drawn with (the embedded font, registered on first use).
pub const FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("go-regular-subset.ttf");
static REGISTER: Once = Once::new();

/// Makes the embedded font the one plotters draws [`FAMILY`] with.
pub fn register_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font(FAMILY, plotters::style::FontStyle::Normal, FONT);
    });
}

/// An 8-bit RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgb {
    /// PNG bytes of the image.
    pub fn encode_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder.set_compression(png::Compression::Fast);
            let mut writer = encoder.write_header()?;
            writer.write_image_data(&self.pixels)?;
        }
        Ok(out)
    }

    /// Writes the PNG to `path` whole or not at all: a temporary file beside it, synced, then
    /// renamed over it (a reader never sees half an image, a power cut leaves the old one).
    pub fn write_png(&self, path: &Path) -> std::io::Result<()> {
        let bytes = self.encode_png().map_err(std::io::Error::other)?;
        let tmp = path.with_extension("png.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}
