//! The SCP's disk work — spool writes, and the fsyncs before each C-STORE answer — on a
//! fixed set of threads started with the SCP.
//!
//! A session's PDU is handled where blocking is allowed. `tokio::task::block_in_place` did
//! that by handing the async worker's place to another thread: every handoff could start a
//! thread, each lived on 10 s after its last use, and the daemon's thread count wandered
//! with the traffic (12 to 17 in a 3-minute soak). Here the count is fixed by the profile
//! (`dicom.max_associations`, [`threads_for`]) and planned with the other threads' stacks;
//! an association's PDUs queue for a thread when all are busy, as they would for the disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// At most this many spool threads: the disk is one device, and more threads would only
/// wait on its fsyncs together.
const MAX_THREADS: usize = 4;

/// How many spool threads an SCP with `max_associations` has (used by the memory plan).
pub fn threads_for(max_associations: usize) -> usize {
    max_associations.clamp(1, MAX_THREADS)
}

/// The threads; dropped, they finish the jobs queued and end.
pub(super) struct DiskThreads {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// A job that panicked (the panic is contained: the thread lives on for the other jobs).
#[derive(Debug)]
pub(super) struct Panicked;

impl DiskThreads {
    pub fn start(n: usize) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let queue = queue.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bedside-spool{}", i + 1))
                    .stack_size(crate::alloc::THREAD_STACK)
                    .spawn(move || work(&queue))?,
            );
        }
        Ok(DiskThreads {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Runs `f` on a spool thread and waits (asynchronously) for what it returns.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let jobs = self.jobs.as_ref().expect("open until dropped");
        jobs.send(job).map_err(|_| Panicked)?;
        // The sender is dropped unsent only when `f` panicked.
        rx.await.map_err(|_| Panicked)
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        let Ok(job) = job else {
            return; // the SCP has ended
        };
        // A panic in a session's code ends that association (its task sees `Panicked`),
        // not this thread.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

impl Drop for DiskThreads {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_fixed_threads_and_a_panic_ends_only_its_job() {
        let disk = DiskThreads::start(2).unwrap();
        let mut names = std::collections::HashSet::new();
        for _ in 0..50 {
            let name = disk
                .run(|| std::thread::current().name().unwrap().to_owned())
                .await
                .unwrap();
            names.insert(name);
        }
        assert!(names.iter().all(|n| n.starts_with("bedside-spool")));
        assert!(names.len() <= 2, "{names:?}");
        assert!(disk.run(|| panic!("a broken session")).await.is_err());
        for _ in 0..4 {
            assert_eq!(disk.run(|| 7).await.unwrap(), 7);
        }
        drop(disk);
    }

    #[test]
    fn the_count_follows_max_associations_within_bounds() {
        assert_eq!(threads_for(0), 1);
        assert_eq!(threads_for(2), 2);
        assert_eq!(threads_for(16), MAX_THREADS);
    }
}
