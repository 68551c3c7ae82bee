//! A periodic timer that bounds how long a glommio executor can sleep while it has work.
//!
//! glommio 0.9 can park an executor that has runnable tasks. Its run loop installs a
//! preemption timer, then runs task queues until that timer fires. The timer may have fired
//! before the first queue runs: the thread was descheduled for longer than the timer, as
//! happens on a loaded machine with the shards' 1 ms timer. The loop then runs nothing,
//! finds no completion that woke a task, and parks without a timeout unless some timer is
//! pending (`LocalExecutor::run` and `run_task_queues` in glommio 0.9.0's
//! `src/executor/mod.rs`). The tasks then wait for an unrelated event, forever if none
//! comes. About one node start in 150 hung this way with six nodes starting at once on two
//! cores, parked in the log's first open or write.
//!
//! A pending timer makes every park a timed one, so such a stall ends within one
//! [`WAKE_GUARD_INTERVAL`]. A guard spawned as a task of its own arms its timer only once
//! that task first runs, which is exactly what a stall can prevent; [`guarded`] arms it in
//! the first poll of the future it wraps instead. An executor parked before it polled
//! anything at all cannot be helped from inside; the node replaces such a shard executor
//! (`start_shard_executor` in `node.rs`).
//!
//! A rarer hang needs help from outside. With six to eight nodes starting at once on two
//! cores, about one start in 600 left a shard executor parked in `io_uring_enter` during
//! the log's first open although the guard's timer was pending. glommio arms user timers
//! in its latency ring and sleeps on its main ring, which a poll request on the latency
//! ring should wake. That wake-up is lost. Stopping and continuing the process ended the hang,
//! since the interrupted `io_uring_enter` is restarted and then finds the completion. So
//! each shard's guard also counts its ticks in a [`ShardPulse`], and a [`Watchdog`] thread
//! per node sends the executor thread [`NUDGE_SIGNAL`] when the count stalls for
//! [`STALL_MILLIS`]. The same lost wake-up also happens under steady load, about once in
//! a few minutes with 64 writers on the development VM, where a 300 ms bound stalled a
//! leader for 300 to 400 ms.
//!
//! Before it signals, the watchdog reads the thread's scheduler statistics
//! (`/proc/self/task/TID/schedstat`): a thread that ran or waited for a CPU for at least
//! half of the window is busy or starved, not parked, and is left alone. A signal to it
//! would do no harm, but the warning would mislead. So is a thread that is running or
//! waiting for a CPU right now (state `R`), since the statistics count a wait only once it
//! ended. So is a thread in an uninterruptible sleep (state `D`, a blocking file call such
//! as a rename), which a signal cannot wake. Where neither can be read, the watchdog
//! signals every thread that stopped ticking.
//!
//! NOTE: why the wake-up is lost (glommio's ring linking or the kernel) is not
//! established; the watchdog bounds the hang to about [`STALL_MILLIS`].
//!
//! Every long-lived executor the engine builds runs a guard: the shards, the client service
//! and the client. It costs one timer wake-up per interval on an idle executor. On a busy
//! one the timer fires inside loop turns that run anyway.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::Signal;

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

/// Runs `future` with the guard's timer armed from its first poll on, in the same task, so
/// that no park of the executor while `future` is pending lasts longer than
/// [`WAKE_GUARD_INTERVAL`]. The future is also polled at each tick, which a future must
/// tolerate anyway. `pulse` learns the executor's thread and counts the ticks, for a
/// [`Watchdog`].
///
/// # Panics
/// Outside a glommio executor, as glommio's timers do.
pub async fn guarded<F: std::future::Future>(future: F, pulse: Arc<ShardPulse>) -> F::Output {
    *lock(&pulse.thread) = pthread_self();
    pulse
        .thread_id
        .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
    if let Some(name) = std::thread::current().name() {
        *lock(&pulse.thread_name) = name.to_string();
    }
    // Forgets the thread when the future ends or unwinds, before the thread can exit: a
    // signal to a thread that has been joined is undefined behaviour.
    let _forget = ForgetThread(Arc::clone(&pulse));
    let guard = async move {
        loop {
            pulse.ticks.fetch_add(1, Ordering::Relaxed);
            glommio::timer::sleep(WAKE_GUARD_INTERVAL).await;
        }
    };
    futures_lite::future::or(future, guard).await
}

/// Clears a pulse's thread when dropped.
struct ForgetThread(Arc<ShardPulse>);

impl Drop for ForgetThread {
    fn drop(&mut self) {
        *lock(&self.0.thread) = 0;
    }
}

