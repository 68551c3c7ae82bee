//! Facts about the machine the harness runs on, and the device's own 4 KiB write +
//! fdatasync, measured on the spot before the cluster starts.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::result::{DeviceSyncFacts, HostFacts};
use crate::wal::device::DeviceProbe;
use crate::wal::environment;
use crate::wal::payload::PayloadKind;

/// Size of the file the device probe writes into, preallocated and zero-filled.
const PROBE_FILE_BYTES: u64 = 64 << 20;

/// Bytes of each probe write: one 4 KiB block, the smallest write the log makes.
const PROBE_WRITE_BYTES: u64 = 4 << 10;

/// Time the device probe measures.
const PROBE_DURATION: Duration = Duration::from_secs(1);

/// Reads the machine facts; the filesystem of `data_dir` when the run has one.
///
/// # Errors
///
/// When `data_dir` is given but its filesystem cannot be found.
pub fn host_facts(data_dir: Option<&Path>) -> anyhow::Result<(HostFacts, Option<String>)> {
    let machine = environment::machine_facts();
    let (filesystem, mount) = match data_dir {
        Some(dir) => {
            let filesystem = environment::filesystem_of(dir)?;
            let mount = format!(
                "{} on {} mounted at {}",
                filesystem.fs_type,
                filesystem.source,
                filesystem.mount_point.display()
            );
            (Some(filesystem.fs_type), Some(mount))
        }
        None => (None, None),
    };
    let facts = HostFacts {
        cpu_model: machine.cpu_model,
        cpus: machine.cpus,
        kernel: machine.kernel,
        filesystem,
        memory_bytes: memory_bytes(),
        rustc: machine.rustc,
        device_sync_4k: None,
    };
    Ok((facts, mount))
}

/// Total memory from `/proc/meminfo`, if readable.
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Times 4 KiB O_DIRECT writes, each followed by fdatasync, one at a time for one second,
/// in a scratch file under `dir` that is removed afterwards.
///
/// # Errors
///
/// When the glommio executor cannot start or the probe file cannot be created, written or
/// removed.
pub fn measure_device_sync_4k(dir: &Path) -> anyhow::Result<DeviceSyncFacts> {
    let probe_dir = dir.join(format!("device-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe_dir)
        .with_context(|| format!("creating {} failed", probe_dir.display()))?;
    let executor = glommio::LocalExecutorBuilder::default()
        .name("bench-device-probe")
        .make()
        .map_err(std::io::Error::from)
        .context("starting the device probe's glommio executor failed")?;
    let sample = executor.run(async {
        shardraft::wake_guard::spawn_wake_guard().detach();
        let probe = DeviceProbe::create(&probe_dir, PROBE_FILE_BYTES, PayloadKind::Random).await?;
        let sample = probe.measure(PROBE_WRITE_BYTES, PROBE_DURATION).await?;
        probe.remove().await?;
        anyhow::Ok(sample)
    });
    let removed = std::fs::remove_dir_all(&probe_dir)
        .with_context(|| format!("removing {} failed", probe_dir.display()));
    let sample = sample?;
    removed?;
    Ok(DeviceSyncFacts {
        ops_per_sec: sample.ops_per_sec,
        p50_micros: sample.latency.p50_micros,
        p99_micros: sample.latency.p99_micros,
    })
}
