//! A periodic timer that bounds how long a glommio executor can sleep through a
//! completion it missed.
//!
//! glommio 0.9 parks an idle executor in `io_uring_enter` on its main ring, with the
//! latency ring linked to it by a poll request. On Linux 6.18 (the development machine)
//! that park occasionally misses a completion: the operation has finished, its completion
//! waits in a ring, and the executor stays asleep until some other event wakes it. About
//! one node start in 150 hung this way, parked forever in the log's first open or write,
//! with six nodes starting at once on two cores. A pending timer makes every park a
//! timed one, and each wake-up drains all rings, so a missed completion is found within
//! one [`WAKE_GUARD_INTERVAL`] instead of never.
//!
//! NOTE: which ring the missed completion sits in, and whether the kernel or glommio
//! loses the wake-up, is not established. The guard bounds the stall but does not remove
//! the cause, so an idle executor may still respond up to one interval late.
//!
//! Every long-lived executor the engine builds runs a guard: the shards (whose ticker
//! starts only once the log is open), the client service and the client. It costs one
//! timer wake-up per interval on an idle executor. On a busy one the timer fires inside
//! loop turns that run anyway.

use std::time::Duration;

/// How often the guard wakes its executor: the longest a missed completion waits.
pub const WAKE_GUARD_INTERVAL: Duration = Duration::from_millis(10);

/// Spawns the guard on the current glommio executor. It runs until the executor ends or
/// the returned task is cancelled or dropped. Call [`glommio::Task::detach`] to keep it
/// for the executor's life.
///
/// # Panics
/// Outside a glommio executor, as `glommio::spawn_local` does.
pub fn spawn_wake_guard() -> glommio::Task<()> {
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(WAKE_GUARD_INTERVAL).await;
        }
    })
}
