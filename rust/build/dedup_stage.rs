//! The build's dedup stage, between discovery and tokenization: fingerprint every input file
//! (one committed store per file, so a resumed build skips finished files), then find
//! duplicates over the corpus with the keep-the-earliest rule and commit that decision to
//! staging, where the tokenize stage of any process (thread or Ray task) reads its file's
//! removed rows. Nothing removed is ever tokenized.

use super::stream::{self, Stage, Start};
use super::{largest_first, BuildConfig, CorpusConfig, DedupMode, DedupWork, FileWork, Progress};
use crate::dedup::{
    self, keys_path, DedupParams, ExactGroups, FingerprintSet, FingerprintStore, FingerprintWriter,
    Fingerprinter, KeyIndex, KeyIndexWriter, Kind,
};
use crate::error::{Error, IoContext, Result};
use crate::filter::FilterChain;
use crate::shard::write_atomic;
use crate::source::{self, Input, Record, SourceOptions};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// The spec's `[dedup]` table (as resolved by Python) -> the engine's parameters.
pub fn params(table: &serde_json::Value, mode: DedupMode) -> Result<DedupParams> {
    let mut p = DedupParams::default();
    let get = |key: &str| table.get(key).and_then(|v| v.as_u64());
    if let Some(v) = get("ngram") {
        p.ngram = v as usize;
    }
    if let Some(v) = get("permutations") {
        p.permutations = v as usize;
    }
    if let Some(v) = get("bands") {
        p.bands = v as usize;
    }
    if let Some(v) = get("rows") {
        p.rows = v as usize;
    }
    if let Some(v) = table.get("threshold").and_then(|v| v.as_f64()) {
        p.threshold = v;
    }
    if let Some(v) = get("memory") {
        p.memory_bytes = v;
    }
    p.near = mode == DedupMode::Near;
    p.validate()?;
    Ok(p)
}

/// The committed decision: removed rows, sorted by (file, row), as 16-byte records
/// `file u32, kind u32 (1 exact, 2 near), row u64` (little-endian) after a header. Written
/// last, after the report: its presence means the corpus's dedup is done.
const DECISION: &str = "dedup.bin";
const DECISION_MAGIC: &[u8; 8] = b"TLDEDUP1";
const HEADER: usize = 16;
const RECORD: usize = 16;

pub fn report_path(dir: &Path) -> PathBuf {
    dir.join("dedup_report.parquet")
}

/// The corpus's fingerprint stores, in file order; a missing one is a stage run out of order,
/// not something to silently skip.
fn store_paths(dir: &Path, files: &[Input], params: &DedupParams) -> Result<Vec<PathBuf>> {
    let fp_dir = dir.join("fingerprints");
    let mut stores = Vec::with_capacity(files.len());
    for i in 0..files.len() {
        let path = store_path(&fp_dir, i);
        FingerprintStore::open_lazy(&path, params)?; // header only: the stage reads what it needs
        stores.push(path);
    }
    Ok(stores)
}

