//! Dedup: exact and MinHash-LSH near-duplicate detection, deterministic and memory-bounded.
//!
//! The `mix build` pipeline uses this module in two steps:
//!
//! 1. **Fingerprinting** (per document, embarrassingly parallel): [`Fingerprinter`] /
//!    [`fingerprint`] turn a text into a [`Fingerprint`] (a 128-bit exact hash and a MinHash
//!    signature). The build writes one fingerprint store per input file with
//!    [`FingerprintWriter`]; a store is committed atomically (tmp + fsync + rename), so a store
//!    that exists is complete and a killed build just redoes the files without one. Beside it,
//!    a [`KeyIndex`] holds the exact hashes and band keys column by column (see [`keys`]), so
//!    the exact and band stages read a few bytes a document instead of whole signatures.
//! 2. **Finding duplicates** (per corpus, or across corpora): [`find_duplicates`] reads all
//!    stores in file order and returns the [`Removal`]s; [`write_report`] writes them as a
//!    parquet file readable with polars.
//!
//! # Normalization and shingles (see [`normalize`])
//! As SlimPajama: lower-case, strip punctuation, collapse whitespace, trim; then word 13-grams.
//! Two documented extensions: punctuation also covers the common Unicode punctuation blocks
//! (CJK and full-width punctuation, general punctuation), and **every CJK ideograph / kana is a
//! word of its own**, so a Chinese document (SkyPile, no spaces) gets character 13-grams instead
//! of a handful of sentence-long "words". A document with fewer words than `ngram` is one
//! shingle made of all its words; a document with no words has no shingles and takes part in
//! exact dedup only.
//!
//! # MinHash (see [`minhash`])
//! Each word is hashed once (xxh3); shingle hashes are a rolling polynomial over the word
//! hashes, finalised and cut to 32 bits. Permutation `i` is the multiply-add-shift universal
//! family `h_i(x) = (a_i * x + b_i) >> 32` (64-bit `a_i` odd, `b_i`, drawn from SplitMix64 of
//! `seed`), so a signature costs one multiply-add-min per (shingle, permutation) and no
//! allocation per shingle.
//!
//! # Finding duplicates (see [`components`])
//! Documents are numbered by ordinal in input order (files in the caller's order, then rows),
//! which is the [`DocId`] order. Every duplicate group keeps its **earliest** document; every
//! other member is removed and points to it.
//! * Exact: documents with equal 128-bit exact hashes are united. Only the first of each exact
//!   group goes on to the near stage.
//! * Near: LSH with `bands` × `rows` (band `b` hashes signature values `b*rows..(b+1)*rows`).
//!   Documents that collide in a band are candidates; a candidate pair is an **edge** only once
//!   **verified**: its estimated Jaccard (fraction of equal signature values over all
//!   `permutations`) must be `>= threshold` (each member is paired with the earliest
//!   [`components::VERIFY_WINDOW`] members of its bucket before it). This removes the LSH
//!   false positives (at 9 × 13 a pair with J = 0.5 still collides with probability 1.1 %) at
//!   the price of the estimate's noise around the threshold (±0.035 at J = 0.8 with 128
//!   permutations).
//! * The edges of a bucket depend on that bucket alone, so the bands can be processed in
//!   separate partitions (separate processes or machines: [`components::band_edges`]) and the
//!   components are the same whatever the partitioning ([`components::resolve`]).
//! * Union-find links the larger root under the smaller, so each component's root is its
//!   earliest document whatever the order of unions, and the result does not depend on thread
//!   count, on spilling or on the band partitioning.
//! * A removal's `kind` is `Exact` when its exact hash equals its kept document's, otherwise
//!   `Near` with the estimated Jaccard between the two signatures.
//!
//! # What the checks measure (`cargo test --lib dedup`, real slice)
//! The 9 × 13 S-curve `1 - (1 - J^13)^9` is 0.40 at J = 0.8, 0.69 at 0.85, 0.93 at 0.9 and
//! 0.998 at 0.95: SlimPajama's parameters catch pairs reliably only from J ≈ 0.9, so the
//! recall check is on pairs with true J >= 0.9 (measured 0.95) and precision is the share of
//! near removals whose true shingle Jaccard with the kept document is >= 0.8 (measured 0.93;
//! the misses are pairs just below 0.8 admitted by the estimate's noise, or chained). No pair
//! with true J < 0.6 ended up in one component. Without verification every LSH collision would
//! be united (SlimPajama's way): more removals around J = 0.5–0.8 and chains across them.
//!
//! # Memory
//! Band tables (and the exact table) are streams of 16-byte `(key, ordinal)` entries sorted
//! with an external sorter ([`spill`]): once the in-memory buffer reaches `memory_bytes` it is
//! sorted and spilled as a run to `work_dir`, and the runs are k-way merged (64 KiB read buffer
//! per run; at most 64 runs are open, more are merged into one first). Besides that budget
//! and a fixed ~5 MB batch of band entries, memory is O(number of documents): a union-find
//! (4 bytes a document) in the band stage and another in the resolve stage, the exact-duplicate
//! mask (1 byte a document) and the pairs and edges found (8 bytes each); the stores themselves
//! are memory mapped (clean page cache, reclaimable) and read at random only to verify
//! candidates. A band partition of `k` bands sorts `16 · k` bytes a document: partitioning the
//! bands across machines divides that work and its disk spill.
//! Ordinals are `u32`: one call handles at most `u32::MAX - 1` documents.

