//! Models as bedside knows them: a folder with an ONNX file and the manifest that says what it
//! means. Loading checks the file's sha256 against the manifest before tract sees a byte, so a
//! finding can always name the exact model that made it.

pub mod manifest;
pub mod parity;

use std::path::PathBuf;

use serde::Serialize;

pub use manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(
        "{path}: sha256 is {actual} but the manifest says {expected}; refusing to run a model that is not the one validated"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("tract cannot prepare {path}: {reason}")]
    Tract { path: PathBuf, reason: String },
    #[error("{path}: the model gives {got} outputs, its manifest lists {want} labels")]
    OutputShape {
        path: PathBuf,
        got: usize,
        want: usize,
    },
}

/// The identity of a model as every finding names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    pub id: String,
    pub version: String,
    pub sha256: String,
}

/// Lowercase hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
