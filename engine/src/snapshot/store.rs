//! Where a shard keeps its groups' snapshots: files in the node's snapshot directory, or
//! process memory for `storage = "memory"`.
//!
//! Disk layout, one directory per node, shared by its shards (each group belongs to one
//! shard, so no two shards touch the same file):
//!
//! ```text
//! <data_dir>/snapshots/group-00003-00000000000000120000.snap    group 3, index 120000
//! <data_dir>/snapshots/group-00003-00000000000000240000.snap.tmp being written
//! <data_dir>/snapshots/group-00003.partial                      being received
//! <data_dir>/snapshots/group-00003.partial.id                   which snapshot that is
//! ```
//!
//! A snapshot is written to its `.tmp` name, made durable with fdatasync, renamed to its
//! final name, and the directory is synced; only then is it the group's newest snapshot
//! and the older ones are deleted. A crash at any point leaves the previous snapshot in
//! place and at most a stale `.tmp` file, which the next save of the group removes.
//!
//! A snapshot being received grows in the `.partial` file. It is not synced while it
//! grows: the file's CRC is verified once every byte has arrived, so a partial file damaged
//! by a crash of the machine fails that check and is received again. The `.partial.id` file
//! names the snapshot (index, term, length, checksum), so that a transfer of the same
//! snapshot after a broken connection or a restart of the receiver resumes at the partial
//! file's length, and a transfer of another snapshot starts over.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};
use shardraft_raft::{LogIndex, SnapshotMeta, Term};

use super::file::{self, SnapshotFile, SnapshotFileError};
use crate::log::GroupId;

/// Bytes written per call when storing a snapshot file.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Bytes of a snapshot file written between two fdatasyncs while it is stored.
const SYNC_INTERVAL_BYTES: usize = 4 << 20;

/// A snapshot stored durably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub group: GroupId,
    pub meta: SnapshotMeta,
    /// Length of the whole file, header and checksum included.
    pub file_bytes: u64,
    /// The CRC-32 stored at the end of the file.
    pub file_checksum: u32,
    location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Disk(PathBuf),
    Memory(Bytes),
}

impl StoredSnapshot {
    /// The snapshot's identity in a transfer.
    pub fn identity(&self) -> TransferIdentity {
        TransferIdentity {
            index: self.meta.index,
            term: self.meta.term,
            file_bytes: self.file_bytes,
            file_checksum: self.file_checksum,
        }
    }

    /// Where the snapshot lies, for messages.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Disk(path) => path.display().to_string(),
            Location::Memory(_) => format!("memory (group {})", self.group),
        }
    }
}

/// What identifies one snapshot across transfer attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferIdentity {
    pub index: LogIndex,
    pub term: Term,
    pub file_bytes: u64,
    pub file_checksum: u32,
}

impl TransferIdentity {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.index.0, self.term.0, self.file_bytes, self.file_checksum
        )
    }

    fn decode(text: &str) -> Option<TransferIdentity> {
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let mut next = || fields.next()?.ok();
        Some(TransferIdentity {
            index: LogIndex(next()?),
            term: Term(next()?),
            file_bytes: next()?,
            file_checksum: u32::try_from(next()?).ok()?,
        })
    }
}

/// A storage failure or an unusable snapshot, naming the file and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{action} {path} failed: {detail}")]
    Io {
        action: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "snapshot file {path} is corrupted ({error}) and no older valid snapshot plus the log \
         covers group {group}'s state; restore the node's data directory from a backup, or \
         delete the node's data directory (the whole directory, log included) so that it \
         rejoins empty and a leader sends it a snapshot"
    )]
    Corrupt {
        path: PathBuf,
        group: GroupId,
        error: SnapshotFileError,
    },
    #[error(
        "the received snapshot of group {group} is invalid: {error}; the partial file is \
         discarded and the next transfer starts over"
    )]
    InvalidReceived {
        group: GroupId,
        error: SnapshotFileError,
    },
    #[error(
        "the received snapshot of group {group} is {found}, not {expected}, the snapshot the \
         sender announced"
    )]
    ReceivedMismatch {
        group: GroupId,
        found: String,
        expected: String,
    },
    #[error(
        "the state machine of group {group} rejected the received snapshot at index {index}: \
         {detail}; the snapshot was discarded, and the leader's next transfer starts over"
    )]
    RejectedByStateMachine {
        group: GroupId,
        index: u64,
        detail: String,
    },
    #[error(
        "a chunk of group {group}'s snapshot starts at byte {offset}, but {received} bytes were \
         received; the sender must resume at the offset the receiver reports"
    )]
    ChunkOutOfOrder {
        group: GroupId,
        offset: u64,
        received: u64,
    },
    #[error(
        "chunks of group {group}'s snapshot would pass its announced length of {file_bytes} \
         bytes"
    )]
    ChunkPastEnd { group: GroupId, file_bytes: u64 },
    #[error("no transfer of a snapshot of group {group} is in progress")]
    NoTransfer { group: GroupId },
    #[error("a snapshot of group {group} is being received on another connection already")]
    TransferBusy { group: GroupId },
}

