//! Findings out: the durable outbox every finding is written to first, and MQTT publishing
//! of what it holds, with the device's status.

pub mod mqtt;
pub mod outbox;

pub use mqtt::{Publisher, PublisherConfig, StatusDoc};
pub use outbox::{Class, Outbox, OutboxConfig, OutboxError};
