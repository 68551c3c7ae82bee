//! The write-ahead log's performance goals, checked against measured figures:
//!
//! 1. Bandwidth: 4 KiB entries reach at least 80 % of the device's sequential DMA bandwidth
//!    (large writes, each followed by fdatasync) in the best cell of 4 KiB entries, with
//!    one or several entries per submission. The report names the best with one too. The
//!    device's bandwidth drifts by several times within minutes on shared disks, so it is
//!    sampled at the start of the run and beside each 4 KiB cell, and the fastest sample
//!    counts.
//! 2. Small entries: at least 1,000,000 16-byte entries per second on one core, with at
//!    least 100 entries sharing each fdatasync.
//! 3. Latency: the p99 append-to-durable latency stays within 2 times the device's own
//!    write + fdatasync p99 at the same load, in every cell: writes of the cell's size, one
//!    at a time, at the cell's rate of writes.

use serde::Serialize;

use super::LatencySummary;
use super::device::DeviceSample;
use super::load::LoadSpec;

/// Entry size of the bandwidth goal, in bytes.
pub const BANDWIDTH_ENTRY_BYTES: usize = 4096;
/// Share of the device's sequential bandwidth the bandwidth goal requires.
pub const BANDWIDTH_SHARE_MIN: f64 = 0.8;
/// Entry size of the small-entry goal, in bytes.
pub const SMALL_ENTRY_BYTES: usize = 16;
pub const SMALL_ENTRIES_PER_SEC_MIN: f64 = 1_000_000.0;
pub const SMALL_ENTRIES_PER_SYNC_MIN: f64 = 100.0;
/// Largest ratio of the log's p99 latency to the device's the latency goal allows.
pub const LATENCY_RATIO_MAX: f64 = 2.0;

/// Why a cell runs, which decides the goals it counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellRole {
    /// One of the grid of entry sizes and appender counts, with one entry per submission.
    Grid,
    /// Several entries per submission, like a Raft leader's `Ready`.
    Batched,
    /// 4 KiB entries from more appenders, or more entries per submission, than one batch
    /// holds, so that one batch is written while others sync and the next fills: the
    /// log's best bandwidth, with one entry per submission and with several. Several
    /// batches are in flight, so the device alone one write at a time is no reference for
    /// its latency, and the latency goal leaves these cells out.
    Bandwidth,
}

/// The figures of one measured load, with the device's at the same write size beside them.
#[derive(Clone, Debug, Serialize)]
pub struct CellReport {
    pub spec: LoadSpec,
    pub role: CellRole,
    pub entries_per_sec: f64,
    pub payload_mib_per_sec: f64,
    pub entries_per_sync: f64,
    /// Mean bytes per write, the size the device receives.
    pub write_bytes_mean: f64,
    /// Append-to-durable latency, one sample per submission.
    pub latency: LatencySummary,
    /// CPU time of the executor's thread as a share of wall time.
    pub thread_cpu_share: Option<f64>,
    /// Mean time of one batch write and of its sync, as the log's own tasks saw them: the
    /// device's time plus the wait until the executor noticed completion. With O_DSYNC
    /// segments the sync is the write itself, and both means are the same.
    pub log_write_micros_mean: Option<f64>,
    pub log_sync_micros_mean: Option<f64>,
    /// The device alone at the cell's load: writes of `write_bytes_mean` rounded up to a
    /// block, each followed by fdatasync, paced at the cell's rate of writes.
    pub device: DeviceSample,
    /// The device at the same write size, each write starting as soon as the previous
    /// fdatasync returned: its best case, for comparison.
    pub device_back_to_back: DeviceSample,
    /// For cells with the bandwidth goal's entry size: the device's sequential bandwidth
    /// (1 MiB writes), the higher of the samples taken right before and right after the
    /// cell.
    pub sequential_beside: Option<DeviceSample>,
    /// Seconds of the cell's unmeasured start (see `load::Warmup`).
    pub warmup_secs: f64,
    /// Segments the log rotated to while measured, and of those, the new ones it created
    /// (zero-filled, unless configured otherwise) instead of reusing a retired one.
    pub rotations: u64,
    pub segments_new: u64,
}

