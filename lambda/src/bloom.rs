//! A blocked Bloom filter of tokens, with a stable serialized form.
//!
//! The filter is written by the indexer and read back by `logferry query`,
//! possibly built from another version, so its layout is a contract
//! (`"hash": "xxh3-128-blocked512"` in the index document):
//!
//! - `m` bits in `blocks = m / 512` blocks of 512 bits.
//! - A token's hash is XXH3-128 (seed 0) of its UTF-8 bytes, split into
//!   `lo` (low 64 bits) and `hi` (high 64 bits).
//! - Its block is `lo mod blocks`; inside the block it sets the `k` bits
//!   `s_i >> 55` (the top 9 bits) for `i` in `0..k`, where `s_0 = hi` and
//!   `s_{i+1} = s_i * 6364136223846793005 + 1442695040888963407 (mod 2^64)`.
//! - Bit `n` of the filter is bit `n % 8` (least significant first) of byte
//!   `n / 8`; the bytes are base64 (standard alphabet, padded) in `bits`.
//!
//! Blocked: all `k` bits of a token share one 64-byte cache line, so an
//! insert costs one cache miss, not `k` (the indexer inserts every token of
//! every record). Sized after the fact: the indexer cannot know the number of
//! distinct tokens before the end of a streamed object, so it fills a large
//! filter of [`MAX_BLOCKS`] blocks and then folds it to the smallest divisor
//! `d` of that count whose expected false-positive rate is within the target
//! (block `i` ORed into block `i mod d`, which is what `lo mod d` selects).
//! [`MAX_BLOCKS`] is highly composite (2^5 * 3^2 * 5 * 7 * 11), so there is a
//! divisor within a few percent of any size and the rate lands close to the
//! target, not anywhere below it as halving would.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

/// Bits in one block (one cache line).
pub const BLOCK_BITS: u64 = 512;
const BLOCK_WORDS: usize = (BLOCK_BITS / 64) as usize;
const LCG_MUL: u64 = 6364136223846793005;
const LCG_INC: u64 = 1442695040888963407;
/// The filter is built with this many blocks (6.8 MiB) and folded down when done.
pub const MAX_BLOCKS: u64 = 110_880;
/// Name of the layout above, stored in the document.
pub const HASH_NAME: &str = "xxh3-128-blocked512";

/// Number of bit probes for a target false-positive rate.
pub fn hashes_for(fp_rate: f64) -> u32 {
    ((-fp_rate.log2()).round() as u32).clamp(1, 16)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    k: u32,
    /// `blocks * 8` words.
    words: Vec<u64>,
}

#[inline]
fn probes(token: &[u8], k: u32, blocks: u64) -> (usize, impl Iterator<Item = usize>) {
    let h = xxh3_128(token);
    let lo = h as u64;
    let hi = (h >> 64) as u64;
    let block = (lo % blocks) as usize;
    // Top 9 bits of a 64-bit LCG stream seeded with `hi` (PCG's multiplier
    // and increment): independent enough probes inside a block, unlike
    // double hashing, whose patterns repeat within 512 bits.
    let bits = (0..k).scan(hi, |s, _| {
        let bit = (*s >> 55) as usize;
        *s = s.wrapping_mul(LCG_MUL).wrapping_add(LCG_INC);
        Some(bit)
    });
    (block, bits)
}

impl Bloom {
    /// An empty filter of `blocks` blocks of 512 bits.
    pub fn new(blocks: u64, k: u32) -> Self {
        Bloom {
            k,
            words: vec![0; blocks.max(1) as usize * BLOCK_WORDS],
        }
    }

    pub fn k(&self) -> u32 {
        self.k
    }

    pub fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    fn blocks(&self) -> u64 {
        (self.words.len() / BLOCK_WORDS) as u64
    }

    /// Adds a token; true if that set a bit that was clear (the token was new,
    /// as far as the filter can tell).
    pub fn insert(&mut self, token: &str) -> bool {
        let (block, bits) = probes(token.as_bytes(), self.k, self.blocks());
        let words = &mut self.words[block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS];
        let mut changed = false;
        for bit in bits {
            let (w, mask) = (bit / 64, 1u64 << (bit % 64));
            changed |= words[w] & mask == 0;
            words[w] |= mask;
        }
        changed
    }

