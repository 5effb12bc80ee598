//! The benchmark and evaluation subcommands: the binary's edge over the library (anyhow errors, printing),
//! kept out of `main.rs` so that it stays a thin dispatcher.

pub mod audit;
pub mod bench;
pub mod bench_dicom;
pub mod bench_live;
pub mod bench_outbox;
pub mod bench_pacs;
pub mod eval;
pub mod models;
pub mod prepare;
