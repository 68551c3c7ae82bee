//! The event queue of a shard: every task of the shard (connection readers, the ticker,
//! the durability watcher, the bridge from application threads) pushes events here, and
//! the shard's loop drains them all at once before it collects ready work.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use crate::signal::Signal;

#[derive(Debug)]
struct Inner<E> {
    events: RefCell<VecDeque<E>>,
    /// Events beyond which [`EventQueue::push`] waits.
    capacity: usize,
    readable: Signal,
    writable: Signal,
    closed: Cell<bool>,
}

/// A bounded queue of one executor. Clones share the queue.
#[derive(Debug)]
pub(crate) struct EventQueue<E> {
    inner: Rc<Inner<E>>,
}

impl<E> Clone for EventQueue<E> {
    fn clone(&self) -> Self {
        EventQueue {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new(capacity: usize) -> Self {
        EventQueue {
            inner: Rc::new(Inner {
                events: RefCell::new(VecDeque::new()),
                capacity,
                readable: Signal::default(),
                writable: Signal::default(),
                closed: Cell::new(false),
            }),
        }
    }

    /// Appends an event, waiting while the queue is full. Returns false once the queue is
    /// closed, dropping the event.
    pub async fn push(&self, event: E) -> bool {
        let inner = &self.inner;
        let open = inner
            .writable
            .wait_for(|| {
                if inner.closed.get() {
                    return Some(false);
                }
                (inner.events.borrow().len() < inner.capacity).then_some(true)
            })
            .await;
        if open {
            self.push_now(event);
        }
        open
    }

    /// Appends an event even when the queue is full. For events whose number is bounded by
    /// their source, such as ticks and durability reports.
    pub fn push_now(&self, event: E) {
        if self.inner.closed.get() {
            return;
        }
        self.inner.events.borrow_mut().push_back(event);
        self.inner.readable.notify_all();
    }

    /// Waits until at least one event is queued, then moves every queued event into `out`.
    /// Returns false once the queue is closed.
    pub async fn drain_into(&self, out: &mut Vec<E>) -> bool {
        let inner = &self.inner;
        let open = inner
            .readable
            .wait_for(|| {
                if inner.closed.get() {
                    return Some(false);
                }
                (!inner.events.borrow().is_empty()).then_some(true)
            })
            .await;
        out.extend(inner.events.borrow_mut().drain(..));
        inner.writable.notify_all();
        open
    }

    /// Closes the queue: pending and future pushes are dropped and waiters wake.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner.events.borrow_mut().clear();
        self.inner.readable.notify_all();
        self.inner.writable.notify_all();
    }

    /// Runs `future` until it completes (`Some`) or the queue closes (`None`).
    pub async fn or_closed<T>(&self, future: impl std::future::Future<Output = T>) -> Option<T> {
        let inner = &self.inner;
        let closed = async {
            inner
                .readable
                .wait_for(|| inner.closed.get().then_some(()))
                .await;
            None
        };
        futures_lite::future::or(async { Some(future.await) }, closed).await
    }
}
