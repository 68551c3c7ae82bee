//! Durable marks of the groups whose replica is catching up.
//!
//! A replica that starts without any durable state may have voted or acknowledged entries
//! before it lost its data, so the Raft core keeps it out of elections until its durable log
//! contains a leader's committed log (`RaftNode::is_catching_up`). The exception is a
//! founding member of a new group (`initial_cluster_state = "new"`), which does not catch
//! up and gets no mark. Catching up must survive a restart in the middle, when the replica
//! is no longer blank. So the shard writes a mark for such a group before it writes
//! anything else for it, hands it back to the core in
//! `RestoredState::catching_up`, and removes it once the batch that reports
//! `Ready::catch_up_ended` is durable.
//!
//! A mark is an empty file `catching-up/group-NNNNN` in the node's data directory, created
//! and made durable with the directory before the shard starts. Removing it is not synced:
//! a removal lost in a crash brings the mark back, and the replica then catches up once more,
//! which is safe. In memory storage nothing survives a restart, so there are no marks.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::log::GroupId;

#[derive(Debug)]
pub(crate) struct CatchUpMarks {
    /// `None` in memory storage.
    dir: Option<PathBuf>,
}

impl CatchUpMarks {
    /// Marks kept in `data_dir/catching-up`, which is created if missing.
    pub fn on_disk(data_dir: &Path) -> io::Result<CatchUpMarks> {
        let dir = data_dir.join("catching-up");
        fs::create_dir_all(&dir)?;
        Ok(CatchUpMarks { dir: Some(dir) })
    }

    /// No marks: nothing survives a restart.
    pub fn in_memory() -> CatchUpMarks {
        CatchUpMarks { dir: None }
    }

    fn path(dir: &Path, group: GroupId) -> PathBuf {
        dir.join(format!("group-{:05}", group.0))
    }

    /// Returns whether `group` is marked as catching up.
    pub fn is_marked(&self, group: GroupId) -> bool {
        self.dir
            .as_deref()
            .is_some_and(|dir| Self::path(dir, group).exists())
    }

    /// Marks `group` as catching up, durably, before anything else is written for it.
    pub fn mark(&self, group: GroupId) -> io::Result<()> {
        let Some(dir) = self.dir.as_deref() else {
            return Ok(());
        };
        File::create(Self::path(dir, group))?.sync_all()?;
        File::open(dir)?.sync_all()
    }

    /// Removes the mark of `group`, whose catching up ended in a durable batch. A failure is
    /// logged and leaves the mark, so the replica catches up again after a restart.
    pub fn clear(&self, group: GroupId) {
        let Some(dir) = self.dir.as_deref() else {
            return;
        };
        let path = Self::path(dir, group);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%group, path = %path.display(), %error, "removing the catching-up mark failed; the group catches up again after a restart");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_until_cleared() {
        let dir = std::env::temp_dir().join(format!("shardraft-catch-up-{}", std::process::id()));
        let marks = CatchUpMarks::on_disk(&dir).expect("directory created");
        assert!(!marks.is_marked(GroupId(3)));
        marks.mark(GroupId(3)).expect("mark written");
        let reopened = CatchUpMarks::on_disk(&dir).expect("directory reopened");
        assert!(reopened.is_marked(GroupId(3)), "the mark is on disk");
        assert!(!reopened.is_marked(GroupId(4)));
        reopened.clear(GroupId(3));
        reopened.clear(GroupId(3));
        assert!(!marks.is_marked(GroupId(3)), "cleared, twice without error");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_storage_keeps_no_marks() {
        let marks = CatchUpMarks::in_memory();
        marks.mark(GroupId(1)).expect("nothing to write");
        assert!(!marks.is_marked(GroupId(1)));
    }
}
