//! The buffer a staged batch is encoded into. It is DMA memory (block-aligned, from
//! glommio's registered I/O memory while that lasts), so the flusher writes the batch from
//! it as it is: each entry's payload is copied once, from the submitted entry into the
//! buffer. Before, records were encoded into a `Vec` and copied again into a DMA buffer at
//! write time, which took about a tenth of the thread at 4 KiB x 256 appenders.
//!
//! The first [`BATCH_HEADER_BYTES`] are kept free for the batch header, which the flusher
//! fills in once it assigns the batch's sequence number.

use glommio::io::DmaBuffer;
use shardraft_raft::Entry;

use super::GroupId;
use super::format::{self, BATCH_HEADER_BYTES, BLOCK_BYTES, Record, align_up};

/// Smallest payload capacity of a staging buffer: with the batch header, 64 KiB. The log
/// gives each buffer room for a whole batch of `flush_bytes_max`, and this much when that
/// setting is smaller.
pub(crate) const STAGING_PAYLOAD_BYTES_MIN: usize = 64 * 1024 - BATCH_HEADER_BYTES;

#[derive(Debug)]
pub(crate) struct StagingBuffer {
    /// `None` once the buffer was handed to the write.
    dma: Option<DmaBuffer>,
    /// Bytes in use from the start of `dma`, the reserved batch header included.
    len: usize,
}

impl StagingBuffer {
    /// Allocates a buffer for at least `payload_bytes` of records.
    pub fn with_payload_capacity(payload_bytes: usize) -> StagingBuffer {
        StagingBuffer {
            dma: Some(allocate(BATCH_HEADER_BYTES + payload_bytes)),
            len: BATCH_HEADER_BYTES,
        }
    }

    /// Bytes of records encoded so far.
    pub fn payload_len(&self) -> usize {
        self.len - BATCH_HEADER_BYTES
    }

    /// Bytes of records that still fit without growing the buffer.
    pub fn payload_room(&self) -> usize {
        self.dma
            .as_ref()
            .map_or(0, |dma| dma.len().saturating_sub(self.len))
    }

    /// Appends an entry record; returns its offset in the payload and its bytes.
    pub fn push_entry(&mut self, group: GroupId, entry: &Entry) -> (u32, u32) {
        let record_bytes = format::record_bytes(entry.data.len());
        let offset = self.reserve(record_bytes);
        let written = format::encode_entry_into(group, entry, &mut self.bytes_mut()[offset..]);
        self.len += written;
        ((offset - BATCH_HEADER_BYTES) as u32, written as u32)
    }

    /// Appends a record of any kind.
    pub fn push_record(&mut self, record: &Record) {
        let offset = self.reserve(format::encoded_record_bytes(record));
        let written = format::encode_record_into(record, &mut self.bytes_mut()[offset..]);
        self.len += written;
    }

    /// Returns the records encoded so far.
    pub fn payload(&self) -> &[u8] {
        self.dma
            .as_ref()
            .map_or(&[][..], |dma| &dma.as_bytes()[BATCH_HEADER_BYTES..self.len])
    }

    /// Writes `header` in front of the records, zeroes the padding up to the next block
    /// boundary and hands over the buffer, trimmed to that boundary, for the write.
    ///
    /// # Panics
    /// If the buffer was already taken; the flusher writes each staged batch once.
    pub fn take_for_write(&mut self, header: &[u8; BATCH_HEADER_BYTES]) -> DmaBuffer {
        let mut dma = self
            .dma
            .take()
            .expect("a staged batch is written only once");
        let write_bytes = align_up(self.len as u64) as usize;
        let bytes = dma.as_bytes_mut();
        bytes[..BATCH_HEADER_BYTES].copy_from_slice(header);
        bytes[self.len..write_bytes].fill(0);
        dma.trim_to_size(write_bytes);
        dma
    }

