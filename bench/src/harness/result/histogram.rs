//! Lossless storage of latency histograms in result files, and their summary in quantiles.
//!
//! A histogram is stored as HdrHistogram's V2 compressed serialization (the V2 encoding of
//! the counts, zlib-deflated, behind its own cookie and length) in standard base64 with
//! padding. That is the text each histogram line of HdrHistogram's interval log format
//! carries (the log of the Java reference implementation's `HistogramLogWriter`, which
//! the `hdrhistogram` crate also reads), so tools that read those logs read it as it is.
//! The compressed form costs no extra dependency, because the `hdrhistogram` crate's
//! `serialization` feature always brings flate2 (on its pure-Rust miniz_oxide backend).
//! [`EncodedHistogram::decode`] also reads the uncompressed V2 form, which other tools
//! may write.
//!
//! Decoding treats the text as untrusted. The `hdrhistogram` crate's deserializer (7.6)
//! allocates the payload length that the header states before reading it, and negates a
//! decoded count of `i64::MIN`, which overflows. So before the deserializer reads any
//! bytes, [`EncodedHistogram::decode`] inflates the compressed form itself with a size
//! limit, checks the stated lengths against the bytes present, rejects that one count,
//! and bounds the total count. Every input then yields a histogram or a
//! [`ResultError::InvalidHistogram`], never a panic or an unbounded allocation.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::read::ZlibDecoder;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use super::{EncodedHistogram, ResultError};

/// First four bytes of an uncompressed V2 serialization (HdrHistogram's
/// `V2EncodingCookieBase` 0x1c849303 with the word size 0x10 or-ed in).
const V2_COOKIE: u32 = 0x1c84_9313;

/// First four bytes of a V2 compressed serialization (`V2CompressedEncodingCookieBase`
/// 0x1c849304 with the word size 0x10).
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

/// Bytes of the V2 header before the counts: cookie, payload length, normalizing offset,
/// significant digits (4 bytes each), lowest and highest trackable value (8 each) and the
/// integer-to-double conversion ratio (8).
const V2_HEADER_BYTES: usize = 40;

/// Bytes of the V2 compressed header before the zlib stream: cookie and stream length.
const COMPRESSED_HEADER_BYTES: usize = 8;

/// Maximum size of an inflated V2 serialization. The largest histogram the format allows
/// (5 significant digits over 1 to `u64::MAX`) has about 6 million counts of at most
/// 9 bytes each, about 54 MiB, so no valid histogram reaches this.
const INFLATED_BYTES_MAX: usize = 64 << 20;

/// Maximum total count of a decoded histogram: 2^53, the largest integer up to which an
/// `f64` represents every count exactly. Far above any run (285 years at a million operations per second), and low
/// enough that the crate's unchecked `u64` sums over the counts cannot overflow.
pub const TOTAL_COUNT_MAX: u64 = 1 << 53;

impl EncodedHistogram {
    /// Serializes `histogram` losslessly: V2 compressed, then base64.
    ///
    /// ```
    /// use hdrhistogram::Histogram;
    /// use shardraft_bench::harness::result::EncodedHistogram;
    ///
    /// let mut latency_nanos = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    /// latency_nanos.record_n(250_000, 7).unwrap();
    /// let encoded = EncodedHistogram::encode(&latency_nanos);
    /// assert_eq!(encoded.decode().unwrap().count_at(250_000), 7);
    /// ```
    ///
    /// # Panics
    ///
    /// Panics when one bucket counts more than `i64::MAX` values, which the V2 format
    /// cannot store. No run records that many operations.
    pub fn encode(histogram: &Histogram<u64>) -> EncodedHistogram {
        let mut bytes = Vec::new();
        let result = V2DeflateSerializer::new().serialize(histogram, &mut bytes);
        if let Err(error) = result {
            // Writing to a Vec cannot fail, so the serializer's only error on 64-bit targets
            // is a count above i64::MAX.
            panic!("HdrHistogram V2 serialization failed: {error:?}");
        }
        EncodedHistogram(BASE64.encode(bytes))
    }

    /// Decodes the histogram; the counts come back exactly as encoded.
    ///
    /// # Errors
    ///
    /// [`ResultError::InvalidHistogram`] for text that is not base64, a serialization that
    /// is truncated, has trailing bytes or a corrupt deflate stream, parameters that
    /// HdrHistogram rejects, or a total count above [`TOTAL_COUNT_MAX`].
    pub fn decode(&self) -> Result<Histogram<u64>, ResultError> {
        let bytes = BASE64
            .decode(self.0.trim())
            .map_err(|error| invalid(format!("the text is not valid base64 ({error})")))?;
        let v2 = match read_cookie(&bytes)? {
            V2_COMPRESSED_COOKIE => inflate(&bytes)?,
            V2_COOKIE => bytes,
            other => {
                return Err(invalid(format!(
                    "the cookie is {other:#010x}, expected {V2_COMPRESSED_COOKIE:#010x} (V2 \
                     compressed) or {V2_COOKIE:#010x} (V2)"
                )));
            }
        };
        check_v2(&v2)?;
        Deserializer::new()
            .deserialize(&mut v2.as_slice())
            .map_err(|error| invalid(format!("HdrHistogram rejected it ({error})")))
    }
}

