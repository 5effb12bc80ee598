//! Association slots: at most `capacity` associations at once, and a caller that finds them
//! all taken may *evict* the one idle longest.
//!
//! Why not a plain semaphore: a semaphore's queue is first-come, first-served, so fifty
//! connections that associate and then say nothing would hold every slot and queue position
//! until their timeouts ran out, and the modality that really has an image waits behind them
//! (or is turned away). Here:
//! - a slot freed by its holder goes to the caller waiting longest (first come, first served,
//!   as a burst of modalities expects);
//! - when all are taken, the caller that arrived *last* takes the slot of the association that
//!   has received no PDU for [`Slots::new`]'s `evict_after`, and that association is aborted
//!   (an SCP may abort at any time; a modality that holds an idle association open simply
//!   associates again). After a flood of idle associations, the modality arriving next is
//!   the newest caller, so it is the one served. An association that is busy is never evicted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The shared table of occupied slots.
pub(crate) struct Slots {
    capacity: usize,
    evict_after: Duration,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    held: Vec<Held>,
    /// The callers waiting, by arrival (their ids).
    waiting: std::collections::BTreeSet<u64>,
}

struct Held {
    id: u64,
    activity: Arc<Activity>,
}

/// What a slot's holder shares with the table: when it last received a PDU, and the
/// notification that it has been evicted.
pub(crate) struct Activity {
    /// Milliseconds since the table's epoch.
    last: AtomicU64,
    evicted: Notify,
}

/// One occupied slot; dropping it frees the slot.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
}

impl Slots {
    pub(crate) fn new(capacity: usize, evict_after: Duration) -> Arc<Slots> {
        Arc::new(Slots {
            capacity: capacity.max(1),
            evict_after,
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A slot now, for a caller who is not queued: a free one, or the one of the association
    /// idle longest (at least `evict_after`), which is told to abort. `None` when every
    /// holder is busy.
    #[cfg(test)]
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.state.lock().unwrap();
        let id = state.next_id + 1;
        state.next_id = id;
        self.try_take_locked(&mut state, id, true, true)
    }

    fn try_take_locked(
        self: &Arc<Self>,
        state: &mut State,
        id: u64,
        may_take_free: bool,
        may_evict: bool,
    ) -> Option<Slot> {
        let now = self.now_ms();
        if state.held.len() >= self.capacity {
            if !may_evict {
                return None;
            }
            let idle_ms = |h: &Held| now.saturating_sub(h.activity.last.load(Ordering::Relaxed));
            let (index, idle) = state
                .held
                .iter()
                .enumerate()
                .map(|(i, h)| (i, idle_ms(h)))
                .max_by_key(|(_, idle)| *idle)?;
            if idle < self.evict_after.as_millis() as u64 {
                return None;
            }
            let victim = state.held.swap_remove(index);
            victim.activity.evicted.notify_one();
        } else if !may_take_free {
            return None;
        }
        let activity = Arc::new(Activity {
            last: AtomicU64::new(now),
            evicted: Notify::new(),
        });
        state.held.push(Held {
            id,
            activity: activity.clone(),
        });
        Some(Slot {
            slots: self.clone(),
            id,
            activity,
        })
    }

    /// Waits up to `wait` for a slot, looking again every 100 ms: a free slot when this
    /// caller has waited longest, an idle association's when it arrived last.
    pub(crate) async fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        let until = Instant::now() + wait;
        let queued = Queued::new(self);
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let first = state.waiting.first() == Some(&queued.id);
                let last = state.waiting.last() == Some(&queued.id);
                if let Some(slot) = self.try_take_locked(&mut state, queued.id, first, last) {
                    return Some(slot);
                }
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }
}

/// A caller's place among the waiting; leaving (with a slot, on giving up, or because the
/// connection went away and the future was dropped) removes it.
struct Queued<'a> {
    slots: &'a Slots,
    id: u64,
}

impl<'a> Queued<'a> {
    fn new(slots: &'a Slots) -> Queued<'a> {
        let mut state = slots.state.lock().unwrap_or_else(|e| e.into_inner());
        state.next_id += 1;
        let id = state.next_id;
        state.waiting.insert(id);
        Queued { slots, id }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting.remove(&self.id);
    }
}

impl Slot {
    /// Records that a PDU arrived: the association is busy, not idle.
    pub(crate) fn touch(&self) {
        self.activity
            .last
            .store(self.slots.now_ms(), Ordering::Relaxed);
    }

    /// Resolves when a newcomer has taken this slot; the holder must then abort.
    pub(crate) async fn evicted(&self) {
        self.activity.evicted.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
        state.held.retain(|h| h.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_evicts_only_the_association_idle_long_enough() {
        let slots = Slots::new(2, Duration::from_millis(200));
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        // Both just started: nobody is idle long enough.
        assert!(slots.try_take().is_none());
        tokio::time::sleep(Duration::from_millis(250)).await;
        b.touch(); // b is busy; a has been idle 250 ms
        let c = slots.try_take().expect("a is evicted");
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("a is told");
        assert_eq!(slots.held(), 2);
        // a's guard dropping later must not free c's or b's slot.
        drop(a);
        assert_eq!(slots.held(), 2);
        drop(b);
        assert_eq!(slots.held(), 1);
        drop(c);
        assert_eq!(slots.held(), 0);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_first_waiter_an_evicted_one_to_the_last() {
        let slots = Slots::new(1, Duration::from_millis(300));
        let holder = slots.try_take().unwrap();
        let waiter = |name: &'static str| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let slot = slots.take(Duration::from_secs(5)).await;
                (name, slot)
            })
        };
        let first = waiter("first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = waiter("second");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = waiter("third");
        // The holder idles past 300 ms: the caller that came last evicts it.
        let (name, slot) = third.await.unwrap();
        assert_eq!(name, "third");
        tokio::time::timeout(Duration::from_secs(1), holder.evicted())
            .await
            .expect("the idle holder is told");
        drop(holder);
        // "third" keeps its slot busy, then releases it: it goes to "first", not "second".
        let slot = slot.unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slot.touch();
        }
        drop(slot);
        let (name, slot) = first.await.unwrap();
        assert_eq!(name, "first");
        slot.unwrap().touch();
        second.abort();
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_freed_while_it_waits() {
        let slots = Slots::new(1, Duration::from_secs(60));
        let a = slots.try_take().unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        drop(a);
        assert!(waiter.await.unwrap());
        let b = slots.try_take().unwrap();
        assert!(slots.take(Duration::from_millis(250)).await.is_none());
        drop(b);
    }
}
