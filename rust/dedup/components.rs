//! Exact groups, LSH candidate edges, union-find components and the keep rule — in three
//! stages that can run in one process ([`find_duplicates`]) or as separate tasks on separate
//! machines (the Ray build: one task for the exact groups, one task per **band partition**,
//! one task to resolve the components), with the same result.
//!
//! 1. [`exact_groups`]: entries `exact_hash[127:32] << 32 | ordinal` through an
//!    [`ExternalSorter`]; equal high 96 bits group the documents, the full 128-bit hashes are
//!    compared before pairing (so a 96-bit collision is harmless). Every document but the first
//!    of its group is an exact duplicate of that first.
//! 2. [`band_edges`] for a range of bands: entries `band << 96 | band_key << 32 | ordinal` for
//!    every band in the range of every document that is not an exact duplicate and has
//!    shingles — a bucket is a run of equal high 96 bits. Within a bucket (members in ascending
//!    ordinal) member `j` is paired with each of the members `0..min(j, VERIFY_WINDOW)`; a
//!    pair whose estimated Jaccard is `>= threshold` is an **edge**. The edge set `E` is a pure
//!    function of each bucket on its own, so it does not depend on which bands are processed
//!    together or in what order. A partition returns a spanning forest of its edges: a pair
//!    already connected by the partition's earlier edges is not verified (it could not change
//!    the components), which is what keeps big buckets of true duplicates cheap.
//! 3. [`resolve`]: union-find over the exact pairs and every partition's forest; the
//!    components are the connected components of `E` ∪ exact pairs, whatever the partitioning,
//!    and each keeps its smallest ordinal (the earliest document).

use super::keys::{keys_path, KeyIndex};
use super::minhash::{band_key, estimate_jaccard};
use super::spill::ExternalSorter;
use super::store::{FingerprintRef, FingerprintStore};
use super::{DedupParams, DedupResult, DedupStats, DocId, Kind, Removal};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How many earlier bucket members a candidate is verified against at most.
pub const VERIFY_WINDOW: usize = 16;
/// Documents whose band entries are computed in one parallel batch.
const BATCH_DOCS: usize = 1 << 15;

/// Union-find over ordinals whose roots are always the smallest ordinal of their component.
pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
        }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            // Path halving: point x at its grandparent.
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Unites the components of `x` and `y`; false if they already were one.
    pub fn union(&mut self, x: u32, y: u32) -> bool {
        let (rx, ry) = (self.find(x), self.find(y));
        if rx == ry {
            return false;
        }
        // The smaller ordinal stays root: the root is the component's earliest document,
        // whatever the order of unions.
        let (lo, hi) = if rx < ry { (rx, ry) } else { (ry, rx) };
        self.parent[hi as usize] = lo;
        true
    }
}

/// The fingerprint stores of one dedup group, opened (memory-mapped), every document numbered
/// by its ordinal in input order (stores in the given order, then records).
pub struct FingerprintSet {
    stores: Vec<FingerprintStore>,
    /// The stores' key indexes, when every store has one (see [`super::keys`]); otherwise
    /// exact hashes and band keys come from the stores' records.
    keys: Option<Vec<KeyIndex>>,
    /// `starts[f]` = ordinal of the first record of store `f`; one extra entry = total.
    starts: Vec<usize>,
}

impl FingerprintSet {
    /// Opens (and verifies: reads every store in full) `paths`, in this order; `DocId::file`
    /// indexes this slice. Key indexes beside the stores are used when all are there.
    pub fn open(paths: &[PathBuf], params: &DedupParams) -> Result<Self> {
        Self::open_with(paths, params, true)
    }

    /// Opens `paths` without reading the stores' records (header checks only) and with their
    /// key indexes, which must all be there: the exact and band stages read the indexes'
    /// columns and only the candidates' signatures. The resolve stage verifies the stores.
    pub fn open_indexed(paths: &[PathBuf], params: &DedupParams) -> Result<Self> {
        let set = Self::open_with(paths, params, false)?;
        if set.keys.is_none() && !paths.is_empty() {
            let missing = paths.iter().map(|p| keys_path(p)).find(|k| !k.exists());
            return Err(Error::io(
                missing.as_deref().unwrap_or(Path::new("?")),
                "missing key index (its fingerprint store was written without one: delete the store to redo it)",
            ));
        }
        Ok(set)
    }