fn io_error(action: &'static str, path: &Path, detail: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io {
        action,
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The snapshots found for a group at startup.
#[derive(Debug, Default)]
pub struct FoundSnapshots {
    /// The newest valid snapshot, and the stored form the store now reports as newest.
    pub newest_valid: Option<(SnapshotFile, StoredSnapshot)>,
    /// Newer files than `newest_valid` that failed verification, newest first.
    pub corrupt: Vec<(PathBuf, SnapshotFileError)>,
}

/// A snapshot being received.
#[derive(Debug)]
struct Partial {
    identity: TransferIdentity,
    received: Vec<u8>,
    /// Whether a connection is delivering it now.
    active: bool,
}

/// The snapshots of one shard's groups.
#[derive(Debug)]
pub struct SnapshotStore {
    /// The snapshot directory; `None` keeps snapshots in memory.
    dir: Option<PathBuf>,
    newest: RefCell<BTreeMap<GroupId, StoredSnapshot>>,
    partials: RefCell<BTreeMap<GroupId, Partial>>,
}

impl SnapshotStore {
    /// A store in `<data_dir>/snapshots`, created if missing.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn on_disk(data_dir: &Path) -> Result<SnapshotStore, SnapshotError> {
        let dir = data_dir.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|error| io_error("creating", &dir, error))?;
        Ok(SnapshotStore {
            dir: Some(dir),
            newest: RefCell::default(),
            partials: RefCell::default(),
        })
    }

    /// A store that keeps snapshots in process memory.
    pub fn in_memory() -> SnapshotStore {
        SnapshotStore {
            dir: None,
            newest: RefCell::default(),
            partials: RefCell::default(),
        }
    }

    /// The snapshot directory, `None` in memory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn final_path(dir: &Path, group: GroupId, index: LogIndex) -> PathBuf {
        dir.join(format!("group-{:05}-{:020}.snap", group.0, index.0))
    }

    fn partial_path(dir: &Path, group: GroupId) -> PathBuf {
        dir.join(format!("group-{:05}.partial", group.0))
    }

    fn partial_id_path(dir: &Path, group: GroupId) -> PathBuf {
        dir.join(format!("group-{:05}.partial.id", group.0))
    }

    /// The snapshot files of `group` by index, from the directory listing.
    fn list(dir: &Path, group: GroupId) -> Result<BTreeMap<LogIndex, PathBuf>, SnapshotError> {
        let prefix = format!("group-{:05}-", group.0);
        let mut files = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|error| io_error("listing", dir, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io_error("listing", dir, error))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(index) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".snap"))
                .and_then(|index| index.parse::<u64>().ok())
            else {
                continue;
            };
            files.insert(LogIndex(index), entry.path());
        }
        Ok(files)
    }

    /// Finds the newest valid snapshot of `group` and remembers it as the group's newest.
    /// Runs at startup, before the shard's loop, so it reads with blocking calls.
    ///
    /// # Errors
    /// The directory or a file cannot be read.
    pub fn find_newest(&self, group: GroupId) -> Result<FoundSnapshots, SnapshotError> {
        let mut found = FoundSnapshots::default();
        let Some(dir) = &self.dir else {
            return Ok(found);
        };
        for (_, path) in Self::list(dir, group)?.into_iter().rev() {
            let bytes = std::fs::read(&path).map_err(|error| io_error("reading", &path, error))?;
            let bytes = Bytes::from(bytes);
            let decoded = file::decode(&bytes).and_then(|decoded| {
                if decoded.group == group {
                    Ok(decoded)
                } else {
                    Err(SnapshotFileError::InvalidMembership {
                        reason: "the file belongs to another group",
                    })
                }
            });
            match decoded {
                Ok(decoded) => {
                    let stored = StoredSnapshot {
                        group,
                        meta: decoded.meta.clone(),
                        file_bytes: bytes.len() as u64,
                        file_checksum: file::stored_checksum(&bytes).unwrap_or(0),
                        location: Location::Disk(path),
                    };
                    self.newest.borrow_mut().insert(group, stored.clone());
                    found.newest_valid = Some((decoded, stored));
                    break;
                }
                Err(error) => found.corrupt.push((path, error)),
            }
        }
        Ok(found)
    }

    /// Deletes the snapshot files of `group` older than `index` and any temporary file,
    /// which a stop between storing a newer snapshot and deleting the older ones leaves
    /// behind. Runs at startup, once the snapshot at `index` was found usable.
    pub fn delete_older(&self, group: GroupId, index: LogIndex) {
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(files) = Self::list(dir, group) else {
            return;
        };
        for (older, path) in files.range(..index) {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(%group, index = older.0, path = %path.display(), "deleted an older snapshot")
                }
                Err(error) => {
                    tracing::warn!(%group, path = %path.display(), %error, "deleting an older snapshot failed")
                }
            }
        }
        let prefix = format!("group-{:05}-", group.0);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".snap.tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The newest snapshot stored for `group`.
    pub fn newest(&self, group: GroupId) -> Option<StoredSnapshot> {
        self.newest.borrow().get(&group).cloned()
    }

    /// Stores `file` (a whole snapshot file) as the newest snapshot of `group` durably,
    /// then deletes the group's older snapshots.
    ///
    /// # Errors
    /// Writing, syncing or renaming failed; the previous newest snapshot stays in place.
    pub async fn save(
        &self,
        group: GroupId,
        meta: &SnapshotMeta,
        file: Bytes,
    ) -> Result<StoredSnapshot, SnapshotError> {
        let file_bytes = file.len() as u64;
        let file_checksum = file::stored_checksum(&file).unwrap_or(0);
        let location = match &self.dir {
            None => Location::Memory(file),
            Some(dir) => {
                let path = Self::final_path(dir, group, meta.index);
                let temporary = path.with_extension("snap.tmp");
                write_durably(&temporary, &file).await?;
                self.publish(dir, &temporary, &path).await?;
                Location::Disk(path)
            }
        };
        let stored = StoredSnapshot {
            group,
            meta: meta.clone(),
            file_bytes,
            file_checksum,
            location,
        };
        self.replace_newest(stored.clone()).await;
        Ok(stored)
    }

    /// Renames a durable temporary file to its final name and syncs the directory.
    async fn publish(&self, dir: &Path, from: &Path, to: &Path) -> Result<(), SnapshotError> {
        glommio::io::rename(from, to)
            .await
            .map_err(|error| io_error("renaming", from, error))?;
        let directory = glommio::io::Directory::open(dir)
            .await
            .map_err(|error| io_error("opening", dir, error))?;
        directory
            .sync()
            .await
            .map_err(|error| io_error("syncing", dir, error))?;
        let _ = directory.close().await;
        Ok(())
    }

    /// Makes `stored` the newest snapshot of its group and deletes the older files, which a
    /// durable newer snapshot makes useless.
    ///
    /// A shard may store its own snapshot while it receives a newer one from a leader, so a
    /// save that completes after a newer one deletes its own file instead.
    async fn replace_newest(&self, stored: StoredSnapshot) {
        let group = stored.group;
        let newer_kept = self
            .newest(group)
            .filter(|current| current.meta.index > stored.meta.index);
        if let Some(current) = newer_kept {
            if let Location::Disk(path) = &stored.location
                && current.location != stored.location
            {
                let _ = glommio::io::remove(path).await;
            }
            return;
        }
        let index = stored.meta.index;
        self.newest.borrow_mut().insert(group, stored);
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(files) = Self::list(dir, group) else {
            return;
        };
        for (older, path) in files.range(..index) {
            if let Err(error) = glommio::io::remove(path).await {
                tracing::warn!(%group, index = older.0, path = %path.display(), %error, "deleting an older snapshot failed");
            }
        }
        let temporary = Self::final_path(dir, group, index).with_extension("snap.tmp");
        let _ = std::fs::remove_file(temporary);
    }

    /// Reads up to `length` bytes of `stored` from `offset`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub async fn read_chunk(
        &self,
        stored: &StoredSnapshot,
        offset: u64,
        length: usize,
    ) -> Result<Bytes, SnapshotError> {
        let end = (offset + length as u64).min(stored.file_bytes);
        let length = end.saturating_sub(offset) as usize;
        match &stored.location {
            Location::Memory(bytes) => Ok(bytes.slice(offset as usize..end as usize)),
            Location::Disk(path) => {
                let file = BufferedFile::open(path)
                    .await
                    .map_err(|error| io_error("opening", path, error))?;
                let read = file.read_at(offset, length).await;
                let _ = file.close().await;
                let read = read.map_err(|error| io_error("reading", path, error))?;
                Ok(Bytes::copy_from_slice(&read))
            }
        }
    }

    /// Opens `stored` for a transfer. The open file stays readable when a newer snapshot
    /// deletes it meanwhile, so a transfer in flight is not broken by a new snapshot.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub async fn open_reader(
        &self,
        stored: &StoredSnapshot,
    ) -> Result<SnapshotReader, SnapshotError> {
        match &stored.location {
            Location::Memory(bytes) => Ok(SnapshotReader::Memory(bytes.clone())),
            Location::Disk(path) => {
                let file = BufferedFile::open(path)
                    .await
                    .map_err(|error| io_error("opening", path, error))?;
                Ok(SnapshotReader::Disk {
                    file,
                    path: path.clone(),
                    length: stored.file_bytes,
                })
            }
        }
    }

    /// Reads and verifies the whole of `stored`.
    ///
    /// # Errors
    /// The file cannot be read or fails verification.
    pub async fn load(&self, stored: &StoredSnapshot) -> Result<SnapshotFile, SnapshotError> {
        let bytes = match &stored.location {
            Location::Memory(bytes) => bytes.clone(),
            Location::Disk(_) => {
                let length = usize::try_from(stored.file_bytes).unwrap_or(usize::MAX);
                self.read_chunk(stored, 0, length).await?
            }
        };
        let path = match &stored.location {
            Location::Disk(path) => path.clone(),
            Location::Memory(_) => PathBuf::from("memory"),
        };
        file::decode(&bytes).map_err(|error| SnapshotError::Corrupt {
            path,
            group: stored.group,
            error,
        })
    }

    /// Starts or resumes receiving the snapshot `identity` of `group`, and returns the
    /// number of bytes already held, where the sender resumes.
    ///
    /// # Errors
    /// Another connection is receiving a snapshot of the group, or the partial file cannot
    /// be prepared.
    pub async fn begin_receive(
        &self,
        group: GroupId,
        identity: TransferIdentity,
    ) -> Result<u64, SnapshotError> {
        if let Some(partial) = self.partials.borrow_mut().get_mut(&group) {
            if partial.active {
                return Err(SnapshotError::TransferBusy { group });
            }
            if partial.identity == identity {
                partial.active = true;
                return Ok(partial.received.len() as u64);
            }
        }
        let mut received = Vec::new();
        if let Some(dir) = &self.dir {
            let id_path = Self::partial_id_path(dir, group);
            let path = Self::partial_path(dir, group);
            let on_disk = std::fs::read_to_string(&id_path)
                .ok()
                .and_then(|text| TransferIdentity::decode(&text));
            if on_disk == Some(identity) {
                // NOTE: a blocking read, once per resumed transfer, of at most one snapshot.
                received = std::fs::read(&path).unwrap_or_default();
                received.truncate(usize::try_from(identity.file_bytes).unwrap_or(usize::MAX));
            } else {
                std::fs::write(&path, b"").map_err(|error| io_error("creating", &path, error))?;
                std::fs::write(&id_path, identity.encode())
                    .map_err(|error| io_error("writing", &id_path, error))?;
            }
        }
        let offset = received.len() as u64;
        self.partials.borrow_mut().insert(
            group,
            Partial {
                identity,
                received,
                active: true,
            },
        );
        Ok(offset)
    }

    /// Appends a received chunk that starts at `offset`.
    ///
    /// The chunk goes to the partial file first and to memory only once written, so that
    /// the bytes in memory, which a resumed transfer verifies, never run ahead of the file
    /// that completing the transfer publishes.
    ///
    /// # Errors
    /// The chunk does not continue the received bytes, passes the announced length, or
    /// cannot be written.
    pub async fn append_received(
        &self,
        group: GroupId,
        offset: u64,
        chunk: &[u8],
    ) -> Result<(), SnapshotError> {
        self.check_continues(group, offset, chunk.len())?;
        if let Some(dir) = &self.dir {
            let path = Self::partial_path(dir, group);
            let file = OpenOptions::new()
                .write(true)
                .buffered_open(&path)
                .await
                .map_err(|error| io_error("opening", &path, error))?;
            let written = file.write_at(chunk.to_vec(), offset).await;
            let _ = file.close().await;
            written.map_err(|error| io_error("writing", &path, error))?;
        }
        // Only the connection marked active appends to a group's partial snapshot, so no
        // other chunk landed while the write above was in flight.
        self.check_continues(group, offset, chunk.len())?;
        let mut partials = self.partials.borrow_mut();
        let partial = partials
            .get_mut(&group)
            .ok_or(SnapshotError::NoTransfer { group })?;
        partial.received.extend_from_slice(chunk);
        Ok(())
    }

    /// Checks that a chunk of `chunk_bytes` at `offset` continues the received bytes of
    /// `group` and stays within the announced length.
    fn check_continues(
        &self,
        group: GroupId,
        offset: u64,
        chunk_bytes: usize,
    ) -> Result<(), SnapshotError> {
        let partials = self.partials.borrow();
        let partial = partials
            .get(&group)
            .ok_or(SnapshotError::NoTransfer { group })?;
        let received = partial.received.len() as u64;
        if offset != received {
            return Err(SnapshotError::ChunkOutOfOrder {
                group,
                offset,
                received,
            });
        }
        if received + chunk_bytes as u64 > partial.identity.file_bytes {
            return Err(SnapshotError::ChunkPastEnd {
                group,
                file_bytes: partial.identity.file_bytes,
            });
        }
        Ok(())
    }

    /// Ends a connection's delivery of a partial snapshot without completing it; what was
    /// received stays for the next attempt.
    pub fn pause_receive(&self, group: GroupId) {
        if let Some(partial) = self.partials.borrow_mut().get_mut(&group) {
            partial.active = false;
        }
    }

    /// Drops a partial snapshot, after it failed verification.
    pub fn discard_receive(&self, group: GroupId) {
        self.partials.borrow_mut().remove(&group);
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(Self::partial_path(dir, group));
            let _ = std::fs::remove_file(Self::partial_id_path(dir, group));
        }
    }

    /// Whether every announced byte of the group's partial snapshot arrived.
    pub fn receive_complete(&self, group: GroupId) -> bool {
        self.partials
            .borrow()
            .get(&group)
            .is_some_and(|partial| partial.received.len() as u64 == partial.identity.file_bytes)
    }

    /// Verifies the completely received snapshot of `group`, checks that it is the one
    /// announced with `meta`, passes it to `check`, and stores it durably as the group's
    /// newest snapshot unless a newer one is stored already. Returns the verified file and
    /// what `check` returned.
    ///
    /// `check` runs before anything is stored, so a snapshot whose state-machine data is
    /// invalid never replaces the group's newest snapshot, which a restart would need.
    ///
    /// # Errors
    /// Verification failed or `check` rejected the snapshot (the partial snapshot is
    /// discarded in both cases), or storing failed.
    pub async fn complete_receive<T>(
        &self,
        group: GroupId,
        meta: &SnapshotMeta,
        check: impl FnOnce(&SnapshotFile) -> Result<T, String>,
    ) -> Result<(SnapshotFile, T), SnapshotError> {
        // The partial snapshot stays registered, and active, until the file is published or
        // discarded: a new transfer of the group that began meanwhile would otherwise
        // truncate the partial file under the rename.
        let received = {
            let mut partials = self.partials.borrow_mut();
            let partial = partials
                .get_mut(&group)
                .ok_or(SnapshotError::NoTransfer { group })?;
            partial.active = true;
            std::mem::take(&mut partial.received)
        };
        let bytes = Bytes::from(received);
        let verified = file::decode(&bytes)
            .map_err(|error| SnapshotError::InvalidReceived { group, error })
            .and_then(|decoded| {
                if decoded.group == group && decoded.meta == *meta {
                    Ok(decoded)
                } else {
                    Err(SnapshotError::ReceivedMismatch {
                        group,
                        found: format!(
                            "group {} index {} term {}",
                            decoded.group, decoded.meta.index, decoded.meta.term
                        ),
                        expected: format!("group {group} index {} term {}", meta.index, meta.term),
                    })
                }
            });
        let checked = verified.and_then(|decoded| match check(&decoded) {
            Ok(output) => Ok((decoded, output)),
            Err(detail) => Err(SnapshotError::RejectedByStateMachine {
                group,
                index: meta.index.0,
                detail,
            }),
        });
        let (decoded, output) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                self.discard_receive(group);
                return Err(error);
            }
        };
        let newer_stored = self
            .newest(group)
            .is_some_and(|stored| stored.meta.index >= meta.index);
        if newer_stored {
            self.discard_receive(group);
            return Ok((decoded, output));
        }
        let location = match &self.dir {
            None => Location::Memory(bytes.clone()),
            Some(dir) => {
                let partial_path = Self::partial_path(dir, group);
                let path = Self::final_path(dir, group, meta.index);
                let published = async {
                    sync_file(&partial_path).await?;
                    self.publish(dir, &partial_path, &path).await
                }
                .await;
                if let Err(error) = published {
                    self.discard_receive(group);
                    return Err(error);
                }
                let _ = std::fs::remove_file(Self::partial_id_path(dir, group));
                Location::Disk(path)
            }
        };
        self.partials.borrow_mut().remove(&group);
        let stored = StoredSnapshot {
            group,
            meta: meta.clone(),
            file_bytes: bytes.len() as u64,
            file_checksum: file::stored_checksum(&bytes).unwrap_or(0),
            location,
        };
        self.replace_newest(stored).await;
        Ok((decoded, output))
    }
}

