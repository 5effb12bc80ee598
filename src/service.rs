//! Talking to the service manager (systemd `Type=notify`): READY once the daemon serves,
//! STATUS as it works, STOPPING at shutdown, and WATCHDOG pings only while the image worker
//! shows signs of life — so a stuck pipeline stops feeding the watchdog and systemd restarts
//! bedside. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Sends states to the service manager; a failure is logged, never fatal.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify the service manager: {e}");
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The worker's sign of life: the time of its last beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn beat(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// The watchdog period systemd asked for, if any (`WatchdogSec=`).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog every half period for as long as the heartbeat is younger than the
/// period. Runs until the task is dropped.
pub async fn feed_watchdog(period: Duration, heartbeats: Vec<(&'static str, Heartbeat)>) {
    let mut tick = tokio::time::interval(period / 2);
    let mut starving = false;
    loop {
        tick.tick().await;
        // The stalest worker decides: one wedged pipeline is enough to stop pinging.
        let (name, age) = heartbeats
            .iter()
            .map(|(n, h)| (*n, h.age()))
            .max_by_key(|(_, a)| *a)
            .unwrap_or(("", Duration::ZERO));
        if should_ping(age, period) {
            if starving {
                warn!("every worker is alive again; feeding the watchdog");
                starving = false;
            }
            debug!("watchdog ping");
            notify(&[NotifyState::Watchdog]);
        } else if !starving {
            warn!(
                "the {name} has shown no sign of life for {age:?}; no longer feeding the watchdog"
            );
            starving = true;
        }
    }
}

/// A beat within the last period means the worker is alive.
fn should_ping(age: Duration, period: Duration) -> bool {
    age < period
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_only_while_the_worker_beats() {
        let p = Duration::from_secs(30);
        assert!(should_ping(Duration::from_secs(1), p));
        assert!(!should_ping(Duration::from_secs(30), p));
        let hb = Heartbeat::new();
        hb.beat();
        assert!(hb.age() < Duration::from_secs(1));
    }
}