    fn open_with(paths: &[PathBuf], params: &DedupParams, verify: bool) -> Result<Self> {
        params.validate()?;
        let stores: Vec<FingerprintStore> = paths
            .par_iter()
            .map(|p| {
                if verify {
                    FingerprintStore::open(p, params)
                } else {
                    FingerprintStore::open_lazy(p, params)
                }
            })
            .collect::<Result<_>>()?;
        let mut starts = Vec::with_capacity(stores.len() + 1);
        let mut total = 0usize;
        for s in &stores {
            starts.push(total);
            total += s.len();
        }
        starts.push(total);
        if total >= u32::MAX as usize {
            return Err(Error::Spec(format!(
                "dedup: {total} documents in one dedup group; at most {} are supported \
                 (split the corpus)",
                u32::MAX - 1
            )));
        }
        // Every store's index or none: a missing one means an engine user without indexes
        // (or stores from before them); an index that is there but does not match is an error.
        let paths: Vec<PathBuf> = paths.iter().map(|p| keys_path(p)).collect();
        let keys = if paths.iter().all(|p| p.exists()) && !paths.is_empty() {
            let opened: Vec<KeyIndex> = paths
                .par_iter()
                .zip(&stores)
                .map(|(p, s)| KeyIndex::open(p, params, s.len()))
                .collect::<Result<_>>()?;
            Some(opened)
        } else {
            None
        };
        Ok(FingerprintSet {
            stores,
            keys,
            starts,
        })
    }

    /// Whether the exact hashes and band keys are read from key indexes.
    pub fn has_key_indexes(&self) -> bool {
        self.keys.is_some()
    }

    /// Check the index sections a stage reads (nothing to check without indexes).
    fn verify_keys(&self, exact: bool, bands: Range<usize>) -> Result<()> {
        if let Some(keys) = &self.keys {
            keys.par_iter()
                .try_for_each(|k| k.verify(exact, bands.clone()))?;
        }
        Ok(())
    }

    fn exact(&self, ord: u32) -> u128 {
        let (f, i) = self.locate(ord);
        match &self.keys {
            Some(keys) => keys[f].exact(i),
            None => self.stores[f].get(i).exact,
        }
    }

    /// Whether the document has shingles, i.e. takes part in the near stage.
    fn live(&self, ord: u32) -> bool {
        let (f, i) = self.locate(ord);
        match &self.keys {
            Some(keys) => keys[f].live(i),
            None => self.stores[f].get(i).shingles > 0,
        }
    }

    fn band_key(&self, ord: u32, band: usize, rows: usize) -> u64 {
        let (f, i) = self.locate(ord);
        match &self.keys {
            Some(keys) => keys[f].band_key(band, i),
            None => band_key(self.stores[f].get(i).minhash_le, band, rows),
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn locate(&self, ord: u32) -> (usize, usize) {
        let ord = ord as usize;
        let f = self.starts.partition_point(|&s| s <= ord) - 1;
        (f, ord - self.starts[f])
    }

    fn get(&self, ord: u32) -> FingerprintRef<'_> {
        let (f, i) = self.locate(ord);
        self.stores[f].get(i)
    }

    fn id(&self, ord: u32) -> DocId {
        let (f, i) = self.locate(ord);
        DocId {
            file: f as u32,
            row: self.stores[f].get(i).row,
        }
    }
}

/// The exact stage's result: every exact duplicate paired with the first document of its
/// group, `(duplicate, first)` ordinals sorted by duplicate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExactGroups {
    /// Documents in the set (what the ordinals range over).
    pub docs: u32,
    pub pairs: Vec<(u32, u32)>,
    /// Sorted runs spilled to disk (informational).
    pub spilled_runs: u64,
}

impl ExactGroups {
    /// `mask[ord]` is true when `ord` is an exact duplicate (it stays out of the band tables).
    pub fn duplicate_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.docs as usize];
        for &(dup, _) in &self.pairs {
            mask[dup as usize] = true;
        }
        mask
    }
}