/// Find the corpus's duplicates (keep the earliest) from its committed fingerprint stores and
/// commit the decision and the report under `dir` (the corpus's staging dir).
///
/// `partitions: None` runs the whole search here (the local build). `Some(ranges)` resolves
/// the components from the committed outputs of [`decide_exact`] and of [`decide_bands`] for
/// each of `ranges` (which must cover the bands in order): the distributed build, which ran
/// those stages as separate tasks. Both give the same bytes (see `dedup::components`).
pub fn decide(
    cfg: &BuildConfig,
    corpus: &CorpusConfig,
    dir: &Path,
    files: &[Input],
    partitions: Option<&[Range<usize>]>,
) -> Result<DedupWork> {
    let decision = dir.join(DECISION);
    if let Ok(map) = Decision::open(&decision) {
        let near = map.near();
        return Ok(DedupWork {
            resumed: true,
            exact: map.len() as u64 - near,
            near,
        });
    }
    let params = params(&cfg.dedup, corpus.dedup)?;
    let stores = store_paths(dir, files, &params)?;
    let work = dir.join("dedup-work");
    let result = match partitions {
        None => dedup::find_duplicates(&stores, &params, &work)?,
        Some(ranges) => {
            let set = FingerprintSet::open(&stores, &params)?;
            let exact = read_exact(dir, &set)?;
            let mut edges = Vec::new();
            if params.near {
                check_cover(ranges, params.bands)?;
                for r in ranges {
                    edges.extend(read_pairs(
                        &bands_path(dir, r),
                        PairsKind::Bands(r.clone()),
                        set.len(),
                    )?);
                }
            }
            dedup::resolve(&set, &exact, edges, Default::default())?
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    let sources: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    crate::dedup::write_report(&report_path(dir), &result.report_rows(&sources)?)?;
    let mut rows: Vec<(u32, u32, u64)> = result
        .removals
        .iter()
        .map(|r| {
            let kind = match r.kind {
                Kind::Exact => 1,
                Kind::Near => 2,
            };
            (r.removed.file, kind, r.removed.row)
        })
        .collect();
    rows.sort_unstable_by_key(|&(file, _, row)| (file, row));
    let mut bytes = Vec::with_capacity(HEADER + RECORD * rows.len());
    bytes.extend_from_slice(DECISION_MAGIC);
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    let mut near = 0;
    for (file, kind, row) in rows.iter().copied() {
        near += u64::from(kind == 2);
        bytes.extend_from_slice(&file.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&row.to_le_bytes());
    }
    write_atomic(&decision, &bytes)?;
    Ok(DedupWork {
        resumed: false,
        exact: rows.len() as u64 - near,
        near,
    })
}

/// What one exact or band-partition task did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairsWork {
    pub resumed: bool,
    /// Documents the stores hold.
    pub docs: u64,
    /// Exact pairs, or near-duplicate edges of the partition.
    pub pairs: u64,
}

/// The distributed build's first search stage: the corpus's exact groups, committed to
/// `dir/dedup/exact.bin` (a no-op when committed).
pub fn decide_exact(
    cfg: &BuildConfig,
    corpus: &CorpusConfig,
    dir: &Path,
    files: &[Input],
) -> Result<PairsWork> {
    let path = exact_path(dir);
    let params = params(&cfg.dedup, corpus.dedup)?;
    let stores = store_paths(dir, files, &params)?;
    let set = FingerprintSet::open_indexed(&stores, &params)?;
    if let Ok(pairs) = read_pairs(&path, PairsKind::Exact, set.len()) {
        return Ok(PairsWork {
            resumed: true,
            docs: set.len() as u64,
            pairs: pairs.len() as u64,
        });
    }
    let work = dir.join("dedup-work").join("exact");
    let exact = dedup::exact_groups(&set, &params, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    write_pairs(&path, PairsKind::Exact, exact.docs, &exact.pairs)?;
    Ok(PairsWork {
        resumed: false,
        docs: set.len() as u64,
        pairs: exact.pairs.len() as u64,
    })
}

/// The distributed build's second search stage, one task per band partition: the near-duplicate
/// edges of bands `bands`, committed to `dir/dedup/bands-LLL-HHH.bin` (a no-op when committed).
/// Needs the committed exact groups (their duplicates stay out of the band tables).
pub fn decide_bands(
    cfg: &BuildConfig,
    corpus: &CorpusConfig,
    dir: &Path,
    files: &[Input],
    bands: Range<usize>,
) -> Result<PairsWork> {
    let params = params(&cfg.dedup, corpus.dedup)?;
    if !params.near {
        return Err(Error::Spec(format!(
            "corpora.{}: dedup = \"exact\" has no band stage",
            corpus.name
        )));
    }
    let path = bands_path(dir, &bands);
    let stores = store_paths(dir, files, &params)?;
    let set = FingerprintSet::open_indexed(&stores, &params)?;
    if let Ok(edges) = read_pairs(&path, PairsKind::Bands(bands.clone()), set.len()) {
        return Ok(PairsWork {
            resumed: true,
            docs: set.len() as u64,
            pairs: edges.len() as u64,
        });
    }
    let exact = read_exact(dir, &set)?;
    let work = dir
        .join("dedup-work")
        .join(format!("bands-{:03}-{:03}", bands.start, bands.end));
    let found = dedup::band_edges(&set, &exact, bands.clone(), &params, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    write_pairs(&path, PairsKind::Bands(bands), found.docs, &found.edges)?;
    Ok(PairsWork {
        resumed: false,
        docs: set.len() as u64,
        pairs: found.edges.len() as u64,
    })
}

/// `ranges` must be contiguous, non-empty and cover `0..bands` exactly, or some band's
/// candidates would be missed (or counted twice).
fn check_cover(ranges: &[Range<usize>], bands: usize) -> Result<()> {
    let mut next = 0;
    for r in ranges {
        if r.start != next || r.end <= r.start {
            break;
        }
        next = r.end;
    }
    if next != bands || ranges.iter().map(|r| r.len()).sum::<usize>() != bands {
        return Err(Error::Spec(format!(
            "dedup: band partitions {ranges:?} do not cover the bands 0..{bands} in order"
        )));
    }
    Ok(())
}

/// The exact groups [`decide_exact`] committed for the documents of `set`.
fn read_exact(dir: &Path, set: &FingerprintSet) -> Result<ExactGroups> {
    Ok(ExactGroups {
        docs: set.len() as u32,
        pairs: read_pairs(&exact_path(dir), PairsKind::Exact, set.len())?,
        spilled_runs: 0,
    })
}

fn exact_path(dir: &Path) -> PathBuf {
    dir.join("dedup").join("exact.bin")
}

fn bands_path(dir: &Path, bands: &Range<usize>) -> PathBuf {
    dir.join("dedup")
        .join(format!("bands-{:03}-{:03}.bin", bands.start, bands.end))
}

/// A committed list of ordinal pairs: `magic, u32 docs, u32 band start, u32 band end,
/// u32 0, u64 count, count × (u32, u32), u64 xxh3_64 of everything before it`, little-endian.
/// `docs` and the band range are checked on reading, so a file from another partitioning or
/// other stores is refused rather than mixed in.
#[derive(Clone, Debug, PartialEq)]
enum PairsKind {
    Exact,
    Bands(Range<usize>),
}

impl PairsKind {
    fn magic(&self) -> &'static [u8; 8] {
        match self {
            PairsKind::Exact => b"TLEXACT1",
            PairsKind::Bands(_) => b"TLBANDS1",
        }
    }
    fn range(&self) -> (u32, u32) {
        match self {
            PairsKind::Exact => (0, 0),
            PairsKind::Bands(r) => (r.start as u32, r.end as u32),
        }
    }
}

const PAIRS_HEADER: usize = 32;

fn write_pairs(path: &Path, kind: PairsKind, docs: u32, pairs: &[(u32, u32)]) -> Result<()> {
    let mut bytes = Vec::with_capacity(PAIRS_HEADER + 8 * pairs.len() + 8);
    let (lo, hi) = kind.range();
    bytes.extend_from_slice(kind.magic());
    for v in [docs, lo, hi, 0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
    for &(a, b) in pairs {
        bytes.extend_from_slice(&a.to_le_bytes());
        bytes.extend_from_slice(&b.to_le_bytes());
    }
    let sum = xxh3_64(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ctx(parent)?;
    }
    write_atomic(path, &bytes)
}

fn read_pairs(path: &Path, kind: PairsKind, docs: usize) -> Result<Vec<(u32, u32)>> {
    let stage = match &kind {
        PairsKind::Exact => "the exact stage".to_string(),
        PairsKind::Bands(r) => format!("the band partition {r:?}"),
    };
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(path, format!("{e} ({stage} has not run)")))?;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let corrupt = |why: &str| {
        Error::shard(
            path,
            format!("corrupt dedup stage output: {why} (delete it to redo {stage})"),
        )
    };
    if bytes.len() < PAIRS_HEADER + 8 || &bytes[..8] != kind.magic() {
        return Err(corrupt("bad magic or truncated"));
    }
    let count = u64_at(24) as usize;
    if bytes.len() != PAIRS_HEADER + 8 * count + 8 {
        return Err(corrupt("truncated"));
    }
    let body = bytes.len() - 8;
    if xxh3_64(&bytes[..body]) != u64_at(body) {
        return Err(corrupt("checksum mismatch"));
    }
    if (u32_at(12), u32_at(16)) != kind.range() {
        return Err(corrupt("made for another band partition"));
    }
    if u32_at(8) as usize != docs {
        return Err(corrupt(&format!(
            "made over {} documents, the stores hold {docs}",
            u32_at(8)
        )));
    }
    Ok((0..count)
        .map(|i| {
            let at = PAIRS_HEADER + 8 * i;
            (u32_at(at), u32_at(at + 4))
        })
        .collect())
}

/// The rows of input file `file` that the committed decision removes. Memory-maps the
/// decision and binary-searches the file's range, so a task reads only its own rows.
pub fn removed_rows(dir: &Path, file: usize) -> Result<HashMap<u64, Kind>> {
    let map = Decision::open(&dir.join(DECISION))?;
    let file = u32::try_from(file)
        .map_err(|_| Error::Spec(format!("input file #{file}: too many files")))?;
    let start = map.lower_bound(file);
    let end = map.lower_bound(file.saturating_add(1));
    let mut out = HashMap::with_capacity(end - start);
    for i in start..end {
        let (_, kind, row) = map.record(i);
        out.insert(row, if kind == 2 { Kind::Near } else { Kind::Exact });
    }
    Ok(out)
}

struct Decision {
    map: memmap2::Mmap,
}

impl Decision {
    fn open(path: &Path) -> Result<Decision> {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::io(path, format!("{e} (the corpus's dedup stage has not run)")))?;
        // SAFETY: the decision is committed by rename and never written in place; a file
        // replaced under us keeps its old inode mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let ok = map.len() >= HEADER
            && &map[..8] == DECISION_MAGIC
            && u64::from_le_bytes(map[8..16].try_into().expect("8 bytes")) as usize
                == (map.len() - HEADER) / RECORD
            && (map.len() - HEADER).is_multiple_of(RECORD);
        if !ok {
            return Err(Error::shard(
                path,
                "corrupt dedup decision (delete it to redo the dedup)",
            ));
        }
        Ok(Decision { map })
    }
    fn len(&self) -> usize {
        (self.map.len() - HEADER) / RECORD
    }
    fn record(&self, i: usize) -> (u32, u32, u64) {
        let r = &self.map[HEADER + i * RECORD..HEADER + (i + 1) * RECORD];
        (
            u32::from_le_bytes(r[0..4].try_into().expect("4 bytes")),
            u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")),
            u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
        )
    }
    fn near(&self) -> u64 {
        (0..self.len()).filter(|&i| self.record(i).1 == 2).count() as u64
    }
    /// The first record whose file is >= `file`.
    fn lower_bound(&self, file: u32) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.record(mid).0 < file {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn store_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{index:06}.fp"))
}

/// The fingerprint stage over some of a corpus's files (or loose files, for [`dedup_files`]):
/// each file -> one committed store of its documents' fingerprints (+ its key index), in row
/// order. Runs through [`stream`](super::stream): records are read on a reader thread,
/// batches are fingerprinted on every thread, the store is written in row order, so it is
/// byte-identical whatever the threads. Filtered and skipped rows are not fingerprinted (bad
/// records are reported, or counted, by the tokenize pass, which reads the same rows), nor
/// are documents the corpus's filter chain drops: filters run before dedup, so a dropped
/// document is never the "kept" original of a duplicate.
pub(super) struct Fingerprint<'a> {
    pub files: &'a [Input],
    /// The corpus's filters (empty for loose files).
    pub chain: &'a FilterChain,
    /// Where file `i`'s store goes.
    pub stores: &'a Path,
    pub options: &'a SourceOptions,
    pub params: &'a DedupParams,
    /// Take a committed store made with these parameters as this file's finished work.
    pub resume: bool,
    pub progress: &'a Progress,
}

pub(super) struct StoreWriter {
    writer: FingerprintWriter,
    keys: KeyIndexWriter,
    bytes: u64,
    docs: u64,
}

impl Stage for Fingerprint<'_> {
    type File = ();
    type Writer = StoreWriter;
    type Mapped = Vec<(u64, dedup::Fingerprint)>;
    type Done = FileWork;

    fn start(&self, index: usize) -> Result<Start<Self>> {
        let file = &self.files[index];
        let path = store_path(self.stores, index);
        let bytes = file.size;
        if self.resume {
            // A committed store made with these parameters, and its key index, are this
            // file's finished work.
            let done = FingerprintStore::open(&path, self.params).and_then(|store| {
                KeyIndex::open(keys_path(&path), self.params, store.len())?;
                Ok(store)
            });
            if let Ok(store) = done {
                self.progress.file_resumed(bytes);
                return Ok(Start::Done(FileWork {
                    resumed: true,
                    bytes,
                    docs: store.len() as u64,
                    ..Default::default()
                }));
            }
        }
        if self.progress.cancelled() {
            return Err(Error::Interrupted);
        }
        Ok(Start::Work {
            records: source::open_input(file, self.options, &self.progress.read, None)?,
            file: (),
            writer: StoreWriter {
                writer: FingerprintWriter::create(&path, self.params)?,
                keys: KeyIndexWriter::new(keys_path(&path), self.params),
                bytes,
                docs: 0,
            },
        })
    }

    fn map(&self, _: &(), batch: &[Record]) -> Result<Self::Mapped> {
        let mut hasher = Fingerprinter::new(self.params);
        Ok(batch
            .iter()
            .filter_map(|r| match r {
                Record::Doc { row, text } if self.chain.judge(text).is_none() => {
                    Some((*row, hasher.fingerprint(text)))
                }
                _ => None,
            })
            .collect())
    }

    fn sink(&self, _: &(), w: &mut StoreWriter, _: Vec<Record>, fps: Self::Mapped) -> Result<()> {
        for (row, fp) in &fps {
            w.writer.push(*row, fp)?;
            w.keys.push(fp);
        }
        w.docs += fps.len() as u64;
        self.progress.docs.fetch_add(fps.len() as u64, Relaxed);
        Ok(())
    }

    fn finish(&self, _: &(), w: StoreWriter) -> Result<FileWork> {
        // The index first: a committed store marks the file as done, so its index must be there.
        w.keys.finish()?;
        let docs = w.writer.finish()?;
        debug_assert_eq!(docs, w.docs);
        self.progress.files_done.fetch_add(1, Relaxed);
        super::fault::committed(if self.resume {
            "fingerprint"
        } else {
            "fingerprint-scratch"
        });
        Ok(FileWork {
            resumed: false,
            bytes: w.bytes,
            docs,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_decision(dir: &Path, rows: &[(u32, u32, u64)]) {
        let mut bytes = DECISION_MAGIC.to_vec();
        bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        for &(file, kind, row) in rows {
            bytes.extend_from_slice(&file.to_le_bytes());
            bytes.extend_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&row.to_le_bytes());
        }
        std::fs::write(dir.join(DECISION), bytes).unwrap();
    }

    #[test]
    fn removed_rows_are_those_of_the_asked_file() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [(0, 1, 3), (0, 2, 9), (2, 2, 0), (2, 1, 7), (5, 1, 1)];
        write_decision(dir.path(), &rows);
        let got = |file| {
            let mut v: Vec<_> = removed_rows(dir.path(), file)
                .unwrap()
                .into_iter()
                .collect();
            v.sort_by_key(|&(row, _)| row);
            v
        };
        assert_eq!(got(0), vec![(3, Kind::Exact), (9, Kind::Near)]);
        assert!(got(1).is_empty());
        assert_eq!(got(2), vec![(0, Kind::Near), (7, Kind::Exact)]);
        assert_eq!(got(5), vec![(1, Kind::Exact)]);
        assert!(got(6).is_empty());
    }

    #[test]
    fn missing_or_truncated_decision_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = removed_rows(dir.path(), 0).unwrap_err().to_string();
        assert!(
            err.contains("dedup.bin") && err.contains("has not run"),
            "{err}"
        );
        write_decision(dir.path(), &[(0, 1, 3)]);
        let path = dir.path().join(DECISION);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = removed_rows(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("corrupt dedup decision"), "{err}");
    }
}

