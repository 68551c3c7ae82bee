//! A wake-up signal for tasks of one executor: tasks wait until a condition they check
//! holds, and whoever changes the state it depends on calls [`Signal::notify_all`].

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    waiters: RefCell<Waiters>,
}

/// Wakers of the tasks waiting since the last notification. Each waiter keeps its slot
/// for the generation it registered in, so re-polling a waiter replaces its waker in place
/// instead of scanning the list: a notification that wakes N waiters costs O(N), not O(N²).
#[derive(Debug, Default)]
struct Waiters {
    generation: u64,
    wakers: Vec<Option<Waker>>,
}

impl Signal {
    /// Wakes every waiting task; each re-checks its condition.
    pub fn notify_all(&self) {
        let wakers = {
            let mut waiters = self.waiters.borrow_mut();
            waiters.generation += 1;
            std::mem::take(&mut waiters.wakers)
        };
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Waits until `check` returns `Some`, re-checking after every notification.
    ///
    /// A waiter that is dropped before it completes (the losing side of a race such as
    /// [`Latch::or_stop`]) clears its slot. Otherwise its waker clone would stay in the list
    /// until the next notification, and a loop racing against a signal that rarely fires
    /// would pile up clones of its task's waker without bound.
    pub async fn wait_for<T>(&self, mut check: impl FnMut() -> Option<T>) -> T {
        let registration = Registration {
            signal: self,
            slot: Cell::new(None),
        };
        poll_fn(|context| {
            if let Some(value) = check() {
                return Poll::Ready(value);
            }
            let mut waiters = self.waiters.borrow_mut();
            let generation = waiters.generation;
            match registration.slot.get() {
                Some((registered, slot)) if registered == generation => {
                    let current = &mut waiters.wakers[slot];
                    if !current
                        .as_ref()
                        .is_some_and(|w| w.will_wake(context.waker()))
                    {
                        *current = Some(context.waker().clone());
                    }
                }
                _ => {
                    waiters.wakers.push(Some(context.waker().clone()));
                    registration
                        .slot
                        .set(Some((generation, waiters.wakers.len() - 1)));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The slot a waiter registered in, cleared when the waiter completes or is dropped.
struct Registration<'a> {
    signal: &'a Signal,
    /// Generation and index of the slot, once the waiter registered.
    slot: Cell<Option<(u64, usize)>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let Some((registered, slot)) = self.slot.get() else {
            return;
        };
        let mut waiters = self.signal.waiters.borrow_mut();
        if registered != waiters.generation {
            return;
        }
        if let Some(waker) = waiters.wakers.get_mut(slot) {
            *waker = None;
        }
        // The waiter that leaves is usually the newest. Dropping trailing empty slots keeps
        // the list no longer than the live waiters, even in a loop that races a quiet signal.
        while waiters.wakers.last().is_some_and(Option::is_none) {
            waiters.wakers.pop();
        }
    }
}

/// A flag that is set once, with a way to wait for it: the stop signal of a set of tasks.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: std::cell::Cell<bool>,
    signal: Signal,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        self.signal.notify_all();
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub async fn wait(&self) {
        self.signal.wait_for(|| self.is_set().then_some(())).await;
    }

    /// Runs `future` until it completes (`Some`) or the latch is set (`None`), so that a
    /// task blocked on a socket or a channel still stops when its owner stops.
    pub async fn or_stop<T>(&self, future: impl std::future::Future<Output = T>) -> Option<T> {
        let stopped = async {
            self.wait().await;
            None
        };
        futures_lite::future::or(async { Some(future.await) }, stopped).await
    }
}

/// A waker that counts how often it was woken, for tests of code that wakes tasks.
#[cfg(test)]
pub(crate) struct CountingWaker(pub(crate) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Waker};

    use super::*;

    #[test]
    fn dropped_waiters_leave_no_waker_behind() {
        let signal = Signal::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut context = Context::from_waker(&waker);
        for _ in 0..100_000 {
            let mut waiter = pin!(signal.wait_for(|| None::<()>));
            assert!(waiter.as_mut().poll(&mut context).is_pending());
        }
        assert!(signal.waiters.borrow().wakers.is_empty());
        // One reference in `waker`, one in `counter`: no clone was kept.
        assert_eq!(Arc::strong_count(&counter), 2);
    }

    #[test]
    fn notified_waiter_completes_once_ready() {
        let signal = Signal::default();
        let ready = Cell::new(false);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut context = Context::from_waker(&waker);
        let mut waiter = pin!(signal.wait_for(|| ready.get().then_some(7)));
        assert!(waiter.as_mut().poll(&mut context).is_pending());
        signal.notify_all();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        ready.set(true);
        assert_eq!(waiter.as_mut().poll(&mut context), Poll::Ready(7));
    }
}
