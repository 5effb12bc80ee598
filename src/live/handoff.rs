//! The latest-wins hand-off between capture and inference: one pending slot. Offering a
//! frame never blocks; when a frame is still pending, the new one replaces it and the old
//! one comes back to the caller, counted as dropped. So the camera keeps its rate, inference
//! always works on the newest frame, and no queue can grow.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct Handoff<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    pending: Option<T>,
    closed: bool,
}

/// What a consumer got.
#[derive(Debug)]
pub enum Taken<T> {
    Item(T),
    /// Nothing came within the timeout.
    Empty,
    /// The hand-off was closed and nothing is pending.
    Closed,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Handoff<T> {
    pub fn new() -> Self {
        Handoff {
            state: Mutex::new(State {
                pending: None,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `item` the pending one; returns the one it displaced, if any.
    pub fn offer(&self, item: T) -> Option<T> {
        let old = self.lock().pending.replace(item);
        self.ready.notify_one();
        old
    }

    /// Waits up to `timeout` for a pending item.
    pub fn take(&self, timeout: Duration) -> Taken<T> {
        let mut state = self.lock();
        if state.pending.is_none() && !state.closed {
            state = self
                .ready
                .wait_timeout_while(state, timeout, |s| s.pending.is_none() && !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match state.pending.take() {
            Some(item) => Taken::Item(item),
            None if state.closed => Taken::Closed,
            None => Taken::Empty,
        }
    }

    /// No more items: wakes every waiting consumer. A pending item can still be taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn newest_wins_and_the_displaced_comes_back() {
        let h = Handoff::new();
        assert!(h.offer(1).is_none());
        assert_eq!(h.offer(2), Some(1));
        assert!(matches!(h.take(Duration::ZERO), Taken::Item(2)));
        assert!(matches!(h.take(Duration::from_millis(1)), Taken::Empty));
        h.offer(3);
        h.close();
        assert!(matches!(h.take(Duration::ZERO), Taken::Item(3)));
        assert!(matches!(h.take(Duration::from_secs(5)), Taken::Closed));
    }

    #[test]
    fn a_waiting_consumer_wakes_on_offer_and_on_close() {
        let h = Arc::new(Handoff::new());
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            let first = matches!(h2.take(Duration::from_secs(10)), Taken::Item(7));
            let second = matches!(h2.take(Duration::from_secs(10)), Taken::Closed);
            (first, second)
        });
        std::thread::sleep(Duration::from_millis(20));
        h.offer(7);
        std::thread::sleep(Duration::from_millis(20));
        h.close();
        assert_eq!(t.join().unwrap(), (true, true));
    }
}
