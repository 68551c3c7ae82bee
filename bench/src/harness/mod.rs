//! The bench harness: one workload, driven against any system that implements [`Target`],
//! with results that can be stored, merged and compared.
//!
//! Data flow of a run: the command line becomes a workload description, and the target
//! opens its sessions (connections). Client tasks on glommio executors then issue requests,
//! in closed loop (each client waits for its reply) or in open loop (requests start at fixed
//! intended times, and latency counts from the intended start). Every completion lands in
//! per-operation HdrHistograms and, with `--check`, in a history for the linearizability
//! checker. The summary, the JSON result, sweep CSV and charts are all made from the
//! result alone.
//!
//! Modules: [`workload`] parses and validates the options and generates keys, operations
//! and values; [`target`] defines the systems under test; [`load`] runs one point on the
//! load threads; [`progress`] shows it live; [`check`] turns the recorded operations into
//! a history and checks it; [`host`] reads the machine facts and probes the device;
//! [`summary`] prints the results and builds each [`result::PointResult`]. [`run`] ties
//! them together for one run.

pub mod chart;
pub mod check;
pub mod compare;
pub mod csv;
pub mod failover;
pub mod host;
pub mod load;
pub mod progress;
pub mod result;
pub mod summary;
pub mod target;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use load::ServerCounters;
use progress::{Progress, ProgressStyle};
use result::{HostFacts, RESULT_SCHEMA_VERSION, RunResult};
use target::embedded::EmbeddedCluster;
use target::endpoints::EndpointsTarget;
use target::{ReadMode, Target};
use workload::{Durability, TargetKind, Workload};

/// The end of a run: its result and what makes it count as failed.
#[derive(Debug)]
pub struct RunOutcome {
    pub result: RunResult,
    /// With `--check`, one line per point whose history was not found linearizable.
    pub failures: Vec<String>,
}

/// Runs `workload`: starts or reaches the target, runs every point, prints the summary,
/// and writes the JSON result to the file that `--json` names.
///
/// # Errors
///
/// When the target cannot be started or reached, a point cannot run, or the result cannot
/// be written. Failed requests are counted in the result, not errors.
pub fn run(workload: Workload) -> anyhow::Result<RunOutcome> {
    let workload = Arc::new(workload);
    let outcome = match workload.target {
        TargetKind::Embedded => run_embedded(&workload)?,
        TargetKind::Endpoints => run_endpoints(&workload)?,
        TargetKind::Etcd => run_etcd(&workload)?,
    };
    if let Some(path) = &workload.json {
        outcome.result.write(path)?;
        println!();
        println!("result written to {}", path.display());
    }
    if let Some(path) = &workload.csv {
        csv::write_csv(&outcome.result, path)?;
        println!("CSV written to {}", path.display());
    }
    if let Some(path) = &workload.chart {
        chart::write_latency_chart(&[&outcome.result], path)?;
        println!("chart written to {}", path.display());
    }
    Ok(outcome)
}

fn run_embedded(workload: &Arc<Workload>) -> anyhow::Result<RunOutcome> {
    let spec = workload
        .cluster
        .as_ref()
        .context("the embedded target has no cluster settings")?;
    let disk = spec.durability != Durability::Memory;
    if disk {
        crate::wal::environment::prepare_data_dir(&spec.dir)?;
    }
    let (mut host, mount) = host::host_facts(disk.then_some(spec.dir.as_path()))?;
    if disk {
        host.device_sync_4k = Some(host::measure_device_sync_4k(&spec.dir)?);
    }

    let mut cluster = EmbeddedCluster::start(spec)?;
    let data_dir = cluster.data_dir().map(|dir| match &mount {
        Some(mount) => format!("{} ({mount}), removed after the run", dir.display()),
        None => dir.display().to_string(),
    });
    let target = Arc::new(cluster.target());
    let mut outcome = run_points(&target, &cluster, workload, host, data_dir);
    drop(target);
    if let (true, Ok(outcome)) = (spec.measure_install, &mut outcome) {
        let measured = cluster.measure_snapshot_install();
        match measured {
            Ok(install) => {
                let install = summary::install_result(&install);
                summary::print_install(&install);
                outcome.result.snapshot_install = Some(install);
            }
            Err(error) => {
                let _ = cluster.shutdown();
                return Err(error.context("measuring the snapshot installs failed"));
            }
        }
    }
    let stopped = cluster.shutdown();
    let outcome = outcome?;
    stopped?;
    Ok(outcome)
}

