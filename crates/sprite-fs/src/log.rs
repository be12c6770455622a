//! The write log of a `store`-durability volume: what makes an fsync durable in the
//! object store without storing whole blocks.
//!
//! A **segment** holds the sectors written between two log cuts, each with its bytes as
//! they were at the later cut: applied on top of any state the volume went through
//! between the two cuts, it gives exactly the state at the later one. Segments are
//! numbered without gaps (`seq`), put one at a time, and a segment is put only after
//! the one before it; the published head names the first segment that applies on top
//! of it (`log_from`). Recovery takes the head and applies the segments from `log_from`
//! on, in order, as far as they run without a gap. Background passes fold the log into
//! blocks; a head with a newer `log_from` makes the older segments garbage.
//!
//! A `seq` is `epoch << 32 | counter`: each opening of a volume starts a new epoch (kept
//! in the metadata db), so segments of an earlier opening never continue the numbers of
//! a later one.
//!
//! Encoding (zstd-compressed): `SPRLOG01`, seq (u64 LE), run count (u32 LE), then per
//! run its byte offset in the volume (u64 LE), length (u32 LE) and bytes; last, the
//! BLAKE3 hash of everything before it.

use crate::error::FsError;

const MAGIC: &[u8; 8] = b"SPRLOG01";
const HASH: usize = 32;
/// Decompressed bytes a segment may have (what a reader allocates at most).
pub const MAX_SEGMENT_BYTES: usize = 64 << 20;

/// The epoch a `seq` belongs to.
pub fn epoch_of(seq: u64) -> u64 {
    seq >> 32
}

/// The first `seq` of an epoch.
pub fn first_of_epoch(epoch: u64) -> u64 {
    epoch << 32
}

/// Object key of a volume's segment (sorts in `seq` order).
pub fn key(volume: &str, seq: u64) -> String {
    format!("{}{seq:016x}", prefix(volume))
}

/// Where a volume's segments are.
pub fn prefix(volume: &str) -> String {
    format!("volumes/{volume}/log/")
}

/// The volume and `seq` of a segment key (None: not a segment key).
pub fn parse_key(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix("volumes/")?;
    let (volume, name) = rest.split_once("/log/")?;
    if name.len() != 16 || volume.is_empty() {
        return None;
    }
    Some((volume, u64::from_str_radix(name, 16).ok()?))
}

/// One segment: byte runs of the volume as they were at its cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    /// (offset in the volume, bytes), in no particular order (runs never overlap).
    pub runs: Vec<(u64, Vec<u8>)>,
}

impl Segment {
    /// Bytes of data the segment carries.
    pub fn data_bytes(&self) -> usize {
        self.runs.iter().map(|(_, bytes)| bytes.len()).sum()
    }

    pub fn encode(&self) -> Result<Vec<u8>, FsError> {
        let mut body = Vec::with_capacity(8 + 12 + self.data_bytes() + 12 * self.runs.len());
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for (offset, bytes) in &self.runs {
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
        }
        let hash = blake3::hash(&body);
        body.extend_from_slice(hash.as_bytes());
        zstd::bulk::compress(&body, 1).map_err(FsError::Compress)
    }

