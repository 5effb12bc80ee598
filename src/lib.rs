//! bedside: a daemon for bedside imaging devices. Images come in (DICOM files today), run
//! through small int8 ONNX models in tract, and leave as findings over MQTT — decision
//! support for a clinician, never a diagnosis, and never with patient identifiers.
//!
//! The path of one image, each stage a module:
//! [`source`]/[`dicom`] → [`prepare`] → [`infer`] → [`finding`] → [`publish`],
//! wired together by [`pipeline`] (one image) and [`daemon`] (the long-running service).
//!
//! ```
//! use bedside::finding::UidHasher;
//! use bedside::pipeline::{Identity, Processor};
//! use bedside::source::SourceKind;
//!
//! let identity = Identity {
//!     device: "cart-1".into(),
//!     site: "clinic-a".into(),
//!     uid_hasher: UidHasher::new("a secret key for this site"),
//! };
//! // Loading checks the model file's sha256 against its manifest.
//! let mut processor = Processor::new(identity, &["models/cxr-tiny-cls"])?;
//! let findings = processor.process_file("tests/data/cxr-ptx-mono2.dcm".as_ref(), SourceKind::File)?;
//! let f = &findings[0];
//! assert_eq!(f.model.id, "cxr-tiny-cls");
//! assert_eq!(f.over_threshold, ["pneumothorax"]);
//! println!("{}", serde_json::to_string_pretty(f)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alloc;
pub mod audit;
pub mod board;
pub mod daemon;
pub mod dicom;
pub mod draw;
pub mod eval;
pub mod finding;
pub mod infer;
pub mod int8;
pub mod live;
pub mod model;
pub mod overlay;
pub mod pipeline;
pub mod plan;
pub mod prepare;
pub mod publish;
pub mod service;
pub mod source;
pub mod task;
pub mod tls;
pub mod update;
pub mod web;
