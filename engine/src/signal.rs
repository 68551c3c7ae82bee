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
    pub async fn wait_for<T>(&self, mut check: impl FnMut() -> Option<T>) -> T {
        let registration: Cell<Option<(u64, usize)>> = Cell::new(None);
        let value = poll_fn(|context| {
            if let Some(value) = check() {
                return Poll::Ready(value);
            }
            let mut waiters = self.waiters.borrow_mut();
            let generation = waiters.generation;
            match registration.get() {
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
                    registration.set(Some((generation, waiters.wakers.len() - 1)));
                }
            }
            Poll::Pending
        })
        .await;
        if let Some((registered, slot)) = registration.get() {
            let mut waiters = self.waiters.borrow_mut();
            if registered == waiters.generation {
                waiters.wakers[slot] = None;
            }
        }
        value
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
