//! The live progress display of a running point, on standard error.
//!
//! On a terminal it is one line, redrawn four times per second with the operations per
//! second and the p99 latency measured so far, and erased when the point ends so that the
//! summary starts on a clean line. When standard error is not a terminal (a log file, CI),
//! it prints a plain line at most once per second. `--no-progress` turns it off.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::summary::format_latency_nanos;
use super::workload::RunLength;

/// Time between redraws on a terminal.
const TERMINAL_INTERVAL: Duration = Duration::from_millis(250);

/// Time between plain lines when standard error is not a terminal.
const LINES_INTERVAL: Duration = Duration::from_secs(1);

/// Measured time before a line shows a rate. Operations that complete in the first
/// instants after the warm-up, divided by a few microseconds, read as millions per second.
const RATE_MEASURED_MIN: Duration = Duration::from_millis(200);

/// Display mode of the progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Nothing.
    Off,
    /// One line redrawn in place.
    Terminal,
    /// Plain lines, at most one per second.
    Lines,
}

impl ProgressStyle {
    /// Picks the style for standard error: `Terminal` on a terminal, `Lines` otherwise, `Off`
    /// unless `enabled`.
    pub fn detect(enabled: bool) -> ProgressStyle {
        if !enabled {
            ProgressStyle::Off
        } else if std::io::stderr().is_terminal() {
            ProgressStyle::Terminal
        } else {
            ProgressStyle::Lines
        }
    }
}

/// The state of a point at one instant, as the display shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgressSnapshot {
    /// Warm-up still to run; zero once measuring.
    pub warmup_left: Duration,
    /// Measured time so far.
    pub measured: Duration,
    pub length: RunLength,
    /// Measured successful operations so far.
    pub ok: u64,
    /// Measured failed operations so far.
    pub errors: u64,
    /// Measured late operations so far (open loop).
    pub late: u64,
    /// p99 latency of the measured successful operations so far.
    pub p99_nanos: Option<u64>,
}

/// The progress display of one run, relabelled for each point.
#[derive(Debug)]
pub struct Progress {
    style: ProgressStyle,
    label: String,
    last_shown: Option<Instant>,
    /// Whether a terminal line is drawn and not yet erased.
    drawn: bool,
}

impl Progress {
    /// Creates a display in `style` whose lines start with `label`.
    pub fn new(style: ProgressStyle, label: String) -> Progress {
        Progress {
            style,
            label,
            last_shown: None,
            drawn: false,
        }
    }

    /// Sets the label of the lines that follow, such as the point being run.
    pub fn set_label(&mut self, label: String) {
        self.label = label;
        self.last_shown = None;
    }

    /// Time between two updates that show something.
    pub fn interval(&self) -> Duration {
        match self.style {
            ProgressStyle::Terminal => TERMINAL_INTERVAL,
            ProgressStyle::Off | ProgressStyle::Lines => LINES_INTERVAL,
        }
    }

    /// Shows the state that `snapshot` reads, when the last update was at least one
    /// interval ago. `snapshot` is called only then.
    pub fn update(&mut self, snapshot: impl FnOnce() -> ProgressSnapshot) {
        if self.style == ProgressStyle::Off {
            return;
        }
        let now = Instant::now();
        if self
            .last_shown
            .is_some_and(|shown| now.duration_since(shown) < self.interval())
        {
            return;
        }
        self.last_shown = Some(now);
        let line = format_line(&self.label, &snapshot());
        let mut stderr = std::io::stderr().lock();
        // Progress is a courtesy: a closed or full standard error must not end the run.
        let _ = match self.style {
            ProgressStyle::Terminal => write!(stderr, "\r\x1b[2K{line}"),
            ProgressStyle::Lines | ProgressStyle::Off => writeln!(stderr, "{line}"),
        };
        let _ = stderr.flush();
        self.drawn = self.style == ProgressStyle::Terminal;
    }

    /// Erases the terminal line, if one is drawn.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.drawn = false;
        }
    }
}

/// Formats one line of progress: the label, then the warm-up or the measured part so far.
pub fn format_line(label: &str, snapshot: &ProgressSnapshot) -> String {
    if !snapshot.warmup_left.is_zero() {
        return format!(
            "{label}: warm-up, {:.1} s left",
            snapshot.warmup_left.as_secs_f64()
        );
    }
    let measured_secs = snapshot.measured.as_secs_f64();
    let done = match snapshot.length {
        RunLength::Duration { secs } => format!("{measured_secs:.1}/{secs:.1} s"),
        RunLength::Operations { count } => format!("{}/{count} ops", snapshot.ok + snapshot.errors),
    };
    let rate = if snapshot.measured >= RATE_MEASURED_MIN {
        format!("{:.0}", snapshot.ok as f64 / measured_secs)
    } else {
        "-".to_string()
    };
    let p99 = snapshot
        .p99_nanos
        .map_or_else(|| "-".to_string(), format_latency_nanos);
    let mut line = format!(
        "{label}: {done}, {rate} ops/s, p99 {p99}, {} errors",
        snapshot.errors
    );
    if snapshot.late > 0 {
        line.push_str(&format!(", {} late", snapshot.late));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measuring() -> ProgressSnapshot {
        ProgressSnapshot {
            warmup_left: Duration::ZERO,
            measured: Duration::from_secs(2),
            length: RunLength::Duration { secs: 5.0 },
            ok: 5000,
            errors: 1,
            late: 0,
            p99_nanos: Some(1_250_000),
        }
    }

    #[test]
    fn line_during_warmup_shows_time_left() {
        let snapshot = ProgressSnapshot {
            warmup_left: Duration::from_millis(700),
            ..measuring()
        };
        assert_eq!(
            format_line("point 1/1", &snapshot),
            "point 1/1: warm-up, 0.7 s left"
        );
    }

    #[test]
    fn line_while_measuring_shows_rate_and_p99() {
        let line = format_line("point 1/1", &measuring());
        assert_eq!(
            line,
            "point 1/1: 2.0/5.0 s, 2500 ops/s, p99 1.25 ms, 1 errors"
        );
    }

    #[test]
    fn line_right_after_warmup_shows_no_rate() {
        let snapshot = ProgressSnapshot {
            measured: Duration::from_micros(80),
            ok: 500,
            errors: 0,
            p99_nanos: None,
            ..measuring()
        };
        assert_eq!(
            format_line("point 1/1", &snapshot),
            "point 1/1: 0.0/5.0 s, - ops/s, p99 -, 0 errors"
        );
    }

    #[test]
    fn line_counts_operations_and_late_ones() {
        let snapshot = ProgressSnapshot {
            length: RunLength::Operations { count: 10_000 },
            late: 3,
            p99_nanos: None,
            ..measuring()
        };
        let line = format_line("p", &snapshot);
        assert_eq!(
            line,
            "p: 5001/10000 ops, 2500 ops/s, p99 -, 1 errors, 3 late"
        );
    }

    #[test]
    fn off_style_never_reads_a_snapshot() {
        let mut progress = Progress::new(ProgressStyle::Off, "p".to_string());
        progress.update(|| panic!("an Off display read a snapshot"));
    }
}
