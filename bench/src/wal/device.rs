//! The device's own limit: O_DIRECT writes made durable by fdatasync one at a time,
//! sequential into a preallocated, zero-filled file, through glommio's DMA files as the log
//! uses them. This is the best a log that commits one write at a time can do, so the log's
//! figures are compared with it at the same write size. The probe writes the same kind of
//! bytes as the log's entries (see [`super::payload`]).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use glommio::io::{DmaFile, OpenOptions};
use serde::Serialize;

use super::payload::{PayloadKind, PayloadSource};
use super::{LatencySummary, MIB, new_latency_histogram};

/// Size of the file the probe writes into, wrapping to its start at the end. It is larger
/// than any write, and zero-filled once, so every timed write overwrites allocated blocks as
/// the log does in a zero-filled segment.
pub const PROBE_FILE_BYTES: u64 = 256 << 20;

/// Alignment and granularity of O_DIRECT writes on the devices the log supports.
pub const BLOCK_BYTES: u64 = shardraft::log::format::BLOCK_BYTES;

/// Bytes per write while zero-filling the probe file.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// Throughput and latency of write + fdatasync pairs of one size.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DeviceSample {
    pub write_bytes: u64,
    pub ops: u64,
    /// Time spent in the timed writes and fdatasyncs, without the filling of buffers and
    /// the pauses between them. The rates below are over this time.
    pub elapsed_secs: f64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    /// Interval between the starts of two writes when the writes were paced, or 0 when
    /// each write started as soon as the previous fdatasync returned.
    pub interval_micros: f64,
    /// Latency of one write and the fdatasync after it.
    pub latency: LatencySummary,
}

/// A preallocated, zero-filled file to time writes in. Dropping it leaves the file; call
/// [`DeviceProbe::remove`].
#[derive(Debug)]
pub struct DeviceProbe {
    file: DmaFile,
    path: PathBuf,
    file_bytes: u64,
    next_offset: Cell<u64>,
    payloads: PayloadSource,
    writes: Cell<u64>,
}

