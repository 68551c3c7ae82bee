//! When a leader's entries went to the log and became durable, kept per range of indexes
//! rather than per entry, so that timing a write costs no allocation and no clock read of its
//! own.
//!
//! A group adds one mark per turn in which it hands the log entries while proposals wait on
//! it. The mark covers the turn's index range and takes the submission and durability times
//! of the batch that carried it. Applying a write looks up the mark of its index; marks
//! retire once the state machine has applied past them.

use std::collections::VecDeque;
use std::time::Instant;

use shardraft_raft::LogIndex;

use crate::log::BatchNumber;

/// Marks a group keeps at most. Each covers one turn's entries, and marks retire as entries
/// are applied, so a group keeps more only while its writes stall. Beyond the limit the oldest
/// marks are dropped and their writes go unrecorded.
const WRITE_MARKS_MAX: usize = 1024;

/// The times of the submission that carried a mark's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Submission {
    pub batch: BatchNumber,
    pub started_at: Instant,
    pub returned_at: Instant,
}

/// The log times of one write: when its batch was submitted and reported durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogTimes {
    pub submission: Submission,
    pub durable_at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct WriteMark {
    first: LogIndex,
    last: LogIndex,
    /// `None` until the turn's batch is submitted.
    submission: Option<Submission>,
    /// `None` until the log reports the batch durable.
    durable_at: Option<Instant>,
}

/// The marks of one group, oldest first, with disjoint index ranges in ascending order.
#[derive(Debug, Default)]
pub(crate) struct WriteMarks {
    marks: VecDeque<WriteMark>,
}

impl WriteMarks {
    /// Notes that entries `first..=last` join the batch of the current turn. Returns true
    /// when this starts the turn's mark, so the caller learns which groups need
    /// [`note_submitted`](Self::note_submitted).
    pub fn note_appended(&mut self, first: LogIndex, last: LogIndex) -> bool {
        if let Some(back) = self.marks.back_mut()
            && back.submission.is_none()
            && back.last.next() == first
        {
            back.last = last;
            return false;
        }
        self.drop_overwritten(first);
        if self.marks.len() == WRITE_MARKS_MAX {
            self.marks.pop_front();
        }
        self.marks.push_back(WriteMark {
            first,
            last,
            submission: None,
            durable_at: None,
        });
        true
    }

    /// Drops the marks of entries at or after `first`, which the new entries replace.
    fn drop_overwritten(&mut self, first: LogIndex) {
        while let Some(back) = self.marks.back_mut() {
            if back.first >= first {
                self.marks.pop_back();
                continue;
            }
            back.last = back.last.min(first.prev());
            return;
        }
    }

    /// Gives the turn's mark its submission.
    pub fn note_submitted(&mut self, submission: Submission) {
        if let Some(back) = self.marks.back_mut()
            && back.submission.is_none()
        {
            back.submission = Some(submission);
        }
    }

    /// Notes that every batch up to `batch` is durable, as reported at `durable_at`.
    pub fn note_durable(&mut self, batch: BatchNumber, durable_at: Instant) {
        // Batches become durable in order, so the marks still waiting are at the back.
        for mark in self.marks.iter_mut().rev() {
            if mark.durable_at.is_some() {
                break;
            }
            if let Some(submission) = mark.submission
                && submission.batch <= batch
            {
                mark.durable_at = Some(durable_at);
            }
        }
    }

    /// Returns the log times of the entry at `index`, if a complete mark covers it. Marks
    /// below `index` retire, because entries are applied in index order.
    pub fn log_times(&mut self, index: LogIndex) -> Option<LogTimes> {
        self.retire_through(index.prev());
        let front = self.marks.front()?;
        if front.first > index {
            return None;
        }
        Some(LogTimes {
            submission: front.submission?,
            durable_at: front.durable_at?,
        })
    }

