//! Closing images off the thread that let go of them. Closing talks to the cluster (the
//! exclusive lock is released, the watches removed) and, when the cluster cannot be reached,
//! waits for it without end: done where the last reference went (a runtime worker, the
//! monitor thread), it stalled that thread for good, and a gateway asked to stop with its
//! cluster gone never exited. Closes run on at most [`THREADS`] threads of their own,
//! started when needed and gone after [`IDLE`]; the process waits for them, boundedly, before
//! it exits ([`wait_for_closes`]).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How many images close at the same time, at most (a hung close holds one).
const THREADS: usize = 8;
/// How long an idle closing thread stays.
const IDLE: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Queued or running.
    pending: usize,
}

#[derive(Default)]
struct Closer {
    queue: Mutex<Queue>,
    work: Condvar,
    done: Condvar,
}

fn closer() -> &'static Closer {
    static CLOSER: OnceLock<Closer> = OnceLock::new();
    CLOSER.get_or_init(Closer::default)
}

fn lock(c: &Closer) -> MutexGuard<'_, Queue> {
    c.queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` (an image's close) on a closing thread.
pub(super) fn close(job: impl FnOnce() + Send + 'static) {
    let c = closer();
    let mut q = lock(c);
    q.jobs.push_back(Box::new(job));
    q.pending += 1;
    if q.idle > 0 {
        c.work.notify_one();
        return;
    }
    if q.threads >= THREADS {
        return;
    }
    q.threads += 1;
    drop(q);
    let spawned = std::thread::Builder::new()
        .name("rbd-close".into())
        .spawn(run);
    if let Err(e) = spawned {
        // Out of threads: close here rather than never.
        tracing::warn!("cannot start a thread to close images ({e}): closing on this one");
        lock(c).threads -= 1;
        run_queued();
    }
}

fn run() {
    let c = closer();
    let mut q = lock(c);
    loop {
        let Some(job) = q.jobs.pop_front() else {
            q.idle += 1;
            let (back, t) = c
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
        q = lock(c);
        q.pending -= 1;
        c.done.notify_all();
    }
}

/// Runs what is queued on the calling thread.
fn run_queued() {
    let c = closer();
    loop {
        let Some(job) = lock(c).jobs.pop_front() else {
            return;
        };
        job();
        lock(c).pending -= 1;
        c.done.notify_all();
    }
}

/// Waits until every image let go of so far has closed, or `at_most`; returns how many
/// have not.
pub fn wait_for_closes(at_most: Duration) -> usize {
    let c = closer();
    let deadline = Instant::now() + at_most;
    let mut q = lock(c);
    while q.pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        q = c
            .done
            .wait_timeout(q, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    q.pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn closes_run_elsewhere_boundedly_and_are_waited_for() {
        let ran = Arc::new(AtomicUsize::new(0));
        let here = std::thread::current().id();
        // One close that hangs (a cluster out of reach) holds one thread, not the others.
        let (release, hung) = std::sync::mpsc::channel::<()>();
        close(move || {
            let _ = hung.recv();
        });
        for _ in 0..20 {
            let ran = ran.clone();
            close(move || {
                assert_ne!(std::thread::current().id(), here);
                std::thread::sleep(Duration::from_millis(5));
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(lock(closer()).threads <= THREADS);
        assert_eq!(wait_for_closes(Duration::from_secs(1)), 1, "the hung one");
        assert_eq!(ran.load(Ordering::SeqCst), 20);
        release.send(()).unwrap();
        assert_eq!(wait_for_closes(Duration::from_secs(5)), 0);
    }
}