impl DeviceProbe {
    /// Creates the probe file `device-probe.dat` in `dir`, allocates `file_bytes` (rounded
    /// up to a block) and overwrites them with zeros. Timed writes carry `payload` bytes.
    ///
    /// Calls [`shardraft::log::prime_direct_io`] first, because glommio 0.9 decides once
    /// per device, from the first file it opens with O_DIRECT, whether polled reads work, and
    /// a freshly created empty file leads it to the wrong result. Must run inside a glommio
    /// executor.
    ///
    /// # Errors
    /// When the file cannot be created, allocated, written or synced; the message names it.
    pub async fn create(
        dir: &Path,
        file_bytes: u64,
        payload: PayloadKind,
    ) -> anyhow::Result<DeviceProbe> {
        shardraft::log::prime_direct_io(dir)
            .await
            .with_context(|| format!("probing direct I/O in {} failed", dir.display()))?;
        let path = dir.join("device-probe.dat");
        let file_bytes = file_bytes.max(BLOCK_BYTES).next_multiple_of(BLOCK_BYTES);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("creating {} with O_DIRECT failed", path.display()))?;
        file.pre_allocate(file_bytes, false)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "allocating {file_bytes} bytes for {} failed",
                    path.display()
                )
            })?;
        let probe = DeviceProbe {
            file,
            path,
            file_bytes,
            next_offset: Cell::new(0),
            payloads: PayloadSource::new(payload, BLOCK_BYTES as usize),
            writes: Cell::new(0),
        };
        let mut offset = 0;
        while offset < file_bytes {
            let len = ZERO_FILL_CHUNK_BYTES.min(file_bytes - offset);
            probe.write(offset, len, 0).await?;
            offset += len;
        }
        probe.sync().await?;
        Ok(probe)
    }

    /// Writes `write_bytes` (rounded up to a block) and fdatasyncs, one pair at a time,
    /// sequentially through the file, for `duration` after one untimed pair. Each pair
    /// starts as soon as the previous one returned: the device's best case.
    ///
    /// # Errors
    /// When a write or fdatasync fails, or a write is shorter than requested.
    pub async fn measure(
        &self,
        write_bytes: u64,
        duration: Duration,
    ) -> anyhow::Result<DeviceSample> {
        self.measure_at(write_bytes, Duration::ZERO, duration).await
    }

    /// Like [`DeviceProbe::measure`], but each pair starts `interval` after the previous
    /// one started, or as soon as it returned when that is later. This is the device at a
    /// given write rate, idle between pairs as it is while a log prepares its next batch.
    /// Virtual disks can complete a write slower after an idle gap than back to back. On the
    /// development VM a 16 KiB write + fdatasync took about 50 us back to back, while a
    /// 16 KiB write alone often took 150 to 210 us at the median after gaps of 50 to 400 us.
    ///
    /// # Errors
    /// When a write or fdatasync fails, or a write is shorter than requested.
    pub async fn measure_paced(
        &self,
        write_bytes: u64,
        interval: Duration,
        duration: Duration,
    ) -> anyhow::Result<DeviceSample> {
        self.measure_at(write_bytes, interval, duration).await
    }

    async fn measure_at(
        &self,
        write_bytes: u64,
        interval: Duration,
        duration: Duration,
    ) -> anyhow::Result<DeviceSample> {
        let write_bytes = write_bytes
            .max(BLOCK_BYTES)
            .next_multiple_of(BLOCK_BYTES)
            .min(self.file_bytes);
        self.write_and_sync(write_bytes).await?;

        let mut latency = new_latency_histogram();
        let mut ops = 0u64;
        let mut timed = Duration::ZERO;
        let start = Instant::now();
        let mut previous_start = start;
        while start.elapsed() < duration {
            let next_start = previous_start + interval;
            let now = Instant::now();
            if next_start > now {
                glommio::timer::sleep(next_start - now).await;
            }
            previous_start = Instant::now();
            let took = self.write_and_sync(write_bytes).await?;
            latency.saturating_record(took.as_nanos().try_into().unwrap_or(u64::MAX));
            timed += took;
            ops += 1;
        }
        let elapsed_secs = timed.as_secs_f64().max(f64::MIN_POSITIVE);
        Ok(DeviceSample {
            write_bytes,
            ops,
            elapsed_secs,
            ops_per_sec: ops as f64 / elapsed_secs,
            mib_per_sec: (ops * write_bytes) as f64 / MIB / elapsed_secs,
            interval_micros: interval.as_secs_f64() * 1e6,
            latency: LatencySummary::from_nanos(&latency),
        })
    }

    /// Closes and deletes the probe file.
    ///
    /// # Errors
    /// When closing or deleting fails.
    pub async fn remove(self) -> anyhow::Result<()> {
        self.file
            .remove()
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("deleting {} failed", self.path.display()))?;
        self.file
            .close()
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("closing {} failed", self.path.display()))
    }

    /// Times one write at the next offset and the fdatasync after it. The buffer is filled
    /// before the clock starts, so that only the device's time counts.
    async fn write_and_sync(&self, write_bytes: u64) -> anyhow::Result<Duration> {
        let mut offset = self.next_offset.get();
        if offset + write_bytes > self.file_bytes {
            offset = 0;
        }
        self.next_offset.set(offset + write_bytes);
        let mut buffer = self.file.alloc_dma_buffer(write_bytes as usize);
        let write_seq = self.writes.get();
        self.writes.set(write_seq + 1);
        self.payloads.fill(buffer.as_bytes_mut(), write_seq);
        let start = Instant::now();
        self.write_buffer(offset, buffer).await?;
        self.sync().await?;
        Ok(start.elapsed())
    }

    async fn write(&self, offset: u64, len: u64, fill: u8) -> anyhow::Result<()> {
        let mut buffer = self.file.alloc_dma_buffer(len as usize);
        buffer.as_bytes_mut().fill(fill);
        self.write_buffer(offset, buffer).await
    }

    async fn write_buffer(
        &self,
        offset: u64,
        buffer: glommio::io::DmaBuffer,
    ) -> anyhow::Result<()> {
        let len = buffer.len();
        let written = self
            .file
            .write_at(buffer, offset)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "writing {len} bytes at offset {offset} of {} failed",
                    self.path.display()
                )
            })?;
        anyhow::ensure!(
            written == len,
            "short write at offset {offset} of {}: {written} of {len} bytes",
            self.path.display()
        );
        Ok(())
    }

    async fn sync(&self) -> anyhow::Result<()> {
        self.file
            .fdatasync()
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("fdatasync of {} failed", self.path.display()))
    }
}