/// Locks one of a pulse's fields, whose value stays valid even if the lock was poisoned.
fn lock<T>(field: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    field
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The signal a [`Watchdog`] sends to a stalled executor thread. SIGURG is otherwise
/// ignored by default and unused here (no out-of-band TCP data).
pub const NUDGE_SIGNAL: Signal = Signal::SIGURG;

/// Milliseconds without a guard tick after which the watchdog nudges an executor that
/// slept through them: 3 guard ticks missed. With the watchdog's period, a lost wake-up
/// then stalls a shard for 30 to 40 ms. The development VM's own pauses last up to 37 ms
/// (measured), so a lost wake-up raises the tuner's stall floor no further than they do.
pub const STALL_MILLIS: u64 = 30;

/// How often the watchdog looks at the pulses.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(10);

/// The share of a stall window that a thread must have spent running or waiting for a
/// CPU to count as busy rather than parked.
const BUSY_SHARE_MIN: f64 = 0.5;

/// One shard executor's guard ticks and thread, shared with its node's [`Watchdog`].
#[derive(Debug, Default)]
pub struct ShardPulse {
    /// The executor's thread; 0 until the guard first ran and again once it ended. The
    /// watchdog signals the thread while it holds this lock, so that it never signals a
    /// thread that has ended.
    thread: Mutex<Pthread>,
    /// The executor thread's name, for the watchdog's warning. For a shard it is
    /// `shard-NODE-SHARD-` followed by glommio's executor id.
    thread_name: Mutex<String>,
    /// The executor thread's kernel thread id, for its scheduler statistics. It is 0 until
    /// the guard first ran.
    thread_id: AtomicI32,
    ticks: AtomicU64,
    /// Signals the watchdog sent to the thread.
    nudges: AtomicU64,
}

impl ShardPulse {
    /// Returns how many times the watchdog interrupted this executor's sleep.
    pub fn nudges(&self) -> u64 {
        self.nudges.load(Ordering::Relaxed)
    }
}

/// A thread that nudges shard executors whose guard stopped ticking. Dropping it stops
/// and joins the thread.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `pulses`, one per shard.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(pulses: Vec<Arc<ShardPulse>>) -> std::io::Result<Watchdog> {
        install_nudge_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("shard-watchdog".to_string())
            .spawn(move || watch(&pulses, &thread_stop))?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The watchdog's record of one pulse.
#[derive(Clone, Copy, Default)]
struct PulseWatch {
    /// The tick count last seen.
    ticks: u64,
    /// Watchdog periods since the count last changed.
    still_periods: u64,
    /// When the count was first seen unchanged, with the thread's scheduler time then.
    window_start: Option<(Instant, Option<u64>)>,
}

fn watch(pulses: &[Arc<ShardPulse>], stop: &AtomicBool) {
    let periods_to_stall = STALL_MILLIS.div_ceil(WATCHDOG_PERIOD.as_millis() as u64);
    let mut seen = vec![PulseWatch::default(); pulses.len()];
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(WATCHDOG_PERIOD);
        for (shard, (pulse, state)) in pulses.iter().zip(&mut seen).enumerate() {
            let thread = lock(&pulse.thread);
            let ticks = pulse.ticks.load(Ordering::Relaxed);
            if *thread == 0 || ticks != state.ticks {
                *state = PulseWatch {
                    ticks,
                    ..PulseWatch::default()
                };
                continue;
            }
            let thread_id = pulse.thread_id.load(Ordering::Relaxed);
            let (window_started_at, scheduled_before) = *state
                .window_start
                .get_or_insert_with(|| (Instant::now(), scheduled_nanos(thread_id)));
            state.still_periods += 1;
            if state.still_periods < periods_to_stall {
                continue;
            }
            state.still_periods = 0;
            state.window_start = None;
            let window_nanos = window_started_at.elapsed().as_nanos() as f64;
            let scheduled = scheduled_before
                .zip(scheduled_nanos(thread_id))
                .map(|(before, now)| now.saturating_sub(before) as f64);
            if let Some(scheduled) = scheduled
                && scheduled >= BUSY_SHARE_MIN * window_nanos
            {
                tracing::debug!(
                    shard,
                    thread = %lock(&pulse.thread_name),
                    window_ms = window_nanos / 1e6,
                    scheduled_ms = scheduled / 1e6,
                    "a shard executor missed its guard ticks while busy; not interrupting it"
                );
                continue;
            }
            match thread_state(thread_id) {
                Some(RUNNABLE_STATE) => {
                    tracing::debug!(
                        shard,
                        thread = %lock(&pulse.thread_name),
                        "a shard executor missed its guard ticks while running or waiting \
                         for a CPU; not interrupting it"
                    );
                    continue;
                }
                Some(UNINTERRUPTIBLE_STATE) => {
                    tracing::debug!(
                        shard,
                        thread = %lock(&pulse.thread_name),
                        "a shard executor missed its guard ticks while blocked in the kernel; \
                         not interrupting it"
                    );
                    continue;
                }
                _ => {}
            }
            tracing::warn!(
                shard,
                thread = %lock(&pulse.thread_name),
                stalled_ms = STALL_MILLIS,
                "a shard executor stopped ticking; interrupting its sleep"
            );
            if pthread_kill(*thread, NUDGE_SIGNAL).is_ok() {
                pulse.nudges.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The state `/proc` gives a thread that runs or waits for a CPU. An executor parked in
/// `io_uring_enter` sleeps instead. The scheduler adds a thread's wait for a CPU to
/// `schedstat` only once the thread runs, so a thread starved for most of the window can
/// show little scheduled time there and still be in this state.
const RUNNABLE_STATE: char = 'R';

/// The state `/proc` gives a thread in an uninterruptible sleep, such as a synchronous
/// disk write or fsync. A signal cannot end that sleep, and the thread is not parked in
/// `io_uring_enter`, which sleeps interruptibly.
const UNINTERRUPTIBLE_STATE: char = 'D';

/// Returns the scheduler state of thread `thread_id` of this process (`R`, `S`, `D`, ...)
/// from `/proc/self/task/TID/stat`, or `None` when that cannot be read.
fn thread_state(thread_id: i32) -> Option<char> {
    if thread_id == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{thread_id}/stat")).ok()?;
    state_of_stat(&text)
}

/// Returns the state field of a `/proc/.../stat` line. The command name before it is in
/// parentheses and may itself contain spaces and parentheses, so the state is the first
/// field after the last `)`.
fn state_of_stat(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// Returns the nanoseconds that thread `thread_id` of this process has spent running and
/// waiting for a CPU, from `/proc/self/task/TID/schedstat`, or `None` when that cannot be
/// read (thread id 0, a kernel without scheduler statistics, or no `/proc`).
fn scheduled_nanos(thread_id: i32) -> Option<u64> {
    if thread_id == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{thread_id}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let running = fields.next()?.ok()?;
    let waiting = fields.next()?.ok()?;
    Some(running.saturating_add(waiting))
}

/// Installs a handler for [`NUDGE_SIGNAL`] once per process: without one the signal is
/// ignored and interrupts nothing. The handler only sets a flag, which is never read.
fn install_nudge_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let Err(error) = signal_hook::flag::register(NUDGE_SIGNAL as i32, flag) {
            tracing::warn!(%error, "cannot handle SIGURG; stuck shard executors stay stuck");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a pulse whose thread is the calling thread, as the guard records it.
    fn pulse_of_this_thread() -> Arc<ShardPulse> {
        let pulse = Arc::new(ShardPulse::default());
        *lock(&pulse.thread) = pthread_self();
        pulse
            .thread_id
            .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
        pulse
    }

    #[test]
    fn watchdog_leaves_busy_threads_alone() {
        if scheduled_nanos(nix::unistd::gettid().as_raw()).is_none() {
            eprintln!(
                "skipped: /proc/self/task/TID/schedstat is not readable here, so the watchdog \
                 cannot tell a busy thread from a parked one and signals both"
            );
            return;
        }
        let (busy_sender, busy) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let busy_thread = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                busy_sender.send(pulse_of_this_thread()).unwrap();
                // Spins without ticking, as a loop turn that runs long does.
                let mut spins = 0u64;
                while !done.load(Ordering::Acquire) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        };
        let busy = busy.recv().unwrap();

        let watchdog = Watchdog::start(vec![Arc::clone(&busy)]).expect("starting the watchdog");
        std::thread::sleep(Duration::from_millis(5 * STALL_MILLIS));
        drop(watchdog);
        done.store(true, Ordering::Release);
        busy_thread.join().unwrap();

        assert_eq!(busy.nudges(), 0, "the busy thread was nudged");
    }

    #[test]
    fn stat_state_follows_the_last_parenthesis() {
        assert_eq!(state_of_stat("42 (shard-1-0-2) S 1 42 42 0 -1"), Some('S'));
        assert_eq!(state_of_stat("42 (a) b) (c) D 1 42"), Some('D'));
        assert_eq!(state_of_stat("42 (truncated"), None);
        assert_eq!(state_of_stat("42 (name)"), None);
        assert_eq!(state_of_stat(""), None);
    }

    #[test]
    fn running_thread_reads_as_running() {
        let state = thread_state(nix::unistd::gettid().as_raw());
        if let Some(state) = state {
            assert_eq!(
                state, 'R',
                "the calling thread runs while it reads its own state"
            );
        }
        assert_eq!(thread_state(0), None);
    }

    #[test]
    fn scheduled_time_needs_a_thread() {
        assert_eq!(scheduled_nanos(0), None);
        assert_eq!(scheduled_nanos(-1), None);
    }

    #[test]
    fn watchdog_nudges_only_stalled_threads() {
        let (stalled_sender, stalled) = std::sync::mpsc::channel();
        let (ticking_sender, ticking) = std::sync::mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let stalled_thread = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                stalled_sender.send(pulse_of_this_thread()).unwrap();
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let ticking_thread = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let pulse = pulse_of_this_thread();
                ticking_sender.send(Arc::clone(&pulse)).unwrap();
                while !done.load(Ordering::Acquire) {
                    pulse.ticks.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let stalled = stalled.recv().unwrap();
        let ticking = ticking.recv().unwrap();

        let watchdog = Watchdog::start(vec![Arc::clone(&stalled), Arc::clone(&ticking)])
            .expect("starting the watchdog");
        std::thread::sleep(Duration::from_millis(3 * STALL_MILLIS));
        drop(watchdog);
        done.store(true, Ordering::Release);
        stalled_thread.join().unwrap();
        ticking_thread.join().unwrap();

        assert!(stalled.nudges() >= 1, "the stalled thread was not nudged");
        assert_eq!(ticking.nudges(), 0, "the ticking thread was nudged");
    }
}