pub mod components;
pub mod keys;
pub mod minhash;
pub mod normalize;
pub mod report;
pub mod spill;
pub mod store;

#[cfg(test)]
mod tests;

use crate::error::{Error, Result};

pub use components::{
    band_edges, band_partitions, exact_groups, find_duplicates, resolve, BandEdges, ExactGroups,
    FingerprintSet,
};
pub use keys::{keys_path, KeyIndex, KeyIndexWriter};
pub use minhash::{fingerprint, Fingerprint, Fingerprinter};
pub use report::{read_report, write_report, ReportRow};
pub use store::{FingerprintStore, FingerprintWriter};

/// A document: the index of its input file (in the order given to [`find_duplicates`], which
/// the build makes the sorted path order) and its record index in that file. The derived order
/// is the input order, which decides which document of a group is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId {
    pub file: u32,
    pub row: u64,
}

/// Why a document was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Same exact hash as the kept document.
    Exact,
    /// Estimated Jaccard with the kept document's MinHash signature (same component).
    Near,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exact => "exact",
            Kind::Near => "near",
        }
    }
}

/// One removed document and the kept document it duplicates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Removal {
    pub removed: DocId,
    pub kept: DocId,
    pub kind: Kind,
    /// 1.0 for exact duplicates; the signature estimate for near duplicates.
    pub jaccard: f32,
}

/// Counters of one [`find_duplicates`] run (informational; not part of the determinism
/// contract except `docs`, `exact` and `near`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DedupStats {
    pub docs: u64,
    pub exact: u64,
    pub near: u64,
    /// Candidate pairs whose estimated Jaccard was computed.
    pub candidates_checked: u64,
    /// Candidate pairs that passed the threshold (and were united).
    pub candidates_united: u64,
    /// Sorted runs written to `work_dir` (0 when everything fitted in `memory_bytes`).
    pub spilled_runs: u64,
}

/// The result of [`find_duplicates`]: removals sorted by `removed`.
#[derive(Clone, Debug, Default)]
pub struct DedupResult {
    pub removals: Vec<Removal>,
    pub stats: DedupStats,
}

