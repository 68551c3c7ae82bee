//! Segment files: naming, listing and preparation.
//!
//! A segment is named by its sequence number, zero-padded so that names sort in log order
//! (`00000000000000000007.wal`). A new segment is prepared ahead of use: created,
//! allocated to its full size, optionally overwritten with zeros, given its header block and
//! synced together with its directory, so that switching to it costs the writer nothing.
//! With [`SyncMethod::Dsync`] the prepared file is then opened again with O_DSYNC for the
//! log's writes: the preparation's own writes, a zero fill of the whole segment among
//! them, stay plain writes with one fdatasync at the end.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::error::glommio_io_error;
use super::format::{self, BLOCK_BYTES, SegmentHeader};
use super::{LogConfig, LogIdentity, StorageError, SyncMethod};

const SEGMENT_EXTENSION: &str = "wal";

/// Extension of a segment while it is being recycled; such files are not part of the log.
pub(crate) const RECYCLING_EXTENSION: &str = "recycling";

/// Bytes written per request while zero-filling a new segment.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// The settings from the log's config that preparing and opening segments use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentSettings {
    pub segment_bytes: u64,
    pub zero_fill: bool,
    /// Open flags, beyond O_DIRECT and read-write, of a segment the log writes batches
    /// into: O_DSYNC when each write is to be durable on completion, else none.
    pub write_flags: i32,
}

impl SegmentSettings {
    /// Returns the settings that `config` sets for segments.
    pub fn from_config(config: &LogConfig) -> SegmentSettings {
        let dsync = config.sync_writes && config.sync_method == SyncMethod::Dsync;
        SegmentSettings {
            segment_bytes: config.segment_bytes,
            zero_fill: config.zero_fill_segments,
            write_flags: if dsync {
                nix::fcntl::OFlag::O_DSYNC.bits()
            } else {
                0
            },
        }
    }
}

/// Opens an existing segment for reads and for the log's writes, with `write_flags`.
pub(crate) async fn open_for_writes(path: &Path, write_flags: i32) -> glommio::Result<DmaFile, ()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(write_flags)
        .dma_open(path)
        .await
}

pub(crate) fn segment_path(dir: &Path, segment_seq: u64) -> PathBuf {
    dir.join(format!("{segment_seq:020}.{SEGMENT_EXTENSION}"))
}

/// Segment files in `dir`, in log order. Files of other names are left alone.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| StorageError::from_io("listing", dir, error))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::from_io("listing", dir, error))?;
        let path = entry.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        let seq = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse::<u64>().ok());
        match seq {
            Some(seq) => segments.push((seq, path)),
            None => {
                return Err(StorageError::Corrupt {
                    detail: "a segment file name is not a sequence number".to_string(),
                    path,
                    offset: 0,
                });
            }
        }
    }
    segments.sort();
    Ok(segments)
}

/// Creates segment `segment_seq` in `dir`, ready for batches from offset [`BLOCK_BYTES`].
pub(crate) async fn prepare_segment(
    dir: &Path,
    identity: LogIdentity,
    segment_seq: u64,
    settings: SegmentSettings,
) -> Result<Rc<DmaFile>, StorageError> {
    let SegmentSettings {
        segment_bytes,
        zero_fill,
        write_flags,
    } = settings;
    let path = segment_path(dir, segment_seq);
    let io_error = |operation| {
        let path = path.clone();
        move |error| StorageError::from_io(operation, path, glommio_io_error(error))
    };
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(io_error("creating"))?;
    file.pre_allocate(segment_bytes, false)
        .await
        .map_err(io_error("allocating"))?;

    if zero_fill {
        // One zeroed buffer serves every full chunk: clearing a fresh 1 MiB buffer per
        // chunk cost about a tenth of the flusher's thread at 1 GiB/s of log writes.
        let mut chunk = file.alloc_dma_buffer(ZERO_FILL_CHUNK_BYTES as usize);
        chunk.as_bytes_mut().fill(0);
        let chunk = Rc::new(chunk);
        let mut offset = BLOCK_BYTES;
        while offset < segment_bytes {
            let len = ZERO_FILL_CHUNK_BYTES.min(segment_bytes - offset);
            if len == ZERO_FILL_CHUNK_BYTES {
                write_all_shared(&file, Rc::clone(&chunk), offset, &path).await?;
            } else {
                let mut tail = file.alloc_dma_buffer(len as usize);
                tail.as_bytes_mut().fill(0);
                write_all(&file, tail, offset, &path).await?;
            }
            offset += len;
        }
    }

    write_header_and_sync(&file, identity, segment_seq, &path).await?;
    sync_directory(dir).await?;
    if write_flags == 0 {
        return Ok(Rc::new(file));
    }
    // O_DSYNC cannot be set on an open file (fcntl ignores it), so the log's handle is a
    // second open of the prepared file.
    let reopened = open_for_writes(&path, write_flags)
        .await
        .map_err(io_error("opening"))?;
    file.close().await.map_err(io_error("closing"))?;
    Ok(Rc::new(reopened))
}

