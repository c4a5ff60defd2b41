//! Fair, bounded queuing for hashing permits. Every argon2 evaluation (a login, an
//! authorization, an enrolment) holds a [`HashingPermit`]; at most `capacity` exist. Waiting
//! attempts queue per source (a socket uid, a reader) and sources are served round robin, so a
//! flood from the POS socket cannot starve the PIN pad or a key reader. A source with
//! `max_waiting` attempts already queued is refused at once ([`QueueFull`]), and a waiting
//! attempt whose caller has gone is dropped before it gets a permit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// A source already has its bound of attempts waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{waiting} attempts from this source are already waiting for hashing; try again later")]
pub struct QueueFull {
    pub waiting: usize,
}

#[derive(Debug, Clone)]
pub struct HashingQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    max_waiting: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Sources with waiting attempts, in the order they are served next.
    queues: VecDeque<SourceQueue>,
}

#[derive(Debug)]
struct SourceQueue {
    source: String,
    waiters: VecDeque<oneshot::Sender<HashingPermit>>,
}

/// The right to run one hashing job; returned to the queue when dropped.
#[derive(Debug)]
pub struct HashingPermit {
    inner: Option<Arc<Inner>>,
}

impl HashingQueue {
    pub fn new(capacity: usize, max_waiting_per_source: usize) -> Self {
        HashingQueue {
            inner: Arc::new(Inner {
                capacity,
                max_waiting: max_waiting_per_source,
                state: Mutex::new(State {
                    free: capacity,
                    queues: VecDeque::new(),
                }),
            }),
        }
    }

    /// Waits for a permit in `source`'s queue. Dropping the future leaves the queue.
    pub async fn acquire(&self, source: &str) -> Result<HashingPermit, QueueFull> {
        let receiver = {
            let mut state = lock(&self.inner.state);
            state.forget_departed();
            if state.free > 0 && state.queues.is_empty() {
                state.free -= 1;
                return Ok(self.permit());
            }
            let queue = match state.queues.iter().position(|q| q.source == source) {
                Some(at) => &mut state.queues[at],
                None => {
                    state.queues.push_back(SourceQueue {
                        source: source.to_owned(),
                        waiters: VecDeque::new(),
                    });
                    let last = state.queues.len() - 1;
                    &mut state.queues[last]
                }
            };
            if queue.waiters.len() >= self.inner.max_waiting {
                return Err(QueueFull {
                    waiting: queue.waiters.len(),
                });
            }
            let (sender, receiver) = oneshot::channel();
            queue.waiters.push_back(sender);
            receiver
        };
        // The queue never drops a sender without sending, so this only fails if the queue itself
        // is gone — then there is nothing to wait for either.
        receiver.await.map_err(|_| QueueFull { waiting: 0 })
    }

    /// True while any permit is out (a login, authorization or enrolment is hashing): background
    /// work steps aside meanwhile (see `priority::StepAside`).
    pub fn busy(&self) -> bool {
        lock(&self.inner.state).free < self.inner.capacity
    }

    /// Attempts waiting, all sources together.
    pub fn waiting(&self) -> usize {
        let mut state = lock(&self.inner.state);
        state.forget_departed();
        state.queues.iter().map(|q| q.waiters.len()).sum()
    }

    fn permit(&self) -> HashingPermit {
        HashingPermit {
            inner: Some(self.inner.clone()),
        }
    }
}

impl State {
    /// Drops waiters whose caller has gone, and sources left without waiters.
    fn forget_departed(&mut self) {
        for queue in &mut self.queues {
            queue.waiters.retain(|w| !w.is_closed());
        }
        self.queues.retain(|q| !q.waiters.is_empty());
    }
}

impl Drop for HashingPermit {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let mut state = lock(&inner.state);
        // Hand the permit to the next waiting source, round robin; skip callers that left.
        while let Some(mut queue) = state.queues.pop_front() {
            let next = queue.waiters.pop_front();
            if !queue.waiters.is_empty() {
                state.queues.push_back(queue);
            }
            let Some(waiter) = next else { continue };
            let handed = HashingPermit {
                inner: Some(inner.clone()),
            };
            match waiter.send(handed) {
                Ok(()) => return,
                // Defuse the returned permit: it must not re-enter this lock.
                Err(mut unclaimed) => drop(unclaimed.inner.take()),
            }
        }
        state.free += 1;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent at every await-free step; a panic elsewhere cannot corrupt it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Lets spawned waiters reach their queue.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn sources_are_served_round_robin_not_first_come() {
        let queue = HashingQueue::new(1, 16);
        let held = queue.acquire("pos").await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (source, n) in [("pos", 6), ("pad", 2)] {
            for i in 0..n {
                let (queue, order) = (queue.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let permit = queue.acquire(source).await.unwrap();
                    order.lock().unwrap().push(format!("{source}{i}"));
                    drop(permit);
                }));
                settle().await;
            }
        }
        assert_eq!(queue.waiting(), 8);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order,
            vec![
                "pos0", "pad0", "pos1", "pad1", "pos2", "pos3", "pos4", "pos5"
            ]
        );
    }

    #[tokio::test]
    async fn a_source_beyond_its_bound_is_refused_at_once_others_still_queue() {
        let queue = HashingQueue::new(1, 2);
        let _held = queue.acquire("pos").await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let q = queue.clone();
            waiting.push(tokio::spawn(
                async move { q.acquire("pos").await.map(drop) },
            ));
        }
        settle().await;
        assert_eq!(
            queue.acquire("pos").await.unwrap_err(),
            QueueFull { waiting: 2 }
        );
        let q = queue.clone();
        let pad = tokio::spawn(async move { q.acquire("pad").await.map(drop) });
        settle().await;
        assert_eq!(queue.waiting(), 3);
        drop(_held);
        pad.await.unwrap().unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_caller_that_left_is_dropped_before_it_gets_a_permit() {
        let queue = HashingQueue::new(1, 4);
        let held = queue.acquire("a").await.unwrap();
        let q = queue.clone();
        let gone = tokio::spawn(async move { q.acquire("a").await.map(drop) });
        settle().await;
        gone.abort();
        let _ = gone.await;
        let q = queue.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let s = served.clone();
        let stays = tokio::spawn(async move {
            let p = q.acquire("b").await.unwrap();
            s.fetch_add(1, Ordering::SeqCst);
            drop(p);
        });
        settle().await;
        assert_eq!(queue.waiting(), 1, "the departed waiter no longer counts");
        drop(held);
        stays.await.unwrap();
        assert_eq!(served.load(Ordering::SeqCst), 1);
        // The permit came back: the queue is whole again.
        let again = tokio::time::timeout(Duration::from_secs(1), queue.acquire("c")).await;
        assert!(again.unwrap().is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_permits_than_the_capacity() {
        let queue = HashingQueue::new(3, 64);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..60 {
            let (queue, running, most) = (queue.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let source = format!("s{}", i % 5);
                let permit = queue.acquire(&source).await.unwrap();
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                running.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(queue.waiting(), 0);
    }
}