impl DedupResult {
    /// Report rows naming files by `sources[file]` (the paths as the caller gives them).
    pub fn report_rows(&self, sources: &[String]) -> Result<Vec<ReportRow>> {
        let name = |d: DocId| {
            sources.get(d.file as usize).cloned().ok_or_else(|| {
                Error::Spec(format!(
                    "dedup: report names file #{} but only {} sources were given",
                    d.file,
                    sources.len()
                ))
            })
        };
        self.removals
            .iter()
            .map(|r| {
                Ok(ReportRow {
                    source: name(r.removed)?,
                    row: r.removed.row,
                    kept_source: name(r.kept)?,
                    kept_row: r.kept.row,
                    kind: r.kind,
                    jaccard: r.jaccard,
                })
            })
            .collect()
    }
}

/// Dedup parameters. `Default` is SlimPajama's: 13-grams, 128 permutations, 9 bands × 13 rows,
/// Jaccard 0.8.
#[derive(Clone, Debug, PartialEq)]
pub struct DedupParams {
    /// Words per shingle (`dedup.ngram`).
    pub ngram: usize,
    /// MinHash signature length (`dedup.permutations`).
    pub permutations: usize,
    /// LSH bands (`dedup.bands`).
    pub bands: usize,
    /// Signature values per band (`dedup.rows`).
    pub rows: usize,
    /// Estimated Jaccard a candidate pair needs to be united (`dedup.threshold`).
    pub threshold: f64,
    /// Seeds the permutation family; part of the fingerprint stores' identity (`dedup.seed`).
    pub seed: u64,
    /// In-memory budget for the band / exact tables before they spill to disk
    /// (`dedup.memory_bytes`).
    pub memory_bytes: u64,
    /// Exact hash over the normalized text (true) or the raw text bytes (false)
    /// (`dedup.exact_normalize`).
    pub exact_normalize: bool,
    /// Run the near-duplicate stage (false: exact dedup only, the spec's `dedup = "exact"`).
    pub near: bool,
}

impl Default for DedupParams {
    fn default() -> Self {
        DedupParams {
            ngram: 13,
            permutations: 128,
            bands: 9,
            rows: 13,
            threshold: 0.8,
            seed: 0x5eed_d3d0_0000_0001,
            memory_bytes: 1 << 30,
            exact_normalize: true,
            near: true,
        }
    }
}

/// Signature lengths above this are refused: they buy nothing and make the stores huge.
pub const MAX_PERMUTATIONS: usize = 4096;

impl DedupParams {
    /// Checks the parameters; the error names the offending spec key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::Spec(format!("dedup.{key}: {msg}")));
        if self.ngram == 0 || self.ngram > u32::MAX as usize {
            return bad("ngram", format!("must be >= 1, got {}", self.ngram));
        }
        if self.permutations == 0 || self.permutations > MAX_PERMUTATIONS {
            return bad(
                "permutations",
                format!(
                    "must be in 1..={MAX_PERMUTATIONS}, got {}",
                    self.permutations
                ),
            );
        }
        if self.bands == 0 {
            return bad("bands", "must be >= 1, got 0".into());
        }
        if self.rows == 0 {
            return bad("rows", "must be >= 1, got 0".into());
        }
        if self.bands.saturating_mul(self.rows) > self.permutations {
            return bad(
                "bands",
                format!(
                    "bands * rows = {} * {} exceeds permutations = {}",
                    self.bands, self.rows, self.permutations
                ),
            );
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad(
                "threshold",
                format!("must be in (0, 1], got {}", self.threshold),
            );
        }
        if self.memory_bytes < spill::ENTRY_BYTES as u64 {
            return bad(
                "memory_bytes",
                format!(
                    "must be >= {} bytes, got {}",
                    spill::ENTRY_BYTES,
                    self.memory_bytes
                ),
            );
        }
        Ok(())
    }

    /// The probability that a pair with Jaccard `j` becomes an LSH candidate:
    /// `1 - (1 - j^rows)^bands` (the S-curve).
    pub fn candidate_probability(&self, j: f64) -> f64 {
        1.0 - (1.0 - j.powi(self.rows as i32)).powi(self.bands as i32)
    }
}