/// Latency quantiles of one histogram of nanoseconds, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyQuantiles {
    /// Recorded operations.
    pub samples: u64,
    pub p50_micros: f64,
    pub p90_micros: f64,
    pub p99_micros: f64,
    pub p999_micros: f64,
    pub max_micros: f64,
    pub mean_micros: f64,
}

impl LatencyQuantiles {
    /// Summarizes a histogram whose values are nanoseconds; `None` when it is empty.
    ///
    /// Quantiles are HdrHistogram's: the highest value equivalent to the recorded value at
    /// that rank, so within the histogram's precision and never below the true quantile.
    pub fn from_histogram_nanos(histogram: &Histogram<u64>) -> Option<LatencyQuantiles> {
        if histogram.is_empty() {
            return None;
        }
        let micros = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
        Some(LatencyQuantiles {
            samples: histogram.len(),
            p50_micros: micros(0.5),
            p90_micros: micros(0.9),
            p99_micros: micros(0.99),
            p999_micros: micros(0.999),
            max_micros: histogram.max() as f64 / 1_000.0,
            mean_micros: histogram.mean() / 1_000.0,
        })
    }
}

fn invalid(reason: String) -> ResultError {
    ResultError::InvalidHistogram { reason }
}

fn read_cookie(bytes: &[u8]) -> Result<u32, ResultError> {
    let Some(cookie) = bytes.first_chunk::<4>() else {
        return Err(invalid(format!(
            "it is {} bytes long, shorter than the 4-byte cookie",
            bytes.len()
        )));
    };
    Ok(u32::from_be_bytes(*cookie))
}

/// Returns the uncompressed V2 serialization inside a V2 compressed one.
fn inflate(bytes: &[u8]) -> Result<Vec<u8>, ResultError> {
    let Some(header) = bytes.get(..COMPRESSED_HEADER_BYTES) else {
        return Err(invalid(format!(
            "the compressed header is cut off after {} of {COMPRESSED_HEADER_BYTES} bytes",
            bytes.len()
        )));
    };
    let stated_bytes = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let stream = &bytes[COMPRESSED_HEADER_BYTES..];
    if stream.len() as u64 != u64::from(stated_bytes) {
        return Err(invalid(format!(
            "the header states a {stated_bytes}-byte deflate stream but {} bytes follow",
            stream.len()
        )));
    }

    let mut inflated = Vec::new();
    let limit = INFLATED_BYTES_MAX as u64 + 1;
    ZlibDecoder::new(stream)
        .take(limit)
        .read_to_end(&mut inflated)
        .map_err(|error| invalid(format!("the deflate stream is corrupt ({error})")))?;
    if inflated.len() > INFLATED_BYTES_MAX {
        return Err(invalid(format!(
            "it inflates to more than {INFLATED_BYTES_MAX} bytes, larger than any valid \
             histogram"
        )));
    }
    if read_cookie(&inflated)? != V2_COOKIE {
        return Err(invalid(
            "the inflated data does not start with the V2 cookie".to_owned(),
        ));
    }
    Ok(inflated)
}

/// Checks an uncompressed V2 serialization's length and counts before the deserializer
/// trusts them.
fn check_v2(bytes: &[u8]) -> Result<(), ResultError> {
    if bytes.len() < V2_HEADER_BYTES {
        return Err(invalid(format!(
            "the V2 header is cut off after {} of {V2_HEADER_BYTES} bytes",
            bytes.len()
        )));
    }
    let stated_bytes = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let payload = &bytes[V2_HEADER_BYTES..];
    if payload.len() as u64 != u64::from(stated_bytes) {
        return Err(invalid(format!(
            "the V2 header states {stated_bytes} bytes of counts but {} bytes follow",
            payload.len()
        )));
    }
    check_counts(payload)
}

/// Walks the counts (zig-zag LEB128 varints of at most 9 bytes: positive values are
/// counts, negative ones runs of zero counts) and rejects what the deserializer cannot
/// take safely.
fn check_counts(payload: &[u8]) -> Result<(), ResultError> {
    let mut total_count: u64 = 0;
    let mut offset = 0;
    while offset < payload.len() {
        let Some((encoded, length)) = read_varint(&payload[offset..]) else {
            return Err(invalid(format!(
                "the count at payload byte {offset} is cut off"
            )));
        };
        if encoded == u64::MAX {
            // Zig-zag decodes this to i64::MIN, whose negation overflows.
            return Err(invalid(format!(
                "the zero run at payload byte {offset} is out of range"
            )));
        }
        let count = zig_zag_decode(encoded);
        if count > 0 {
            total_count = total_count.saturating_add(count.unsigned_abs());
        }
        if total_count > TOTAL_COUNT_MAX {
            return Err(invalid(format!(
                "its total count exceeds {TOTAL_COUNT_MAX} (2^53)"
            )));
        }
        offset += length;
    }
    Ok(())
}