    /// Makes room for `additional` bytes and returns the offset where they start. Growing
    /// copies the records into a buffer at least twice as large, so a batch that outgrows
    /// its first capacity costs one extra copy of its bytes at most, amortized.
    fn reserve(&mut self, additional: usize) -> usize {
        if self.payload_room() < additional {
            let capacity = (self.len + additional).max(2 * self.len);
            let mut grown = allocate(capacity);
            if let Some(old) = &self.dma {
                grown.as_bytes_mut()[..self.len].copy_from_slice(&old.as_bytes()[..self.len]);
            }
            self.dma = Some(grown);
        }
        self.len
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.dma
            .as_mut()
            .expect("records are staged only before the write")
            .as_bytes_mut()
    }
}

/// Allocates a DMA buffer of at least `bytes`, rounded up to a power of two blocks.
///
/// glommio hands out its registered I/O memory with a buddy allocator, which rounds every
/// buffer up to a power of two: a buffer of 1 MiB and one block takes 2 MiB of it. Asking for
/// the rounded size keeps what the allocator reserves usable as room for records. Once the
/// I/O memory is used up, glommio allocates from the heap. Such memory is often returned to
/// the kernel between batches and faulted in again, zero-filled, by the first records
/// written into it: a fifth of the log's thread at 16-byte entries. So a batch of the
/// default `flush_bytes_max` (header and padding included) takes exactly 1 MiB, and the
/// engine gives each shard's executor room for several (see [`io_memory_bytes`]).
///
/// [`io_memory_bytes`]: super::io_memory_bytes
fn allocate(bytes: usize) -> DmaBuffer {
    let blocks = align_up(bytes as u64) / BLOCK_BYTES;
    glommio::allocate_dma_buffer((blocks.next_power_of_two() * BLOCK_BYTES) as usize)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shardraft_raft::{EntryKind, HardState, LogIndex, NodeId, Term};

    use super::*;
    use crate::log::format::{BLOCK_BYTES, decode_batch_header, decode_payload};

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            term: Term(2),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::from(vec![index as u8; bytes]),
        }
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("starting a glommio executor")
            .run(future)
    }

    #[test]
    fn staged_records_decode_after_the_header() {
        run(async {
            let mut buffer = StagingBuffer::with_payload_capacity(100);
            let mut records = Vec::new();
            for index in 1..=40 {
                // Far more than the first capacity, so the buffer grows on the way.
                let entry = entry(index, 300);
                let (offset, bytes) = buffer.push_entry(GroupId(3), &entry);
                assert_eq!(offset as usize + bytes as usize, buffer.payload_len());
                records.push(Record::Entry {
                    group: GroupId(3),
                    entry,
                });
            }
            let hard_state = Record::HardState {
                group: GroupId(3),
                hard_state: HardState {
                    term: Term(2),
                    vote: Some(NodeId(1)),
                    commit: LogIndex(40),
                },
            };
            buffer.push_record(&hard_state);
            records.push(hard_state);
            let payload_len = buffer.payload_len();
            let header = format::encode_batch_header(9, 8, buffer.payload(), records.len() as u32);

            let written = buffer.take_for_write(&header);

            let bytes = written.as_bytes();
            assert_eq!(
                bytes.len() as u64 % BLOCK_BYTES,
                0,
                "the write is whole blocks"
            );
            let decoded_header = decode_batch_header(bytes).expect("a valid batch header");
            assert_eq!(decoded_header.payload_len as usize, payload_len);
            let end = BATCH_HEADER_BYTES + payload_len;
            let decoded = decode_payload(&bytes[BATCH_HEADER_BYTES..end], records.len() as u32)
                .expect("valid records");
            let decoded: Vec<Record> = decoded.into_iter().map(|item| item.record).collect();
            assert_eq!(decoded, records, "records read back");
            assert!(
                bytes[end..].iter().all(|byte| *byte == 0),
                "the padding is zeroed"
            );
        });
    }
}