/// The near stage's result for one band partition: a spanning forest of the edges its bands
/// found (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BandEdges {
    pub docs: u32,
    pub bands: Range<usize>,
    pub edges: Vec<(u32, u32)>,
    /// Candidate pairs whose estimated Jaccard was computed / that passed (informational).
    pub candidates_checked: u64,
    pub candidates_united: u64,
    pub spilled_runs: u64,
}

/// `partitions` contiguous, near-equal ranges covering `0..bands` (at most `bands` of them).
pub fn band_partitions(bands: usize, partitions: usize) -> Vec<Range<usize>> {
    let p = partitions.clamp(1, bands.max(1));
    (0..p).map(|i| i * bands / p..(i + 1) * bands / p).collect()
}

/// Stage 1: the exact groups of `set`. Spill runs go to `work_dir`.
pub fn exact_groups(
    set: &FingerprintSet,
    params: &DedupParams,
    work_dir: &Path,
) -> Result<ExactGroups> {
    let n = set.len() as u32;
    set.verify_keys(true, 0..0)?;
    let mut sorter = ExternalSorter::new(work_dir, params.memory_bytes);
    for ord in 0..n {
        sorter.push((set.exact(ord) >> 32) << 32 | ord as u128)?;
    }
    let spilled_runs = sorter.runs() as u64;
    let mut pairs = Vec::new();
    // The first member of the current 96-bit group, and the first member of each distinct
    // full hash seen in it (a 96-bit collision between different hashes is harmless).
    let mut group: Option<u128> = None;
    let mut firsts: Vec<u32> = Vec::new();
    for e in sorter.finish()? {
        let e = e?;
        let (key, ord) = (e >> 32, e as u32);
        if group != Some(key) {
            group = Some(key);
            firsts.clear();
        }
        let exact = set.exact(ord);
        match firsts.iter().find(|&&f| set.exact(f) == exact) {
            Some(&first) => pairs.push((ord, first)),
            None => firsts.push(ord),
        }
    }
    pairs.sort_unstable();
    Ok(ExactGroups {
        docs: n,
        pairs,
        spilled_runs,
    })
}

/// Stage 2: the near-duplicate edges of bands `bands` (a range within `0..params.bands`),
/// leaving out `exact`'s duplicates. Spill runs go to `work_dir`. Memory: the sorter's budget,
/// a ~5 MB batch, 4 bytes a document (the partition's union-find) and 1 (the exact mask).
pub fn band_edges(
    set: &FingerprintSet,
    exact: &ExactGroups,
    bands: Range<usize>,
    params: &DedupParams,
    work_dir: &Path,
) -> Result<BandEdges> {
    let n = set.len() as u32;
    if exact.docs != n {
        return Err(Error::Spec(format!(
            "dedup: the exact groups were computed over {} documents, the stores hold {n}",
            exact.docs
        )));
    }
    if bands.start > bands.end || bands.end > params.bands {
        return Err(Error::Spec(format!(
            "dedup: band partition {bands:?} is outside 0..{} (dedup.bands)",
            params.bands
        )));
    }
    set.verify_keys(false, bands.clone())?;
    let is_dup = exact.duplicate_mask();
    let rows = params.rows;
    let mut sorter = ExternalSorter::new(work_dir, params.memory_bytes);
    let mut batch = Vec::new();
    for start in (0..n).step_by(BATCH_DOCS) {
        let end = start.saturating_add(BATCH_DOCS as u32).min(n);
        batch.clear();
        let bands = bands.clone();
        batch.par_extend((start..end).into_par_iter().flat_map_iter(|ord| {
            let live = !is_dup[ord as usize] && set.live(ord);
            let range = if live { bands.clone() } else { 0..0 };
            range.map(move |b| {
                (b as u128) << 96 | (set.band_key(ord, b, rows) as u128) << 32 | ord as u128
            })
        }));
        for &e in &batch {
            sorter.push(e)?;
        }
    }
    drop(batch);
    drop(is_dup);
    let mut out = BandEdges {
        docs: n,
        bands,
        spilled_runs: sorter.runs() as u64,
        ..Default::default()
    };
    let mut uf = UnionFind::new(n as usize);
    let mut bucket: Vec<u32> = Vec::new();
    let mut bucket_key: Option<u128> = None;
    for e in sorter.finish()? {
        let e = e?;
        let (key, ord) = (e >> 32, e as u32);
        if bucket_key != Some(key) {
            verify_bucket(&bucket, set, params.threshold, &mut uf, &mut out);
            bucket.clear();
            bucket_key = Some(key);
        }
        bucket.push(ord);
    }
    verify_bucket(&bucket, set, params.threshold, &mut uf, &mut out);
    Ok(out)
}