/// Writes the header block of segment `segment_seq` and makes the file durable.
async fn write_header_and_sync(
    file: &DmaFile,
    identity: LogIdentity,
    segment_seq: u64,
    path: &Path,
) -> Result<(), StorageError> {
    let header = SegmentHeader {
        format_version: format::FORMAT_VERSION,
        cluster_id: identity.cluster_id,
        node_id: identity.node_id,
        shard: identity.shard,
        segment_seq,
    };
    let mut block = file.alloc_dma_buffer(BLOCK_BYTES as usize);
    block.as_bytes_mut().fill(0);
    format::encode_segment_header(&header, block.as_bytes_mut());
    write_all(file, block, 0, path).await?;
    file.fdatasync()
        .await
        .map_err(|error| StorageError::SyncFailed {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(glommio_io_error(error)),
        })
}

/// Turns a segment whose entries are all compacted into segment `segment_seq`, so that the
/// log writes over allocated blocks without zero-filling a new file.
///
/// The file is first renamed out of the log, then given its new header, synced and renamed
/// to its new name. A crash in between leaves a `.recycling` file that recovery removes;
/// the batches left in it are older than the log's and recovery reads them as its end.
pub(crate) async fn recycle_segment(
    dir: &Path,
    identity: LogIdentity,
    file: Rc<DmaFile>,
    old_path: &Path,
    segment_seq: u64,
) -> Result<Rc<DmaFile>, StorageError> {
    let parked = old_path.with_extension(RECYCLING_EXTENSION);
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|error| StorageError::from_io("renaming", from, error))
    };
    rename(old_path, &parked)?;
    sync_directory(dir).await?;

    write_header_and_sync(&file, identity, segment_seq, &parked).await?;

    rename(&parked, &segment_path(dir, segment_seq))?;
    sync_directory(dir).await?;
    Ok(file)
}

/// Writes `buffer` at `offset`, treating a short write as an error.
pub(crate) async fn write_all(
    file: &DmaFile,
    buffer: glommio::io::DmaBuffer,
    offset: u64,
    path: &Path,
) -> Result<(), StorageError> {
    let len = buffer.len();
    let written = file.write_at(buffer, offset).await;
    check_written(written, len, offset, path)
}

/// Writes a shared buffer at `offset`, treating a short write as an error.
async fn write_all_shared(
    file: &DmaFile,
    buffer: Rc<glommio::io::DmaBuffer>,
    offset: u64,
    path: &Path,
) -> Result<(), StorageError> {
    let len = buffer.len();
    let written = file.write_rc_at(buffer, offset).await;
    check_written(written, len, offset, path)
}

fn check_written(
    written: glommio::Result<usize, ()>,
    len: usize,
    offset: u64,
    path: &Path,
) -> Result<(), StorageError> {
    let written =
        written.map_err(|error| StorageError::from_io("writing", path, glommio_io_error(error)))?;
    if written != len {
        return Err(StorageError::from_io(
            "writing",
            path,
            std::io::Error::other(format!(
                "short write at offset {offset}: {written} of {len} bytes"
            )),
        ));
    }
    Ok(())
}

/// Makes creations and removals of files in `dir` durable.
pub(crate) async fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    let directory = glommio::io::Directory::open(dir)
        .await
        .map_err(|error| StorageError::from_io("opening", dir, glommio_io_error(error)))?;
    directory
        .sync()
        .await
        .map_err(|error| StorageError::SyncFailed {
            path: dir.to_path_buf(),
            source: std::sync::Arc::new(glommio_io_error(error)),
        })?;
    directory
        .close()
        .await
        .map_err(|error| StorageError::from_io("closing", dir, glommio_io_error(error)))
}