    /// Reads a segment fetched from `key`, checking its hash, its own `seq` against the
    /// key's and that every run fits in a volume of `volume_size` bytes.
    pub fn decode(stored: &[u8], key: &str, volume_size: u64) -> Result<Segment, FsError> {
        let bad = |message: &str| FsError::Manifest {
            key: key.to_string(),
            message: message.to_string(),
        };
        let body = zstd::bulk::decompress(stored, MAX_SEGMENT_BYTES).map_err(FsError::Compress)?;
        if body.len() < MAGIC.len() + 12 + HASH || &body[..MAGIC.len()] != MAGIC {
            return Err(bad("not a log segment"));
        }
        let (content, hash) = body.split_at(body.len() - HASH);
        if blake3::hash(content).as_bytes() != hash {
            return Err(bad("log segment does not match its hash"));
        }
        let mut reader = Reader {
            bytes: &content[MAGIC.len()..],
        };
        let seq = reader.u64().ok_or_else(|| bad("truncated header"))?;
        if parse_key(key).is_some_and(|(_, named)| named != seq) {
            return Err(bad("log segment under another segment's key"));
        }
        let count = reader.u32().ok_or_else(|| bad("truncated header"))?;
        let mut runs = Vec::new();
        for _ in 0..count {
            let (Some(offset), Some(len)) = (reader.u64(), reader.u32()) else {
                return Err(bad("truncated run"));
            };
            let data = reader
                .take(len as usize)
                .ok_or_else(|| bad("truncated run"))?;
            if offset
                .checked_add(len as u64)
                .is_none_or(|end| end > volume_size)
            {
                return Err(bad("run past the end of the volume"));
            }
            runs.push((offset, data.to_vec()));
        }
        if !reader.bytes.is_empty() {
            return Err(bad("bytes after the last run"));
        }
        Ok(Segment { seq, runs })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < len {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The segments to apply on top of a head whose `log_from` is given: from `log_from`
/// on, in order, as far as they run without a gap.
pub fn applicable(log_from: u64, mut present: Vec<u64>) -> Vec<u64> {
    present.sort_unstable();
    let mut next = log_from;
    present
        .into_iter()
        .filter(|seq| *seq >= log_from)
        .take_while(|seq| {
            let follows = *seq == next;
            next = seq.saturating_add(1);
            follows
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment() -> Segment {
        Segment {
            seq: first_of_epoch(3) + 7,
            runs: vec![(4096, vec![7u8; 512]), (1 << 20, b"tail".repeat(128))],
        }
    }

    #[test]
    fn a_segment_reads_back_as_written() {
        let segment = segment();
        let key = key("vol", segment.seq);
        let stored = segment.encode().expect("encode");
        assert_eq!(
            Segment::decode(&stored, &key, 1 << 30).expect("decode"),
            segment
        );
        assert_eq!(parse_key(&key), Some(("vol", segment.seq)));
        assert_eq!(epoch_of(segment.seq), 3);
    }

    #[test]
    fn a_damaged_or_misplaced_segment_is_refused() {
        let segment = segment();
        let key = key("vol", segment.seq);
        let stored = segment.encode().expect("encode");
        // A flipped byte inside the compressed frame.
        let mut body = zstd::bulk::decompress(&stored, MAX_SEGMENT_BYTES).expect("body");
        body[30] ^= 1;
        let flipped = zstd::bulk::compress(&body, 1).expect("compress");
        assert!(Segment::decode(&flipped, &key, 1 << 30).is_err());
        // Cut short.
        let short = zstd::bulk::compress(&body[..body.len() - 40], 1).expect("compress");
        assert!(Segment::decode(&short, &key, 1 << 30).is_err());
        // Under another seq's key.
        assert!(Segment::decode(&stored, &super::key("vol", segment.seq + 1), 1 << 30).is_err());
        // A run past the end of a smaller volume.
        assert!(Segment::decode(&stored, &key, 1 << 20).is_err());
        // Not a segment at all.
        let junk = zstd::bulk::compress(b"{\"id\":1}", 1).expect("compress");
        assert!(Segment::decode(&junk, &key, 1 << 30).is_err());
    }

    #[test]
    fn only_segments_that_follow_without_a_gap_apply() {
        let e = first_of_epoch(2);
        assert_eq!(
            applicable(e + 3, vec![e + 5, e + 3, e + 4]),
            vec![e + 3, e + 4, e + 5]
        );
        // Older ones are in the head already; after a gap nothing applies.
        assert_eq!(
            applicable(e + 3, vec![e + 1, e + 2, e + 3, e + 5]),
            vec![e + 3]
        );
        assert_eq!(applicable(e + 3, vec![e + 4]), Vec::<u64>::new());
        // Another epoch never continues this one.
        assert_eq!(applicable(e, vec![e, first_of_epoch(3)]), vec![e]);
        assert!(parse_key("volumes/v/head.json").is_none());
        assert!(parse_key("volumes/v/log/xyz").is_none());
    }
}
