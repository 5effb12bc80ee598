//! Findings out: MQTT publishing and the device's status.

pub mod mqtt;

pub use mqtt::{Publisher, PublisherConfig, StatusDoc};