/// Reads one LEB128-64b9B varint: 7 bits from each of up to 8 bytes while the high bit
/// is set, then all 8 bits of a ninth. Returns the value and its length, or `None` when
/// the input ends first.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, &byte) in bytes.iter().take(9).enumerate() {
        if index == 8 {
            return Some((value | (u64::from(byte) << 56), 9));
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

fn zig_zag_decode(encoded: u64) -> i64 {
    ((encoded >> 1) as i64) ^ -((encoded & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency_histogram() -> Histogram<u64> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for value in [900_u64, 1_000, 55_000, 55_000, 1_250_000, 7_000_000_000] {
            histogram.record(value).unwrap();
        }
        histogram
    }

    fn raw_bytes(encoded: &EncodedHistogram) -> Vec<u8> {
        BASE64.decode(&encoded.0).unwrap()
    }

    #[test]
    fn varint_reads_every_length() {
        assert_eq!(read_varint(&[0x05]), Some((5, 1)));
        assert_eq!(read_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(read_varint(&[0x80, 0x80]), None);
        assert_eq!(read_varint(&[]), None);
    }

    #[test]
    fn zig_zag_matches_format() {
        assert_eq!(zig_zag_decode(0), 0);
        assert_eq!(zig_zag_decode(1), -1);
        assert_eq!(zig_zag_decode(2), 1);
        assert_eq!(zig_zag_decode(u64::MAX), i64::MIN);
    }

    #[test]
    fn uncompressed_v2_decodes() {
        let histogram = latency_histogram();
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&histogram, &mut bytes)
            .unwrap();
        let decoded = EncodedHistogram(BASE64.encode(bytes)).decode().unwrap();
        assert_eq!(decoded, histogram);
    }

    #[test]
    fn overflowing_zero_run_rejected() {
        let empty = Histogram::<u64>::new_with_bounds(1, 1_000, 2).unwrap();
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&empty, &mut bytes)
            .unwrap();
        bytes.truncate(V2_HEADER_BYTES);
        bytes.extend_from_slice(&[0xff; 9]);
        bytes[4..8].copy_from_slice(&9_u32.to_be_bytes());
        let error = EncodedHistogram(BASE64.encode(bytes)).decode().unwrap_err();
        assert!(error.to_string().contains("out of range"), "{error}");
    }

    #[test]
    fn overstated_payload_length_rejected() {
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&latency_histogram(), &mut bytes)
            .unwrap();
        bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let error = EncodedHistogram(BASE64.encode(bytes)).decode().unwrap_err();
        assert!(
            error.to_string().contains("states 4294967295 bytes"),
            "{error}"
        );
    }

    #[test]
    fn huge_total_count_rejected() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 1_000, 2).unwrap();
        histogram.record_n(10, TOTAL_COUNT_MAX).unwrap();
        histogram.record_n(20, 1).unwrap();
        let error = EncodedHistogram::encode(&histogram).decode().unwrap_err();
        assert!(error.to_string().contains("total count"), "{error}");
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        // Each byte of a valid encoding, replaced by several values, decodes to some
        // histogram or to an error, and never panics.
        let bytes = raw_bytes(&EncodedHistogram::encode(&latency_histogram()));
        for index in 0..bytes.len() {
            for replacement in [0x00, 0x7f, 0x80, 0xff, bytes[index] ^ 0x01] {
                let mut corrupted = bytes.clone();
                corrupted[index] = replacement;
                let _ = EncodedHistogram(BASE64.encode(&corrupted)).decode();
            }
        }
    }

    #[test]
    fn every_truncation_rejected() {
        let bytes = raw_bytes(&EncodedHistogram::encode(&latency_histogram()));
        for length in 0..bytes.len() {
            let truncated = EncodedHistogram(BASE64.encode(&bytes[..length]));
            assert!(truncated.decode().is_err(), "truncated to {length} bytes");
        }
    }

    #[test]
    fn quantiles_in_micros() {
        let quantiles = LatencyQuantiles::from_histogram_nanos(&latency_histogram()).unwrap();
        assert_eq!(quantiles.samples, 6);
        assert!((quantiles.p50_micros - 55.0).abs() < 0.1, "{quantiles:?}");
        assert!(quantiles.max_micros >= 7_000_000.0, "{quantiles:?}");
        assert!(quantiles.max_micros < 7_010_000.0, "{quantiles:?}");
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(LatencyQuantiles::from_histogram_nanos(&empty), None);
    }
}
