//! Blocking librbd work off the threads that must not block: closing images and reopening
//! fenced ones.
//!
//! Closing talks to the cluster (the exclusive lock is released, the watches removed) and,
//! when the cluster cannot be reached, waits for it without end: done where the last
//! reference went (a runtime worker, the monitor thread), it stalled that thread for good, and
//! a gateway asked to stop with its cluster gone never exited. Reopening a fenced image takes
//! about 0.1 s: one after another on the monitor thread, a gateway fenced with a thousand LUNs
//! took minutes to serve them all again. Each kind runs on a few threads of its own
//! ([`CLOSING`], [`REOPENING`]), started when needed and gone after [`IDLE`]; a job that hangs
//! holds one of them, not the others. The process waits for the closes, boundedly, before it
//! exits ([`wait_for_closes`]).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an idle thread stays.
const IDLE: Duration = Duration::from_secs(2);

/// Images being closed: at most 8 at a time.
pub(super) static CLOSING: Workers = Workers::new("rbd-close", 8);
/// Fenced images being reopened on a new client: at most 16 at a time.
pub(super) static REOPENING: Workers = Workers::new("rbd-reopen", 16);

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Queued or running.
    pending: usize,
}

/// Up to `max` threads named `name` running the jobs given to them, in order.
pub(super) struct Workers {
    name: &'static str,
    max: usize,
    queue: Mutex<Queue>,
    work: Condvar,
    done: Condvar,
}

impl Workers {
    const fn new(name: &'static str, max: usize) -> Workers {
        Workers {
            name,
            max,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                threads: 0,
                idle: 0,
                pending: 0,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on one of the threads.
    pub fn run(&'static self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.lock();
        q.jobs.push_back(Box::new(job));
        q.pending += 1;
        if q.idle > 0 {
            self.work.notify_one();
            return;
        }
        if q.threads >= self.max {
            return;
        }
        q.threads += 1;
        drop(q);
        let spawned = std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || self.serve());
        if let Err(e) = spawned {
            // Out of threads: here rather than never.
            tracing::warn!(
                "cannot start a {} thread ({e}): running on this one",
                self.name
            );
            self.lock().threads -= 1;
            self.run_queued();
        }
    }

    fn serve(&self) {
        let mut q = self.lock();
        loop {
            let Some(job) = q.jobs.pop_front() else {
                q.idle += 1;
                let (back, t) = self
                    .work
                    .wait_timeout(q, IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                q = back;
                q.idle -= 1;
                if t.timed_out() && q.jobs.is_empty() {
                    q.threads -= 1;
                    return;
                }
                continue;
            };
            drop(q);
            job();
            q = self.lock();
            q.pending -= 1;
            self.done.notify_all();
        }
    }

    /// Runs what is queued on the calling thread.
    fn run_queued(&self) {
        loop {
            let Some(job) = self.lock().jobs.pop_front() else {
                return;
            };
            job();
            self.lock().pending -= 1;
            self.done.notify_all();
        }
    }

    /// Waits until every job given so far has run, or `at_most`; returns how many have not.
    pub fn wait_idle(&self, at_most: Duration) -> usize {
        let deadline = Instant::now() + at_most;
        let mut q = self.lock();
        while q.pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .done
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.pending
    }
}

/// Waits until every image let go of so far has closed, or `at_most`; returns how many
/// have not.
pub fn wait_for_closes(at_most: Duration) -> usize {
    CLOSING.wait_idle(at_most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    static TESTED: Workers = Workers::new("test", 4);

    #[test]
    fn jobs_run_elsewhere_boundedly_and_are_waited_for() {
        let ran = Arc::new(AtomicUsize::new(0));
        let here = std::thread::current().id();
        // One job that hangs (a cluster out of reach) holds one thread, not the others.
        let (release, hung) = std::sync::mpsc::channel::<()>();
        TESTED.run(move || {
            let _ = hung.recv();
        });
        for _ in 0..20 {
            let ran = ran.clone();
            TESTED.run(move || {
                assert_ne!(std::thread::current().id(), here);
                std::thread::sleep(Duration::from_millis(5));
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(TESTED.lock().threads <= 4);
        assert_eq!(TESTED.wait_idle(Duration::from_secs(1)), 1, "the hung one");
        assert_eq!(ran.load(Ordering::SeqCst), 20);
        release.send(()).unwrap();
        assert_eq!(TESTED.wait_idle(Duration::from_secs(5)), 0);
    }
}