/// What [`dedup_files`] found, with the time each of its two stages took (wall clock; for
/// benchmarks, not part of any determinism contract).
#[derive(Debug)]
pub struct FilesDedup {
    /// Documents fingerprinted (rows the source yields as documents).
    pub docs: u64,
    pub result: dedup::DedupResult,
    pub fingerprint_seconds: f64,
    pub find_seconds: f64,
}

/// Dedup `files` (in the given order, which decides what is kept) outside a `mix build`:
/// fingerprint each file in parallel on a pool of `workers` threads (one store per file under
/// `work_dir/fingerprints`), then [`dedup::find_duplicates`] on the same pool. The stores and
/// the spill runs are scratch: they are removed before returning, whatever the outcome.
/// `progress` counts the documents fingerprinted; its cancel flag stops the work (between
/// rows of a file, and before the search) with `Error::Interrupted`.
pub fn dedup_files(
    files: &[PathBuf],
    options: &SourceOptions,
    params: &DedupParams,
    work_dir: &Path,
    workers: usize,
    progress: &Progress,
) -> Result<FilesDedup> {
    params.validate()?;
    let files = files
        .iter()
        .map(|f| Input::local(f))
        .collect::<Result<Vec<_>>>()?;
    let files = files.as_slice();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .build()
        .map_err(|e| Error::Spec(format!("workers: {e}")))?;
    let stores_dir = work_dir.join("fingerprints");
    let find_dir = work_dir.join("find");
    std::fs::create_dir_all(&stores_dir).map_err(|e| Error::io(&stores_dir, e))?;
    let out = (|| {
        let start = Instant::now();
        let no_filters = FilterChain::default();
        let stage = Fingerprint {
            files,
            chain: &no_filters,
            stores: &stores_dir,
            options,
            params,
            resume: false,
            progress,
        };
        let (done, _) = stream::run(
            &pool,
            &stage,
            &largest_first(files),
            workers.max(1),
            stream::InFlight::default_for(workers),
            progress,
        )?;
        let stores: Vec<(PathBuf, u64)> = done
            .into_iter()
            .map(|(i, w)| (store_path(&stores_dir, i), w.docs))
            .collect();
        let fingerprint_seconds = start.elapsed().as_secs_f64();
        if progress.cancelled() {
            return Err(Error::Interrupted);
        }
        let paths: Vec<PathBuf> = stores.iter().map(|(p, _)| p.clone()).collect();
        let start = Instant::now();
        let result = pool.install(|| dedup::find_duplicates(&paths, params, &find_dir))?;
        Ok(FilesDedup {
            docs: stores.iter().map(|(_, n)| n).sum(),
            result,
            fingerprint_seconds,
            find_seconds: start.elapsed().as_secs_f64(),
        })
    })();
    let _ = std::fs::remove_dir_all(&stores_dir);
    let _ = std::fs::remove_dir_all(&find_dir);
    out
}