    /// Retires the marks whose entries are all at or below `applied`.
    pub fn retire_through(&mut self, applied: LogIndex) {
        while self.marks.front().is_some_and(|mark| mark.last <= applied) {
            self.marks.pop_front();
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn submission(batch: u64, at: Instant) -> Submission {
        Submission {
            batch: BatchNumber(batch),
            started_at: at,
            returned_at: at + Duration::from_micros(1),
        }
    }

    #[test]
    fn entries_of_one_turn_share_one_mark() {
        let mut marks = WriteMarks::default();
        assert!(marks.note_appended(LogIndex(1), LogIndex(3)));
        assert!(!marks.note_appended(LogIndex(4), LogIndex(5)));
        let at = Instant::now();
        marks.note_submitted(submission(7, at));
        marks.note_durable(BatchNumber(7), at);
        let times = marks.log_times(LogIndex(5)).expect("index 5 is covered");
        assert_eq!(times.submission.batch, BatchNumber(7));
    }

    #[test]
    fn marks_wait_for_submission_and_durability() {
        let mut marks = WriteMarks::default();
        let at = Instant::now();
        marks.note_appended(LogIndex(1), LogIndex(2));
        assert_eq!(marks.log_times(LogIndex(1)), None);
        marks.note_submitted(submission(1, at));
        assert_eq!(marks.log_times(LogIndex(1)), None);
        marks.note_durable(BatchNumber(0), at);
        assert_eq!(marks.log_times(LogIndex(1)), None);
        marks.note_durable(BatchNumber(1), at);
        assert!(marks.log_times(LogIndex(1)).is_some());
    }

    #[test]
    fn durability_reaches_reported_batches_only() {
        let mut marks = WriteMarks::default();
        let at = Instant::now();
        marks.note_appended(LogIndex(1), LogIndex(1));
        marks.note_submitted(submission(1, at));
        marks.note_appended(LogIndex(2), LogIndex(2));
        marks.note_submitted(submission(2, at));
        marks.note_durable(BatchNumber(1), at);
        assert!(marks.log_times(LogIndex(1)).is_some());
        assert_eq!(marks.log_times(LogIndex(2)), None);
    }

    #[test]
    fn applying_past_marks_retires_them() {
        let mut marks = WriteMarks::default();
        let at = Instant::now();
        for (first, batch) in [(1, 1), (3, 2), (5, 3)] {
            marks.note_appended(LogIndex(first), LogIndex(first + 1));
            marks.note_submitted(submission(batch, at));
        }
        marks.note_durable(BatchNumber(3), at);
        assert!(marks.log_times(LogIndex(6)).is_some());
        assert_eq!(
            marks.log_times(LogIndex(2)),
            None,
            "retired by the later lookup"
        );
        marks.retire_through(LogIndex(6));
        assert!(marks.is_empty());
    }

    #[test]
    fn overwritten_entries_lose_their_marks() {
        let mut marks = WriteMarks::default();
        let at = Instant::now();
        marks.note_appended(LogIndex(1), LogIndex(5));
        marks.note_submitted(submission(1, at));
        marks.note_appended(LogIndex(3), LogIndex(3));
        marks.note_submitted(submission(2, at));
        marks.note_durable(BatchNumber(2), at);
        let times = marks.log_times(LogIndex(3)).expect("index 3 is covered");
        assert_eq!(times.submission.batch, BatchNumber(2));
        assert_eq!(marks.log_times(LogIndex(4)), None);
    }

    #[test]
    fn marks_stay_bounded() {
        let mut marks = WriteMarks::default();
        let at = Instant::now();
        for i in 1..=(WRITE_MARKS_MAX as u64 + 10) {
            marks.note_appended(LogIndex(i), LogIndex(i));
            marks.note_submitted(submission(i, at));
        }
        assert_eq!(marks.marks.len(), WRITE_MARKS_MAX);
        assert_eq!(
            marks.log_times(LogIndex(1)),
            None,
            "the oldest marks were dropped"
        );
    }
}
