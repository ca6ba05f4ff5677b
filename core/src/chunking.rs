//! Content-defined chunking of an object's bytes: FastCDC (the 2020 algorithm, the
//! `fastcdc` crate pinned to one version in the workspace manifest) cuts where the content
//! says, so an edit moves only the cuts near it and a new version shares every chunk the
//! edit did not touch. Golden cut points below fail the build if an upgrade moves them.
//!
//! Chunk size is a trade. Steward's default averages 4 MiB (1 MiB minimum, 16 MiB
//! maximum): a manifest entry is ~40 bytes, so about 1 MB of manifest per 100 GiB, and
//! the controller's state stays small at millions of chunks. Smaller chunks dedup better
//! (an edit wastes up to about one average chunk on each side of it); an object may be put
//! with smaller parameters where versions differ in many small places.

use crate::chunk::ChunkId;

/// Smallest minimum, and largest maximum, chunk size the parameters may name (the
/// `fastcdc` 2020 limits are wider; these keep chunks within the store's 64 MiB limit and
/// manifests bounded).
pub const MIN_CHUNK_BYTES: u32 = 4 * 1024;
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024 * 1024;

/// FastCDC's size parameters, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkingParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkingParams {
    /// 1 MiB / 4 MiB / 16 MiB.
    pub const DEFAULT: ChunkingParams = ChunkingParams {
        min: 1024 * 1024,
        avg: 4 * 1024 * 1024,
        max: 16 * 1024 * 1024,
    };

    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_CHUNK_BYTES <= self.min && self.min < self.avg && self.avg < self.max) {
            return Err(format!(
                "chunk sizes need {MIN_CHUNK_BYTES} <= min < avg < max: {} / {} / {}",
                self.min, self.avg, self.max
            ));
        }
        if self.max > MAX_CHUNK_BYTES {
            return Err(format!(
                "the largest chunk may be {MAX_CHUNK_BYTES} bytes, not {}",
                self.max
            ));
        }
        Ok(())
    }
}

impl Default for ChunkingParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One chunk of an object: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub offset: u64,
    pub len: u32,
    pub id: ChunkId,
}

/// Cuts `bytes` into content-defined chunks (an empty input has none).
pub fn split(bytes: &[u8], params: ChunkingParams) -> Result<Vec<ChunkRef>, String> {
    params.validate()?;
    Ok(fastcdc::v2020::FastCDC::new(
        bytes,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    )
    .map(|c| ChunkRef {
        offset: c.offset as u64,
        len: c.length as u32,
        id: ChunkId::of(&bytes[c.offset..c.offset + c.length]),
    })
    .collect())
}

/// Cuts what `source` yields into the same chunks [`split`] makes of the same bytes,
/// reading it once with bounded memory (one chunk at a time); `on_chunk` sees each chunk's
/// bytes in order (to hash the whole content, say) before they are dropped.
pub fn split_reader<R: std::io::Read>(
    source: R,
    params: ChunkingParams,
    mut on_chunk: impl FnMut(&ChunkRef, &[u8]),
) -> Result<Vec<ChunkRef>, String> {
    params.validate()?;
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(
        source,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    ) {
        let c = c.map_err(|e| format!("reading: {e}"))?;
        let r = ChunkRef {
            offset: c.offset,
            len: c.length as u32,
            id: ChunkId::of(&c.data),
        };
        on_chunk(&r, &c.data);
        out.push(r);
    }
    Ok(out)
}

