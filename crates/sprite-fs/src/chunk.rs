//! Chunks: the immutable, compressed, content-addressed form of a block in the object
//! store. A chunk's name is the BLAKE3 hash of the block's *uncompressed* bytes, so equal
//! blocks anywhere (sprites, images, checkpoints) are stored once, and a chunk read back
//! is verified against its name before use.

use crate::error::FsError;
use std::fmt;

/// zstd level: fast enough to keep up with a disk, and most of the ratio.
const ZSTD_LEVEL: i32 = 3;

/// Content hash naming a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of a block's bytes.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<ChunkId> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(ChunkId(bytes))
    }

    /// Object key of the chunk: fanned out by the first byte.
    pub fn key(&self) -> String {
        let hex = self.to_hex();
        format!("chunks/{}/{}", &hex[..2], hex)
    }

    /// Parses an object key made by [`ChunkId::key`].
    pub fn from_key(key: &str) -> Option<ChunkId> {
        ChunkId::from_hex(key.rsplit('/').next()?)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether a block is all zeros (such blocks are holes, never stored).
pub fn is_zero(data: &[u8]) -> bool {
    data.iter().all(|b| *b == 0)
}

/// zstd level for blocks that do not shrink: the fastest, which stores raw blocks in
/// the frame (same format, same decoder).
const ZSTD_LEVEL_INCOMPRESSIBLE: i32 = -7;
/// The part of a block tried first, to tell whether the block is worth compressing.
const SAMPLE_BYTES: usize = 64 * 1024;

/// Compresses a block for storage. Compressed media, archives and random bytes do not
/// shrink, and level 3 spends its full search finding that out; a sample of the block
/// decides, and such blocks are framed at the fastest level instead.
pub fn encode(data: &[u8]) -> Result<Vec<u8>, FsError> {
    if data.len() >= 2 * SAMPLE_BYTES {
        let sample = &data[..SAMPLE_BYTES];
        let packed = zstd::bulk::compress(sample, 1).map_err(FsError::Compress)?;
        if packed.len() * 100 > sample.len() * 97 {
            return zstd::bulk::compress(data, ZSTD_LEVEL_INCOMPRESSIBLE)
                .map_err(FsError::Compress);
        }
    }
    zstd::bulk::compress(data, ZSTD_LEVEL).map_err(FsError::Compress)
}

/// Decompresses a chunk fetched from the object store and checks it against its id
/// (the store could answer with another object's bytes).
pub fn decode(id: &ChunkId, stored: &[u8], block_size: usize) -> Result<Vec<u8>, FsError> {
    let data = zstd::bulk::decompress(stored, block_size).map_err(FsError::Compress)?;
    if ChunkId::of(&data) != *id {
        return Err(FsError::Corrupt { chunk: id.to_hex() });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_blocks_are_detected() {
        assert!(is_zero(&[0; 4096]));
        let mut data = vec![0; 4096];
        data[4095] = 1;
        assert!(!is_zero(&data));
    }

    #[test]
    fn corrupt_chunks_are_refused() {
        let data = vec![7u8; 65536];
        let id = ChunkId::of(&data);
        let stored = encode(&data).expect("encode");
        assert!(stored.len() < 1000, "repetitive data compresses");
        assert_eq!(decode(&id, &stored, 65536).expect("decode"), data);
        let other = encode(&[8u8; 65536]).expect("encode");
        assert!(matches!(
            decode(&id, &other, 65536),
            Err(FsError::Corrupt { .. })
        ));
    }

    #[test]
    fn incompressible_blocks_are_framed_raw_and_others_still_shrink() {
        // A xorshift stream: as good as random for zstd.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let stored = encode(&random).expect("encode");
        assert!(stored.len() <= random.len() + 1024, "{}", stored.len());
        assert_eq!(
            decode(&ChunkId::of(&random), &stored, 1 << 20).expect("decode"),
            random
        );
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .cycle()
            .take(1 << 20)
            .copied()
            .collect();
        let stored = encode(&text).expect("encode");
        assert!(stored.len() < 16 * 1024, "{}", stored.len());
        assert_eq!(
            decode(&ChunkId::of(&text), &stored, 1 << 20).expect("decode"),
            text
        );
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 1..5000)) {
            let id = ChunkId::of(&data);
            prop_assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
            prop_assert_eq!(ChunkId::from_key(&id.key()), Some(id));
            let stored = encode(&data).expect("encode");
            prop_assert_eq!(decode(&id, &stored, data.len()).expect("decode"), data);
        }
    }
}
