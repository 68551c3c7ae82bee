//! The bytes that the log benchmarks write: entry payloads and the device probe's buffers.
//!
//! The bytes matter as much as their count, because a virtual disk may compress what it
//! stores. On the development VM, 1 MiB O_DIRECT writes + fdatasync of one repeated byte
//! once ran at 2.2 to 3.3 GiB/s, and the same writes of random bytes at 1.0 to 1.2 GiB/s.
//! An hour later both ran at the same speed. While such a disk compresses, a benchmark of
//! repeated bytes measures the host's compressor more than the disk. So both sides of every
//! comparison write the same kind of bytes. The default is random bytes, as real payloads
//! are: serialized commands, often compressed or encrypted before they reach the log.
//!
//! Random payloads are slices of one pool of pseudo-random bytes, generated once per load
//! and sized to the entries (1 MiB for entries of up to 512 bytes, 8 MiB for 4 KiB).
//! Each entry starts at an offset derived from its group and index. So the entries of one
//! batch are different bytes, and no batch repeats a run that a compressor could find.
//! Taking an entry costs a reference count and a hash, as cloning one shared buffer did.

use bytes::Bytes;
use serde::Serialize;

/// Bounds of the random pool that entries and probe writes are cut from. The pool contains
/// [`RANDOM_POOL_ENTRIES`] entries of the largest size, so that two entries of a 1 MiB
/// batch rarely share bytes. It is no larger, because a real payload has just arrived from
/// the network and is in the CPU's cache. With a 16 MiB pool, 16-byte entries spent a third
/// of the log's thread in `memmove`, waiting for their payloads to load.
const RANDOM_POOL_BYTES_MIN: usize = 1 << 20;
const RANDOM_POOL_BYTES_MAX: usize = 16 << 20;
const RANDOM_POOL_ENTRIES: usize = 2048;

/// The byte that constant payloads repeat.
const CONSTANT_BYTE: u8 = 0x5a;

/// The kind of bytes a benchmark writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// Pseudo-random bytes, which no storage layer can compress.
    Random,
    /// One repeated byte (0x5a), which a compressing disk stores almost for free.
    Constant,
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadKind::Random => "random",
            PayloadKind::Constant => "constant",
        })
    }
}

/// Hands out payloads of one kind.
#[derive(Clone, Debug)]
pub struct PayloadSource {
    kind: PayloadKind,
    pool: Bytes,
}

impl PayloadSource {
    /// Creates a source of payloads of up to `bytes_max` bytes each.
    pub fn new(kind: PayloadKind, bytes_max: usize) -> PayloadSource {
        let pool = match kind {
            PayloadKind::Random => random_bytes(
                bytes_max
                    .saturating_mul(RANDOM_POOL_ENTRIES)
                    .clamp(RANDOM_POOL_BYTES_MIN, RANDOM_POOL_BYTES_MAX),
            ),
            PayloadKind::Constant => vec![CONSTANT_BYTE; bytes_max],
        };
        PayloadSource {
            kind,
            pool: Bytes::from(pool),
        }
    }

    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// Returns the payload of entry `index` of group `group`: `len` bytes, at most the `bytes_max`
    /// this source was made for. Random payloads of different entries start at different
    /// offsets of the pool; constant ones are all the same bytes.
    pub fn entry(&self, group: u32, index: u64, len: usize) -> Bytes {
        let start = match self.kind {
            PayloadKind::Random => {
                let key = (u64::from(group) << 40) ^ index;
                offset_in(&self.pool, len, splitmix64(key))
            }
            PayloadKind::Constant => 0,
        };
        self.pool.slice(start..start + len.min(self.pool.len()))
    }

    /// Fills `buffer` for write number `write_seq`: consecutive writes get different bytes.
    pub fn fill(&self, buffer: &mut [u8], write_seq: u64) {
        match self.kind {
            PayloadKind::Random => {
                for (chunk_seq, chunk) in buffer.chunks_mut(self.pool.len() / 2).enumerate() {
                    let start = offset_in(
                        &self.pool,
                        chunk.len(),
                        splitmix64(write_seq ^ ((chunk_seq as u64) << 48)),
                    );
                    chunk.copy_from_slice(&self.pool[start..start + chunk.len()]);
                }
            }
            PayloadKind::Constant => buffer.fill(CONSTANT_BYTE),
        }
    }
}

/// Picks by `hash` an offset in `pool` where `len` bytes fit.
fn offset_in(pool: &[u8], len: usize, hash: u64) -> usize {
    let starts = pool.len().saturating_sub(len) + 1;
    (hash % starts as u64) as usize
}

/// `len` pseudo-random bytes from a fixed seed, the same in every run.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x5348_4152_4452_4654_u64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        bytes.extend_from_slice(&splitmix64(state).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Mixes `value` into a well-distributed 64-bit hash, with the shifts and multipliers of
/// the SplitMix64 finalizer.
fn splitmix64(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_entries_differ_per_entry() {
        let source = PayloadSource::new(PayloadKind::Random, 4096);
        let first = source.entry(0, 1, 4096);
        let second = source.entry(0, 2, 4096);
        let other_group = source.entry(1, 1, 4096);
        assert_eq!(first.len(), 4096);
        assert_ne!(first, second);
        assert_ne!(first, other_group);
        assert_eq!(
            first,
            source.entry(0, 1, 4096),
            "the same entry gets the same bytes"
        );
        assert_eq!(source.entry(3, 9, 16).len(), 16);
    }

    #[test]
    fn random_pool_is_uniform() {
        let bytes = random_bytes(1 << 20);
        let mut counts = [0u32; 256];
        for &byte in &bytes {
            counts[usize::from(byte)] += 1;
        }
        // Each byte value appears about 4096 times in 1 MiB of uniform bytes.
        assert!(
            counts.iter().all(|&count| (3500..4700).contains(&count)),
            "{counts:?}"
        );
    }

    #[test]
    fn constant_payloads_repeat_one_byte() {
        let source = PayloadSource::new(PayloadKind::Constant, 256);
        assert!(
            source
                .entry(4, 7, 256)
                .iter()
                .all(|&byte| byte == CONSTANT_BYTE)
        );
        let mut buffer = vec![0u8; 8192];
        source.fill(&mut buffer, 3);
        assert!(buffer.iter().all(|&byte| byte == CONSTANT_BYTE));
    }

    #[test]
    fn random_fills_differ_per_write() {
        let source = PayloadSource::new(PayloadKind::Random, 4096);
        let pool_bytes = source.pool.len();
        let mut first = vec![0u8; pool_bytes + 4096];
        let mut second = vec![0u8; pool_bytes + 4096];
        source.fill(&mut first, 0);
        source.fill(&mut second, 1);
        assert_ne!(first[..4096], second[..4096]);
        assert_ne!(first[pool_bytes..], second[pool_bytes..]);
        assert!(first[pool_bytes..].iter().any(|&byte| byte != 0));
    }
}