/// The bytes of `after` held in chunks `before` also has: what a new version re-uses.
pub fn reused_bytes(before: &[ChunkRef], after: &[ChunkRef]) -> u64 {
    let known: std::collections::HashSet<ChunkId> = before.iter().map(|c| c.id).collect();
    after
        .iter()
        .filter(|c| known.contains(&c.id))
        .map(|c| u64::from(c.len))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that look random (xorshift).
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn ends(chunks: &[ChunkRef]) -> Vec<u64> {
        chunks.iter().map(|c| c.offset + u64::from(c.len)).collect()
    }

    #[test]
    fn cut_points_are_the_golden_ones() {
        // If this fails after a dependency change, the chunker moved its boundaries: every
        // stored object would stop sharing chunks with its next version. Do not update the
        // numbers; pin the old version.
        let small = ChunkingParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        };
        let c = split(&bytes(0x5eed, 4 << 20), small).expect("split");
        assert_eq!(c.len(), 47);
        assert_eq!(
            ends(&c)[..10],
            [80324, 179302, 273031, 409124, 475666, 669350, 734994, 764042, 849085, 967289]
        );
        let c = split(&bytes(0x5eed, 48 << 20), ChunkingParams::DEFAULT).expect("split");
        assert_eq!(
            ends(&c),
            [
                3320947, 8194509, 12621572, 16985580, 24602722, 30935227, 32337725, 38385273,
                43190972, 48467673, 50331648
            ]
        );
    }

    #[test]
    fn reading_a_stream_cuts_where_splitting_the_bytes_does() {
        let data = bytes(0x5eed, 48 << 20);
        let whole = split(&data, ChunkingParams::DEFAULT).expect("split");
        let mut seen = 0u64;
        // A reader that hands out odd-sized pieces, as a pipe or socket would.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(77_777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let streamed = split_reader(Trickle(&data), ChunkingParams::DEFAULT, |c, b| {
            assert_eq!(c.offset, seen);
            assert_eq!(ChunkId::of(b), c.id);
            seen += b.len() as u64;
        })
        .expect("split_reader");
        assert_eq!(streamed, whole);
        assert_eq!(seen, data.len() as u64);
        assert!(split_reader(&b""[..], ChunkingParams::DEFAULT, |_, _| {})
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn chunks_cover_the_bytes_and_respect_the_sizes() {
        let data = bytes(7, 40 << 20);
        let c = split(&data, ChunkingParams::DEFAULT).expect("split");
        let mut at = 0u64;
        for (i, ch) in c.iter().enumerate() {
            assert_eq!(ch.offset, at);
            assert!(ch.len <= ChunkingParams::DEFAULT.max);
            if i + 1 < c.len() {
                assert!(ch.len >= ChunkingParams::DEFAULT.min);
            }
            let (a, b) = (ch.offset as usize, (ch.offset + u64::from(ch.len)) as usize);
            assert!(ch.id.matches(&data[a..b]));
            at += u64::from(ch.len);
        }
        assert_eq!(at, data.len() as u64);
        assert!(split(&[], ChunkingParams::DEFAULT)
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn a_1_mib_edit_in_256_mib_reuses_95_percent_of_the_bytes_even_when_it_shifts_the_rest() {
        let before = bytes(11, 256 << 20);
        let a = split(&before, ChunkingParams::DEFAULT).expect("split");
        let patch = bytes(99, 1 << 20);
        let len = before.len();
        // 1 MiB overwritten in the middle; inserted at a third (the rest shifts right);
        // removed at two thirds (the rest shifts left). Positions are off any chunk edge.
        let edits: [(&str, Vec<u8>); 3] = [
            ("overwritten", {
                let mut v = before.clone();
                let at = len / 2 + 12_345;
                v[at..at + patch.len()].copy_from_slice(&patch);
                v
            }),
            ("inserted", {
                let at = len / 3 + 777;
                [&before[..at], &patch[..], &before[at..]].concat()
            }),
            ("removed", {
                let at = 2 * len / 3 + 4_321;
                [&before[..at], &before[at + patch.len()..]].concat()
            }),
        ];
        for (kind, after) in edits {
            let b = split(&after, ChunkingParams::DEFAULT).expect("split");
            let reused = reused_bytes(&a, &b);
            println!(
                "1 MiB {kind} in 256 MiB: {reused} bytes re-used ({:.2} %)",
                reused as f64 / after.len() as f64 * 100.0
            );
            assert!(
                reused as f64 >= 0.95 * after.len() as f64,
                "1 MiB {kind}: {reused} of {} bytes re-used",
                after.len()
            );
        }
    }

    #[test]
    fn an_append_reuses_every_chunk_but_the_last() {
        let before = bytes(21, 30 << 20);
        let mut after = before.clone();
        after.extend_from_slice(&bytes(22, 5 << 20));
        let (a, b) = (
            split(&before, ChunkingParams::DEFAULT).expect("split"),
            split(&after, ChunkingParams::DEFAULT).expect("split"),
        );
        assert!(a.len() >= 2);
        assert_eq!(
            a[..a.len() - 1],
            b[..a.len() - 1],
            "the old chunks but the last are the new version's first"
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        for p in [
            ChunkingParams {
                min: 0,
                avg: 1,
                max: 2,
            },
            ChunkingParams {
                min: 8192,
                avg: 8192,
                max: 65536,
            },
            ChunkingParams {
                min: 1 << 20,
                avg: 4 << 20,
                max: 128 << 20,
            },
        ] {
            assert!(split(b"x", p).is_err(), "{p:?}");
        }
    }
}