fn run_endpoints(workload: &Arc<Workload>) -> anyhow::Result<RunOutcome> {
    let (host, _) = host::host_facts(None)?;
    let target = EndpointsTarget::new(workload.endpoints.clone());
    let status = target.status_reader()?;
    run_points(&Arc::new(target), &status, workload, host, None)
}

fn run_etcd(workload: &Arc<Workload>) -> anyhow::Result<RunOutcome> {
    let (host, _) = host::host_facts(None)?;
    let executor = glommio::LocalExecutorBuilder::default()
        .name("bench-etcd-connect")
        .make()
        .map_err(std::io::Error::from)
        .context("starting a glommio executor failed")?;
    let endpoints = workload.endpoints.clone();
    let timeout = target::endpoints::REQUEST_TIMEOUT;
    let target = executor.run(async move {
        shardraft::wake_guard::spawn_wake_guard().detach();
        target::etcd::EtcdTarget::connect(endpoints, timeout).await
    })?;
    drop(executor);
    run_points(&Arc::new(target), &load::NoCounters, workload, host, None)
}

/// Runs every point of `workload` against `target` and assembles the result.
fn run_points<T>(
    target: &Arc<T>,
    counters: &dyn ServerCounters,
    workload: &Arc<Workload>,
    host: HostFacts,
    data_dir: Option<String>,
) -> anyhow::Result<RunOutcome>
where
    T: Target + Send + Sync + 'static,
{
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let facts = target.facts();
    summary::print_header(workload, &facts, &host, data_dir.as_deref());
    let stale_reads = workload.read_fraction > 0.0 && workload.read_mode == ReadMode::Stale;
    if workload.checks() && stale_reads {
        println!(
            "note: the check leaves stale reads out of the history, because they may miss \
             recent writes by design"
        );
    }

    let mut progress = Progress::new(ProgressStyle::detect(workload.progress), String::new());
    let count = workload.points.len();
    let mut points = Vec::with_capacity(count);
    let mut late = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for (index, &level) in workload.points.iter().enumerate() {
        let label = format!(
            "point {}/{count}: {}",
            index + 1,
            summary::describe_level(level)
        );
        progress.set_label(label);
        let measurement = load::run_point(target, counters, workload, index, level, &mut progress)?;
        let check = match workload.check_time_limit_secs {
            Some(limit_secs) => {
                let limit = Duration::from_secs_f64(limit_secs);
                Some(check::check_operations(&measurement.history, limit)?)
            }
            None => None,
        };
        if let Some(check) = check
            .as_ref()
            .filter(|check| check.verdict != "linearizable")
        {
            failures.push(format!(
                "point {}: the linearizability check found the history {}",
                index + 1,
                check.verdict.replace('_', " ")
            ));
        }
        let point = summary::point_result(level, &measurement, check);
        summary::print_point(index, count, &point, &measurement, counters.cpu_scope());
        points.push(point);
        late.push(measurement.stats.late);
    }
    if count > 1 {
        summary::print_sweep_table(&points, &late);
    }

    let result = RunResult {
        schema_version: RESULT_SCHEMA_VERSION,
        harness: format!("shardraft-bench {}", env!("CARGO_PKG_VERSION")),
        git_commit: option_env!("SHARDRAFT_BENCH_GIT_COMMIT").map(str::to_string),
        started_unix_ms,
        config: serde_json::to_value(&**workload).context("encoding the configuration failed")?,
        host,
        target: facts,
        points,
        snapshot_install: None,
    };
    Ok(RunOutcome { result, failures })
}
