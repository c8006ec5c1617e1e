//! The build's dedup stage, between discovery and tokenization: fingerprint every input file
//! (in parallel, one committed store per file, so a resumed build skips finished files), then
//! find duplicates over the corpus with the keep-the-earliest rule. Tokenization then skips
//! the removed rows: nothing removed is ever tokenized.

use super::{display_path, CorpusConfig, Ctx, DedupMode, Removed};
use crate::dedup::{self, DedupParams, FingerprintStore, FingerprintWriter, Fingerprinter, Kind};
use crate::error::{Error, Result};
use crate::source::{self, Record, SourceOptions};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Rows removed from each input file (by file index), and the report rows naming the kept docs.
pub struct Outcome {
    pub removed: HashMap<u64, HashMap<u64, Removed>>,
    pub report: Vec<dedup::ReportRow>,
}

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

pub fn run(
    ctx: &Ctx,
    corpus: &CorpusConfig,
    staging: &Path,
    files: &[PathBuf],
    pool: &rayon::ThreadPool,
) -> Result<Outcome> {
    let params = params(&ctx.cfg.dedup, corpus.dedup)?;
    let dir = staging.join("fingerprints");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    ctx.progress
        .start_stage(&format!("dedup {}", corpus.name), files.len() as u64);
    let stores: Vec<Result<PathBuf>> = pool.install(|| {
        files
            .par_iter()
            .enumerate()
            .map(|(i, f)| fingerprint_file(ctx, corpus, &params, &dir, i, f))
            .collect()
    });
    let stores = stores.into_iter().collect::<Result<Vec<_>>>()?;
    let work = staging.join("dedup-work");
    let result = dedup::find_duplicates(&stores, &params, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    let sources: Vec<String> = files.iter().map(|f| display_path(corpus, f)).collect();
    let report = result.report_rows(&sources)?;
    let mut removed: HashMap<u64, HashMap<u64, Removed>> = HashMap::new();
    for r in &result.removals {
        let why = match r.kind {
            Kind::Exact => Removed::Exact,
            Kind::Near => Removed::Near,
        };
        removed
            .entry(r.removed.file as u64)
            .or_default()
            .insert(r.removed.row, why);
    }
    Ok(Outcome { removed, report })
}

fn fingerprint_file(
    ctx: &Ctx,
    corpus: &CorpusConfig,
    params: &DedupParams,
    dir: &Path,
    index: usize,
    file: &Path,
) -> Result<PathBuf> {
    let path = dir.join(format!("{index:06}.fp"));
    // A committed store made with these parameters is this file's finished work.
    if FingerprintStore::open(&path, params).is_ok() {
        ctx.progress.files_done.fetch_add(1, Relaxed);
        return Ok(path);
    }
    if ctx.progress.cancelled() {
        return Err(Error::Interrupted);
    }
    write_store(&path, file, &corpus.source_options(), params, || {
        ctx.progress.docs.fetch_add(1, Relaxed);
    })?;
    ctx.progress.files_done.fetch_add(1, Relaxed);
    Ok(path)
}

/// The one fingerprinting loop (used by the build and by [`dedup_files`]): every document of
/// `file` into a new committed store at `store`, calling `on_doc` once per document. Returns
/// the number of documents. Filtered and skipped rows are not fingerprinted.
fn write_store(
    store: &Path,
    file: &Path,
    options: &SourceOptions,
    params: &DedupParams,
    mut on_doc: impl FnMut(),
) -> Result<u64> {
    let mut writer = FingerprintWriter::create(store, params)?;
    let mut hasher = Fingerprinter::new(params);
    for record in source::open(file, options)? {
        // Bad records are reported (or counted) by the tokenize pass, which reads the same rows.
        if let Record::Doc { row, text } = record? {
            writer.push(row, &hasher.fingerprint(&text))?;
            on_doc();
        }
    }
    writer.finish()
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
pub fn dedup_files(
    files: &[PathBuf],
    options: &SourceOptions,
    params: &DedupParams,
    work_dir: &Path,
    workers: usize,
) -> Result<FilesDedup> {
    params.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .build()
        .map_err(|e| Error::Spec(format!("workers: {e}")))?;
    let stores_dir = work_dir.join("fingerprints");
    let find_dir = work_dir.join("find");
    std::fs::create_dir_all(&stores_dir).map_err(|e| Error::io(&stores_dir, e))?;
    let out = pool.install(|| {
        let start = Instant::now();
        let stores: Vec<(PathBuf, u64)> = files
            .par_iter()
            .enumerate()
            .map(|(i, f)| {
                let store = stores_dir.join(format!("{i:06}.fp"));
                let docs = write_store(&store, f, options, params, || {})?;
                Ok((store, docs))
            })
            .collect::<Result<_>>()?;
        let fingerprint_seconds = start.elapsed().as_secs_f64();
        let paths: Vec<PathBuf> = stores.iter().map(|(p, _)| p.clone()).collect();
        let start = Instant::now();
        let result = dedup::find_duplicates(&paths, params, &find_dir)?;
        Ok(FilesDedup {
            docs: stores.iter().map(|(_, n)| n).sum(),
            result,
            fingerprint_seconds,
            find_seconds: start.elapsed().as_secs_f64(),
        })
    });
    let _ = std::fs::remove_dir_all(&stores_dir);
    let _ = std::fs::remove_dir_all(&find_dir);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::OnError;

    fn slim(i: usize) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "python/tests/data/corpora/slimpajama/train/chunk1/example_train_000{i}.jsonl.zst"
        ))
    }

    fn options() -> SourceOptions {
        SourceOptions {
            text: "text".into(),
            exclude: Vec::new(),
            on_error: OnError::Fail,
            max_doc_bytes: 64 << 20,
        }
    }

    /// A file given twice: every document of the second copy goes, kept in an earlier file;
    /// the outcome is the same on 1 and 2 workers, and the scratch stores are gone.
    #[test]
    fn dedup_files_removes_a_repeated_file_whatever_the_workers() {
        let files = [slim(0), slim(1), slim(0)];
        let params = DedupParams::default();
        let mut runs = Vec::new();
        for workers in [1, 2] {
            let work = tempfile::tempdir().unwrap();
            let out = dedup_files(&files, &options(), &params, work.path(), workers).unwrap();
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
}