impl CellReport {
    /// Returns the log's p99 latency divided by the device's p99 at the same load.
    pub fn latency_ratio(&self) -> f64 {
        self.latency.p99_micros / self.device.latency.p99_micros
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Pass,
    Fail,
    /// The run had no cell the goal applies to.
    NotMeasured,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "NOT MEASURED",
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GoalReport {
    pub goal: &'static str,
    pub verdict: Verdict,
    /// The figures behind the verdict, in one or more sentences.
    pub detail: String,
}

fn verdict(passed: bool) -> Verdict {
    if passed { Verdict::Pass } else { Verdict::Fail }
}

/// Goal 1. The reference is the fastest sample of the device's sequential bandwidth in the
/// run: `sequential`, taken at its start, or one taken beside a cell. Probes right after
/// cells that wrote gigabytes measured less than half of the run's fastest sample on the
/// development VM, so a slow sample never lowers the reference.
pub fn check_bandwidth(cells: &[CellReport], sequential: &DeviceSample) -> GoalReport {
    let goal = "bandwidth of 4 KiB entries";
    let best = cells
        .iter()
        .filter(|cell| cell.spec.entry_bytes == BANDWIDTH_ENTRY_BYTES)
        .max_by(|a, b| a.payload_mib_per_sec.total_cmp(&b.payload_mib_per_sec));
    let Some(best) = best else {
        return GoalReport {
            goal,
            verdict: Verdict::NotMeasured,
            detail: format!("no cell had {BANDWIDTH_ENTRY_BYTES}-byte entries"),
        };
    };
    let reference = cells.iter().filter_map(|cell| cell.sequential_beside).fold(
        *sequential,
        |fastest, sample| {
            if sample.mib_per_sec > fastest.mib_per_sec {
                sample
            } else {
                fastest
            }
        },
    );
    let share = best.payload_mib_per_sec / reference.mib_per_sec;
    // A Raft shard under load hands the log several entries per submission, so the goal
    // counts such cells. The best with one entry each shows the cost per submission.
    let single = cells
        .iter()
        .filter(|cell| {
            cell.spec.entry_bytes == BANDWIDTH_ENTRY_BYTES && cell.spec.entries_per_submit == 1
        })
        .max_by(|a, b| a.payload_mib_per_sec.total_cmp(&b.payload_mib_per_sec));
    let single = match single {
        Some(cell) if best.spec.entries_per_submit > 1 => format!(
            "; with one entry per submission: {:.1} MiB/s with {} appenders, {:.1} %",
            cell.payload_mib_per_sec,
            cell.spec.appenders,
            cell.payload_mib_per_sec / reference.mib_per_sec * 100.0
        ),
        _ => String::new(),
    };
    GoalReport {
        goal,
        verdict: verdict(share >= BANDWIDTH_SHARE_MIN),
        detail: format!(
            "{:.1} MiB/s of payload with {} appenders x {} entries per submission is {:.1} % \
             of the device's {:.1} MiB/s with {} writes, its fastest sample in this run (at \
             the start: {:.1} MiB/s) (goal: at least {:.0} %){single}",
            best.payload_mib_per_sec,
            best.spec.appenders,
            best.spec.entries_per_submit,
            share * 100.0,
            reference.mib_per_sec,
            super::format_bytes(reference.write_bytes),
            sequential.mib_per_sec,
            BANDWIDTH_SHARE_MIN * 100.0,
        ),
    }
}

/// Goal 2. Reports the best qualifying cell with one entry per submission and the best with
/// more, and passes when either reaches the rate.
pub fn check_small_entries(cells: &[CellReport]) -> GoalReport {
    let goal = "1 M 16-byte entries/s on one core";
    let small: Vec<&CellReport> = cells
        .iter()
        .filter(|cell| cell.spec.entry_bytes == SMALL_ENTRY_BYTES)
        .collect();
    if small.is_empty() {
        return GoalReport {
            goal,
            verdict: Verdict::NotMeasured,
            detail: format!("no cell had {SMALL_ENTRY_BYTES}-byte entries"),
        };
    }
    let best_of = |single: bool| {
        small
            .iter()
            .filter(|cell| (cell.spec.entries_per_submit == 1) == single)
            .max_by(|a, b| {
                let qualifies = |cell: &CellReport| {
                    (
                        cell.entries_per_sync >= SMALL_ENTRIES_PER_SYNC_MIN,
                        cell.entries_per_sec,
                    )
                };
                let (a_ok, a_rate) = qualifies(a);
                let (b_ok, b_rate) = qualifies(b);
                a_ok.cmp(&b_ok).then(a_rate.total_cmp(&b_rate))
            })
            .copied()
    };
    let describe = |cell: &CellReport| {
        format!(
            "{:.0} entries/s with {} appenders x {} entries per submission, {:.1} entries per \
             fdatasync",
            cell.entries_per_sec,
            cell.spec.appenders,
            cell.spec.entries_per_submit,
            cell.entries_per_sync,
        )
    };
    let passes = |cell: &CellReport| {
        cell.entries_per_sec >= SMALL_ENTRIES_PER_SEC_MIN
            && cell.entries_per_sync >= SMALL_ENTRIES_PER_SYNC_MIN
    };
    let mut parts = Vec::new();
    let mut passed = false;
    for (label, best) in [
        ("one entry per submission", best_of(true)),
        ("several entries per submission", best_of(false)),
    ] {
        if let Some(cell) = best {
            passed |= passes(cell);
            parts.push(format!("best with {label}: {}", describe(cell)));
        }
    }
    GoalReport {
        goal,
        verdict: verdict(passed),
        detail: format!(
            "{} (goal: at least {SMALL_ENTRIES_PER_SEC_MIN:.0} entries/s with at least \
             {SMALL_ENTRIES_PER_SYNC_MIN:.0} entries per fdatasync)",
            parts.join("; ")
        ),
    }
}

/// Goal 3: every cell's p99 within the allowed ratio of the device's p99.
///
/// Each cell's reference is the device doing what the log did in the cell: writes of the
/// cell's mean write size (rounded up to a block), each followed by fdatasync, one at a
/// time, as many per second as the log wrote. They run one at a time because the
/// closed-loop log rarely has a second batch to write while one syncs. They run at the
/// log's rate because a virtual disk can complete a write after an idle gap several times
/// slower than one right after the previous fdatasync. A log always has such a gap while
/// it prepares the next batch. `shardraft-bench log` measures the reference
/// right after each cell, because a virtual disk's fdatasync p99 can swing between 0.3 and
/// 4 ms within minutes.
pub fn check_latency(cells: &[CellReport]) -> GoalReport {
    let goal = "p99 append-to-durable latency";
    let covered: Vec<&CellReport> = cells
        .iter()
        .filter(|cell| cell.role != CellRole::Bandwidth)
        .collect();
    let worst = covered
        .iter()
        .max_by(|a, b| a.latency_ratio().total_cmp(&b.latency_ratio()));
    let Some(worst) = worst else {
        return GoalReport {
            goal,
            verdict: Verdict::NotMeasured,
            detail: "no cell ran".to_string(),
        };
    };
    let failing = covered
        .iter()
        .filter(|cell| cell.latency_ratio() > LATENCY_RATIO_MAX)
        .count();
    let left_out: Vec<String> = cells
        .iter()
        .filter(|cell| cell.role == CellRole::Bandwidth)
        .map(|cell| {
            format!(
                "{} appenders x {} {} entries, {:.2}x",
                cell.spec.appenders,
                cell.spec.entries_per_submit,
                super::format_bytes(cell.spec.entry_bytes as u64),
                cell.latency_ratio()
            )
        })
        .collect();
    let left_out = if left_out.is_empty() {
        String::new()
    } else {
        format!(
            "; not counted, with several batches in flight: {}",
            left_out.join(", ")
        )
    };
    GoalReport {
        goal,
        verdict: verdict(failing == 0),
        detail: format!(
            "{failing} of {} cells above {LATENCY_RATIO_MAX:.0}x the device's p99; worst: {} \
             entries with {} appenders x {} per submission, p99 {:.0} us against the \
             device's {:.0} us at {} writes every {:.0} us ({:.2}x){left_out}",
            covered.len(),
            super::format_bytes(worst.spec.entry_bytes as u64),
            worst.spec.appenders,
            worst.spec.entries_per_submit,
            worst.latency.p99_micros,
            worst.device.latency.p99_micros,
            super::format_bytes(worst.device.write_bytes),
            worst.device.interval_micros,
            worst.latency_ratio(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::payload::PayloadKind;

    fn device(write_bytes: u64, mib_per_sec: f64, p99_micros: f64) -> DeviceSample {
        DeviceSample {
            write_bytes,
            ops: 100,
            elapsed_secs: 1.0,
            ops_per_sec: 100.0,
            mib_per_sec,
            interval_micros: 0.0,
            latency: LatencySummary {
                samples: 100,
                p50_micros: p99_micros / 2.0,
                p99_micros,
                max_micros: p99_micros,
            },
        }
    }

    fn cell(entry_bytes: usize, appenders: usize, entries_per_submit: usize) -> CellReport {
        CellReport {
            spec: LoadSpec {
                entry_bytes,
                appenders,
                entries_per_submit,
                compact_every_entries: 0,
                compact_every_bytes: 0,
                payload: PayloadKind::Random,
            },
            role: if entries_per_submit > 1 {
                CellRole::Batched
            } else {
                CellRole::Grid
            },
            entries_per_sec: 1000.0,
            payload_mib_per_sec: 10.0,
            entries_per_sync: 1.0,
            write_bytes_mean: 4096.0,
            latency: LatencySummary {
                samples: 10,
                p50_micros: 100.0,
                p99_micros: 150.0,
                max_micros: 200.0,
            },
            thread_cpu_share: None,
            log_write_micros_mean: None,
            log_sync_micros_mean: None,
            device: device(4096, 10.0, 100.0),
            device_back_to_back: device(4096, 20.0, 50.0),
            sequential_beside: None,
            warmup_secs: 0.3,
            rotations: 0,
            segments_new: 0,
        }
    }

    #[test]
    fn bandwidth_uses_best_4k_cell() {
        let mut slow = cell(4096, 1, 1);
        slow.payload_mib_per_sec = 100.0;
        let mut fast = cell(4096, 256, 1);
        fast.payload_mib_per_sec = 850.0;
        let mut small = cell(16, 256, 1);
        small.payload_mib_per_sec = 5000.0;

        let report = check_bandwidth(&[slow, fast, small], &device(1 << 20, 1000.0, 1.0));

        assert_eq!(report.verdict, Verdict::Pass);
        assert!(report.detail.contains("85.0 %"), "{}", report.detail);
    }

    #[test]
    fn bandwidth_counts_batched_cells() {
        let mut single = cell(4096, 1024, 1);
        single.payload_mib_per_sec = 600.0;
        let mut batched = cell(4096, 64, 16);
        batched.payload_mib_per_sec = 820.0;

        let report = check_bandwidth(&[single, batched], &device(1 << 20, 1000.0, 1.0));

        assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
        assert!(
            report.detail.contains("64 appenders x 16"),
            "{}",
            report.detail
        );
        assert!(
            report
                .detail
                .contains("with one entry per submission: 600.0 MiB/s with 1024 appenders, 60.0 %"),
            "{}",
            report.detail
        );
    }

    #[test]
    fn bandwidth_below_share_fails() {
        let mut only = cell(4096, 16, 1);
        only.payload_mib_per_sec = 700.0;

        let report = check_bandwidth(&[only], &device(1 << 20, 1000.0, 1.0));

        assert_eq!(report.verdict, Verdict::Fail);
    }

    #[test]
    fn bandwidth_counts_the_fastest_device_sample() {
        // 850 MiB/s is 85 % of the start-of-run figure but only 70.8 % of the device's
        // fastest sample, taken beside the cell.
        let mut drifted = cell(4096, 256, 1);
        drifted.payload_mib_per_sec = 850.0;
        drifted.sequential_beside = Some(device(1 << 20, 1200.0, 1.0));

        let report = check_bandwidth(&[drifted], &device(1 << 20, 1000.0, 1.0));

        assert_eq!(report.verdict, Verdict::Fail);
        assert!(report.detail.contains("70.8 %"), "{}", report.detail);
        assert!(report.detail.contains("1000.0"), "{}", report.detail);
    }

    #[test]
    fn slow_sample_beside_a_cell_is_ignored() {
        // The device measured slow around this cell, after the cells before it wrote
        // gigabytes. The log's rate is judged against the faster start-of-run figure.
        let mut after_writeback = cell(4096, 16, 64);
        after_writeback.payload_mib_per_sec = 1831.0;
        after_writeback.sequential_beside = Some(device(1 << 20, 1480.0, 1.0));

        let report = check_bandwidth(&[after_writeback], &device(1 << 20, 3312.0, 1.0));

        assert_eq!(report.verdict, Verdict::Fail);
        assert!(report.detail.contains("55.3 %"), "{}", report.detail);
    }

    #[test]
    fn bandwidth_without_4k_cells_is_not_measured() {
        let report = check_bandwidth(&[cell(16, 1, 1)], &device(1 << 20, 1000.0, 1.0));

        assert_eq!(report.verdict, Verdict::NotMeasured);
    }

    #[test]
    fn small_entries_need_rate_and_sharing() {
        let mut fast_unshared = cell(16, 1, 1);
        fast_unshared.entries_per_sec = 2_000_000.0;
        fast_unshared.entries_per_sync = 50.0;

        let report = check_small_entries(&[fast_unshared]);

        assert_eq!(report.verdict, Verdict::Fail);
    }

    #[test]
    fn small_entries_pass_with_batched_submissions() {
        let mut single = cell(16, 256, 1);
        single.entries_per_sec = 300_000.0;
        single.entries_per_sync = 250.0;
        let mut batched = cell(16, 256, 64);
        batched.entries_per_sec = 1_500_000.0;
        batched.entries_per_sync = 9000.0;

        let report = check_small_entries(&[single, batched]);

        assert_eq!(report.verdict, Verdict::Pass);
        assert!(report.detail.contains("one entry per submission: 300000"));
        assert!(
            report
                .detail
                .contains("several entries per submission: 1500000")
        );
    }

    #[test]
    fn small_entries_prefer_qualifying_cell() {
        let mut unshared = cell(16, 1, 1);
        unshared.entries_per_sec = 900_000.0;
        unshared.entries_per_sync = 1.0;
        let mut shared = cell(16, 256, 1);
        shared.entries_per_sec = 400_000.0;
        shared.entries_per_sync = 200.0;

        let report = check_small_entries(&[unshared, shared]);

        assert!(
            report.detail.contains("400000 entries/s"),
            "{}",
            report.detail
        );
    }

    #[test]
    fn latency_fails_on_any_slow_cell() {
        let fine = cell(16, 1, 1);
        let mut slow = cell(4096, 256, 1);
        slow.latency.p99_micros = 250.0;

        let report = check_latency(&[fine, slow]);

        assert_eq!(report.verdict, Verdict::Fail);
        assert!(
            report.detail.starts_with("1 of 2 cells"),
            "{}",
            report.detail
        );
        assert!(report.detail.contains("2.50x"), "{}", report.detail);
    }

    #[test]
    fn latency_leaves_out_bandwidth_cells_but_names_them() {
        let mut bandwidth = cell(4096, 1024, 1);
        bandwidth.role = CellRole::Bandwidth;
        bandwidth.latency.p99_micros = 400.0;
        let report = check_latency(&[cell(16, 1, 1), bandwidth]);
        assert_eq!(report.verdict, Verdict::Pass, "{}", report.detail);
        assert!(
            report.detail.starts_with("0 of 1 cells"),
            "{}",
            report.detail
        );
        assert!(
            report
                .detail
                .contains("1024 appenders x 1 4 KiB entries, 4.00x"),
            "{}",
            report.detail
        );
    }

    #[test]
    fn latency_within_ratio_passes() {
        let report = check_latency(&[cell(16, 1, 1), cell(256, 16, 1)]);

        assert_eq!(report.verdict, Verdict::Pass);
    }
}
