//! A wake-up signal for tasks of one executor: tasks wait until a condition they check
//! holds, and whoever changes the state it depends on calls [`Signal::notify_all`].

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Wakes every waiting task; each re-checks its condition.
    pub fn notify_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waits until `check` returns `Some`, re-checking after every notification.
    pub async fn wait_for<T>(&self, mut check: impl FnMut() -> Option<T>) -> T {
        poll_fn(|context| match check() {
            Some(value) => Poll::Ready(value),
            None => {
                let mut wakers = self.wakers.borrow_mut();
                if !wakers.iter().any(|waker| waker.will_wake(context.waker())) {
                    wakers.push(context.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
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