#[cfg(test)]
mod dedup_files_tests {
    use super::*;
    use crate::build::fixtures::{options, slim};

    /// A file given twice: every document of the second copy goes, kept in an earlier file;
    /// the outcome is the same on 1 and 2 workers, and the scratch stores are gone.
    #[test]
    fn dedup_files_removes_a_repeated_file_whatever_the_workers() {
        let files = [slim(0), slim(1), slim(0)];
        let params = DedupParams::default();
        let mut runs = Vec::new();
        for workers in [1, 2] {
            let work = tempfile::tempdir().unwrap();
            let out = dedup_files(
                &files,
                &options(),
                &params,
                work.path(),
                workers,
                &Progress::default(),
            )
            .unwrap();
            assert!(!work.path().join("fingerprints").exists());
            assert!(!work.path().join("find").exists());
            runs.push(out);
        }
        let single = dedup_files(
            &files[..1],
            &options(),
            &params,
            tempfile::tempdir().unwrap().path(),
            1,
            &Progress::default(),
        )
        .unwrap();
        let out = &runs[0];
        assert_eq!(out.result.removals, runs[1].result.removals);
        assert_eq!(out.docs, runs[1].docs);
        assert!(single.docs > 0);
        let in_copy: Vec<_> = out
            .result
            .removals
            .iter()
            .filter(|r| r.removed.file == 2)
            .collect();
        // Every row of the copy goes; one whose original was kept points at that original.
        assert_eq!(in_copy.len() as u64, single.docs);
        let removed_in_first: std::collections::HashSet<u64> = single
            .result
            .removals
            .iter()
            .map(|r| r.removed.row)
            .collect();
        for r in &in_copy {
            assert!(r.kept.file < 2, "{r:?}");
            if !removed_in_first.contains(&r.removed.row) {
                assert_eq!(
                    (r.kept.file, r.kept.row, r.kind),
                    (0, r.removed.row, Kind::Exact)
                );
            }
        }
        assert_eq!(out.result.stats.docs, out.docs);
    }

    /// A cancelled `dedup_files` stops with `Interrupted` and leaves no scratch behind.
    #[test]
    fn a_cancelled_dedup_files_is_interrupted_and_cleans_up() {
        let work = tempfile::tempdir().unwrap();
        let progress = Progress::default();
        progress.cancel();
        let files = [slim(0), slim(1)];
        let out = dedup_files(
            &files,
            &options(),
            &DedupParams::default(),
            work.path(),
            2,
            &progress,
        );
        assert!(matches!(out, Err(Error::Interrupted)), "{out:?}");
        assert!(!work.path().join("fingerprints").exists());
        assert!(!work.path().join("find").exists());
        assert_eq!(progress.docs.load(Relaxed), 0);
    }
}
