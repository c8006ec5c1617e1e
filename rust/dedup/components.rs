//! Exact groups, LSH candidates, union-find components and the keep rule.
//!
//! Both stages stream sorted 16-byte entries out of an [`ExternalSorter`]:
//! * exact: `exact_hash[127:32] << 32 | ordinal` — equal high 96 bits group the documents,
//!   the full 128-bit hashes are compared before uniting (so a 96-bit collision is harmless);
//! * near: `band << 96 | band_key << 32 | ordinal` for every band of every document that is
//!   not an exact duplicate and has shingles — a bucket is a run of equal high 96 bits.
//!
//! Within a bucket (members in ascending ordinal), member `j` is compared with members
//! `0..min(j, VERIFY_WINDOW)` in order until one is already in its component or has an
//! estimated Jaccard `>= threshold` (then they are united). The buckets come out of the
//! sorter in one fixed order, so the unions, and therefore the result, are a pure function of
//! the stores and the parameters.

use super::minhash::{band_key, estimate_jaccard};
use super::spill::ExternalSorter;
use super::store::{FingerprintRef, FingerprintStore};
use super::{DedupParams, DedupResult, DedupStats, DocId, Kind, Removal};
use crate::error::{Error, Result};
use rayon::prelude::*;
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

/// All documents of all stores, numbered in input order.
struct Docs {
    stores: Vec<FingerprintStore>,
    /// `starts[f]` = ordinal of the first record of store `f`; one extra entry = total.
    starts: Vec<usize>,
}

impl Docs {
    fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
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

/// Finds exact and near duplicates among the documents of `stores` (fingerprint stores in
/// input file order; `DocId::file` indexes this slice). Spill runs go to `work_dir` (created if
/// missing; its temporary files disappear when this returns or the process dies).
pub fn find_duplicates(
    stores: &[PathBuf],
    params: &DedupParams,
    work_dir: &Path,
) -> Result<DedupResult> {
    params.validate()?;
    let opened: Vec<FingerprintStore> = stores
        .par_iter()
        .map(|p| FingerprintStore::open(p, params))
        .collect::<Result<_>>()?;
    let mut starts = Vec::with_capacity(opened.len() + 1);
    let mut total = 0usize;
    for s in &opened {
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
    let docs = Docs {
        stores: opened,
        starts,
    };
    let n = docs.len() as u32;
    let mut uf = UnionFind::new(n as usize);
    let mut stats = DedupStats {
        docs: n as u64,
        ..Default::default()
    };

    // Exact stage.
    let mut sorter = ExternalSorter::new(work_dir, params.memory_bytes);
    for ord in 0..n {
        sorter.push((docs.get(ord).exact >> 32) << 32 | ord as u128)?;
    }
    stats.spilled_runs += sorter.runs() as u64;
    let mut is_exact_dup = vec![false; n as usize];
    let mut first: Option<(u128, u32)> = None;
    for e in sorter.finish()? {
        let e = e?;
        let (key, ord) = (e >> 32, e as u32);
        match first {
            Some((k, f)) if k == key => {
                if docs.get(f).exact == docs.get(ord).exact {
                    uf.union(f, ord);
                    is_exact_dup[ord as usize] = true;
                }
            }
            _ => first = Some((key, ord)),
        }
    }

    // Near stage.
    if params.near {
        let (bands, rows) = (params.bands, params.rows);
        let mut sorter = ExternalSorter::new(work_dir, params.memory_bytes);
        let mut batch = Vec::new();
        for start in (0..n).step_by(BATCH_DOCS) {
            let end = start.saturating_add(BATCH_DOCS as u32).min(n);
            batch.clear();
            batch.par_extend((start..end).into_par_iter().flat_map_iter(|ord| {
                let rec = docs.get(ord);
                let live = !is_exact_dup[ord as usize] && rec.shingles > 0;
                (0..if live { bands } else { 0 }).map(move |b| {
                    (b as u128) << 96
                        | (band_key(rec.minhash_le, b, rows) as u128) << 32
                        | ord as u128
                })
            }));
            for &e in &batch {
                sorter.push(e)?;
            }
        }
        drop(batch);
        stats.spilled_runs += sorter.runs() as u64;
        let mut bucket: Vec<u32> = Vec::new();
        let mut bucket_key: Option<u128> = None;
        for e in sorter.finish()? {
            let e = e?;
            let (key, ord) = (e >> 32, e as u32);
            if bucket_key != Some(key) {
                verify_bucket(&bucket, &docs, params.threshold, &mut uf, &mut stats);
                bucket.clear();
                bucket_key = Some(key);
            }
            bucket.push(ord);
        }
        verify_bucket(&bucket, &docs, params.threshold, &mut uf, &mut stats);
    }

    // Keep rule: every document whose root is not itself is removed, pointing at the root
    // (its component's earliest document).
    let mut removals = Vec::new();
    for ord in 0..n {
        let root = uf.find(ord);
        if root == ord {
            continue;
        }
        let (r, k) = (docs.get(ord), docs.get(root));
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
            removed: docs.id(ord),
            kept: docs.id(root),
            kind,
            jaccard,
        });
    }
    Ok(DedupResult { removals, stats })
}

fn verify_bucket(
    bucket: &[u32],
    docs: &Docs,
    threshold: f64,
    uf: &mut UnionFind,
    stats: &mut DedupStats,
) {
    for (j, &mj) in bucket.iter().enumerate().skip(1) {
        let sig_j = docs.get(mj).minhash_le;
        for &mi in &bucket[..j.min(VERIFY_WINDOW)] {
            if uf.find(mi) == uf.find(mj) {
                break;
            }
            stats.candidates_checked += 1;
            if estimate_jaccard(docs.get(mi).minhash_le, sig_j) as f64 >= threshold {
                uf.union(mi, mj);
                stats.candidates_united += 1;
                break;
            }
        }
    }
}