/// Every pair (earlier member within the window, member) whose estimated Jaccard passes is an
/// edge; pairs already connected by this partition's edges are skipped (no new connection).
fn verify_bucket(
    bucket: &[u32],
    set: &FingerprintSet,
    threshold: f64,
    uf: &mut UnionFind,
    out: &mut BandEdges,
) {
    for (j, &mj) in bucket.iter().enumerate().skip(1) {
        let sig_j = set.get(mj).minhash_le;
        for &mi in &bucket[..j.min(VERIFY_WINDOW)] {
            if uf.find(mi) == uf.find(mj) {
                continue;
            }
            out.candidates_checked += 1;
            if estimate_jaccard(set.get(mi).minhash_le, sig_j) as f64 >= threshold {
                uf.union(mi, mj);
                out.edges.push((mi, mj));
                out.candidates_united += 1;
            }
        }
    }
}

/// Stage 3: the components of the exact pairs and `edges` (every band partition's forest, in
/// any order), the keep rule (each component keeps its earliest document) and the removals,
/// sorted by removed document. `stats` carries the counters of the earlier stages.
pub fn resolve(
    set: &FingerprintSet,
    exact: &ExactGroups,
    edges: impl IntoIterator<Item = (u32, u32)>,
    mut stats: DedupStats,
) -> Result<DedupResult> {
    let n = set.len() as u32;
    let mut uf = UnionFind::new(n as usize);
    for &(dup, first) in &exact.pairs {
        uf.union(dup, first);
    }
    for (a, b) in edges {
        if a >= n || b >= n {
            return Err(Error::Spec(format!(
                "dedup: a band edge ({a}, {b}) names a document beyond the {n} of the stores"
            )));
        }
        uf.union(a, b);
    }
    stats.docs = n as u64;
    let mut removals = Vec::new();
    for ord in 0..n {
        let root = uf.find(ord);
        if root == ord {
            continue;
        }
        let (r, k) = (set.get(ord), set.get(root));
        let (kind, jaccard) = if r.exact == k.exact {
            (Kind::Exact, 1.0)
        } else {
            (Kind::Near, estimate_jaccard(r.minhash_le, k.minhash_le))
        };
        match kind {
            Kind::Exact => stats.exact += 1,
            Kind::Near => stats.near += 1,
        }
        removals.push(Removal {
            removed: set.id(ord),
            kept: set.id(root),
            kind,
            jaccard,
        });
    }
    Ok(DedupResult { removals, stats })
}

/// Finds exact and near duplicates among the documents of `stores` (fingerprint stores in
/// input file order; `DocId::file` indexes this slice) in one process: the three stages with
/// all bands in one partition. Spill runs go to `work_dir` (created if missing; its temporary
/// files disappear when this returns or the process dies).
pub fn find_duplicates(
    stores: &[PathBuf],
    params: &DedupParams,
    work_dir: &Path,
) -> Result<DedupResult> {
    let set = FingerprintSet::open(stores, params)?;
    let exact = exact_groups(&set, params, work_dir)?;
    let mut stats = DedupStats {
        spilled_runs: exact.spilled_runs,
        ..Default::default()
    };
    let edges = if params.near {
        let found = band_edges(&set, &exact, 0..params.bands, params, work_dir)?;
        stats.candidates_checked = found.candidates_checked;
        stats.candidates_united = found.candidates_united;
        stats.spilled_runs += found.spilled_runs;
        found.edges
    } else {
        Vec::new()
    };
    resolve(&set, &exact, edges, stats)
}
