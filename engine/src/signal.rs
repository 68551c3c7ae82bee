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