/// A stored snapshot opened for a transfer.
#[derive(Debug)]
pub enum SnapshotReader {
    Disk {
        file: BufferedFile,
        path: PathBuf,
        length: u64,
    },
    Memory(Bytes),
}

impl SnapshotReader {
    /// Reads up to `length` bytes from `offset`; empty at the end of the snapshot.
    ///
    /// # Errors
    /// The file cannot be read.
    pub async fn read_chunk(&self, offset: u64, length: usize) -> Result<Bytes, SnapshotError> {
        match self {
            SnapshotReader::Memory(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(length).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
            SnapshotReader::Disk {
                file,
                path,
                length: file_bytes,
            } => {
                let end = offset.saturating_add(length as u64).min(*file_bytes);
                let length = end.saturating_sub(offset) as usize;
                let read = file
                    .read_at(offset, length)
                    .await
                    .map_err(|error| io_error("reading", path, error))?;
                Ok(Bytes::copy_from_slice(&read))
            }
        }
    }

    /// Closes the file.
    pub async fn close(self) {
        if let SnapshotReader::Disk { file, .. } = self {
            let _ = file.close().await;
        }
    }
}

/// Writes `bytes` to a new file at `path` and makes it durable.
async fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(path)
        .await
        .map_err(|error| io_error("creating", path, error))?;
    let mut offset = 0;
    let mut unsynced_bytes = 0;
    while offset < bytes.len() {
        let end = (offset + WRITE_CHUNK_BYTES).min(bytes.len());
        let written = file
            .write_at(bytes[offset..end].to_vec(), offset as u64)
            .await
            .map_err(|error| io_error("writing", path, error))?;
        if written == 0 {
            return Err(io_error("writing", path, "the write made no progress"));
        }
        offset += written;
        unsynced_bytes += written;
        // Syncing as the file grows keeps the device's queue short. One sync of the whole
        // file at the end would put all of it in front of the write-ahead log's next
        // fdatasync, which then waits for the whole file to reach the disk.
        if unsynced_bytes >= SYNC_INTERVAL_BYTES {
            file.fdatasync()
                .await
                .map_err(|error| io_error("syncing", path, error))?;
            unsynced_bytes = 0;
        }
    }
    file.fdatasync()
        .await
        .map_err(|error| io_error("syncing", path, error))?;
    file.close()
        .await
        .map_err(|error| io_error("closing", path, error))?;
    Ok(())
}

async fn sync_file(path: &Path) -> Result<(), SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .buffered_open(path)
        .await
        .map_err(|error| io_error("opening", path, error))?;
    file.fdatasync()
        .await
        .map_err(|error| io_error("syncing", path, error))?;
    let _ = file.close().await;
    Ok(())
}