    /// False: the token was certainly never inserted. True: it probably was.
    pub fn contains(&self, token: &str) -> bool {
        let (block, mut bits) = probes(token.as_bytes(), self.k, self.blocks());
        let words = &self.words[block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS];
        bits.all(|bit| words[bit / 64] & (1u64 << (bit % 64)) != 0)
    }

    /// Folds to `d` blocks, a divisor of the block count: block `i` is ORed
    /// into block `i mod d`.
    fn fold(&mut self, d: u64) {
        let d_words = d as usize * BLOCK_WORDS;
        for i in d_words..self.words.len() {
            let w = self.words[i];
            self.words[i % d_words] |= w;
        }
        self.words.truncate(d_words);
    }

    /// Folds to the smallest divisor of the block count whose expected
    /// false-positive rate for `items` distinct tokens is at most `fp_rate`.
    pub fn shrink_to_fit(&mut self, items: u64, fp_rate: f64) {
        let blocks = self.blocks();
        let best = (1..blocks)
            .filter(|d| blocks.is_multiple_of(*d))
            .find(|&d| expected_fp_rate(d, self.k, items) <= fp_rate);
        if let Some(d) = best {
            self.fold(d);
        }
    }

    /// The serialized form (see the module docs).
    pub fn to_doc(&self, items: u64) -> BloomDoc {
        let mut bytes = Vec::with_capacity(self.words.len() * 8);
        for w in &self.words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        BloomDoc {
            hash: HASH_NAME.to_string(),
            k: self.k,
            m: self.bits(),
            items,
            bits: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    pub fn from_doc(doc: &BloomDoc) -> Result<Self, BloomError> {
        if doc.hash != HASH_NAME {
            return Err(BloomError::UnknownHash(doc.hash.clone()));
        }
        if doc.m == 0 || !doc.m.is_multiple_of(BLOCK_BITS) || doc.k == 0 || doc.k > 64 {
            return Err(BloomError::Shape { m: doc.m, k: doc.k });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&doc.bits)
            .map_err(|_| BloomError::Base64)?;
        if bytes.len() as u64 * 8 != doc.m {
            return Err(BloomError::Shape { m: doc.m, k: doc.k });
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes")))
            .collect();
        Ok(Bloom { k: doc.k, words })
    }
}

/// Expected false-positive rate of a blocked filter with `blocks` blocks, `k`
/// probes and `n` distinct items: the per-block rate averaged over the
/// Poisson-distributed block loads.
pub fn expected_fp_rate(blocks: u64, k: u32, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let lambda = n as f64 / blocks as f64;
    let per_bit_miss = 1.0 - 1.0 / BLOCK_BITS as f64;
    let hi = (lambda + 10.0 * lambda.sqrt() + 20.0).ceil() as u64;
    let lo = (lambda - 10.0 * lambda.sqrt()).floor().max(0.0) as u64;
    // Poisson pmf computed in log space from `lo` on.
    let ln_pmf = |j: u64| -lambda + j as f64 * lambda.ln() - ln_factorial(j);
    let mut total = 0.0;
    for j in lo..=hi {
        let fill = 1.0 - per_bit_miss.powf((j * u64::from(k)) as f64);
        total += ln_pmf(j).exp() * fill.powi(k as i32);
    }
    total
}

fn ln_factorial(n: u64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    // Stirling with two correction terms: exact enough for sizing.
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x) - 1.0 / (360.0 * x * x * x)
}

/// The serialized filter in an index document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BloomDoc {
    /// Layout name, [`HASH_NAME`].
    pub hash: String,
    /// Probes per token.
    pub k: u32,
    /// Bits (a multiple of 512).
    pub m: u64,
    /// Distinct tokens inserted (as counted by the filter, before folding).
    pub items: u64,
    /// The bits, base64.
    pub bits: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BloomError {
    #[error("unknown token filter layout {0:?}")]
    UnknownHash(String),
    #[error("token filter has an invalid shape (m={m}, k={k})")]
    Shape { m: u64, k: u32 },
    #[error("token filter bits are not valid base64")]
    Base64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(n: u64, fp: f64) -> Bloom {
        let mut b = Bloom::new(MAX_BLOCKS, hashes_for(fp));
        let mut items = 0;
        for i in 0..n {
            items += u64::from(b.insert(&format!("token-{i}")));
        }
        b.shrink_to_fit(items, fp);
        b
    }

    #[test]
    fn no_false_negatives_and_fp_rate_near_target() {
        for (n, target) in [(20_000u64, 0.01), (50_000, 0.01), (5_000, 0.001), (30_000, 0.05)] {
            let b = built(n, target);
            for i in 0..n {
                assert!(b.contains(&format!("token-{i}")), "false negative");
            }
            let probes = 200_000;
            let fp = (0..probes).filter(|i| b.contains(&format!("other-{i}"))).count() as f64 / probes as f64;
            // Folding stops at a divisor of MAX_BLOCKS: the real rate lies a
            // little under the target (plus sampling noise).
            assert!(
                fp <= target * 1.25,
                "n={n} target={target}: measured {fp}, m={}",
                b.bits()
            );
            assert!(
                fp >= target / 3.0,
                "n={n} target={target}: measured {fp} (filter oversized), m={}",
                b.bits()
            );
            let predicted = expected_fp_rate(b.bits() / BLOCK_BITS, b.k(), n);
            assert!(
                (fp - predicted).abs() <= predicted * 0.25 + 0.0005,
                "measured {fp} predicted {predicted}"
            );
        }
    }

    #[test]
    fn folding_keeps_every_member() {
        let mut b = Bloom::new(MAX_BLOCKS, 7);
        for i in 0..1000 {
            b.insert(&i.to_string());
        }
        b.shrink_to_fit(1000, 0.01);
        assert!(b.bits() < MAX_BLOCKS * BLOCK_BITS);
        assert!((0..1000).all(|i| b.contains(&i.to_string())));
    }

    #[test]
    fn round_trips_through_the_document() {
        let b = built(3000, 0.01);
        let doc = b.to_doc(3000);
        assert_eq!(doc.m, b.bits());
        let back = Bloom::from_doc(&doc).expect("valid doc");
        assert_eq!(back, b);
        let json = serde_json::to_string(&doc).expect("serializes");
        let doc2: BloomDoc = serde_json::from_str(&json).expect("parses");
        assert_eq!(doc2, doc);
    }

    #[test]
    fn layout_is_stable() {
        // A fixed filter: if this changes, filters already in S3 stop working.
        let mut b = Bloom::new(2, 3);
        b.insert("timeout");
        b.insert("task-1");
        let doc = b.to_doc(2);
        let again = Bloom::from_doc(&doc).expect("valid");
        assert!(again.contains("timeout") && again.contains("task-1"));
        let set: Vec<usize> = b
            .words
            .iter()
            .enumerate()
            .flat_map(|(w, word)| (0..64).filter(move |i| word >> i & 1 == 1).map(move |i| w * 64 + i))
            .collect();
        assert_eq!(set.len(), 6);
        assert_eq!(set, STABLE_BITS, "bit layout changed");
    }
    // Computed once from the layout in the module docs.
    const STABLE_BITS: [usize; 6] = [290, 342, 374, 692, 846, 987];

    #[test]
    fn rejects_bad_documents() {
        let mut doc = built(10, 0.01).to_doc(10);
        doc.hash = "sha1".into();
        assert!(matches!(Bloom::from_doc(&doc), Err(BloomError::UnknownHash(_))));
        let mut doc = built(10, 0.01).to_doc(10);
        doc.m += 64;
        assert!(matches!(Bloom::from_doc(&doc), Err(BloomError::Shape { .. })));
        let mut doc = built(10, 0.01).to_doc(10);
        doc.bits = "%%%".into();
        assert_eq!(Bloom::from_doc(&doc), Err(BloomError::Base64));
    }
}
