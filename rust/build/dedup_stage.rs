//! The build's dedup stage, between discovery and tokenization: fingerprint every input file
//! (in parallel, one committed store per file, so a resumed build skips finished files), then
//! find duplicates over the corpus with the keep-the-earliest rule. Tokenization then skips
//! the removed rows: nothing removed is ever tokenized.

use super::{display_path, CorpusConfig, Ctx, DedupMode, Removed};
use crate::dedup::{self, DedupParams, FingerprintStore, FingerprintWriter, Fingerprinter, Kind};
use crate::error::{Error, Result};
use crate::source::{self, Record};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

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
    let mut writer = FingerprintWriter::create(&path, params)?;
    let mut hasher = Fingerprinter::new(params);
    for record in source::open(file, &corpus.source_options())? {
        // Bad records are reported (or counted) by the tokenize pass, which reads the same rows.
        if let Record::Doc { row, text } = record? {
            writer.push(row, &hasher.fingerprint(&text))?;
            ctx.progress.docs.fetch_add(1, Relaxed);
        }
    }
    writer.finish()?;
    ctx.progress.files_done.fetch_add(1, Relaxed);
    Ok(path)
}
